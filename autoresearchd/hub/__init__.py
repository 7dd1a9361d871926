"""The self-hostable hub: a server that speaks the Ensue protocol (docs/architecture.md, "The hub").

``storage`` holds the data behind a Protocol, in SQLite or in PostgreSQL (which several
hub replicas may share), and opens the one a database names; ``auth`` the keys, write
policy and rate limit, ``rpc`` the JSON-RPC tools and ``app`` the Starlette routes,
``serve``, ``init`` and ``migrate``. Importing this package needs the ``hub`` extra.
"""
