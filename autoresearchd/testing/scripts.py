"""Scripted stand-ins for ``train.py``, for tests and benchmarks.

- Source-text factories each return a valid train.py that follows the environment-in,
  summary-out contract and carries a small annotated hyperparameter block (both in
  docs/architecture.md), so the runner can run it and the mutator can mutate it. They
  misbehave on demand: crash, hang (ignoring SIGTERM, with a grandchild), print NaN,
  flood the output, or report through the JSON result file.
- Plan-driven and timing stand-ins let daemon tests script each run's outcome and let
  benchmarks read each run's start and end times.
"""

from __future__ import annotations

import inspect
import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import Any

# ---- Scripted train.py stand-ins (contract 1) ---------------------------------------------------

#: Seed-to-seed spread of :func:`stand_in_val_bpb`, like real val_bpb noise
#: (docs/architecture.md, contract 3).
DEFAULT_NOISE = 0.003
#: File the hang script writes in its run directory: ``{"pid": ..., "grandchild": ...}``.
PIDS_FILE = "pids.json"
#: File the env-dump script writes in its run directory.
ENV_FILE = "env.json"


def stand_in_val_bpb(lr: float, width: int, batch_size: int, seed: int, noise: float) -> float:
    """The val_bpb the stand-in scripts report: a smooth bowl plus seed noise.

    ``2 + 0.5·log10(lr/0.02)² + 0.1·log2(width/128)² + 0.02·log2(batch_size/64)² + N(0, noise)``,
    the normal draw seeded by ``seed``. The minimum, 2.0 before noise (above the synthetic
    track's floor, as an honest score must be), is at lr = 0.02, width = 128 and
    batch_size = 2**6; the scripts start away from it, so mutations matter.
    """
    bowl = (
        0.5 * math.log10(lr / 0.02) ** 2
        + 0.1 * math.log2(width / 128) ** 2
        + 0.02 * math.log2(batch_size / 64) ** 2
    )
    return 2.0 + bowl + random.Random(seed).gauss(0.0, noise)


_HEADER = Template('''\
"""Stand-in train.py ($kind): no torch; contract 1 environment in, summary out."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

# Hyperparameters
LR = $lr  # search: log 0.001..0.1
WIDTH = $width  # search: int 16..256
BATCH_SIZE = 2**$batch_pow  # search: pow2 3..9


def seed():
    return int(os.environ.get("AUTORESEARCH_SEED", "0"))


def print_summary(val_bpb, seconds, steps):
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {seconds:.1f}")
    print(f"total_seconds:    {seconds:.1f}")
    print(f"num_steps:        {steps}")
    print(f"num_params_M:     {WIDTH * WIDTH * 12 / 1e6:.3f}")


''')

_FOOTER = """

if __name__ == "__main__":
    main()
"""

_OK = Template(r"""
def main():
    sleep_s = $sleep_s
    steps = 5
    start = time.time()
    for step in range(1, steps + 1):
        time.sleep(sleep_s / steps)
        print(f"\rstep {step}/{steps} loss {3.0 / step:.4f}", end="", flush=True)
    print()
    val_bpb = stand_in_val_bpb(LR, WIDTH, BATCH_SIZE, seed(), $noise)
    print_summary(val_bpb, time.time() - start, steps)
""")

_CURVE = Template(r"""
def main():
    steps = $steps
    for step in range(1, steps + 1):
        time.sleep($sleep_s / steps)
        line = json.dumps({"fraction": step / steps, "loss": $loss + 1 / step, "step": step})
        print(f"AUTORESEARCH_PROGRESS {line}", flush=True)
    print_summary(stand_in_val_bpb(LR, WIDTH, BATCH_SIZE, seed(), 0.0), $sleep_s, steps)
""")

_CRASH = """
def main():
    print("step 1/5 loss 3.0000")
    steps_done = 0
    print("loss per step", 30 / steps_done)
"""

_HANG = Template("""
GRANDCHILD = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "open('grandchild.ready', 'w').close(); time.sleep(600)"
)


def main():
    ignore_sigterm = $ignore_sigterm
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c", GRANDCHILD])
    deadline = time.time() + 30
    while not os.path.exists("grandchild.ready") and time.time() < deadline:
        time.sleep(0.01)
    with open("$pids.tmp", "w") as file:
        json.dump({"pid": os.getpid(), "grandchild": grandchild.pid}, file)
    os.replace("$pids.tmp", "$pids")
    print("hanging", flush=True)
    while True:
        time.sleep(3600)
""")

_NAN = r"""
def main():
    print("\rstep 1/1 loss nan", flush=True)
    print_summary(float("nan"), 0.1, 1)
"""

