"""The go signal's wire: the names both sides of it share, and nothing else.

The daemon (:mod:`autoresearchd.go_signal`) and a script (:mod:`autoresearchd.harness.go`)
speak over an inherited stream socket whose number is in :data:`GO_FD_ENV`: the script
sends :data:`READY` once it is initialised, the daemon sends :data:`GO` when the run's time
starts. These live apart from both so that the daemon never imports the harness.
"""

from __future__ import annotations

#: The environment variable naming the inherited go socket.
GO_FD_ENV = "AUTORESEARCH_GO_FD"
#: Sent by the script once it is initialised and waiting.
READY = b"R"
#: Sent by the daemon: the run's time starts now.
GO = b"G"
