"""The self-hostable hub: a server that speaks the Ensue protocol (DESIGN.md, section 5).

``store`` holds the data behind a Protocol (SQLite now, PostgreSQL later), ``auth`` the
keys, write policy and rate limit, ``rpc`` the JSON-RPC tools and ``app`` the Starlette
routes, ``serve`` and ``init``. Importing this package needs the ``hub`` extra.
"""