_FLOOD = Template("""
def main():
    total = int($megabytes * 1024 * 1024)
    block = (b"flood " + b"x" * 121 + b"\\n") * 8192
    out = sys.stdout.buffer
    written = 0
    while written < total:
        piece = block[: total - written]
        out.write(piece)
        written += len(piece)
    out.flush()
    print_summary(stand_in_val_bpb(LR, WIDTH, BATCH_SIZE, seed(), 0.0), 0.1, 1)
""")

_JSON_RESULT = Template("""
def main():
    path = os.environ.get("AUTORESEARCH_RESULT_FILE")
    if path:
        with open(path, "w") as file:
            json.dump({"val_bpb": $json_bpb, "num_steps": 7, "tokens_per_s": 1234.5}, file)
    print_summary($printed_bpb, 0.1, 3)
""")

_KARPATHY = r"""
def main():
    for step in range(951, 954):
        print(
            f"\rstep {step:05d} (99.9%) | loss: 2.914 | lrm: 0.02 | dt: 315ms | "
            f"tok/sec: 1,664,000 | mfu: 39.8% | epoch: 1 | remaining: 0s    ",
            end="",
            flush=True,
        )
    print()
    print("---")
    print("val_bpb:          0.997900")
    print("training_seconds: 300.1")
    print("total_seconds:    325.9")
    print("peak_vram_mb:     45060.2")
    print("mfu_percent:      39.80")
    print("total_tokens_M:   499.6")
    print("num_steps:        953")
    print("num_params_M:     50.3")
    print("depth:            8")
"""

_ENV_DUMP = Template("""
def main():
    info = {
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "stdin": sys.stdin.read() if sys.stdin else None,
    }
    with open("$env_file", "w") as file:
        json.dump(info, file)
    print_summary(stand_in_val_bpb(LR, WIDTH, BATCH_SIZE, seed(), 0.0), 0.1, 1)
""")


def _script(kind: str, body: str, *, lr: float = 0.01, width: int = 64, batch_pow: int = 5) -> str:
    header = _HEADER.substitute(kind=kind, lr=repr(lr), width=repr(width), batch_pow=batch_pow)
    return header + inspect.getsource(stand_in_val_bpb) + "\n" + body + _FOOTER


def ok_script(
    sleep_s: float = 0.0,
    *,
    lr: float = 0.01,
    width: int = 64,
    batch_pow: int = 5,
    noise: float = DEFAULT_NOISE,
) -> str:
    """Sleeps ``sleep_s``, draws ``\\r`` progress, prints :func:`stand_in_val_bpb` as val_bpb."""
    body = _OK.substitute(sleep_s=repr(float(sleep_s)), noise=repr(float(noise)))
    return _script("ok", body, lr=lr, width=width, batch_pow=batch_pow)


def curve_script(loss: float, *, steps: int = 20, sleep_s: float = 0.0) -> str:
    """Reports ``steps`` JSON progress lines (loss ``loss + 1 / step``), ``sleep_s`` apart in
    all, then a summary with :func:`stand_in_val_bpb`: a run with a learning curve."""
    body = _CURVE.substitute(loss=repr(float(loss)), steps=steps, sleep_s=repr(float(sleep_s)))
    return _script("curve", body)


def crash_script() -> str:
    """Prints a line, then dies with ``ZeroDivisionError: division by zero`` (exit code 1)."""
    return _script("crash", _CRASH)


def hang_script(ignore_sigterm: bool = True) -> str:
    """Never finishes: spawns a grandchild that ignores SIGTERM, writes :data:`PIDS_FILE`, sleeps.

    With ``ignore_sigterm`` the script itself ignores SIGTERM too, so only SIGKILL ends it;
    without, SIGTERM ends the script and the grandchild is left for the group sweep.
    """
    body = _HANG.substitute(ignore_sigterm=repr(ignore_sigterm), pids=PIDS_FILE)
    return _script("hang", body)


def nan_script() -> str:
    """Exits cleanly with ``val_bpb: nan`` in its summary."""
    return _script("nan", _NAN)


def flood_script(megabytes: float) -> str:
    """Prints ``megabytes`` MiB of filler lines, then a valid summary (noise-free val_bpb)."""
    return _script("flood", _FLOOD.substitute(megabytes=repr(float(megabytes))))


def json_result_script(json_bpb: float = 1.25, printed_bpb: float = 2.0) -> str:
    """Writes ``AUTORESEARCH_RESULT_FILE`` with ``json_bpb`` but prints ``printed_bpb``."""
    body = _JSON_RESULT.substitute(json_bpb=repr(json_bpb), printed_bpb=repr(printed_bpb))
    return _script("json-result", body)


def karpathy_output_script() -> str:
    """Prints progress and the exact summary block karpathy/autoresearch's train.py prints."""
    return _script("karpathy-output", _KARPATHY)


