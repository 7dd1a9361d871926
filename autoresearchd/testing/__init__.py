"""Fakes shipped for tests and benchmarks, in place of hardware and of other people's code.

- :mod:`~autoresearchd.testing.nvml`: :class:`FakeNvml` stands in for the ``pynvml``
  module (several devices, driver errors, devices that vanish, foreign processes).
- :mod:`~autoresearchd.testing.scripts`: scripted stand-ins for ``train.py`` that
  misbehave on demand, and the plan-driven and timing stand-ins of daemon tests and
  benchmarks.
- :mod:`~autoresearchd.testing.pgcluster`: a throwaway PostgreSQL cluster for the hub's
  tests and benchmarks (imported on its own: it needs PostgreSQL's binaries).
- :mod:`~autoresearchd.testing.processes`: a served hub's other workers, once they listen,
  and the CPU time of processes, read from ``/proc`` (imported on its own).

Nothing in the daemon, the CLI or the hub imports this package.
"""

from autoresearchd.testing.nvml import (
    FakeGpu,
    FakeNvml,
    FakeNVMLError,
    FakeNVMLErrorNotFound,
    FakeNVMLErrorNotSupported,
)
from autoresearchd.testing.scripts import (
    DEFAULT_NOISE,
    ENV_FILE,
    PIDS_FILE,
    PLAN_ENV,
    crash_script,
    curve_script,
    env_dump_script,
    flood_script,
    hang_script,
    json_result_script,
    karpathy_output_script,
    nan_script,
    ok_script,
    plan_script,
    plan_steps,
    stand_in_val_bpb,
    timing_script,
    write_plan,
    write_workspace,
)

__all__ = [
    "DEFAULT_NOISE",
    "ENV_FILE",
    "PIDS_FILE",
    "PLAN_ENV",
    "FakeGpu",
    "FakeNVMLError",
    "FakeNVMLErrorNotFound",
    "FakeNVMLErrorNotSupported",
    "FakeNvml",
    "crash_script",
    "curve_script",
    "env_dump_script",
    "flood_script",
    "hang_script",
    "json_result_script",
    "karpathy_output_script",
    "nan_script",
    "ok_script",
    "plan_script",
    "plan_steps",
    "stand_in_val_bpb",
    "timing_script",
    "write_plan",
    "write_workspace",
]
