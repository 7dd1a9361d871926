"""GPU check: everything that touches a GPU, proven on one machine in one go (< 8 minutes).

Run it with any Python >= 3.11 from the repository; it needs nothing but the standard
library itself, and builds what the steps need. Steps, in order, each under its own time
limit and all under one deadline (``--max-seconds``):

- ``install``: a venv with torch and the project. A CUDA torch already importable by the
  interpreter running this script is reused (its site-packages are linked into the venv,
  like ``--system-site-packages`` but also from inside another venv); otherwise
  ``torch==2.13.0`` is installed. Missing runtime dependencies come from the package index,
  or from ``--wheels DIR`` on a machine without one.
- ``gpus``: ``autoresearchd gpus --json``: names, UUIDs, memory, tiers, driver and CUDA versions.
- ``train``: train.py on CUDA at its default GPU shape for ``--train-seconds`` on the
  synthetic track: tokens/s, MFU against the device's own peak, peak VRAM, warm-up and
  compile seconds, val_bpb, and what the rest of the run's wall time went to.
- ``profile``: the default shape's top kernels under ``torch.profiler`` over a few
  optimizer steps (``profile.txt``), for when MFU falls short of the 40% goal.
- ``train_large``: the same at a larger shape (``--large``), to show how MFU grows with size.
- ``etiquette``: a foreign CUDA process started here holds the GPU; the worker must wait
  for it (``yield_to_foreign_processes``, the ``device_waiting`` log event), start nothing,
  and resume once it is gone.
- ``daemon``: the daemon in solo mode on the GPU for ``--daemon-seconds`` (shortened to fit
  the deadline) with a short budget: busy fraction, runs, keeps, each run's training share,
  and that no child still runs or holds GPU memory afterwards (``/proc`` and NVML).

``--dry-run`` runs every step on CPU that needs no GPU: train.py for a few seconds at the
CPU shapes, the daemon with one CPU worker for a short while, and ``gpus`` both for real and
on the fake NVML of ``autoresearchd.testing``. Steps that truly need a GPU are reported as
``skipped_no_gpu``. The report has the same shape either way.

Writes ``report.json``, ``summary.txt`` and one log per step into ``--out`` (default
``$OUT`` if set, else ``./gpu_check_out``). Exits 0 when no step failed.

    python3 benchmarks/gpu_check.py [--dry-run] [--out DIR] [--wheels DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TORCH_PIN = "torch==2.13.0"
#: The MFU that the default GPU shape should reach on an H100 or H200 (issue's anchor).
MFU_GOAL_PERCENT = 40.0
#: Seconds kept back from the deadline to write the report.
RESERVE_S = 10.0
#: A step is not started with less than this left before the deadline.
MIN_STEP_S = 20.0
OK, FAILED, NO_GPU, OUT_OF_TIME, BLOCKED, NOT_ASKED = (
    "ok",
    "failed",
    "skipped_no_gpu",
    "skipped_out_of_time",
    "skipped_install_failed",
    "skipped_not_asked",
)
STEP_NAMES = ("install", "gpus", "train", "profile", "train_large", "etiquette", "daemon")

# Run inside an interpreter: what it holds, as one JSON line; torch only with --torch first.
PROBE = """
import importlib.metadata as md, json, sys, sysconfig
with_torch = sys.argv[1:2] == ["--torch"]
names = sys.argv[1 + with_torch:]
out = {"python": sys.version.split()[0], "executable": sys.executable,
       "site": sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}),
       "missing": []}
for name in names:
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        out["missing"].append(name)
try:
    if not with_torch:
        raise ImportError("not asked for")
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if out["cuda_available"]:
        out["cuda_device"] = torch.cuda.get_device_name(0)
except Exception as exc:  # a broken torch is as good as none here
    out["torch"] = None
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""

# Run in the venv: what ``gpus --json`` prints, from the fake NVML (dry run).
FAKE_GPUS = """
import json, anyio
from autoresearchd.config_loader import parse_config
from autoresearchd.gpus import Gpus, device_records, plan_devices, select_gpus
from autoresearchd.testing import FakeGpu, FakeNvml

async def main():
    nvml = FakeNvml([FakeGpu(name="NVIDIA H100 80GB HBM3")], driver="550.54", cuda=12040)
    async with Gpus(nvml) as gpus:
        found = await gpus.discover()
    config = parse_config({}).devices
    print(json.dumps(device_records(plan_devices(select_gpus(found.gpus, config), config), found)))

anyio.run(main)
"""

