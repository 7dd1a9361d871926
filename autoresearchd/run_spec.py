"""What one run is: its spec (candidate, device, budget, paths) and its child's environment.

:class:`RunSpec` gathers everything a run needs, and the paths of its run directory derive
from it; :func:`child_env` is the environment of contract 1 in docs/architecture.md that
the run's process gets. Starting the process lives in :mod:`autoresearchd.run_process`,
reading its output in :mod:`autoresearchd.run_output`, the run as a whole in
:mod:`autoresearchd.runner`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoresearchd.config import (
    DEFAULT_KILL_GRACE_S,
    DEFAULT_WORKSPACE_IGNORE,
    ExperimentConfig,
)
from autoresearchd.early_stopping import LearningCurve
from autoresearchd.models import Candidate, Device
from autoresearchd.sandbox import scrub_env

DEFAULT_MAX_LOG_BYTES = 64 * 1024 * 1024
LOG_NAME = "run.log"
RESULT_NAME = "result.json"
#: Turns ``[python, script]`` into the command actually run (a sandbox prefix, for instance).
Wrap = Callable[[Sequence[str]], list[str]]


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything one run needs; paths derive from ``run_root`` and ``run_id``."""

    run_id: str
    candidate: Candidate
    device: Device
    seed: int
    track: str
    time_budget_s: float
    grace_s: float
    data_dir: Path
    workspace: Path
    run_root: Path
    script: str = "train.py"
    python: str = sys.executable
    workspace_ignore: tuple[str, ...] = DEFAULT_WORKSPACE_IGNORE
    kill_grace_s: float = DEFAULT_KILL_GRACE_S
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES
    extra_env: Mapping[str, str] = field(default_factory=dict)
    wrap: Wrap | None = None
    #: Reads the run's progress as it trains, and may stop it early (early_stopping.py).
    curve: LearningCurve | None = None

    @classmethod
    def from_config(
        cls,
        experiment: ExperimentConfig,
        *,
        run_root: Path,
        run_id: str,
        candidate: Candidate,
        device: Device,
        seed: int,
    ) -> RunSpec:
        """A spec with the experiment settings of a loaded config."""
        return cls(
            run_id=run_id,
            candidate=candidate,
            device=device,
            seed=seed,
            track=experiment.track,
            time_budget_s=experiment.time_budget_s,
            grace_s=experiment.grace_s,
            data_dir=experiment.data_dir,
            workspace=experiment.workspace,
            run_root=run_root,
            script=experiment.script,
            python=experiment.python or sys.executable,
            workspace_ignore=experiment.workspace_ignore,
            kill_grace_s=experiment.kill_grace_s,
        )

    @property
    def run_dir(self) -> Path:
        return self.run_root.absolute() / self.run_id

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_NAME

    @property
    def result_path(self) -> Path:
        return self.run_dir / RESULT_NAME

    @property
    def limit_s(self) -> float:
        """Seconds from process start after which the run is a timeout."""
        return self.time_budget_s + self.grace_s

    @property
    def command(self) -> list[str]:
        command = [self.python, self.script]
        return self.wrap(command) if self.wrap else command


def child_env(spec: RunSpec) -> dict[str, str]:
    """The daemon's environment plus contract 1's variables (which ``extra_env`` cannot mask)."""
    gpu = spec.device.is_gpu
    return {
        # Secrets never reach the child (docs/architecture.md, security rules).
        **scrub_env(os.environ),
        **spec.extra_env,
        "CUDA_VISIBLE_DEVICES": spec.device.uuid if gpu else "",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "AUTORESEARCH_DEVICE": "cuda" if gpu else "cpu",
        "AUTORESEARCH_TIME_BUDGET": repr(float(spec.time_budget_s)),
        "AUTORESEARCH_SEED": str(spec.seed),
        "AUTORESEARCH_TRACK": spec.track,
        "AUTORESEARCH_DATA_DIR": str(spec.data_dir.absolute()),
        "AUTORESEARCH_RESULT_FILE": str(spec.result_path),
        "PYTHONUNBUFFERED": "1",
    }
