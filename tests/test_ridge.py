"""The small linear fits behind the calibration: coefficients that solve their normal
equations, and closed-form leave-one-out errors equal to refitting without each row."""

from __future__ import annotations

import math
import random

import pytest

from autoresearchd.ridge import Fit, fits


def problem(seed: int, n: int = 40) -> tuple[list[list[float]], list[list[float]], list[float]]:
    """Base columns (an intercept and two inputs), three extra inputs, one correlated with
    the base, and a response that reads both blocks."""
    rng = random.Random(seed)
    x = [[1.0, rng.gauss(0, 1), rng.gauss(0, 1)] for _ in range(n)]
    z = [[rng.gauss(0, 1) + 0.5 * r[1], rng.gauss(0, 1), rng.gauss(0, 1)] for r in x]
    y = [
        0.3 * r[1] - 0.2 * r[2] + 0.4 * w[0] + rng.gauss(0, 0.1) for r, w in zip(x, z, strict=True)
    ]
    return x, z, y


def predict(fit: Fit, x: list[float], z: list[float]) -> float:
    row = x if math.isinf(fit.penalty) else [*x, *z]
    return sum(b * v for b, v in zip(fit.coefficients, row, strict=True))


def test_the_first_fit_is_the_base_alone_and_the_others_solve_the_penalised_equations() -> None:
    x, z, y = problem(1)
    plain, *penalised = fits(x, z, y, [0.5, 5.0])
    assert math.isinf(plain.penalty) and len(plain.coefficients) == 3
    for fit in penalised:
        rows = [[*a, *b] for a, b in zip(x, z, strict=True)]
        residual = [
            v - sum(c * r for c, r in zip(fit.coefficients, row, strict=True))
            for row, v in zip(rows, y, strict=True)
        ]
        # The gradient of squared error plus penalty on the last three is zero.
        for a in range(6):
            gradient = -sum(r[a] * e for r, e in zip(rows, residual, strict=True))
            if a >= 3:
                gradient += fit.penalty * fit.coefficients[a]
            assert abs(gradient) < 1e-9
    assert [f.penalty for f in penalised] == [0.5, 5.0]


@pytest.mark.parametrize("penalty", [0.5, 5.0])
def test_leave_one_out_errors_equal_refits_without_each_row(penalty: float) -> None:
    x, z, y = problem(2)
    full = fits(x, z, y, [penalty])
    for i in range(len(y)):
        rest = [j for j in range(len(y)) if j != i]
        refit = fits([x[j] for j in rest], [z[j] for j in rest], [y[j] for j in rest], [penalty])
        for whole, without in zip(full, refit, strict=True):
            assert whole.loo[i] == pytest.approx(predict(without, x[i], z[i]) - y[i], abs=1e-9)


def test_extra_inputs_that_explain_the_response_lower_the_leave_one_out_error() -> None:
    x, z, y = problem(3)
    plain, light, heavy = fits(x, z, y, [0.1, 1e6])
    assert light.loo_mse < 0.2 * plain.loo_mse
    # A huge penalty shrinks the extra inputs away: back to about the base fit.
    assert heavy.loo_mse == pytest.approx(plain.loo_mse, rel=1e-3)


def test_collinear_base_columns_give_no_fit_and_no_extra_inputs_give_the_base_alone() -> None:
    x, z, y = problem(4)
    doubled = [[*r, r[1]] for r in x]
    assert fits(doubled, z, y, [1.0]) == []
    assert len(fits(x, [], y, [1.0])) == 1
    assert len(fits(x, z, y, [])) == 1


def reference(x: list[list[float]], z: list[list[float]], y: list[float], penalty: float) -> Fit:
    """The penalised fit the straightforward way: the normal equations of ``[x z]`` with the
    penalty on z's diagonal, solved by elimination, and the hat matrix's diagonal from the
    inverse itself."""
    rows = [[*a, *b] for a, b in zip(x, z, strict=True)]
    size, base = len(rows[0]), len(x[0])
    gram = [
        [sum(r[a] * r[b] for r in rows) + (penalty if a == b >= base else 0.0) for b in range(size)]
        for a in range(size)
    ]
    inverse = invert(gram)
    xty = [sum(r[a] * v for r, v in zip(rows, y, strict=True)) for a in range(size)]
    beta = [sum(m * v for m, v in zip(row, xty, strict=True)) for row in inverse]
    loo = []
    for r, v in zip(rows, y, strict=True):
        h = sum(r[a] * inverse[a][b] * r[b] for a in range(size) for b in range(size))
        loo.append((sum(c * u for c, u in zip(beta, r, strict=True)) - v) / (1 - h))
    return Fit(tuple(beta), tuple(loo), penalty)


def invert(m: list[list[float]]) -> list[list[float]]:
    size = len(m)
    a = [[*row, *(float(i == j) for j in range(size))] for i, row in enumerate(m)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        a[col] = [v / a[col][col] for v in a[col]]
        for r in range(size):
            if r != col:
                a[r] = [v - a[r][col] * w for v, w in zip(a[r], a[col], strict=True)]
    return [row[size:] for row in a]


@pytest.mark.parametrize(("seed", "n", "width"), [(5, 30, 1), (6, 150, 20), (7, 60, 40)])
def test_the_penalised_fits_equal_the_normal_equations_solved_directly(
    seed: int, n: int, width: int
) -> None:
    # As the calibration uses it: base columns of losses near one another (an intercept, the
    # loss at two bins), extra inputs standardised, some more than there are rows to spare.
    rng = random.Random(seed)
    x = [[1.0, level := rng.uniform(1.0, 1.5), level + rng.gauss(0, 0.01)] for _ in range(n)]
    z = [[rng.gauss(0, 1) + (r[1] - 1.25) for _ in range(width)] for r in x]
    y = [r[1] + 0.05 * sum(w[:3]) + rng.gauss(0, 0.01) for r, w in zip(x, z, strict=True)]
    penalties = [share * n for share in (0.01, 0.1, 1.0, 10.0)]
    for fast, penalty in zip(fits(x, z, y, penalties)[1:], penalties, strict=True):
        slow = reference(x, z, y, penalty)
        assert fast.penalty == penalty
        assert fast.coefficients == pytest.approx(slow.coefficients, rel=1e-7, abs=1e-9)
        assert fast.loo == pytest.approx(slow.loo, rel=1e-7, abs=1e-10)