# Run in the venv: every compute process NVML lists, per GPU, as JSON (null without NVML).
NVML_PROCESSES = """
import json
try:
    import pynvml
    pynvml.nvmlInit()
except Exception as exc:
    print(json.dumps(None)); raise SystemExit(0)
out = {}
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    out[i] = [{"pid": p.pid, "used_mb": (p.usedGpuMemory or 0) / 2**20} for p in procs]
print(json.dumps(out))
"""

# Run in the venv: a CUDA process that is not the daemon's, holding memory until killed.
FOREIGN = """
import sys, time, torch
block = torch.empty(2**28, device="cuda")  # 1 GiB
torch.cuda.synchronize()
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
"""

# Run in the venv: train.py with some hyperparameters changed, through the project's mutator.
MUTATE = """
import json, sys
from pathlib import Path
from autoresearchd.mutation import apply_changes
source, target, changes = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
target.write_text(apply_changes(source.read_text(), changes))
print(json.dumps(changes))
"""

# Run in the venv with train.py's environment: its own trainer, warmed up, then a few
# optimizer steps under torch.profiler. Writes the table to argv[3]; prints the top kernels.
PROFILE = """
import importlib.util, json, os, sys
from pathlib import Path
import torch
from torch.profiler import ProfilerActivity, profile
spec = importlib.util.spec_from_file_location("train_profiled", sys.argv[1])
train = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = train
spec.loader.exec_module(train)
settings = train.read_settings(dict(os.environ))
trainer, _ = train.build_trainer(settings)
train.warm_up(trainer, steps=train.warmup_steps(settings.device))
cuda = settings.device.type == "cuda"
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
with profile(activities=activities) as prof:
    for _ in range(int(sys.argv[2])):
        trainer.step(progress=0.5)
key = "self_device_time_total" if cuda else "self_cpu_time_total"
averages = prof.key_averages()
Path(sys.argv[3]).write_text(averages.table(sort_by=key, row_limit=25))
total = sum(getattr(e, key) for e in averages) or 1.0
top = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:10]
print(json.dumps([
    {"name": e.key[:120], "self_ms": round(getattr(e, key) / 1e3, 3),
     "share": round(getattr(e, key) / total, 4), "calls": e.count}
    for e in top
]))
"""

# ----------------------------------------------------------------------------- plumbing


