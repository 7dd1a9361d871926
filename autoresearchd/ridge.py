"""Small linear fits with exact leave-one-out errors: least squares, and least squares with a
ridge penalty on a second block of columns; pure, on lists (no array library at run time).

:func:`fits` answers one question for the calibration: does a block of extra inputs ``z``
predict ``y`` better than the base columns ``x`` alone, and at which penalty? It returns
the least-squares fit on ``x`` first, then, per penalty, the fit on ``x`` and ``z`` with
``penalty * ||b_z||**2`` added to the squared error (the base columns, the intercept among
them, are never penalised). Each fit carries every row's leave-one-out error, in closed
form: a fit whose predictions are ``H y`` for a fixed matrix ``H`` predicts row ``i``
without it with error ``e_i / (1 - H_ii)``.

The penalised fits share one decomposition: ``z`` with its part explained by ``x`` removed
(``z~``) is all the penalty acts on (Frisch-Waugh), so ``H = H_x + z~ (z~' z~ + penalty)^-1
z~'``. With ``z~' z~ = Q T Q'`` (``T`` tridiagonal, by Householder reflections) and ``W = z~
Q``, ``z~' z~ + penalty = Q (T + penalty) Q'``, and ``T + penalty = L L'`` with ``L``
bidiagonal: each penalty costs one pass over ``W``'s columns, and ``H_ii`` gains
``||L^-1 W_i||**2``. Sums over the rows run column by column (a dot product of two lists is
one pass in C), so a fit on a few hundred rows and a few dozen columns takes milliseconds
without an array library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import mul

Matrix = list[list[float]]
Rows = Sequence[Sequence[float]]

#: The smallest pivot, relative to 1, below which a matrix counts as singular.
SINGULAR = 1e-12


@dataclass(frozen=True, slots=True)
class Fit:
    """Coefficients on the columns of ``x`` then those of ``z``; each row's leave-one-out
    error (predicted minus observed); and the penalty (infinite: ``x`` alone)."""

    coefficients: tuple[float, ...]
    loo: tuple[float, ...]
    penalty: float = math.inf

    @property
    def loo_mse(self) -> float:
        return sum(e * e for e in self.loo) / len(self.loo)


def fits(x: Rows, z: Rows, y: Sequence[float], penalties: Sequence[float]) -> list[Fit]:
    """The fit on ``x`` alone, then one per penalty on ``x`` and ``z`` (see the module
    docstring); empty when ``x``'s columns are collinear. Penalties must be positive."""
    xc = [list(c) for c in zip(*x, strict=True)]
    base = _least_squares(x, xc, y)
    if base is None:
        return []
    beta, inverse, leverage = base
    fitted = [_dot(row, beta) for row in x]
    plain = Fit(tuple(beta), _loo(fitted, leverage, y))
    width = len(z[0]) if z else 0
    if width == 0 or not penalties:
        return [plain]
    # z~: each column of z less its least-squares fit on x (coefficients ``explained``).
    residual = []
    explained = []
    for w in zip(*z, strict=True):
        on_x = _apply(inverse, [_dot(c, w) for c in xc])
        column = list(w)
        for b, c in zip(on_x, xc, strict=True):
            column = [v - b * u for v, u in zip(column, c, strict=True)]
        explained.append(on_x)
        residual.append(column)
    # z~' z~ = Q T Q' with T tridiagonal: on W = z~ Q, each penalty's solve is bidiagonal.
    diagonal, off, q = _tridiagonal(_gram(residual))
    q_columns = list(zip(*q, strict=True))
    w_rows = [[_dot(r, c) for c in q_columns] for r in zip(*residual, strict=True)]
    w_columns = [list(c) for c in zip(*w_rows, strict=True)]
    errors = [v - f for v, f in zip(y, fitted, strict=True)]
    c = [_dot(column, errors) for column in w_columns]  # Q' z~' e
    out = [plain]
    for penalty in penalties:
        # T + penalty = L L', L lower bidiagonal: ``pivots`` on its diagonal, ``below`` under it.
        pivots, below = [math.sqrt(diagonal[0] + penalty)], [0.0]
        for d, e in zip(diagonal[1:], off, strict=True):
            below.append(e / pivots[-1])
            pivots.append(math.sqrt(d + penalty - below[-1] ** 2))
        # The leverage z~_i' (z~' z~ + penalty)^-1 z~_i is ||L^-1 W_i||^2, by column of W.
        lev = leverage
        solved: Sequence[float] = [0.0] * len(y)
        for column, pivot, m in zip(w_columns, pivots, below, strict=True):
            solved = [(v - m * u) / pivot for v, u in zip(column, solved, strict=True)]
            lev = [h + r * r for h, r in zip(lev, solved, strict=True)]
        # The coefficients on W solve (T + penalty) g = Q' z~' e; those on z are Q g.
        forward: list[float] = []
        for cj, pivot, m in zip(c, pivots, below, strict=True):
            forward.append((cj - m * (forward[-1] if forward else 0.0)) / pivot)
        g = [0.0] * width
        for j in reversed(range(width)):
            later = below[j + 1] * g[j + 1] if j + 1 < width else 0.0
            g[j] = (forward[j] - later) / pivots[j]
        on_z = _apply(q, g)
        predicted = [f + e for f, e in zip(fitted, _combine(g, w_columns), strict=True)]
        on_x = [b - _dot(e, on_z) for b, e in zip(beta, zip(*explained, strict=True), strict=True)]
        out.append(Fit((*on_x, *on_z), _loo(predicted, lev, y), penalty))
    return out


