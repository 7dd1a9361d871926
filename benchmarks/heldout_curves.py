"""A third learning-curve landscape for the early-stopping benchmark, held out from the rule.

This family was written from the scaling-law literature alone, with its formula fixed before
the early-stopping rule was ever run on it and without reference to the rule or its
constants. It is kept apart so that a rule tuned on the other two families can be judged on
curves it has never seen. Its mechanisms differ from both of them:

- **Compute-bound size.** A run has a fixed compute budget ``C = 3e16`` FLOPs, so a bigger
  model sees fewer tokens: ``D(f) = f C util(B) / (6 N)``. Loss follows the Chinchilla fit
  (Hoffmann et al. 2022) ``E + A / N**0.34 + B0 / (D_eff + D_0)**0.28`` with ``E = 1.69``,
  ``A = 406.4``, ``B0 = 410.7``, ``D_0 = 5e6`` tokens, in nats per token, soft-capped at the
  uniform loss ``ln 8192``. ``N = 12 depth width**2 + 8192 width``. Wide models start behind
  and may end ahead.
- **Critical batch size.** Tokens count for less in a batch larger than the critical batch,
  which grows as the loss falls (McCandlish et al. 2018; Kaplan et al. 2020):
  ``dD_eff = dD q(r_t) / (1 + B / B_crit(L))`` with ``B_crit(L) = 2e8 / L**4.76`` tokens.
  Small batches use the accelerator poorly: ``util(B) = B / (B + 2**15)``.
- **Learning rate.** The optimum peak rate falls with size, ``lr_opt = 3e-3 (N / 5e6)**-0.3``,
  and ``r_t`` is the current rate over it. Learning per token is ``q(r) = 2 r / (1 + r)``.
  A rate also holds the loss above its floor by ``0.2 r_lag sqrt(2**17 / B)`` nats, where
  ``r_lag`` follows ``r_t`` with a lag of 3 % of the budget: the excess falls as the rate
  anneals, so a high-rate run sits high mid-run and comes down at the end.
- **Schedule.** A linear warm-up over ``warmup`` of the budget, then cosine decay to 10 % of
  the peak at the end (unlike ``train.py``'s warm-down, which the other families use).
- **Divergence.** A peak ``r`` above 4 always diverges; between 2 and 4 a seed diverges with
  probability ``(r - 2) / 2`` times ``(0.02 / warmup)**0.3`` (capped at 1): a longer warm-up
  protects. A diverging run climbs to the uniform loss over three reports at a uniform point
  between the end of its warm-up and 60 % of the budget, then exits.

Losses are reported in bits per byte, at 4 bytes per token. Per run (each seed): a data-speed
factor ``exp(N(0, 0.015))`` on ``D_eff``; an offset ``N(0, 0.004)`` on the whole curve; a
final val_bpb that is the run's noise-free end plus ``0.6`` of that offset plus an
independent ``N(0, 0.0032)`` (the validation set is not the training stream, so the curve
predicts the final only in part). On each of the 50 reports, independent Gaussian noise of
sd ``0.012 sqrt(2**17 / B)``, and with probability 0.01 an outlier of exponential size with
mean 0.05. ``SEED_SD`` is the sd of a final between seeds at the baseline.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

NAME = "heldout"
REPORTS = 50
SUBSTEPS = 8
SPACE = {
    "lr": (-3.7, -1.7),
    "width": (6.0, 10.0),
    "depth": (2.0, 12.0),
    "batch": (14.0, 20.0),
    "warmup": (math.log10(0.002), math.log10(0.2)),
}
BASELINE = {"lr": -3.0, "width": 7.0, "depth": 3.0, "batch": 15.0, "warmup": math.log10(0.02)}
COMPUTE = 3e16
VOCAB = 8192
E, A, ALPHA, B0, BETA, D0 = 1.69, 406.4, 0.34, 410.7, 0.28, 5e6
BYTES_PER_TOKEN = 4.0
FINAL_LR = 0.1
LAG = 0.03
NOISE_EXCESS = 0.2
OFFSET_SD = 0.004
EVAL_SD = 0.0032
SPEED_SD = 0.015
REPORT_SD = 0.012
OUTLIER_P, OUTLIER_MEAN = 0.01, 0.05
#: The sd of a final between seeds at the baseline (offset share, eval noise and speed).
SEED_SD = 0.005


def schedule(u: float, warmup: float) -> float:
    if u < warmup:
        return (u + 1e-3) / (warmup + 1e-3)
    progress = (u - warmup) / max(1e-9, 1.0 - warmup)
    return FINAL_LR + (1.0 - FINAL_LR) * 0.5 * (1.0 + math.cos(math.pi * progress))


def params(theta: dict[str, float]) -> float:
    width = 2 ** theta["width"]
    return 12 * round(theta["depth"]) * width**2 + VOCAB * width


def to_bpb(nats: float) -> float:
    return nats / (math.log(2) * BYTES_PER_TOKEN)


def loss_nats(n: float, d_eff: float) -> float:
    raw = E + A / n**ALPHA + B0 / (d_eff + D0) ** BETA
    return -math.log(math.exp(-raw) + math.exp(-math.log(VOCAB)))  # soft cap at uniform


@dataclass(frozen=True)
class Shape:
    """One configuration's noise-free course: effective tokens and rate excess per report."""

    n: float
    d_eff: tuple[float, ...]  # at each report's end
    excess: tuple[float, ...]  # nats, averaged over each report
    ratio: float  # peak rate over the optimum
    warmup: float

    def curve(self, speed: float = 1.0) -> list[float]:
        return [
            to_bpb(loss_nats(self.n, d * speed) + e)
            for d, e in zip(self.d_eff, self.excess, strict=True)
        ]

    @property
    def crash_probability(self) -> float:
        if self.ratio > 4.0:
            return 1.0
        if self.ratio <= 2.0:
            return 0.0
        return min(1.0, (self.ratio - 2.0) / 2.0 * float((0.02 / self.warmup) ** 0.3))