class StepFailed(Exception):
    """A step could not do what it checks; the message says what went wrong, and
    ``details`` keeps what the step had found by then."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


@dataclass
class Finished:
    returncode: int | None  # None: killed at its time limit
    seconds: float
    output: str


def run_logged(
    cmd: list[str],
    log: Path,
    limit_s: float,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Finished:
    """Run ``cmd`` in its own process group, output appended to ``log``; kill it at ``limit_s``."""
    start = time.perf_counter()
    with log.open("ab") as sink:
        sink.write(f"$ {' '.join(cmd)}\n".encode())
        sink.flush()
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
        try:
            returncode: int | None = proc.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            returncode = None
    return Finished(returncode, time.perf_counter() - start, tail(log))


def kill_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tail(path: Path, chars: int = 1500) -> str:
    with contextlib.suppress(OSError):
        return path.read_bytes()[-chars:].decode(errors="replace").replace("\r", "\n")
    return ""


def capture(cmd: list[str], limit_s: float = 60.0, env: dict[str, str] | None = None) -> str:
    """stdout of ``cmd``; StepFailed naming the command when it fails."""
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=limit_s, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise StepFailed(f"{cmd[:3]}: no answer within {limit_s:.0f} s") from None
    if done.returncode != 0:
        raise StepFailed(f"{cmd[:3]}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def capture_json(cmd: list[str], limit_s: float = 60.0) -> Any:
    text = capture(cmd, limit_s).strip()
    try:
        return json.loads(text.splitlines()[-1] if text else "")
    except json.JSONDecodeError:
        raise StepFailed(f"{cmd[:3]}: expected JSON, got {text[-300:]!r}") from None


def five_number(values: list[float]) -> dict[str, float] | None:
    """min / median / max, rounded; None for no values."""
    if not values:
        return None
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


# ------------------------------------------------------------------------------ context


@dataclass
class Check:
    """What every step shares: options, folders, the venv's python and the deadline."""

    args: argparse.Namespace
    out: Path
    work: Path
    deadline: float
    python: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    gpu_uuid: str = ""

    @property
    def dry(self) -> bool:
        return bool(self.args.dry_run)

    @property
    def data_dir(self) -> Path:
        return self.work / "data"

    def left(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S

    def limit(self, wanted_s: float) -> float:
        return max(0.0, min(wanted_s, self.left()))

    def snippet(self, code: str, *args: str, limit_s: float = 60.0) -> Any:
        return capture_json([self.python, "-c", code, *args], limit_s)

    def train_env(self, budget_s: float, result: Path, seed: int = 1) -> dict[str, str]:
        """Contract 1's environment, as the daemon would give it."""
        env = {
            **os.environ,
            "AUTORESEARCH_DEVICE": "cpu" if self.dry else "cuda",
            "AUTORESEARCH_TIME_BUDGET": str(budget_s),
            "AUTORESEARCH_SEED": str(seed),
            "AUTORESEARCH_TRACK": "synthetic",
            "AUTORESEARCH_DATA_DIR": str(self.data_dir),
            "AUTORESEARCH_RESULT_FILE": str(result),
            "PYTHONUNBUFFERED": "1",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }
        if self.dry or self.gpu_uuid:  # empty for a CPU worker, as the daemon sets it
            env["CUDA_VISIBLE_DEVICES"] = "" if self.dry else self.gpu_uuid
        return env


# ------------------------------------------------------------------------------ install


def project_requirements() -> list[str]:
    """The runtime dependencies pyproject.toml names (the daemon's; torch comes apart)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return list(project["dependencies"])


def dist_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    if match is None:
        raise StepFailed(f"pyproject.toml: cannot read the requirement {requirement!r}")
    return match.group(0)


def step_install(check: Check) -> dict[str, Any]:
    """A venv that imports torch and the project; reuses a usable torch where there is one."""
    base = check.args.python or sys.executable
    log = check.out / "install.log"
    found = capture_json([base, "-c", PROBE, "--torch"], check.limit(120))
    usable = found.get("torch") and (check.dry or found.get("cuda_available"))
    venv = Path(check.args.venv or check.work / "venv")
    capture([base, "-m", "venv", "--clear", "--without-pip", str(venv)], check.limit(120))
    python = str(venv / "bin" / "python")
    site = Path(capture_json([python, "-c", PROBE], 60)["site"][0])
    # A .pth line puts a folder on sys.path (the repository), or runs an import line: the
    # base's site folders are added as site dirs, so their own .pth files count too.
    bases = found["site"] if usable else []
    lines = [str(ROOT), *(f"import site; site.addsitedir({d!r})" for d in bases)]
    (site / "autoresearchd_gpu_check.pth").write_text("\n".join(lines) + "\n")
    wanted = {dist_name(r): r for r in project_requirements()}
    missing = capture_json([python, "-c", PROBE, *wanted], 60)["missing"]
    specs = [wanted[name] for name in missing] + ([] if usable else [TORCH_PIN])
    if specs:
        pip_install(check, python, specs, log)
    have = capture_json([python, "-c", PROBE, "--torch", *wanted], check.limit(120))
    if have["missing"] or not have.get("torch"):
        raise StepFailed(f"still missing after install: {have['missing'] or ['torch']}")
    if not check.dry and not have.get("cuda_available"):
        raise StepFailed(f"torch {have['torch']} sees no CUDA device")
    check.python = python
    return {
        "base_python": found["executable"],
        "reused_torch": bool(usable),
        "installed": specs,
        **{k: have.get(k) for k in ("python", "torch", "torch_cuda", "cuda_available")},
        "cuda_device": have.get("cuda_device"),
    }


def pip_install(check: Check, python: str, specs: list[str], log: Path) -> None:
    """pip into the venv: from ``--wheels`` alone when given, else from the index."""
    has_pip = "import importlib.util as u; print(u.find_spec('pip') is not None)"
    if capture([python, "-c", has_pip]).strip() != "True":
        capture([python, "-m", "ensurepip", "--upgrade"], check.limit(180))
    source = ["--no-index", "--find-links", check.args.wheels] if check.args.wheels else []
    cmd = [python, "-m", "pip", "install", "--disable-pip-version-check", *source]
    cmd += ["-c", str(ROOT / "constraints.txt"), *specs]
    done = run_logged(cmd, log, check.limit(300))
    if done.returncode != 0:
        raise StepFailed(f"pip install {' '.join(specs)} failed: {done.output[-400:]}")


# --------------------------------------------------------------------------------- gpus


def step_gpus(check: Check) -> dict[str, Any]:
    """``autoresearchd gpus --json`` for real; on a dry run also on the fake NVML."""
    config = write_config(check, check.work / "gpus", seconds=1.0)
    cmd = [check.python, "-m", "autoresearchd", "gpus", "--json", "--config", str(config)]
    devices = capture_json_block(cmd, check.limit(60))
    gpus = [d for d in devices if d.get("kind") == "cuda"]
    result: dict[str, Any] = {"devices": devices, "gpu_count": len(gpus)}
    if check.dry:
        result["fake_nvml_devices"] = check.snippet(FAKE_GPUS, limit_s=check.limit(60))
    elif not gpus:
        raise StepFailed(f"NVML shows no GPU: {devices}")
    for key in ("driver_version", "cuda_version"):
        shown = (gpus or result.get("fake_nvml_devices") or [{}])[0]
        result[key] = shown.get(key, "")
    check.gpu_uuid = gpus[0]["uuid"] if gpus else ""
    return result


def capture_json_block(cmd: list[str], limit_s: float) -> Any:
    """A command's whole stdout as one JSON document (``gpus --json`` is indented)."""
    text = capture(cmd, limit_s)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise StepFailed(f"{cmd[2:4]}: expected JSON, got {text[-300:]!r}") from None


def write_config(check: Check, home: Path, *, seconds: float, health_s: float = 2.0) -> Path:
    """A solo-mode config: its own state dir and workspace, the shared data dir."""
    workspace = home / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    shutil.copy(check.args.train_py, workspace / "train.py")
    gpus, cpu_workers = ('"none"', 1) if check.dry else ('"auto"', 0)
    text = f"""\
[daemon]
agent = "gpu-check"
state_dir = "{home / "state"}"
log_format = "json"
shutdown_grace_s = 20.0
on_shutdown = "stop"
health_interval_s = {health_s}

[devices]
gpus = {gpus}
cpu_workers = {cpu_workers}
yield_to_foreign_processes = true

[experiment]
workspace = "{workspace}"
python = "{check.python}"
track = "synthetic"
data_dir = "{check.data_dir}"
time_budget_s = {seconds}
grace_s = 240.0
keep_runs = 100
"""
    path = home / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -------------------------------------------------------------------------------- train

#: The metrics a train step copies from train.py's result file.
TRAIN_KEYS = (
    "val_bpb",
    "tokens_per_s",
    "mfu_percent",
    "peak_tflops",
    "peak_vram_mb",
    "warmup_seconds",
    "compile_seconds",
    "training_seconds",
    "eval_seconds",
    "total_seconds",
    "num_params_M",
    "num_steps",
    "depth",
)


def parse_changes(text: str) -> dict[str, int | float]:
    """``"DEPTH=12,ASPECT_RATIO=128"`` as hyperparameter changes; ValueError naming the bad part."""
    changes: dict[str, int | float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ValueError(f"expected NAME=number, got {part!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected NAME=number, got {part!r}") from None
        changes[name.strip()] = int(number) if number.is_integer() else number
    return changes


def step_train(check: Check, name: str, changes: dict[str, int | float], budget_s: float) -> dict:
    """train.py as the daemon runs it, once, with ``changes`` made to its hyperparameters."""
    home = check.work / name
    home.mkdir(parents=True, exist_ok=True)
    script = home / "train.py"
    if changes:
        check.snippet(MUTATE, str(check.args.train_py), str(script), json.dumps(changes))
    else:
        shutil.copy(check.args.train_py, script)
    result_file = home / "result.json"
    log = check.out / f"{name}.log"
    env = check.train_env(budget_s, result_file)
    done = run_logged(
        [check.python, "train.py"], log, check.limit(budget_s + 240), env=env, cwd=home
    )
    if done.returncode != 0 or not result_file.exists():
        ending = (
            "killed at its time limit" if done.returncode is None else f"exit {done.returncode}"
        )
        raise StepFailed(f"train.py {ending}: {done.output[-600:]}")
    metrics = json.loads(result_file.read_text(encoding="utf-8"))
    if not math.isfinite(metrics.get("val_bpb", math.nan)):
        raise StepFailed(f"train.py reported val_bpb {metrics.get('val_bpb')}")
    return train_record(metrics, done.seconds, changes, check.dry)


def step_profile(check: Check) -> dict[str, Any]:
    """The default shape's top kernels (device time on CUDA, CPU time on a dry run)."""
    home = check.work / "profile"
    home.mkdir(parents=True, exist_ok=True)
    env = check.train_env(1.0, home / "unused.json")
    table = check.out / "profile.txt"
    steps = str(check.args.profile_steps)
    cmd = [check.python, "-c", PROFILE, str(check.args.train_py), steps, str(table)]
    text = capture(cmd, check.limit(240), env=env)
    try:
        top = json.loads(text.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise StepFailed(f"the profile printed no table: {text[-300:]!r}") from None
    return {"steps": check.args.profile_steps, "top": top, "table": table.name}


def train_record(metrics: dict, wall_s: float, changes: dict, dry: bool) -> dict[str, Any]:
    """One train run's figures, with where its wall time went."""
    record: dict[str, Any] = {"changes": changes, "device": "cpu" if dry else "cuda"}
    record.update({key: metrics.get(key) for key in TRAIN_KEYS})
    training = metrics["training_seconds"]
    record["wall_seconds"] = round(wall_s, 3)
    record["training_share"] = round(training / wall_s, 4)
    # Spawn to exit, less what the script timed itself: interpreter start and exit.
    record["outside_script_seconds"] = round(wall_s - metrics["total_seconds"], 3)
    if not dry:
        record["mfu_goal_percent"] = MFU_GOAL_PERCENT
        record["mfu_goal_met"] = (metrics.get("mfu_percent") or 0.0) >= MFU_GOAL_PERCENT
    return record


# ------------------------------------------------------------------------------- daemon


class LogWatch:
    """The daemon's JSON log lines as they are written: parsed events, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._offset = 0

    def poll(self) -> list[dict[str, Any]]:
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._offset += len(complete)
            for line in complete.splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict) and "event" in event:
                        self.events.append(event)
        return self.events

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.poll() if e["event"] == name]

    def wait_for(self, test: Callable[[dict[str, Any]], bool], limit_s: float) -> dict | None:
        """The first event (old or new) that passes ``test``, waiting up to ``limit_s``."""
        end = time.monotonic() + limit_s
        while True:
            hit = next((e for e in self.poll() if test(e)), None)
            if hit is not None or time.monotonic() >= end:
                return hit
            time.sleep(0.2)


def event_time(event: dict[str, Any]) -> float:
    """A log event's wall-clock time (structlog's ISO UTC timestamp)."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


@contextlib.contextmanager
def daemon(check: Check, config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``autoresearchd run`` for the block's length; SIGTERM (stop at once) on the way out."""
    cmd = [check.python, "-m", "autoresearchd", "run", "--config", str(config)]
    with log.open("ab") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_daemon(proc)


def stop_daemon(proc: subprocess.Popen[bytes], grace_s: float = 40.0) -> None:
    """The daemon's own two-stage shutdown; its group is killed only if it hangs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            kill_group(proc, grace_s=5.0)


def leftover_processes(root: Path) -> list[dict[str, Any]]:
    """Processes still working inside ``root`` (their cwd is under it), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cwd = Path(os.readlink(entry / "cwd"))
            if cwd.is_relative_to(root):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append({"pid": int(entry.name), "cwd": str(cwd), "cmdline": cmdline[:200]})
    return found


def gpu_processes(check: Check) -> dict[str, list[dict[str, Any]]] | None:
    """NVML's compute processes per GPU index; None without NVML (a dry run)."""
    return None if check.dry else check.snippet(NVML_PROCESSES, limit_s=check.limit(30))


def step_daemon(check: Check) -> dict[str, Any]:
    """The daemon in solo mode for a while: how busy it kept the device, and what it left."""
    home = check.work / "daemon"
    config = write_config(check, home, seconds=check.args.daemon_budget)
    seconds = min(check.args.daemon_seconds, check.left() - 60.0)
    if seconds < MIN_STEP_S / 2:
        raise StepFailed(f"only {check.left():.0f} s left before the deadline")
    log = check.out / "daemon.log"
    watch = LogWatch(log)
    with daemon(check, config, log) as proc:
        samples = keep_running(check, proc, watch, seconds)
        stopped_at = time.time()
    cmd = [check.python, "-m", "autoresearchd", "results", "--config", str(config), "--json"]
    results = capture_json_block([*cmd, "--limit", "1000"], check.limit(60))
    record = daemon_record(watch, results, stopped_at)
    record.update(
        seconds=round(seconds, 1),
        budget_s=check.args.daemon_budget,
        exit_code=proc.returncode,
        sandbox=next(iter(watch.named("sandbox_ready")), {}).get("tool"),
        nvml_during_runs=samples,
        leftover_processes=leftover_processes(home),
        gpu_processes_after=gpu_processes(check),
    )
    problems = daemon_problems(record)
    if problems:
        raise StepFailed("; ".join(problems), record)
    return record


def keep_running(
    check: Check, proc: subprocess.Popen[bytes], watch: LogWatch, seconds: float
) -> list[Any]:
    """Let the daemon run ``seconds``, and on until one run has ended if none has (a slow
    host), within the deadline. Returns NVML's process lists, sampled while runs went on."""
    start, samples = time.monotonic(), []
    while proc.poll() is None:
        elapsed, ended = time.monotonic() - start, bool(watch.named("run_process_exited"))
        if (elapsed >= seconds and ended) or check.left() < 60.0:
            break
        time.sleep(2.0 if elapsed >= seconds else min(15.0, max(0.1, seconds - elapsed)))
        if watch.named("run_started") and not check.dry:
            samples.append(gpu_processes(check))  # does NVML see our runs at all?
    return samples


def daemon_record(watch: LogWatch, results: list[dict], stopped_at: float) -> dict[str, Any]:
    """Runs, outcomes, keeps, busy fraction and each run's training share."""
    intervals = run_intervals(watch, stopped_at)
    span = stopped_at - intervals[0][0] if intervals else 0.0
    busy = sum(end - start for start, end in intervals)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(intervals)]
    shares = [run_share(r) for r in results if r.get("duration_s")]
    outcomes: dict[str, int] = {}
    for event in watch.named("run_process_exited"):
        outcomes[event["outcome"]] = outcomes.get(event["outcome"], 0) + 1
    return {
        "runs_started": len(watch.named("run_started")),
        "runs_finished": sum(outcomes.values()),
        "outcomes": outcomes,
        "results": len(results),
        "keeps": sum(1 for r in results if r.get("status") == "keep"),
        "statuses": sorted(str(r.get("status")) for r in results),
        "busy_fraction": round(busy / span, 4) if span > 0 else None,
        "gap_seconds": five_number(gaps),
        "training_share": five_number([s["training_share"] for s in shares]),
        "per_run": shares,
    }


def run_intervals(watch: LogWatch, stopped_at: float) -> list[tuple[float, float]]:
    """[go, exit] of every run, wall clock, overlaps merged; one still running at the stop
    ends there.

    A run's time counts from its go, not its spawn: a standby is spawned while the run
    before it still holds the device, and its start-up then costs the device nothing.
    """
    ended = {e["run_id"]: e for e in watch.named("run_process_exited")}
    intervals = []
    for start in watch.named("run_started"):
        exited = ended.get(start["run_id"])
        if exited:
            end = event_time(exited)
            intervals.append((end - float(exited["duration_s"]), min(end, stopped_at)))
        else:
            intervals.append((event_time(start), stopped_at))
    merged: list[tuple[float, float]] = []
    for begin, end in sorted(intervals):
        if merged and begin < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((begin, end))
    return merged


def run_share(result: dict[str, Any]) -> dict[str, Any]:
    """One run's wall time (spawn to exit) and what share of it trained."""
    metrics = result.get("metrics") or {}
    duration = float(result["duration_s"])
    training = float(metrics.get("training_seconds") or 0.0)
    return {
        "status": result.get("status"),
        "val_bpb": result.get("val_bpb"),
        "duration_s": round(duration, 3),
        "training_seconds": training,
        "training_share": round(training / duration, 4),
        **{k: metrics.get(k) for k in ("warmup_seconds", "compile_seconds", "eval_seconds")},
        "outside_script_seconds": round(duration - float(metrics.get("total_seconds") or 0), 3),
    }


def daemon_problems(record: dict[str, Any]) -> list[str]:
    """Why the daemon step failed: no run ran to its end, or something was left behind."""
    problems = []
    if not record["outcomes"].get("ok"):
        problems.append(f"no run finished ok: outcomes {record['outcomes']}")
    if record["leftover_processes"]:
        problems.append(f"processes left running: {record['leftover_processes']}")
    held = {k: v for k, v in (record["gpu_processes_after"] or {}).items() if v}
    if held:
        problems.append(f"GPU memory still held after the daemon stopped: {held}")
    return problems


def step_etiquette(check: Check) -> dict[str, Any]:
    """A foreign CUDA process: the worker waits for it, starts nothing, and resumes after."""
    home = check.work / "etiquette"
    config = write_config(check, home, seconds=check.args.daemon_budget, health_s=1.0)
    log = check.out / "etiquette.log"
    with foreign_process(check, log) as foreign:
        record: dict[str, Any] = {"foreign_pid": foreign.pid}
        record["nvml_saw_foreign"] = foreign_seen(check, foreign.pid)
        watch = LogWatch(log)
        with daemon(check, config, log):
            waiting = watch.wait_for(is_foreign_wait, check.limit(60))
            record["waited"] = waiting is not None
            record["waiting_for_pids"] = (waiting or {}).get("foreign_pids")
            time.sleep(5.0)  # long enough for a worker that ignores the process to start
            record["ran_while_foreign"] = bool(watch.named("run_started"))
            kill_group(foreign)
            released = time.time()
            started = watch.wait_for(lambda e: e["event"] == "run_started", check.limit(60))
            record["resumed"] = started is not None
            if started is not None:
                record["resume_seconds"] = round(event_time(started) - released, 3)
    record["leftover_processes"] = leftover_processes(home)
    problems = etiquette_problems(record)
    if problems:
        raise StepFailed("; ".join(problems), record)
    return record


@contextlib.contextmanager
def foreign_process(check: Check, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A CUDA process holding 1 GiB that is not the daemon's, ready once the block starts."""
    cmd = [check.python, "-c", FOREIGN, str(check.args.max_seconds)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": check.gpu_uuid} if check.gpu_uuid else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, start_new_session=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], check.limit(120))
        line = proc.stdout.readline() if ready else b""  # "ready" once CUDA is up
        if line.strip() != b"ready":
            raise StepFailed(f"the foreign CUDA process did not start (exit {proc.poll()})")
        with log.open("ab") as sink:
            sink.write(f"foreign CUDA process {proc.pid} holds 1 GiB\n".encode())
        yield proc
    finally:
        kill_group(proc, grace_s=5.0)


def foreign_seen(check: Check, pid: int) -> bool:
    listed = gpu_processes(check) or {}
    return any(p["pid"] == pid for procs in listed.values() for p in procs)


def is_foreign_wait(event: dict[str, Any]) -> bool:
    return event["event"] == "device_waiting" and event.get("reason") == "foreign_process"


def etiquette_problems(record: dict[str, Any]) -> list[str]:
    problems = []
    if not record["nvml_saw_foreign"]:
        problems.append(f"NVML does not list the foreign process {record['foreign_pid']}")
    if not record["waited"]:
        problems.append("the worker never logged device_waiting reason=foreign_process")
    if record["ran_while_foreign"]:
        problems.append("a run started while the foreign process held the GPU")
    if not record.get("resumed"):
        problems.append("no run started after the foreign process ended")
    if record["leftover_processes"]:
        problems.append(f"processes left running: {record['leftover_processes']}")
    return problems


# ------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Check], dict[str, Any]]
    limit_s: float
    needs_gpu: bool = False  # skipped on a dry run


def steps(args: argparse.Namespace) -> list[Step]:
    default, large = args.train_seconds, args.large_seconds
    changes = parse_changes(args.cpu_large if args.dry_run else args.large)
    return [
        Step("install", step_install, 600.0),
        Step("gpus", step_gpus, 60.0),
        Step("train", lambda c: step_train(c, "train", {}, default), default + 240.0),
        Step("profile", step_profile, 240.0),
        Step("train_large", lambda c: step_train(c, "train_large", changes, large), large + 240),
        Step("etiquette", step_etiquette, 150.0, needs_gpu=True),
        Step("daemon", step_daemon, args.daemon_seconds + 120.0),
    ]


def run_step(check: Check, step: Step, blocked: bool) -> dict[str, Any]:
    """One step's record: its status, seconds, figures, and the error if it failed."""
    if blocked:
        return {"status": BLOCKED}
    if check.args.only and step.name not in check.args.only:
        return {"status": NOT_ASKED}
    if step.needs_gpu and check.dry:
        return {"status": NO_GPU}
    if check.left() < MIN_STEP_S:
        return {"status": OUT_OF_TIME, "left_s": round(check.left(), 1)}
    print(f"gpu_check: {step.name} ...", flush=True)
    start = time.monotonic()
    try:
        record = {"status": OK, **step.run(check)}
    except StepFailed as exc:
        record = {"status": FAILED, "error": str(exc), **exc.details}
    except (OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
        record = {"status": FAILED, "error": f"{type(exc).__name__}: {exc}"}
    record["seconds"] = round(time.monotonic() - start, 2)
    print(f"gpu_check: {step.name} {record['status']} in {record['seconds']} s", flush=True)
    return record


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The short text summary: one line per step."""
    s = report["steps"]
    counts: dict[str, int] = {}
    for record in s.values():
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    mode = "dry run on CPU" if report["dry_run"] else "GPU"
    lines = [f"autoresearchd GPU check ({mode}), {report['started_at']}: {counts}"]
    for name, record in s.items():
        lines.append(f"{name}: {record['status']}" + describe(name, record))
    return lines


def describe(name: str, r: dict[str, Any]) -> str:
    """The figures worth a glance, for one step that ran."""
    if r["status"] == FAILED:
        return f" ({r['error'][:300]})"
    if r["status"] != OK:
        return ""
    if name == "install":
        return f": python {r['python']}, torch {r['torch']} (CUDA {r['torch_cuda']})"
    if name == "gpus":
        names = [f"{d['name']} {d['memory_gb']} GB {d['tier']}" for d in r["devices"]]
        return f": {names}, driver {r['driver_version']!r}, CUDA {r['cuda_version']!r}"
    if name.startswith("train"):
        return (
            f": {r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu_percent']:.1f}% of"
            f" {r['peak_tflops']:.0f} TFLOPS, peak VRAM {r['peak_vram_mb']:.0f} MB,"
            f" warm-up {r['warmup_seconds']:.1f} s (compile {r['compile_seconds']:.1f} s),"
            f" val_bpb {r['val_bpb']:.4f}, training {100 * r['training_share']:.1f}% of"
            f" {r['wall_seconds']:.1f} s"
        )
    if name == "profile":
        return ": " + ", ".join(f"{e['name'][:40]} {100 * e['share']:.0f}%" for e in r["top"][:5])
    if name == "daemon":
        return (
            f": {r['runs_started']} runs {r['outcomes']}, {r['keeps']} keeps, busy"
            f" {r['busy_fraction']}, training share {r['training_share']},"
            f" GPU processes after {r['gpu_processes_after']}"
        )
    return f": waited for pid {r['foreign_pid']}, resumed {r.get('resume_seconds')} s after"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--dry-run", action="store_true", help="run on CPU what needs no GPU")
    add("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    add("--work", type=Path, help="scratch folder (default: a fresh temporary one)")
    add("--venv", type=Path, help="where to build the venv (default: inside --work)")
    add("--python", help="the interpreter whose torch to reuse (default: this one)")
    add("--wheels", help="install missing packages from this folder of wheels only")
    add("--train-py", type=Path, default=ROOT / "train.py")
    add("--max-seconds", type=float, help="deadline for everything (default 480; 240 dry)")
    add("--train-seconds", type=float, help="training budget at the default shape (60; 2 dry)")
    add("--large-seconds", type=float, help="training budget at the larger shape (30; 2 dry)")
    add("--large", default="DEPTH=12,ASPECT_RATIO=128", help="the larger GPU shape")
    add("--cpu-large", default="CPU_DEPTH=3", help="the larger shape, dry run")
    add("--daemon-seconds", type=float, help="how long the daemon runs (180; 15 dry)")
    add("--daemon-budget", type=float, help="the daemon's time budget per run (30; 1 dry)")
    add("--profile-steps", type=int, help="optimizer steps profiled (10; 3 dry)")
    add("--only", help=f"comma-separated steps to run, install always ({', '.join(STEP_NAMES)})")
    args = parser.parse_args(argv)
    only = [name.strip() for name in (args.only or "").split(",") if name.strip()]
    unknown = sorted(set(only) - set(STEP_NAMES))
    if unknown:
        parser.error(f"--only: unknown steps {unknown} (known: {', '.join(STEP_NAMES)})")
    args.only = {"install", *only} if only else None
    gpu_defaults = (480.0, 60.0, 30.0, 180.0, 30.0, 10)
    dry_defaults = (240.0, 2.0, 2.0, 15.0, 1.0, 3)
    names = (
        "max_seconds",
        "train_seconds",
        "large_seconds",
        "daemon_seconds",
        "daemon_budget",
        "profile_steps",
    )
    for key, default in zip(names, dry_defaults if args.dry_run else gpu_defaults, strict=True):
        if getattr(args, key) is None:
            setattr(args, key, default)
    option = "--cpu-large" if args.dry_run else "--large"
    try:
        parse_changes(args.cpu_large if args.dry_run else args.large)
    except ValueError as exc:
        parser.error(f"{option}: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="autoresearchd-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    check = Check(args, args.out, work.resolve(), time.monotonic() + args.max_seconds)
    report: dict[str, Any] = {
        "schema": 1,
        "dry_run": bool(args.dry_run),
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": os.uname().nodename,
        "steps": {},
    }
    blocked = False
    for step in steps(args):
        record = run_step(check, step, blocked)
        report["steps"][step.name] = record
        blocked = blocked or (step.name == "install" and record["status"] != OK)
        write_report(args.out, report)
    report["finished_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    write_report(args.out, report)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print((args.out / "summary.txt").read_text(encoding="utf-8"), end="")
    return 1 if any(r["status"] == FAILED for r in report["steps"].values()) else 0


def write_report(out: Path, report: dict[str, Any]) -> None:
    """After every step, so a check killed at its limit still leaves what it found."""
    report["summary"] = summary_lines(report)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "summary.txt").write_text("\n".join(report["summary"]) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