def env_dump_script() -> str:
    """Writes its environment, cwd, pid, process group and stdin to :data:`ENV_FILE`."""
    return _script("env-dump", _ENV_DUMP.substitute(env_file=ENV_FILE))


def write_workspace(
    path: Path, source: str, *, files: Mapping[str, str | bytes] | None = None
) -> Path:
    """Make ``path`` a workspace: ``source`` as train.py, plus ``files`` (relative name → data)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "train.py").write_text(source, encoding="utf-8")
    for name, data in (files or {}).items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data, encoding="utf-8")
    return path


# -- Plan-driven and timing stand-ins for daemon tests and benchmarks -----------------

PLAN_ENV = "AUTORESEARCH_PLAN_DIR"

_PLAN_SCRIPT = '''"""Stand-in train.py: each run takes the next action from a plan (tests only).

The plan is a JSON list in $AUTORESEARCH_PLAN_DIR/plan.json; run n claims step n by
creating step-<n> exclusively and records its pids there. Actions: "ok", "crash",
"hang" (ignores SIGTERM, with a grandchild), "nan", "val=<x>" (report exactly x).
Past the plan's end: "ok".
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

LR = 0.01  # search: log 0.001..0.1
WIDTH = 64  # search: int 16..256
sleep_s = {sleep_s!r}  # lower case: a setting of the stand-in, not a hyperparameter


def claim_step(plan_dir):
    n = 0
    while True:
        try:
            path = os.path.join(plan_dir, f"step-{{n}}")
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            n += 1
            continue
        os.close(fd)
        return n


def record(plan_dir, n, **fields):
    with open(os.path.join(plan_dir, f"step-{{n}}"), "a") as handle:
        handle.write(json.dumps(fields) + "\\n")


plan_dir = os.environ["{env}"]
with open(os.path.join(plan_dir, "plan.json")) as handle:
    plan = json.load(handle)
step = claim_step(plan_dir)
action = plan[step] if step < len(plan) else "ok"
record(plan_dir, step, action=action, pid=os.getpid(), seed=os.environ.get("AUTORESEARCH_SEED"))
if action == "crash":
    raise RuntimeError("scripted crash")
if action == "hang":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    record(plan_dir, step, grandchild=child.pid)
    time.sleep(3600)
for i in range(5):
    print(f"\\rstep {{i}}", end="", flush=True)
    time.sleep(sleep_s / 5)
print()
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
noise = ((seed * 2654435761) % 1000 / 1000 - 0.5) * 0.006
val = 3.0 + 0.1 * (math.log10(LR) + 2) ** 2 + 0.05 * ((WIDTH - 128) / 128) ** 2 + noise
print("---")
if action.startswith("val="):
    val = float(action[4:])
print(f"val_bpb: {{'nan' if action == 'nan' else round(val, 6)}}")
print(f"training_seconds: {{sleep_s}}")
print("num_steps: 5")
'''


def plan_script(sleep_s: float = 0.5) -> str:
    """A stand-in train.py whose runs follow a plan file (see :func:`write_plan`).

    Its val_bpb is ``3.0 + 0.1·(log10 LR + 2)² + 0.05·((WIDTH-128)/128)²`` plus seed
    noise of ±0.003, so the optimum is LR = 0.01, WIDTH = 128.
    """
    return _PLAN_SCRIPT.format(sleep_s=sleep_s, env=PLAN_ENV)


def write_plan(plan_dir: Path, actions: list[str]) -> None:
    plan_dir.mkdir(parents=True, exist_ok=True)
    (plan_dir / "plan.json").write_text(json.dumps(actions))


def plan_steps(plan_dir: Path) -> list[list[dict[str, Any]]]:
    """What each planned run recorded, in step order."""
    steps = sorted(plan_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return [[json.loads(line) for line in p.read_text().splitlines()] for p in steps]


_TIMING_SCRIPT = '''"""Stand-in train.py for timing: logs its own start and end, sleeps, reports."""
import os
import time

START = time.time()
LR = 0.01  # search: log 0.001..0.1
WIDTH = 64  # search: int 16..256
sleep_s = {sleep_s!r}  # lower case: a setting of the stand-in, not a hyperparameter
log = os.path.join(os.environ["{env}"], (os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu") + ".log")
time.sleep(sleep_s)
END = time.time()
with open(log, "a") as handle:
    handle.write(f"{{START}} {{END}}\\n")
print("---")
print(f"val_bpb: {{3.0 + abs(LR - 0.02) + abs(WIDTH - 100) / 1000:.6f}}")
'''


def timing_script(sleep_s: float) -> str:
    """A stand-in that appends ``start end`` wall-clock times to ``<plan dir>/<device>.log``."""
    return _TIMING_SCRIPT.format(sleep_s=sleep_s, env=PLAN_ENV)