def _least_squares(
    x: Rows, columns: Matrix, y: Sequence[float]
) -> tuple[list[float], Matrix, list[float]] | None:
    """Coefficients, the inverse Gram matrix and each row's leverage; None if singular."""
    inverse = _inverse(_gram(columns))
    if inverse is None:
        return None
    beta = _apply(inverse, [_dot(c, y) for c in columns])
    leverage = [_dot(r, _apply(inverse, r)) for r in x]
    return beta, inverse, leverage


def _loo(
    predicted: Sequence[float], leverage: Sequence[float], y: Sequence[float]
) -> tuple[float, ...]:
    return tuple((p - v) / max(1e-9, 1 - h) for p, h, v in zip(predicted, leverage, y, strict=True))


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    # map(mul) runs the products in C; the lengths always match here.
    total: float = sum(map(mul, a, b))
    return total


def _apply(m: Matrix, v: Sequence[float]) -> list[float]:
    return [_dot(row, v) for row in m]


def _combine(weights: Sequence[float], vectors: Matrix) -> list[float]:
    """The sum of ``vectors`` weighted by ``weights``."""
    total = [0.0] * len(vectors[0])
    for weight, vector in zip(weights, vectors, strict=True):
        total = [t + weight * v for t, v in zip(total, vector, strict=True)]
    return total


def _gram(columns: Matrix) -> Matrix:
    """The inner products of ``columns`` (each a list over the rows)."""
    size = len(columns)
    m = [[0.0] * size for _ in range(size)]
    for a in range(size):
        for b in range(a, size):
            m[a][b] = m[b][a] = _dot(columns[a], columns[b])
    return m


def _inverse(m: Matrix) -> Matrix | None:
    """The inverse of a small matrix by Gauss-Jordan; None when it is singular."""
    size = len(m)
    a = [row[:] + [1.0 if i == j else 0.0 for j in range(size)] for i, row in enumerate(m)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < SINGULAR:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        scale = a[col][col]
        a[col] = [v / scale for v in a[col]]
        for r in range(size):
            if r != col and a[r][col] != 0.0:
                factor = a[r][col]
                a[r] = [v - factor * w for v, w in zip(a[r], a[col], strict=True)]
    return [row[size:] for row in a]


def _tridiagonal(m: Matrix) -> tuple[list[float], list[float], Matrix]:
    """A symmetric ``m`` as ``Q T Q'`` by Householder reflections: ``T``'s diagonal and the
    diagonal beside it, and the orthogonal ``Q``."""
    size = len(m)
    a = [row[:] for row in m]
    q = [[float(i == j) for j in range(size)] for i in range(size)]
    off = []
    for k in range(size - 2):
        x = [a[i][k] for i in range(k + 1, size)]
        norm = math.sqrt(_dot(x, x))
        if norm == 0.0:
            off.append(0.0)
            continue
        alpha = -math.copysign(norm, x[0])
        v = [x[0] - alpha, *x[1:]]
        beta = 2 / _dot(v, v)
        # H = I - beta v v' on the rows and columns after k: H B H = B - v w' - w v'.
        block = [a[i][k + 1 :] for i in range(k + 1, size)]
        p = [beta * _dot(row, v) for row in block]
        kappa = beta * _dot(v, p) / 2
        w = [pi - kappa * vi for pi, vi in zip(p, v, strict=True)]
        for i, (row, vi, wi) in enumerate(zip(block, v, w, strict=True)):
            a[k + 1 + i][k + 1 :] = [
                b - vi * wj - wi * vj for b, vj, wj in zip(row, v, w, strict=True)
            ]
        for row in q:  # Q H
            s = beta * _dot(row[k + 1 :], v)
            row[k + 1 :] = [r - s * vi for r, vi in zip(row[k + 1 :], v, strict=True)]
        off.append(alpha)
    if size >= 2:
        off.append(a[size - 1][size - 2])
    return [a[i][i] for i in range(size)], off, q
