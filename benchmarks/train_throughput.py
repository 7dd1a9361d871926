"""Training throughput of train.py's model on CPU against a plain baseline, as a ratio.

Both models have the same architecture and sizes (train.py's CPU configuration) and see
the same batches. The baseline is what one writes without care for speed: separate
query/key/value projections, attention as explicit matmuls with a mask and a softmax,
hand-written RMSNorm, and a per-parameter (for-loop) AdamW. The two are measured in
alternating short rounds in one process, so machine noise hits both alike; each model's
best round counts (interference only ever slows a round down). The last line printed is
the ratio (higher is better for train.py).

With ``--share``, it measures instead the training share of the real train.py on CPU under
the real daemon (``benchmarks/training_share.py``'s method): its training seconds over the
device's wall time for runs 2..n, with standbys (train.py as it is) against a copy whose
``wait_for_go()`` call is removed (every run started from scratch, as before standbys).
Both copies have the model's and the batch's sizes pinned (marked ``# search:
fixed``), so every run does the same work: a candidate twice the size also evaluates for
twice as long, which would measure the search's draw rather than the daemon and train.py.
The last line is then ``share_ratio``; the goal is a share of at least 92% at 20 s.

    python benchmarks/train_throughput.py [--seconds 1] [--rounds 8] [--threads N]
With ``--compile-cache``, it times ``torch.compile`` of train.py's model (the first
training step, in a fresh process each time) against a cache directory as the daemon sets
it (``autoresearchd.compile_cache``): once cold, then twice warm. The last line is the ratio
cold / warm.

    python benchmarks/train_throughput.py --share [--budget 20] [--runs 4]
    python benchmarks/train_throughput.py --compile-cache
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 256
SEQ_LEN = 256


def load_train_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    return module


class PlainBlock(nn.Module):
    """The same block as train.py's, written the straightforward way."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(width, width, bias=False) for _ in range(3))
        self.proj = nn.Linear(width, width, bias=False)
        self.up = nn.Linear(width, mlp_ratio * width, bias=False)
        self.down = nn.Linear(mlp_ratio * width, width, bias=False)

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        split = [f(x).view(b, t, self.heads, c // self.heads) for f in (self.q, self.k, self.v)]
        q, k = (plain_rotary(plain_norm(z), cos, sin).transpose(1, 2) for z in split[:2])
        v = split[2].transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        weights = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, c))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(plain_norm(x), cos, sin)
        return x + self.down(torch.relu(self.up(plain_norm(x))) ** 2)


class PlainGPT(nn.Module):
    def __init__(self, depth: int, width: int, heads: int, mlp_ratio: int, cap: float) -> None:
        super().__init__()
        self.cap = cap
        self.embed = nn.Embedding(VOCAB, width)
        self.blocks = nn.ModuleList(PlainBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.head = nn.Linear(width, VOCAB, bias=False)
        half = width // heads // 2
        inv_freq = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half))
        angles = torch.outer(torch.arange(SEQ_LEN, dtype=torch.float32), inv_freq)
        self.cos, self.sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = plain_norm(self.embed(idx))
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        return self.cap * torch.tanh(self.head(plain_norm(x)) / self.cap)


def plain_norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def plain_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def tokens_per_second(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor], seconds: float
) -> float:
    """Train on the batches in a loop for ``seconds``; tokens per second of wall time."""
    tokens, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        batch = batches[i % len(batches)]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens, i = tokens + batch[:, 1:].numel(), i + 1
    return tokens / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per model per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--share", action="store_true", help="training share under the daemon")
    parser.add_argument("--budget", type=float, default=20.0, help="--share: seconds per run")
    parser.add_argument("--runs", type=int, default=4, help="--share: runs per variant")
    parser.add_argument("--today-first", action="store_true", help="--share: baseline first")
    parser.add_argument("--compile-cache", action="store_true", help="cold against warm compile")
    args = parser.parse_args()
    if args.share:
        return training_share(args.budget, args.runs, today_first=args.today_first)
    if args.compile_cache:
        return compile_seconds()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = load_train_py()
    shape = train.choose_shape(torch.device("cpu"), SEQ_LEN)
    torch.manual_seed(0)
    ours = train.GPT(shape)
    plain = PlainGPT(shape.depth, shape.width, shape.heads, train.MLP_RATIO, train.LOGIT_SOFTCAP)
    contenders = {
        "train.py": (ours, train.make_optimizer(ours, compiled=False)),
        "baseline": (plain, torch.optim.AdamW(plain.parameters(), lr=1e-3, foreach=False)),
    }
    batches = [torch.randint(0, VOCAB, (shape.micro_batch, SEQ_LEN + 1)) for _ in range(8)]
    print(
        f"cpu threads {torch.get_num_threads()} | depth {shape.depth} | width {shape.width}"
        f" | batch {shape.micro_batch}x{SEQ_LEN} tokens"
    )
    for model, optimizer in contenders.values():
        tokens_per_second(model, optimizer, batches, 0.5)  # warm caches and the allocator
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, (model, optimizer) in contenders.items():
            rates[name].append(tokens_per_second(model, optimizer, batches, args.seconds))
    best = {name: max(values) for name, values in rates.items()}
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<9} best {best[name]:>8,.0f} tokens/s | median {median:>8,.0f} tokens/s")
    print(f"ratio train.py/baseline: {best['train.py'] / best['baseline']:.2f}")
    return 0


