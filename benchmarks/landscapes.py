"""Benchmark landscapes for ``benchmarks/search.py``: standard test functions and a real model.

Each :class:`Landscape` is a stand-in train.py (its hyperparameters with declared search
spaces), a noisy score for one run on one seed (``None`` for a crash), and the *truth*
of a source: what the chosen best is worth once re-evaluated, never its own lucky score.

Two families, neither designed around a strategy:

- **Test functions** with known optima from the global-optimisation literature: Branin
  (2-d, three global minima, plus two parameters that do nothing), Hartmann-6 (6-d, one
  inert parameter), Rosenbrock (4-d, a narrow curved valley, one axis an ``int``) and Levy
  (5-d and 8-d, many regular local minima, with ``int``, ``pow2`` and ``choice`` axes).
  Each declared space maps linearly (on a log scale for ``log``) onto the function's
  standard domain. A run scores ``1 + s·(f(x) - f*)`` plus N(0, :data:`NOISE`) seed noise,
  with ``s`` set so that the median uniform sample sits :data:`MEDIAN_GAP` above the
  optimum of 1.0; a crash region (a corner where the first two parameters are both high,
  as a too-large learning rate with too-short warmup diverges) covers a few percent of the
  space. The truth is the noise-free value.
- **A real model**: a one-hidden-layer MLP in numpy, trained by SGD with momentum for a
  fixed number of steps (a fixed budget) on scikit-learn's bundled digits (8x8 images, 10
  classes), scored by the cross-entropy in bits on a fixed held-out split. The seed draws
  the initial weights and the batches. A width times batch above :data:`MODEL_MEMORY`
  crashes (out of memory), as does a diverged loss. The truth is the mean score over
  :data:`FRESH_SEEDS` fresh seeds no search ever used.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from autoresearchd.hyperparams import parse_params
from autoresearchd.literals import Value

NOISE = 0.003
MEDIAN_GAP = 0.5
#: Fresh seeds the model's chosen best is re-evaluated on.
FRESH_SEEDS = 6
#: Seeds of the re-evaluation start here, far from any seed a search draws.
FRESH_SEED_BASE = 10**9
MODEL_STEPS = 150
MODEL_MEMORY = 2**14

Score = Callable[[Mapping[str, Value], random.Random], "float | None"]
Truth = Callable[[Mapping[str, Value]], "float | None"]


@dataclass(frozen=True)
class Landscape:
    """A stand-in train.py, one run's noisy score, and the truth a chosen best is judged by.

    ``optimum`` is the best truth any source can have, when it is known.
    """

    name: str
    source: str
    score: Score
    truth: Truth
    optimum: float | None


# --- test functions on the unit cube ----------------------------------------------------


def branin(x: Sequence[float]) -> float:
    """Branin on [-5, 10] x [0, 15]; minimum 0.397887 at three points."""
    x1, x2 = -5 + 15 * x[0], 15 * x[1]
    b, c = 5.1 / (4 * math.pi**2), 5 / math.pi
    return (x2 - b * x1 * x1 + c * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10


_H6_A = (
    (10, 3, 17, 3.5, 1.7, 8),
    (0.05, 10, 17, 0.1, 8, 14),
    (3, 3.5, 1.7, 10, 17, 8),
    (17, 8, 0.05, 10, 0.1, 14),
)
_H6_P = (
    (0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886),
    (0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991),
    (0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650),
    (0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381),
)
_H6_ALPHA = (1.0, 1.2, 3.0, 3.2)


def hartmann6(x: Sequence[float]) -> float:
    """Hartmann-6 on [0, 1]^6; minimum -3.32237."""
    total = 0.0
    for alpha, a, p in zip(_H6_ALPHA, _H6_A, _H6_P, strict=True):
        total -= alpha * math.exp(
            -sum(ai * (xi - pi) ** 2 for ai, xi, pi in zip(a, x, p, strict=True))
        )
    return total


def rosenbrock(x: Sequence[float]) -> float:
    """Rosenbrock on [-2, 2]^d; minimum 0 at (1, ..., 1)."""
    z = [-2 + 4 * xi for xi in x]
    return sum(100 * (z[i + 1] - z[i] ** 2) ** 2 + (1 - z[i]) ** 2 for i in range(len(z) - 1))


def levy(x: Sequence[float]) -> float:
    """Levy on [-10, 10]^d; minimum 0 at (1, ..., 1)."""
    w = [1 + (-10 + 20 * xi - 1) / 4 for xi in x]
    head = math.sin(math.pi * w[0]) ** 2
    tail = (w[-1] - 1) ** 2 * (1 + math.sin(2 * math.pi * w[-1]) ** 2)
    body = sum((wi - 1) ** 2 * (1 + 10 * math.sin(math.pi * wi + 1) ** 2) for wi in w[:-1])
    return head + body + tail


@dataclass(frozen=True)
class Axis:
    """How one declared parameter maps onto a unit coordinate of the function."""

    name: str
    line: str  # the stand-in's assignment, with its search annotation
    to_unit: Callable[[Value], float]


def _log_axis(name: str, value: float, low: float, high: float) -> Axis:
    line = f"{name} = {value}  # search: log {low}..{high}"
    span = math.log(high / low)
    return Axis(name, line, lambda v: math.log(float(v) / low) / span)  # type: ignore[arg-type]


def _float_axis(name: str, value: float, low: float, high: float) -> Axis:
    line = f"{name} = {value}  # search: float {low}..{high}"
    return Axis(name, line, lambda v: (float(v) - low) / (high - low))  # type: ignore[arg-type]


def _int_axis(name: str, value: int, low: int, high: int) -> Axis:
    line = f"{name} = {value}  # search: int {low}..{high}"
    return Axis(name, line, lambda v: (int(v) - low) / (high - low))  # type: ignore[call-overload]


def _pow2_axis(name: str, exponent: int, low: int, high: int) -> Axis:
    line = f"{name} = 2**{exponent}  # search: pow2 {low}..{high}"
    return Axis(
        name,
        line,
        lambda v: (int(v).bit_length() - 1 - low) / (high - low),  # type: ignore[call-overload]
    )


def _choice_axis(name: str, units: Mapping[str, float]) -> Axis:
    choices = " ".join(f'"{c}"' for c in units)
    line = f'{name} = "{next(iter(units))}"  # search: choice {choices}'
    return Axis(name, line, lambda v: units[str(v)])


def _inert(line: str) -> Axis:
    return Axis(line.split()[0], line, lambda v: 0.0)


def _stand_in(name: str, axes: Sequence[Axis]) -> str:
    header = f'"""Benchmark stand-in: the {name} landscape (benchmarks/landscapes.py)."""\n\n'
    return header + "".join(a.line + "\n" for a in axes)


def _median_gap(f: Callable[[Sequence[float]], float], dims: int, f_min: float) -> float:
    rng = random.Random(0)
    samples = sorted(f([rng.random() for _ in range(dims)]) - f_min for _ in range(4001))
    return samples[len(samples) // 2]


def function_landscape(
    name: str, f: Callable[[Sequence[float]], float], f_min: float, axes: Sequence[Axis]
) -> Landscape:
    """``f`` over the unit coordinates of ``axes``' active parameters (see module docstring)."""
    active = [a for a in axes if not a.line.startswith("INERT")]
    scale = MEDIAN_GAP / _median_gap(f, len(active), f_min)

    def truth(values: Mapping[str, Value]) -> float | None:
        x = [min(1.0, max(0.0, a.to_unit(values[a.name]))) for a in active]
        if x[0] > 0.85 and x[1] > 0.8:  # the crash corner: about 3% of the space
            return None
        return 1.0 + scale * (f(x) - f_min)

    def score(values: Mapping[str, Value], rng: random.Random) -> float | None:
        value = truth(values)
        return None if value is None else value + rng.gauss(0.0, NOISE)

    return Landscape(name, _stand_in(name, axes), score, truth, 1.0)


