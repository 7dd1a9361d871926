"""A fourth learning-curve family for the early-stopping benchmark: real training runs.

Held out from the rule like ``heldout``: written, and its runs fixed, before the rule was
changed against it, and first run on the rule as it then stood. Unlike the other three
families no formula draws these curves: each is the training loss of a real model, the
one-hidden-layer ReLU MLP of ``benchmarks/landscapes.py``'s real model, on the same bundled
scikit-learn digits and the same fixed held-out split (:func:`landscapes.digits_split`),
trained by SGD with momentum 0.9 for :data:`STEPS` steps (the fixed budget).
``landscapes.train_mlp`` trains one seed at a constant rate and reports only its end; here
the :data:`SEEDS` seeds of a configuration train together, as one batched network, under a
schedule tied to the budget, and every step's minibatch loss is reported.

Hyperparameters (searched uniformly in the spaces below, then snapped to a grid, so that a
finite set of configurations is ever trained): ``lr`` (log10 of the peak rate, 10**-2.5..10**-0.5,
steps of 0.25), ``width`` (log2 hidden units, 16..128), ``batch`` (log2 examples, 8..64),
``weight_decay`` (log10 of the L2 coefficient, 1e-5..1e-2, whole decades) and ``warmdown``
(the share of the budget, 0.1..0.9 in steps of 0.2, over which the rate decays linearly to
5 % of the peak at the end). A high rate sits high mid-run on its gradient noise and comes
down in its warm-down: the late bloomers of a real run, not a modelled one.

A run reports, at each step, the mean cross-entropy in bits of the minibatch it trains on
(before the step), at the fraction of the budget done; its final val_bpb is the
cross-entropy in bits on the held-out split after the last step. A run whose weights stop
being finite crashes at that step (its reports end there). Seed noise is real: the seed
draws the initial weights and the minibatches. A run of a configuration is one of its
:data:`SEEDS` seeds, drawn uniformly (two runs of one configuration are the same run one
time in :data:`SEEDS`). The truth of a configuration is the mean final of its seeds that
did not crash (infinite when all crash). ``SEED_SD`` is the sd of a final between seeds at
the baseline, as the search's keep rule uses (measured once; a test checks it).

Training is deterministic and takes a fraction of a second per configuration; the runs of
each configuration trained are kept in memory and in a cache under the temporary
directory (:data:`CACHE`), keyed by the configuration and :data:`VERSION`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from landscapes import digits_split  # a sibling script of this one
from threadpoolctl import threadpool_limits

NAME = "real"
STEPS = 200
REPORTS = STEPS
SEEDS = 12
MOMENTUM = 0.9
FINAL_LR = 0.05
SPACE = {
    "lr": (-2.5, -0.5),
    "width": (4.0, 7.0),
    "batch": (3.0, 6.0),
    "weight_decay": (-5.0, -2.0),
    "warmdown": (0.1, 0.9),
}
#: The grid step of each hyperparameter: a configuration is its values snapped to these.
GRID = {"lr": 0.25, "width": 1.0, "batch": 1.0, "weight_decay": 1.0, "warmdown": 0.2}
BASELINE = {"lr": -1.5, "width": 5.0, "batch": 4.0, "weight_decay": -4.0, "warmdown": 0.3}
#: The sd of a final between seeds at the baseline.
SEED_SD = 0.025
VERSION = 1
CACHE = Path(tempfile.gettempdir()) / f"autoresearchd-real-curves-v{VERSION}"


def snap(theta: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """The grid configuration a draw trains as: each value snapped to its step and range."""
    snapped = []
    for name, (low, high) in SPACE.items():
        step = GRID[name]
        value = low + round((min(high, max(low, theta[name])) - low) / step) * step
        snapped.append((name, round(value, 6)))
    return tuple(snapped)


def schedule(u: float, warmdown: float) -> float:
    """The rate's multiplier at fraction ``u``: hold, then decay linearly to FINAL_LR."""
    if u <= 1.0 - warmdown:
        return 1.0
    remaining = (1.0 - u) / warmdown
    return FINAL_LR + (1.0 - FINAL_LR) * remaining