COMPILE_STEP = """
import importlib.util, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
import torch.nn.functional as F
spec = importlib.util.spec_from_file_location("train", sys.argv[1])
train = importlib.util.module_from_spec(spec)
sys.modules["train"] = train
spec.loader.exec_module(train)
shape = train.choose_shape(torch.device("cpu"), 256)
torch.manual_seed(0)
model = torch.compile(train.GPT(shape), dynamic=False)
batch = torch.randint(0, 256, (shape.micro_batch, 257))
start = time.perf_counter()
logits = model(batch[:, :-1])
F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1)).backward()
print(time.perf_counter() - start)
"""


def compile_seconds() -> int:
    """The first compiled step of train.py's model: cold, then warm from the cache."""
    import subprocess
    import tempfile

    from autoresearchd.compile_cache import cache_env

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, **cache_env(Path(cache))}
        command = [sys.executable, "-c", COMPILE_STEP, str(ROOT / "train.py")]
        seconds = []
        for _ in range(3):
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            seconds.append(float(done.stdout.split()[-1]))
    cold, warm = seconds[0], min(seconds[1:])
    print(f"first compiled step on CPU: cold {cold:.1f} s, warm {warm:.1f} s (best of 2)")
    print(f"ratio cold/warm: {cold / warm:.2f}")
    return 0


def load_share_benchmark() -> ModuleType:
    path = Path(__file__).resolve().parent / "training_share.py"
    spec = importlib.util.spec_from_file_location("training_share", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["training_share"] = module
    spec.loader.exec_module(module)
    return module


#: The sizes of the model and the batch: what a run's work, training and evaluation, scales with.
SHAPES = (
    "DEPTH", "ASPECT_RATIO", "HEAD_DIM", "MLP_RATIO", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE",
    "CPU_DEPTH", "CPU_WIDTH", "CPU_BATCH_SIZE",
)  # fmt: skip


def pin_shapes(source: str) -> str:
    """``source`` with :data:`SHAPES` marked ``fixed``: only the optimiser's settings are
    searched, so every run trains and evaluates the same model. (A parameter without a mark
    is not fixed: its space is inferred from its value.)"""
    lines = source.splitlines(keepends=True)
    pinned = 0
    for i, line in enumerate(lines):
        name, _, rest = line.partition(" = ")
        if name in SHAPES and "  # search:" in rest:
            lines[i] = f"{name} = {rest.split('  # search:')[0]}  # search: fixed\n"
            pinned += 1
    assert pinned == len(SHAPES), "train.py's shape parameters moved: update SHAPES"
    return "".join(lines)


def training_share(budget_s: float, runs: int, *, today_first: bool = False) -> int:
    """The real train.py's training share on CPU, with standbys against without."""
    import tempfile

    from autoresearchd.logs import configure_logging
    from autoresearchd.tracks.prepare import prepare_track

    bench = load_share_benchmark()
    configure_logging("console", "warning", sys.stderr)
    source = pin_shapes((ROOT / "train.py").read_text(encoding="utf-8"))
    call = "    waited = wait_for_go()\n"
    assert call in source, "train.py no longer waits for go where this benchmark expects"
    variants = {
        "standby": source,
        # Without the call the daemon never starts a run early (the import alone is no call).
        "today": source.replace(call, "    waited = 0.0\n"),
    }
    if today_first:  # the machine's load drifts: run the variants both ways round
        variants = dict(reversed(variants.items()))
    print(f"real train.py on CPU: budget {budget_s:g} s, {runs} runs per variant")
    shares = {}
    with tempfile.TemporaryDirectory() as data:
        prepare_track("synthetic", Path(data))
        for name, script in variants.items():
            share, results = bench.measure(script, budget_s, runs, gpu=False, data_dir=data)
            bench.report(name, share, results)
            rates = [r.metrics.get("tokens_per_s", 0.0) for r in results[1:]]
            # A standby that took cores from the run beside it would show here.
            print(f"         tokens/s min / median / max: {bench.spread(rates, digits=0)}")
            shares[name] = share
    print(f"share_ratio = {shares['standby'].fraction / shares['today'].fraction:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
