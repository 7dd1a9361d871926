"""Small linear fits with exact leave-one-out errors: least squares, and least squares with a
ridge penalty on a second block of columns; pure, on lists (no array library at run time).

:func:`fits` answers one question for the calibration: does a block of extra inputs ``z``
predict ``y`` better than the base columns ``x`` alone, and at which penalty? It returns
the least-squares fit on ``x`` first, then, per penalty, the fit on ``x`` and ``z`` with
``penalty * ||b_z||**2`` added to the squared error (the base columns, the intercept among
them, are never penalised). Each fit carries every row's leave-one-out error, in closed
form: a fit whose predictions are ``H y`` for a fixed matrix ``H`` predicts row ``i``
without it with error ``e_i / (1 - H_ii)``.

The penalised fits share one decomposition: ``z`` with its part explained by ``x``
removed (``z~``) is all the penalty acts on (Frisch-Waugh), so with ``z~' z~ = V S V'``
each penalty costs one pass over the rows: ``H = H_x + z~ V (S + penalty)^-1 V' z~'``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Matrix = list[list[float]]
Rows = Sequence[Sequence[float]]

#: The smallest pivot, relative to 1, below which a matrix counts as singular.
SINGULAR = 1e-12
#: Jacobi sweeps before an eigendecomposition gives up refining.
SWEEPS = 50


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
    docstring); empty when ``x``'s columns are collinear."""
    base = _least_squares(x, y)
    if base is None:
        return []
    beta, inverse, leverage = base
    fitted = [_dot(row, beta) for row in x]
    plain = Fit(tuple(beta), _loo(fitted, leverage, y))
    width = len(z[0]) if z else 0
    if width == 0 or not penalties:
        return [plain]
    # z~: each column of z less its least-squares fit on x (coefficients ``explained``).
    explained = [
        _apply(
            inverse, [sum(r[a] * w[j] for r, w in zip(x, z, strict=True)) for a in range(len(beta))]
        )
        for j in range(width)
    ]
    residual = [
        [w[j] - _dot(r, explained[j]) for j in range(width)] for r, w in zip(x, z, strict=True)
    ]
    values, vectors = _eigen(_gram(residual))
    u = [
        [_dot(row, [vectors[a][j] for a in range(width)]) for j in range(width)] for row in residual
    ]
    errors = [v - f for v, f in zip(y, fitted, strict=True)]
    c = [sum(row[j] * e for row, e in zip(u, errors, strict=True)) for j in range(width)]
    out = [plain]
    for penalty in penalties:
        gamma = [c[j] / (values[j] + penalty) for j in range(width)]
        extra = [_dot(row, gamma) for row in u]
        lev = [
            h + sum(row[j] * row[j] / (values[j] + penalty) for j in range(width))
            for h, row in zip(leverage, u, strict=True)
        ]
        on_z = [sum(vectors[a][j] * gamma[j] for j in range(width)) for a in range(width)]
        on_x = [
            b - sum(explained[j][a] * on_z[j] for j in range(width)) for a, b in enumerate(beta)
        ]
        predicted = [f + e for f, e in zip(fitted, extra, strict=True)]
        out.append(Fit((*on_x, *on_z), _loo(predicted, lev, y), penalty))
    return out


def _least_squares(x: Rows, y: Sequence[float]) -> tuple[list[float], Matrix, list[float]] | None:
    """Coefficients, the inverse Gram matrix and each row's leverage; None if singular."""
    inverse = _inverse(_gram(x))
    if inverse is None:
        return None
    size = len(inverse)
    xty = [sum(r[a] * v for r, v in zip(x, y, strict=True)) for a in range(size)]
    beta = _apply(inverse, xty)
    leverage = [_dot(r, _apply(inverse, r)) for r in x]
    return beta, inverse, leverage


def _loo(
    predicted: Sequence[float], leverage: Sequence[float], y: Sequence[float]
) -> tuple[float, ...]:
    return tuple((p - v) / max(1e-9, 1 - h) for p, h, v in zip(predicted, leverage, y, strict=True))


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(p * q for p, q in zip(a, b, strict=True))


def _apply(m: Matrix, v: Sequence[float]) -> list[float]:
    return [_dot(row, v) for row in m]


def _gram(rows: Rows) -> Matrix:
    size = len(rows[0])
    return [[sum(r[a] * r[b] for r in rows) for b in range(size)] for a in range(size)]


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


def _eigen(m: Matrix) -> tuple[list[float], Matrix]:
    """Eigenvalues and eigenvectors (as columns) of a small symmetric matrix, by Jacobi
    rotations; eigenvalues below zero by rounding are clipped to zero."""
    n = len(m)
    a = [row[:] for row in m]
    v = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    scale = sum(a[i][i] ** 2 for i in range(n)) + 1e-300
    for _ in range(SWEEPS):
        if sum(a[i][j] ** 2 for i in range(n) for j in range(i + 1, n)) < 1e-24 * scale:
            break
        for p in range(n):
            for q in range(p + 1, n):
                if a[p][q] != 0.0:
                    _rotate(a, v, p, q)
    return [max(0.0, a[i][i]) for i in range(n)], v


def _rotate(a: Matrix, v: Matrix, p: int, q: int) -> None:
    """One Jacobi rotation that zeroes ``a[p][q]``, applied to ``a`` and to ``v``."""
    theta = (a[q][q] - a[p][p]) / (2 * a[p][q])
    t = math.copysign(1.0, theta) / (abs(theta) + math.sqrt(theta * theta + 1))
    c = 1 / math.sqrt(t * t + 1)
    s = t * c
    for rows in (a, v):  # columns p and q
        for row in rows:
            rp, rq = row[p], row[q]
            row[p], row[q] = c * rp - s * rq, s * rp + c * rq
    a[p], a[q] = (
        [c * x - s * y for x, y in zip(a[p], a[q], strict=True)],
        [s * x + c * y for x, y in zip(a[p], a[q], strict=True)],
    )