def test_functions() -> list[Landscape]:
    """The test-function family; inert parameters are named ``INERT_*``."""
    levy8 = [
        _float_axis("LR", 0.1, 0.0, 1.0),
        _float_axis("WARMUP", 0.2, 0.0, 1.0),
        _int_axis("DEPTH", 3, -10, 10),
        _pow2_axis("BATCH", 4, 0, 20),
        _log_axis("WD", 0.01, 0.001, 1.0),
        _choice_axis("ACT", {"relu": 0.15, "gelu": 0.35, "silu": 0.55, "tanh": 0.75}),
        _float_axis("BETA", 0.5, 0.0, 1.0),
        _log_axis("EPS", 0.0001, 1e-06, 0.01),
    ]
    return [
        function_landscape(
            "branin",
            branin,
            0.397887,
            [
                _log_axis("MATRIX_LR", 0.001, 0.0001, 0.1),
                _float_axis("WARMUP_FRAC", 0.4, 0.0, 0.5),
                _inert("INERT_DEPTH = 8  # search: int 2..16"),
                _inert('INERT_ACT = "relu"  # search: choice "relu" "gelu" "swish"'),
            ],
        ),
        function_landscape(
            "hartmann6",
            hartmann6,
            -3.32237,
            [
                _log_axis("MATRIX_LR", 0.01, 0.001, 1.0),
                _log_axis("EMBED_LR", 0.1, 0.01, 10.0),
                _float_axis("WARMUP_FRAC", 0.9, 0.0, 1.0),
                _float_axis("DROPOUT", 0.9, 0.0, 1.0),
                _log_axis("WEIGHT_DECAY", 0.1, 0.001, 1.0),
                _float_axis("BETA2", 0.1, 0.0, 1.0),
                _inert("INERT_HEADS = 2**3  # search: pow2 1..5"),
            ],
        ),
        function_landscape(
            "rosenbrock4",
            rosenbrock,
            0.0,
            [
                _log_axis("MATRIX_LR", 0.01, 0.001, 1.0),
                _float_axis("WARMUP_FRAC", 0.1, 0.0, 1.0),
                _int_axis("DEPTH", 2, 0, 8),
                _float_axis("BETA2", 0.2, 0.0, 1.0),
            ],
        ),
        function_landscape("levy5", levy, 0.0, levy8[:5]),
        function_landscape("levy8", levy, 0.0, levy8),
    ]