def train(key: tuple[tuple[str, float], ...]) -> np.ndarray:
    """Every seed of one configuration: per seed, the loss reported at each step and then
    the final val_bpb (NaN from where it crashed)."""
    theta = dict(key)
    width, batch = round(2 ** theta["width"]), round(2 ** theta["batch"])
    peak, decay = 10 ** theta["lr"], 10 ** theta["weight_decay"]
    x_train, y_train, x_val, y_val = (np.asarray(a) for a in digits_split())
    digest = hashlib.sha256(repr(key).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    seeds = np.arange(SEEDS)[:, None]
    w1 = rng.normal(0.0, math.sqrt(2 / 64), (SEEDS, 64, width))
    w2 = rng.normal(0.0, math.sqrt(1 / width), (SEEDS, width, 10))
    b1, b2 = np.zeros((SEEDS, 1, width)), np.zeros((SEEDS, 1, 10))
    params = [w1, b1, w2, b2]
    velocity = [np.zeros_like(p) for p in params]
    out = np.full((SEEDS, STEPS + 1), np.nan)

    def forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pre = x @ w1 + b1
        hidden = np.maximum(pre, 0.0)
        logits = hidden @ w2 + b2
        logits = logits - logits.max(axis=2, keepdims=True)
        p = np.exp(logits)
        return pre, hidden, p / p.sum(axis=2, keepdims=True)

    alive = np.ones(SEEDS, dtype=bool)
    with np.errstate(all="ignore"):
        for step in range(STEPS):
            idx = rng.integers(0, len(y_train), (SEEDS, batch))
            xb, yb = x_train[idx], y_train[idx]
            pre, hidden, p = forward(xb)
            picked = np.take_along_axis(p, yb[:, :, None], axis=2)[:, :, 0]
            loss = -np.log2(np.maximum(picked, 1e-12)).mean(axis=1)
            grad = p.copy()
            grad[seeds, np.arange(batch)[None, :], yb] -= 1.0
            grad /= batch
            g_w2 = hidden.transpose(0, 2, 1) @ grad + decay * w2
            g_b2 = grad.sum(axis=1, keepdims=True)
            dpre = (grad @ w2.transpose(0, 2, 1)) * (pre > 0)
            g_w1 = xb.transpose(0, 2, 1) @ dpre + decay * w1
            g_b1 = dpre.sum(axis=1, keepdims=True)
            rate = peak * schedule((step + 0.5) / STEPS, theta["warmdown"])
            for p_, g, v in zip(params, (g_w1, g_b1, g_w2, g_b2), velocity, strict=True):
                v *= MOMENTUM
                v -= rate * g
                p_ += v
            finite = np.isfinite(w1).all(axis=(1, 2)) & np.isfinite(w2).all(axis=(1, 2))
            alive &= finite & np.isfinite(loss) & (loss < 1e3)
            out[:, step] = np.where(alive, loss, np.nan)
        _, _, p = forward(np.broadcast_to(x_val, (SEEDS, *x_val.shape)))
        picked = p[:, np.arange(len(y_val)), y_val]
        final = -np.log2(np.maximum(picked, 1e-12)).mean(axis=1)
    out[:, STEPS] = np.where(alive & np.isfinite(final), final, np.nan)
    return out


@functools.cache
def runs(key: tuple[tuple[str, float], ...]) -> np.ndarray:
    """A configuration's runs, from the cache when it has them (see :func:`train`)."""
    name = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
    path = CACHE / f"{name}.npy"
    try:
        cached = np.load(path)
        if cached.shape == (SEEDS, STEPS + 1):
            return cached
    except (OSError, ValueError):
        pass  # not cached yet, or a torn file: train it again
    with threadpool_limits(1):  # arrays this small only lose to threads fighting over cores
        trained = train(key)
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    with partial.open("wb") as handle:
        np.save(handle, trained)
    os.replace(partial, path)
    return trained


def true_final(theta: dict[str, float]) -> float:
    """The mean final of the configuration's seeds that finish; infinite when none does."""
    finals = runs(snap(theta))[:, STEPS]
    finite = finals[np.isfinite(finals)]
    return float(finite.mean()) if len(finite) else math.inf


@dataclass(frozen=True)
class Trace:
    """One seed's run: its reports up to the end or the crash, and its final val_bpb."""

    points: tuple[tuple[float, float], ...]  # (fraction of the budget, minibatch loss)
    final: float | None  # None: crashed


def run(theta: dict[str, float], rng: random.Random) -> Trace:
    """One run of ``theta``: one of its configuration's seeds, drawn by ``rng``."""
    row = runs(snap(theta))[rng.randrange(SEEDS)]
    points = []
    for step in range(STEPS):
        if not math.isfinite(row[step]):
            return Trace(tuple(points), None)
        points.append(((step + 1) / STEPS, float(row[step])))
    final = float(row[STEPS])
    return Trace(tuple(points), final if math.isfinite(final) else None)
