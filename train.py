"""Reference experiment: train a small GPT on a track for a fixed time, then report val_bpb.

This is the script the swarm improves. The daemon runs it with the environment of
contract 1 in docs/architecture.md (device, time budget, seed, track, data dir, result
file) and reads the ``---`` summary it prints last, in karpathy/autoresearch's format. The
mutator edits only the literals in the hyperparameter block below (contract 2). Everything
that must stay comparable between runs lives in the fixed harness: the tokenizer, tracks
and data preparation in ``autoresearchd.tracks``, the data loading and evaluation (torch)
in ``autoresearchd.harness``.

On CUDA the model trains in bf16 autocast under ``torch.compile``; on CPU it trains in
float32, eagerly, with the small ``CPU_*`` configuration. Compilation and warm-up steps
run before the clock starts (the weights are reset afterwards) and are reported as
``warmup_seconds``, the first of them (where compilation happens) as ``compile_seconds``.
The summary also gives ``tokens_per_s`` and ``mfu_percent`` against the device's dense bf16
peak (``peak_tflops``, 0 where unknown). A loss that becomes NaN or explodes stops the run
at once with exit 1.

The daemon may start this script before the device is free: once its data and model are
on the device it calls ``wait_for_go()`` and waits there, and compiling and training begin
at the go signal (``total_seconds`` leaves the wait out). On CPU, where nothing compiles
and no accelerator is held, the warm-up step runs before the wait too: the same steps in
the same order, so the run trains exactly as it would have.

Start-up and teardown are kept short, since they come out of every run's wall time: the
eager path uses its own AdamW, because ``torch.optim`` imports ``torch._dynamo`` (about a
second) on first use even when nothing compiles, and the process ends with ``os._exit``
once the summary and the result file are flushed, skipping the interpreter's teardown.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before torch's import, which total_seconds includes

import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

# torch warns on import when numpy is absent; nothing here uses numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from autoresearchd.errors import DataError  # noqa: E402
from autoresearchd.harness.data import BatchSampler, TrackData, load_track  # noqa: E402
from autoresearchd.harness.evaluation import evaluate_bpb  # noqa: E402
from autoresearchd.harness.go import wait_for_go  # noqa: E402
from autoresearchd.tracks.definitions import DEFAULT_DATA_DIR, get_track  # noqa: E402
from autoresearchd.tracks.prepare import prepare_track  # noqa: E402
from autoresearchd.tracks.tokenizer import VOCAB_SIZE  # noqa: E402

# =====================================================================================
# Hyperparameters: the mutator edits these literals alone (docs/architecture.md, contract 2).
# `device=cuda` / `device=cpu` marks a parameter read on that device only (see choose_shape).
# =====================================================================================
# Model on CUDA: width = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM.
DEPTH = 8  # search: int 2..16 device=cuda
ASPECT_RATIO = 64  # search: int 32..128 device=cuda
HEAD_DIM = 2**6  # search: pow2 5..7
MLP_RATIO = 4  # search: int 2..6
LOGIT_SOFTCAP = 15.0  # search: log 5..50
# Batches, in tokens: one optimizer step sees TOTAL_BATCH_SIZE tokens, accumulated in
# micro-batches of DEVICE_BATCH_SIZE tokens (lower it when memory is short).
TOTAL_BATCH_SIZE = 2**17  # search: pow2 14..20 device=cuda
DEVICE_BATCH_SIZE = 2**15  # search: pow2 12..17 device=cuda
# AdamW, one learning rate per kind of parameter.
MATRIX_LR = 0.004  # search: log 0.0005..0.03
EMBEDDING_LR = 0.02  # search: log 0.002..0.2
UNEMBEDDING_LR = 0.004  # search: log 0.0005..0.03
WEIGHT_DECAY = 0.1  # search: log 0.001..0.5
ADAM_BETA1 = 0.9  # search: log 0.8..0.95
ADAM_BETA2 = 0.95  # search: log 0.9..0.999
GRAD_CLIP = 1.0  # search: log 0.1..10
# Schedule over the time budget: linear warm-up, constant, linear warm-down.
WARMUP_FRAC = 0.02  # search: log 0.005..0.2
WARMDOWN_FRAC = 0.4  # search: log 0.05..0.9
FINAL_LR_FRAC = 0.05  # search: log 0.01..0.5
# CPU (float32, eager): small enough that seconds of training already lower val_bpb.
# Width is CPU_WIDTH exactly; the batch is in tokens, with no accumulation.
CPU_DEPTH = 2  # search: int 1..6 device=cpu
CPU_WIDTH = 2**7  # search: pow2 6..9 device=cpu
CPU_BATCH_SIZE = 2**12  # search: pow2 10..15 device=cpu
# =====================================================================================

# Dense bf16 tensor-core peaks (FLOP/s) by device name, from NVIDIA's datasheets (their
# figures with sparsity, halved). The first key found in the name wins, so specific names
# come before their families. Unknown devices report mfu_percent 0.
GPU_PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989.4e12,
    "H200 NVL": 835e12,
    "GH200": 989.4e12,
    "H200": 989.4e12,
    "H800": 989.4e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362.05e12,
    "L40": 181.05e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165.2e12,
    "RTX 3090 Ti": 80e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


class BadEnvironment(Exception):
    """An AUTORESEARCH_* variable holds something this script cannot use."""


@dataclass(frozen=True)
class Settings:
    """What the environment asks for (docs/architecture.md, contract 1)."""

    device: torch.device
    budget_s: float | None  # None: the track's default budget
    seed: int
    track: str
    data_dir: Path
    result_file: Path | None


@dataclass(frozen=True)
class Shape:
    """The model and batch sizes for this device."""

    depth: int
    width: int
    heads: int
    seq_len: int
    micro_batch: int  # sequences per forward pass
    accum_steps: int  # forward passes per optimizer step


def read_settings(env: dict[str, str]) -> Settings:
    """Parse the environment; raise BadEnvironment naming the variable on bad input."""
    device = env.get("AUTORESEARCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cuda", "cpu"):
        raise BadEnvironment(f"AUTORESEARCH_DEVICE: expected cuda or cpu, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadEnvironment("AUTORESEARCH_DEVICE: cuda requested but no CUDA device is visible")
    budget = _number(env, "AUTORESEARCH_TIME_BUDGET", float, None)
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise BadEnvironment(f"AUTORESEARCH_TIME_BUDGET: expected seconds > 0, got {budget}")
    result = env.get("AUTORESEARCH_RESULT_FILE")
    return Settings(
        device=torch.device(device),
        budget_s=budget,
        seed=int(_number(env, "AUTORESEARCH_SEED", int, 0) or 0),
        track=env.get("AUTORESEARCH_TRACK") or "synthetic",
        data_dir=Path(env.get("AUTORESEARCH_DATA_DIR") or DEFAULT_DATA_DIR).expanduser(),
        result_file=Path(result) if result else None,
    )


def _number(
    env: dict[str, str], name: str, kind: Callable[[str], float], default: float | None
) -> float | None:
    text = env.get(name)
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise BadEnvironment(f"{name}: expected a number, got {text!r}") from None


def choose_shape(device: torch.device, seq_len: int) -> Shape:
    """Model and batch sizes: the CUDA block on a GPU, the CPU block on a CPU."""
    if device.type == "cpu":
        width, depth, total, micro = CPU_WIDTH, CPU_DEPTH, CPU_BATCH_SIZE, CPU_BATCH_SIZE
    else:
        width = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
        depth, total, micro = DEPTH, TOTAL_BATCH_SIZE, min(DEVICE_BATCH_SIZE, TOTAL_BATCH_SIZE)
    micro_batch = max(1, micro // seq_len)
    return Shape(
        depth=depth,
        width=width,
        heads=max(1, width // HEAD_DIM),
        seq_len=seq_len,
        micro_batch=micro_batch,
        accum_steps=max(1, total // (micro_batch * seq_len)),
    )


# ----------------------------------------------------------------------------- model


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, shaped to broadcast over (batch, time, head, dim/2)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).unbind(dim=2)
        # Normalising queries and keys keeps attention logits bounded at high learning rates.
        q, k = apply_rotary(rms_norm(q), cos, sin), apply_rotary(rms_norm(k), cos, sin)
        q, k = q.to(v.dtype), k.to(v.dtype)  # under autocast the norms may return float32
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, ratio * width, bias=False)
        self.down = nn.Linear(ratio * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = Attention(width, heads)
        self.mlp = MLP(width, MLP_RATIO)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    """Byte-level GPT: embedding, pre-norm blocks with rotary attention, untied head."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, shape.width)
        self.blocks = nn.ModuleList(Block(shape.width, shape.heads) for _ in range(shape.depth))
        self.head = nn.Linear(shape.width, VOCAB_SIZE, bias=False)
        cos, sin = rotary_tables(shape.seq_len, shape.width // shape.heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit embeddings, 1/sqrt(fan_in) matrices, zeroed residual outputs, a tiny head."""
        nn.init.normal_(self.embed.weight, std=1.0)
        for block in self.blocks:
            for linear in (block.attn.qkv, block.mlp.up):
                nn.init.normal_(linear.weight, std=linear.in_features**-0.5)
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp.down.weight)
        nn.init.normal_(self.head.weight, std=1e-3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.size(1)
        cos, sin = self.cos[:, :t], self.sin[:, :t]
        x = rms_norm(self.embed(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(rms_norm(x)).float()
        return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per matrix weight plus attention (PaLM's estimate)."""
        matrices = sum(p.numel() for p in self.parameters()) - self.embed.weight.numel()
        depth, width, seq_len = len(self.blocks), self.head.in_features, self.cos.size(1)
        return 6.0 * matrices + 12.0 * depth * width * seq_len


class ForeachAdamW:
    """AdamW over parameter groups (``params``, ``lr``, ``weight_decay``), step for step
    what ``torch.optim.AdamW(foreach=True)`` computes, without importing ``torch._dynamo``."""

    def __init__(self, groups: list[dict], betas: tuple[float, float], eps: float) -> None:
        self.param_groups = groups
        self.betas, self.eps = betas, eps
        self.steps = 0
        self.moments = [
            ([torch.zeros_like(p) for p in g["params"]], [torch.zeros_like(p) for p in g["params"]])
            for g in groups
        ]

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        correction1, correction2 = 1 - beta1**self.steps, 1 - beta2**self.steps
        for group, moments in zip(self.param_groups, self.moments, strict=True):
            # Like torch's, a parameter without a gradient is left alone, decay included.
            live = [i for i, p in enumerate(group["params"]) if p.grad is not None]
            if not live:
                continue
            params = [group["params"][i] for i in live]
            grads = [p.grad for p in params]
            exp_avgs, exp_avg_sqs = ([m[i] for i in live] for m in moments)
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, math.sqrt(correction2))
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(params, exp_avgs, denom, -group["lr"] / correction1)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                param.grad = None


def make_optimizer(model: GPT, *, compiled: bool) -> torch.optim.AdamW | ForeachAdamW:
    """One learning rate per kind of parameter; torch's fused AdamW where we compile anyway."""
    matrices = [p for p in model.blocks.parameters()]
    groups: list[dict] = [
        {"params": [model.embed.weight], "lr": EMBEDDING_LR, "weight_decay": 0.0},
        {"params": [model.head.weight], "lr": UNEMBEDDING_LR, "weight_decay": 0.0},
        {"params": matrices, "lr": MATRIX_LR, "weight_decay": WEIGHT_DECAY},
    ]
    for group in groups:
        group["base_lr"] = group["lr"]
    betas = (ADAM_BETA1, ADAM_BETA2)
    if not compiled:
        return ForeachAdamW(groups, betas=betas, eps=1e-10)
    return torch.optim.AdamW(groups, betas=betas, eps=1e-10, fused=True)


def lr_multiplier(progress: float) -> float:
    """Warm up, hold, then decay linearly to FINAL_LR_FRAC, as a fraction of the budget."""
    if progress < WARMUP_FRAC:
        return (progress + 1e-3) / (WARMUP_FRAC + 1e-3)
    if progress > 1.0 - WARMDOWN_FRAC:
        remaining = max(0.0, 1.0 - progress) / WARMDOWN_FRAC
        return remaining + (1.0 - remaining) * FINAL_LR_FRAC
    return 1.0


# -------------------------------------------------------------------------- training


class Diverged(Exception):
    """The training loss became NaN, infinite or exploded."""


class Trainer:
    """One optimizer step at a time: micro-batches, clipping, schedule, divergence check."""

    def __init__(self, model: nn.Module, raw: GPT, sampler: BatchSampler, shape: Shape) -> None:
        self.model, self.raw, self.sampler, self.shape = model, raw, sampler, shape
        self.compiled = model is not raw
        self.optimizer = make_optimizer(raw, compiled=self.compiled)
        device = sampler.tokens.device
        self.autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
        # Twice the loss of a uniform guess: no healthy run gets there after its first steps.
        self.loss_limit = 2.0 * math.log(VOCAB_SIZE)

    def step(self, progress: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_multiplier(progress)
        total = torch.zeros((), device=self.sampler.tokens.device)
        for _ in range(self.shape.accum_steps):
            inputs, targets = self.sampler.next()
            with self.autocast:
                logits = self.model(inputs)
            loss = F.cross_entropy(logits.view(-1, VOCAB_SIZE), targets.reshape(-1))
            (loss / self.shape.accum_steps).backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(self.raw.parameters(), GRAD_CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        value = total.item() / self.shape.accum_steps  # also waits for the device
        if not math.isfinite(value) or value > self.loss_limit:
            raise Diverged(f"loss {value:.4g}")
        return value

    @property
    def tokens_per_step(self) -> int:
        return self.shape.accum_steps * self.shape.micro_batch * self.shape.seq_len


@dataclass
class Progress:
    steps: int = 0
    seconds: float = 0.0
    tokens: int = 0
    loss: float = float("nan")


def warm_up(trainer: Trainer, steps: int) -> tuple[float, float]:
    """Compile and warm caches on throw-away steps, then restore the initial weights.

    Returns the seconds of the first step (compilation, on CUDA) and of the whole warm-up.
    """
    start = time.perf_counter()
    initial = {name: value.clone() for name, value in trainer.raw.state_dict().items()}
    trainer.step(progress=0.0)  # .item() inside waits for the device
    first = time.perf_counter() - start
    for _ in range(steps - 1):
        trainer.step(progress=0.0)
    trainer.raw.load_state_dict(initial)
    trainer.optimizer = make_optimizer(trainer.raw, compiled=trainer.compiled)
    _sync(trainer.sampler.tokens.device)
    return first, time.perf_counter() - start


def train(trainer: Trainer, budget_s: float) -> Progress:
    """Step until ``budget_s`` seconds of training have passed; print progress with ``\\r``,
    and each hundredth of the budget a JSON progress line for the daemon's early stopping."""
    progress, reported = Progress(), 0
    losses: list[float] = []
    while progress.seconds < budget_s:
        start = time.perf_counter()
        try:
            progress.loss = trainer.step(progress.seconds / budget_s)
        except Diverged as exc:
            print(f"\nFAIL: training diverged at step {progress.steps}: {exc}", file=sys.stderr)
            raise
        elapsed = time.perf_counter() - start
        progress.seconds += elapsed
        progress.steps += 1
        progress.tokens += trainer.tokens_per_step
        _report(progress, budget_s, trainer.tokens_per_step / elapsed)
        losses.append(progress.loss)
        if int(100 * progress.seconds / budget_s) > reported or progress.seconds >= budget_s:
            reported = int(100 * progress.seconds / budget_s)
            _report_json(progress, budget_s, sum(losses) / len(losses))
            losses.clear()
    print(flush=True)
    return progress


def _report_json(progress: Progress, budget_s: float, loss: float) -> None:
    """One line on the documented progress channel: the mean loss since the last one."""
    fraction = min(1.0, progress.seconds / budget_s)
    line = json.dumps({"fraction": round(fraction, 4), "loss": loss, "step": progress.steps})
    print(f"\nAUTORESEARCH_PROGRESS {line}", flush=True)


def _report(progress: Progress, budget_s: float, tokens_per_s: float) -> None:
    percent = min(100.0, 100.0 * progress.seconds / budget_s)
    print(
        f"\rstep {progress.steps:05d} ({percent:5.1f}%) | loss {progress.loss:.4f}"
        f" | tok/s {tokens_per_s:,.0f} | left {max(0.0, budget_s - progress.seconds):.1f}s   ",
        end="",
        flush=True,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- summary


def peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak of this GPU from the table, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    return peak_flops_for(torch.cuda.get_device_name(device))


def peak_flops_for(name: str, table: Iterable[tuple[str, float]] | None = None) -> float | None:
    """The peak of the first table entry whose key is part of ``name``, or None."""
    entries = GPU_PEAK_FLOPS.items() if table is None else table
    return next((peak for key, peak in entries if key in name), None)


def summarize(
    *,
    val_bpb: float,
    progress: Progress,
    model: GPT,
    shape: Shape,
    device: torch.device,
    times: dict[str, float],
) -> dict[str, float]:
    peak = peak_flops(device)
    tokens_per_s = progress.tokens / max(progress.seconds, 1e-9)
    achieved = model.flops_per_token() * tokens_per_s
    return {
        "val_bpb": val_bpb,
        "training_seconds": progress.seconds,
        "total_seconds": times["total"],
        "peak_vram_mb": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else 0.0,
        "mfu_percent": 100.0 * achieved / peak if peak else 0.0,
        "tokens_per_s": tokens_per_s,
        "peak_tflops": (peak or 0.0) / 1e12,
        "total_tokens_M": progress.tokens / 1e6,
        "num_steps": progress.steps,
        "num_params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "depth": shape.depth,
        "warmup_seconds": times["warmup"],
        "compile_seconds": times["compile"],
        "eval_seconds": times["eval"],
    }


def print_summary(summary: dict[str, float]) -> None:
    """The ``---`` block, in karpathy/autoresearch's format."""
    formats = {"val_bpb": ".6f", "mfu_percent": ".2f", "num_params_M": ".3f", "tokens_per_s": ".0f"}
    print("---")
    for key, value in summary.items():
        if key in ("num_steps", "depth"):
            text = str(int(value))
        else:
            text = format(value, formats.get(key, ".1f"))
        print(f"{key + ':':<18}{text}", flush=True)


# ------------------------------------------------------------------------------ main


def build_trainer(settings: Settings) -> tuple[Trainer, TrackData]:
    """The data on the device and a trainer for the model, compiled on CUDA (not yet run)."""
    prepared = prepare_track(settings.track, settings.data_dir)
    torch.manual_seed(settings.seed)
    data: TrackData = load_track(prepared, settings.device)
    shape = choose_shape(settings.device, prepared.seq_len)
    raw = GPT(shape).to(settings.device)
    model: nn.Module = raw
    if settings.device.type == "cpu":
        # Subnormal floats (Adam's second moments of tiny gradients, say) take the CPU's slow
        # path, tens of times slower: flushed to zero, a run keeps its speed whatever its
        # settings. Nothing a run could measure changes by it.
        torch.set_flush_denormal(True)
    if settings.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        model = torch.compile(raw, dynamic=False)  # type: ignore[assignment]
    sampler = BatchSampler(data.train, shape.seq_len, shape.micro_batch, settings.seed)
    return Trainer(model, raw, sampler, shape), data


def warmup_steps(device: torch.device) -> int:
    return 3 if device.type == "cuda" else 1


def run(settings: Settings) -> dict[str, float]:
    trainer, data = build_trainer(settings)
    steps = warmup_steps(settings.device)
    # A CPU's warm-up holds no accelerator: a standby does it before its go. A GPU's
    # compiles on the device, so it waits for the device's turn.
    early = settings.device.type == "cpu"
    if early:
        compile_s, warmup_s = warm_up(trainer, steps=steps)
    # Started early as a standby, the run waits here, initialised, for the device's turn.
    waited = wait_for_go()
    if not early:
        compile_s, warmup_s = warm_up(trainer, steps=steps)
    prepared, shape, model = data.prepared, trainer.shape, trainer.model
    budget = settings.budget_s or get_track(settings.track).budget_s
    print(
        f"track {prepared.name} | device {settings.device} | depth {shape.depth} "
        f"| width {shape.width} | batch {trainer.tokens_per_step} tokens | budget {budget}s"
    )
    progress = train(trainer, budget)
    eval_start = time.perf_counter()
    with trainer.autocast:
        val_bpb = evaluate_bpb(
            model,
            data.val,
            seq_len=prepared.seq_len,
            eval_tokens=prepared.eval_tokens,
            batch_size=shape.micro_batch,
        )
    times = {
        "warmup": warmup_s,
        "compile": compile_s,
        "eval": time.perf_counter() - eval_start,
        "total": time.perf_counter() - STARTED - waited,
    }
    return summarize(
        val_bpb=val_bpb,
        progress=progress,
        model=trainer.raw,
        shape=shape,
        device=settings.device,
        times=times,
    )


def main() -> int:
    try:
        settings = read_settings(dict(os.environ))
        summary = run(settings)
    except (BadEnvironment, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Diverged:
        return 1
    print_summary(summary)
    if settings.result_file is not None:
        settings.result_file.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0 if math.isfinite(summary["val_bpb"]) else 1


def exit_now(code: int) -> None:
    """End the process at once: everything that matters is written, and the interpreter's
    teardown (freeing every tensor and module one by one) would only add to the run's time."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
