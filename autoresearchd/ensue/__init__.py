"""The Ensue protocol, owned in one place: the hub and the client both import it.

- :mod:`~autoresearchd.ensue.envelope`: JSON-RPC 2.0 requests and replies, MCP
  ``tools/call`` results (``content`` text and ``isError``), and reading either error
  shape a server may answer with: a per-item error inside a successful result, or a
  tool-level error (an ``isError`` result or a JSON-RPC error).
- :mod:`~autoresearchd.ensue.errors`: the error codes used on the wire.
- :mod:`~autoresearchd.ensue.keys`: the key layout (``claims/``, ``results/``,
  ``best/...``, ``hypotheses/``, ``insights/``), org-relative and ``@org/...`` full names,
  and the per-track prefix that keeps non-primary tracks off the bare ``best/`` keys.
- :mod:`~autoresearchd.ensue.values`: the base64 value codec.

Nothing here does I/O: the modules are pure, so both sides share them without sharing
a transport.
"""
