"""The one exception tree of autoresearchd.

Every error the package raises on purpose derives from :class:`AutoresearchdError`,
so callers can catch ours without catching programming mistakes::

    AutoresearchdError
    ├── ConfigError            a config file or value is wrong (file, key path, expectation)
    ├── GpuError               NVML failed or a device misbehaved (device)
    ├── RunError               an experiment could not be started or read (run_id)
    ├── MutationError          a train.py cannot be parsed or mutated (line)
    ├── DataError              a track's data cannot be prepared or verified (track)
    ├── ProposalError          a proposer produced no runnable candidate (outcome, proposer)
    ├── MemoryBackendError     the collective memory failed (backend, key)
    │   └── TransientMemoryError   worth retrying: transport errors, 5xx, 429
    ├── HubError               the hub refused a request (status, code)
    ├── ControlError           the daemon's control socket refused or did not answer (path)
    │   └── DaemonNotRunning       nothing listens on the control socket
    └── MissingExtraError      an optional extra is not installed (extra)

Context is attached as attributes so logs can carry it as key/values, and ``str(err)``
is always a single line a person can act on.
"""

from __future__ import annotations


class AutoresearchdError(Exception):
    """Base class for every error autoresearchd raises on purpose."""


class ConfigError(AutoresearchdError):
    """A configuration file or value is invalid.

    The message names the file, the dotted key path and what was expected, e.g.
    ``config.toml: devices.gpus: expected "auto", "none" or a list of indices/UUIDs, got 3.5``.
    """

    def __init__(self, message: str, *, path: str = "", key: str = "") -> None:
        self.path = path
        self.key = key
        where = ": ".join(part for part in (path, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class GpuError(AutoresearchdError):
    """NVML could not be used, or a device failed."""

    def __init__(self, message: str, *, device: str = "") -> None:
        self.device = device
        super().__init__(f"{device}: {message}" if device else message)


class RunError(AutoresearchdError):
    """An experiment could not be started or its output could not be read."""

    def __init__(self, message: str, *, run_id: str = "") -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id}: {message}" if run_id else message)


class MutationError(AutoresearchdError):
    """A train.py could not be parsed, or its hyperparameter block is malformed."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


class DataError(AutoresearchdError):
    """A track's data could not be downloaded, verified or prepared."""

    def __init__(self, message: str, *, track: str = "") -> None:
        self.track = track
        super().__init__(f"track {track}: {message}" if track else message)


class ProposalError(AutoresearchdError):
    """A proposer failed in a way worth recording as a result (an external agent's output).

    ``outcome`` is the status to record: ``crash`` (the agent timed out, failed or wrote
    nothing) or ``invalid`` (its script was refused by the trust policy). ``source`` is what
    it wrote, if anything.
    """

    def __init__(self, message: str, *, outcome: str, proposer: str, source: str = "") -> None:
        self.outcome = outcome
        self.proposer = proposer
        self.source = source
        super().__init__(f"proposer {proposer}: {message}")


class MemoryBackendError(AutoresearchdError):
    """The collective memory failed in a way the caller cannot fix by retrying."""

    def __init__(self, message: str, *, backend: str = "", key: str = "") -> None:
        self.backend = backend
        self.key = key
        where = " ".join(part for part in (backend, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class TransientMemoryError(MemoryBackendError):
    """The collective memory is unreachable or overloaded; retry later.

    ``retry_after`` carries a server's ``Retry-After`` hint in seconds, when it sent one.
    """

    def __init__(
        self, message: str, *, backend: str = "", key: str = "", retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, backend=backend, key=key)


class HubError(AutoresearchdError):
    """The hub refused a request."""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class ControlError(AutoresearchdError):
    """The running daemon's control socket refused a request or did not answer."""

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        super().__init__(message)


class DaemonNotRunning(ControlError):
    """No daemon listens on the control socket."""


class MissingExtraError(AutoresearchdError):
    """A command needs an optional extra (``pip install 'autoresearchd[EXTRA]'``)."""

    def __init__(self, message: str, *, extra: str = "") -> None:
        self.extra = extra
        super().__init__(message)
