"""The self-hostable hub: a server that speaks the Ensue protocol (docs/architecture.md, "The hub").

``storage`` holds the data behind a Protocol, in SQLite or in PostgreSQL (which several
hub replicas may share), and opens the one a database names; ``credentials`` the keys,
``policy`` the write policy, ``ratelimit`` the rate limits, ``jsonrpc`` the envelope,
``tools`` the JSON-RPC tools, ``app`` the Starlette routes, ``serve`` the server and
``admin`` init, migrate, seeding and revoking. Importing this package needs the ``hub`` extra.
"""
