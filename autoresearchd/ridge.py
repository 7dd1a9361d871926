"""Small linear fits with exact leave-one-out errors: least squares, and least squares with a
ridge penalty on a second block of columns; pure, on lists (no array library at run time).

:func:`fits` answers one question for the calibration: does a block of extra inputs ``z``
predict ``y`` better than the base columns ``x`` alone, and at which penalty? It returns
the least-squares fit on ``x`` first, then, per penalty, the fit on ``x`` and ``z`` with
``penalty * ||b_z||**2`` added to the squared error (the base columns, the intercept among
them, are never penalised). Each fit carries every row's leave-one-out error, in closed
form: a fit whose predictions are ``H y`` for a fixed matrix ``H`` predicts row ``i``
without it with error ``e_i / (1 - H_ii)``.

The penalised fits share the work on ``x``: ``z`` with its part explained by ``x`` removed
(``z~``) is all the penalty acts on (Frisch-Waugh), so ``H = H_x + z~ (z~' z~ + penalty)^-1
z~'``, and each penalty costs one Cholesky factorisation ``L L'`` of the small matrix
``z~' z~ + penalty`` and one triangular solve over the rows: the leverage ``H_ii`` gains
``||L^-1 z~_i||**2``. Sums over the rows run column by column (a dot product of two lists
is one pass in C), so a fit on a few hundred rows and a few dozen columns takes milliseconds
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
    gram = _gram(residual)
    errors = [v - f for v, f in zip(y, fitted, strict=True)]
    c = [_dot(column, errors) for column in residual]
    out = [plain]
    for penalty in penalties:
        # z~' z~ + penalty I = L L': the leverage z~_i' (L L')^-1 z~_i is ||L^-1 z~_i||^2.
        lower = _cholesky(
            [[g + penalty * (a == b) for b, g in enumerate(r)] for a, r in enumerate(gram)]
        )
        lev = leverage
        for row in _forward(lower, residual):  # L^-1 z~': each row a list over the rows
            lev = [h + r * r for h, r in zip(lev, row, strict=True)]
        on_z = _backward(lower, [row[0] for row in _forward(lower, [[v] for v in c])])
        predicted = [f + e for f, e in zip(fitted, _combine(on_z, residual), strict=True)]
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


def _cholesky(m: Matrix) -> Matrix:
    """The lower-triangular ``L`` with ``L L' = m``, for a symmetric positive definite ``m``
    (a Gram matrix plus a positive penalty)."""
    size = len(m)
    lower = [[0.0] * size for _ in range(size)]
    for j in range(size):
        row = lower[j]
        pivot = math.sqrt(m[j][j] - _dot(row[:j], row[:j]))
        row[j] = pivot
        for i in range(j + 1, size):
            lower[i][j] = (m[i][j] - _dot(lower[i][:j], row[:j])) / pivot
    return lower


def _forward(lower: Matrix, rows: Matrix) -> Matrix:
    """``L^-1 rows`` for a lower-triangular ``L``: row ``j`` is ``rows[j]`` less the rows
    before it weighted by ``L[j]``, over ``L[j][j]``."""
    out: Matrix = []
    for j, (weights, row) in enumerate(zip(lower, rows, strict=True)):
        for weight, done in zip(weights[:j], out, strict=True):
            row = [v - weight * d for v, d in zip(row, done, strict=True)]
        out.append([v / weights[j] for v in row])
    return out


def _backward(lower: Matrix, v: Sequence[float]) -> list[float]:
    """``L'^-1 v`` for a lower-triangular ``L``."""
    size = len(lower)
    out = [0.0] * size
    for j in reversed(range(size)):
        later = sum(lower[i][j] * out[i] for i in range(j + 1, size))
        out[j] = (v[j] - later) / lower[j][j]
    return out
