"""The read-only web dashboard: progress, leaderboard, results, lineage, notes and claims.

``model`` holds the rows and the :class:`~autoresearchd.dashboard.model.DashboardSource`
Protocol; ``hub_source`` and ``memory_source`` read them from a hub's database and from
the solo daemon's SQLite memory; ``pages`` holds the pure helpers (diffs, chart series);
``web`` serves them; ``mount`` builds all that from a config. ``static/`` holds the one
vendored chart library, pinned by the hashes in :data:`VENDORED`.
"""

#: Vendored static files and their sha256 (see static/VENDORED.md): uPlot 1.6.32.
VENDORED = {
    "uPlot.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
    "uPlot.min.css": "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
}
