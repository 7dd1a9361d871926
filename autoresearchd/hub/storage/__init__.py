"""The hub's storage: row types, the ``HubStore`` Protocol, its SQLite and PostgreSQL dialects.

``rows`` holds the plain data, ``protocol`` what the hub asks of a store, ``decisions`` the
write algorithm's decisions as pure functions, ``shared_sql`` the SQL both dialects speak;
each dialect is a store class (``sqlite``, ``postgres``), its statements and its numbered
migrations; ``auto`` opens or migrates the one ``hub.database`` names.
"""