@functools.lru_cache(maxsize=4096)
def _shape(key: tuple[tuple[str, float], ...]) -> Shape:
    theta = dict(key)
    n, batch = params(theta), 2 ** theta["batch"]
    warmup, peak = 10 ** theta["warmup"], 10 ** theta["lr"]
    optimum = 3e-3 * (n / 5e6) ** -0.3
    tokens_per_fraction = COMPUTE * batch / (batch + 2**15) / (6 * n)
    dt = 1.0 / (REPORTS * SUBSTEPS)
    d_eff, lagged, scale = 0.0, 0.0, math.sqrt(2**17 / batch)
    ends, excesses = [], []
    for i in range(REPORTS):
        excess = 0.0
        for j in range(SUBSTEPS):
            r = peak * schedule((i * SUBSTEPS + j + 0.5) * dt, warmup) / optimum
            critical = 2e8 / loss_nats(n, d_eff) ** 4.76
            d_eff += tokens_per_fraction * dt * (2 * r / (1 + r)) / (1 + batch / critical)
            lagged += (r - lagged) * (1.0 - math.exp(-dt / LAG))
            excess += NOISE_EXCESS * lagged * scale / SUBSTEPS
        ends.append(d_eff)
        excesses.append(excess)
    return Shape(n, tuple(ends), tuple(excesses), peak / optimum, warmup)


def shape(theta: dict[str, float]) -> Shape:
    return _shape(tuple(sorted(theta.items())))


def true_final(theta: dict[str, float]) -> float:
    """The noise-free final val_bpb; infinite for a configuration every seed diverges on."""
    s = shape(theta)
    return math.inf if s.crash_probability >= 1.0 else s.curve()[-1]


@dataclass(frozen=True)
class Trace:
    """One seed's run: its reports up to the end or the crash, and its final val_bpb."""

    points: tuple[tuple[float, float], ...]  # (fraction of the budget, mean loss)
    final: float | None  # None: crashed


def run(theta: dict[str, float], rng: random.Random) -> Trace:
    """One seed of ``theta``: the reports it prints and its final val_bpb."""
    s = shape(theta)
    speed = math.exp(rng.gauss(0.0, SPEED_SD))
    offset = rng.gauss(0.0, OFFSET_SD)
    crash_at = math.inf
    if rng.random() < s.crash_probability:
        crash_at = rng.uniform(s.warmup, max(0.6, s.warmup + 0.05))
    sd = REPORT_SD * math.sqrt(2**17 / 2 ** theta["batch"])
    uniform = to_bpb(math.log(VOCAB))
    points: list[tuple[float, float]] = []
    curve = s.curve(speed)
    climbing = 0
    for i, loss in enumerate(curve):
        fraction = (i + 1) / REPORTS
        value = loss + offset + rng.gauss(0.0, sd)
        if rng.random() < OUTLIER_P:
            value += rng.expovariate(1.0 / OUTLIER_MEAN)
        if fraction >= crash_at:
            climbing += 1
            value += (uniform - value) * climbing / 3
            if climbing > 3:
                return Trace(tuple(points), None)
        points.append((fraction, value))
    return Trace(tuple(points), curve[-1] + 0.6 * offset + rng.gauss(0.0, EVAL_SD))
