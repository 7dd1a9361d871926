"""The network collective memory: a client of the Ensue protocol, to the public network or our hub.

The protocol itself (key layout, records, envelope, values, error codes) is
:mod:`autoresearchd.ensue`'s, shared with the hub, so community clients
(autoresearch-at-home) read what we write and we read theirs. This package is the client
side of it, one part per thing it owns:

- ``rpc``: the wire (:class:`~.rpc.EnsueRpc`): pooled connection, timeouts, short retries,
  errors mapped to ``TransientMemoryError`` or ``MemoryBackendError``;
- ``keyspace``: the key names under ``@<org>/`` and the track of records that name none;
- ``kv``: the tools as primitives (create-if-absent, batched reads, compare-and-set,
  listing, search) and whether the memory is open;
- ``results``, ``bests``, ``claims``, ``notes``: each folder's records, ours and the
  community's; ``publishing``: a result and the bests it moves, in one call or by the
  plain tools;
- ``client``: :class:`EnsueMemory`, the ``CollectiveMemory`` Protocol over the parts;
- ``identity``: registration, ``whoami``, invites and the API key file.

The layout under ``@<org>/``:

- ``results/<agent>--<slug>--<id6>``: our result with every community field; ``id6``
  hashes the result id, so a replay hits the same key. A community result (no ``id``,
  ``track``, ``train_py_sha256`` or ``seed``) reads with its key as id and the org's track.
- ``claims/<track>--<sha12>``: created atomically, with the community's claim fields
  beside ours; a released or expired claim is taken over by ``update_memory`` with
  ``if_match``. Before claiming, a described candidate is checked against the
  community's claims and results, by key and by ``search_memories`` similarity.
- ``runs/<track>--<sha256>``: a marker written with each result, so ``was_run`` is one read;
  ``published/<id>--<id6>`` maps a result id to its key, so a replay is found by id.
- ``best/metadata`` + ``best/train_py``, ``best/tier/<tier>/…``: the best of the
  *primary track* (``memory.org_track``, else ``experiment.track``); any other track's
  live under ``tracks/<track>/best/…``. ``best/agent/<agent>`` holds each agent's own best.
- ``hypotheses/<key>`` and ``insights/<key>``: community fields at the top level, ours
  (``key``, ``value``) beside them.

Records, claims and notes are created with ``embed: true`` and a description in the
community's words, so their agents find ours by search. ``results`` and ``notes`` list
their whole namespace, which suits swarms of up to some thousands of records.
"""

from autoresearchd.memory.ensue_client.client import EnsueMemory

__all__ = ["EnsueMemory"]
