"""The self-hostable hub: a server that speaks the Ensue protocol (DESIGN.md, section 5).

``store`` holds the data behind a Protocol and keeps it in SQLite, ``pg`` keeps it in
PostgreSQL (which several hub replicas may share; ``pgcluster`` starts a throwaway
cluster for tests and benchmarks), ``auth`` the keys, write policy and rate limit,
``rpc`` the JSON-RPC tools and ``app`` the Starlette routes, ``serve``, ``init`` and
``migrate``. Importing this package needs the ``hub`` extra.
"""