# --- the real model -----------------------------------------------------------------------

MODEL_SOURCE = '''\
"""Benchmark stand-in: an MLP on scikit-learn's digits (benchmarks/landscapes.py)."""

LR = 0.003  # search: log 0.0003..3.0
MOMENTUM = 0.5  # search: float 0.0..0.99
WEIGHT_DECAY = 0.01  # search: log 1e-06..0.1
INIT_SCALE = 0.3  # search: log 0.03..10.0
HIDDEN = 2**4  # search: pow2 2..9
BATCH = 2**4  # search: pow2 2..9
ACTIVATION = "sigmoid"  # search: choice "relu" "tanh" "sigmoid"
'''


@functools.cache
def digits_split() -> tuple[object, object, object, object]:
    import numpy as np
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    x, y = data.data[order] / 16.0, data.target[order]
    cut = 1200
    return x[:cut], y[:cut], x[cut:], y[cut:]


def train_mlp(values: Mapping[str, Value], seed: int) -> float | None:
    """One training run: the held-out cross-entropy in bits, None when it crashes."""
    import numpy as np

    hidden, batch = int(values["HIDDEN"]), int(values["BATCH"])  # type: ignore[call-overload]
    if hidden * batch > MODEL_MEMORY:
        return None
    lr, momentum = float(values["LR"]), float(values["MOMENTUM"])  # type: ignore[arg-type]
    decay, scale = float(values["WEIGHT_DECAY"]), float(values["INIT_SCALE"])  # type: ignore[arg-type]
    act = str(values["ACTIVATION"])
    x_train, y_train, x_val, y_val = digits_split()
    xt, yt, xv, yv = (np.asarray(a) for a in (x_train, y_train, x_val, y_val))
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, scale / math.sqrt(64), (64, hidden))
    w2 = rng.normal(0.0, scale / math.sqrt(hidden), (hidden, 10))
    b1, b2 = np.zeros(hidden), np.zeros(10)
    state = [np.zeros_like(p) for p in (w1, b1, w2, b2)]

    def forward(x: object) -> tuple[object, object, object]:
        pre = np.asarray(x) @ w1 + b1
        if act == "relu":
            h = np.maximum(pre, 0.0)
        elif act == "tanh":
            h = np.tanh(pre)
        else:
            h = 1.0 / (1.0 + np.exp(-np.clip(pre, -50, 50)))
        logits = h @ w2 + b2
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return pre, h, p / p.sum(axis=1, keepdims=True)

    with np.errstate(all="ignore"):
        for _ in range(MODEL_STEPS):
            idx = rng.integers(0, len(yt), batch)
            xb, yb = xt[idx], yt[idx]
            pre, h, p = forward(xb)
            grad = np.asarray(p).copy()
            grad[np.arange(batch), yb] -= 1.0
            grad /= batch
            g_w2, g_b2 = np.asarray(h).T @ grad + decay * w2, grad.sum(axis=0)
            dh = grad @ w2.T
            h_arr, pre_arr = np.asarray(h), np.asarray(pre)
            if act == "relu":
                dpre = dh * (pre_arr > 0)
            elif act == "tanh":
                dpre = dh * (1 - h_arr**2)
            else:
                dpre = dh * h_arr * (1 - h_arr)
            g_w1, g_b1 = xb.T @ dpre + decay * w1, dpre.sum(axis=0)
            for p_, g, v in zip((w1, b1, w2, b2), (g_w1, g_b1, g_w2, g_b2), state, strict=True):
                v *= momentum
                v -= lr * g
                p_ += v
            if not np.isfinite(w2).all():
                return None  # diverged: a NaN loss ends the run
        _, _, p = forward(xv)
        probs = np.asarray(p)[np.arange(len(yv)), yv]
        loss = float(-np.mean(np.log2(np.maximum(probs, 1e-12))))
    return loss if math.isfinite(loss) else None


def _model_score(values: Mapping[str, Value], rng: random.Random) -> float | None:
    return train_mlp(values, rng.randrange(2**31))


def _model_truth(values: Mapping[str, Value]) -> float | None:
    scores = [train_mlp(values, FRESH_SEED_BASE + k) for k in range(FRESH_SEEDS)]
    finite = [s for s in scores if s is not None]
    return sum(finite) / len(finite) if len(finite) == len(scores) else None


def digits_mlp() -> Landscape:
    """The real-model landscape (needs numpy and scikit-learn: the ``search`` extra)."""
    return Landscape("digits_mlp", MODEL_SOURCE, _model_score, _model_truth, None)


def values_of(source: str) -> dict[str, Value]:
    """A stand-in's hyperparameter values, as its score functions read them."""
    return {name: p.value for name, p in parse_params(source).items()}
