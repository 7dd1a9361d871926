"""benchmarks/early_stopping.py with the daemon's default proposer drawing its candidates
(benchmarks/portfolio_draws.py), its figure of quality at equal GPU-hours, and
benchmarks/broad_corners.py, which builds its history with the same results."""

from __future__ import annotations

import random
import re
import sys
from types import ModuleType

import pytest

from autoresearchd.hyperparams import parse_params
from autoresearchd.models import Candidate
from autoresearchd.proposers.base import ProposalContext
from autoresearchd.proposers.portfolio import Axis

from .test_early_stopping_benchmark import BENCHMARK, ROOT, load, run_script

SPACE = {"lr": (-4.0, -1.0), "warmdown": (0.05, 0.9)}


@pytest.fixture(scope="module")
def draws() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))  # early_stopping.py imports it as a sibling
    return load("portfolio_draws", ROOT / "benchmarks" / "portfolio_draws.py")


@pytest.fixture(scope="module")
def bench(draws: ModuleType) -> ModuleType:
    return load("early_stopping_bench", BENCHMARK)


def test_a_configuration_becomes_a_searchable_stand_in(draws: ModuleType) -> None:
    params = parse_params(draws.stand_in({"lr": -3.5, "warmdown": 0.2}, SPACE))
    assert params["LR"].value == -3.5 and params["WARMDOWN"].value == 0.2
    assert (params["LR"].space.kind, params["LR"].space.low, params["LR"].space.high) == (
        "float",
        -4.0,
        -1.0,
    )


def test_draws_stay_in_the_space_and_never_repeat_a_run(draws: ModuleType) -> None:
    search = draws.PortfolioDraws(SPACE, random.Random(0))
    best = {"lr": -3.5, "warmdown": 0.2}
    seen = {repr(sorted(best.items()))}
    search.record(best, 1.5, None)
    for n in range(30):
        theta = search.draw(best)
        assert all(low <= theta[k] <= high for k, (low, high) in SPACE.items())
        assert repr(sorted(theta.items())) not in seen
        seen.add(repr(sorted(theta.items())))
        search.record(theta, 2.0 + n, None)


def test_a_ranked_search_is_told_the_stopped_runs_were_crashes(draws: ModuleType) -> None:
    plain = draws.PortfolioDraws(SPACE, random.Random(0))
    ranked = draws.PortfolioDraws(SPACE, random.Random(0), ranked=True)
    for search in (plain, ranked):
        search.record({"lr": -3.0, "warmdown": 0.5}, 1.4, None)
        search.record({"lr": -2.0, "warmdown": 0.5}, None, 0.15)  # stopped early
        search.record({"lr": -1.0, "warmdown": 0.5}, None, None)  # crashed
    assert [(r.status, r.stopped_early) for r in plain.results] == [
        ("discard", None),
        ("discard", 0.15),
        ("crash", None),
    ]
    assert [(r.status, r.stopped_early) for r in ranked.results] == [
        ("discard", None),
        ("crash", None),
        ("crash", None),
    ]
    # The proposer leaves a stopped run out of its history, and ranks a crash among the rest.
    params = parse_params(draws.stand_in({"lr": -3.0, "warmdown": 0.5}, SPACE))
    axes = [Axis(p) for p in params.values()]
    baseline = Candidate(draws.stand_in({"lr": -3.0, "warmdown": 0.5}, SPACE), None, "")
    for search, failed in ((plain, 1), (ranked, 2)):
        context = ProposalContext(results=search.results[::-1])
        assert len(search.proposer.history(baseline, axes, context).failed) == failed


def test_the_incumbent_at_equal_spend_is_read_at_the_thriftiest_arms_spend(
    bench: ModuleType,
) -> None:
    cheap, dear = bench.Arm(True), bench.Arm(False)
    cheap.trace, cheap.gpu_s = [(0.0, 2.0), (50.0, 1.5), (90.0, 1.2)], 100.0
    dear.trace, dear.gpu_s = [(0.0, 2.0), (80.0, 1.4), (150.0, 1.0)], 200.0
    # At 100 GPU-seconds the dear arm had found 1.4; its later 1.0 does not count.
    assert bench.equal_spend([{"off": dear, "auto": cheap}]) == {"off": [1.4], "auto": [1.2]}
    text = bench.equal_spend_text([{"off": dear, "auto": cheap}] * 3)
    assert text == "off 1.4000, auto 1.2000; auto - off -0.2000 (-0.2000..-0.2000)"


@pytest.mark.timeout(120)
def test_the_benchmark_runs_with_the_portfolio_proposer_and_a_ranked_arm() -> None:
    tiny = ("--family", "scaling", "--seeds", "1", "--candidates", "150", "--proposer", "portfolio")
    done = run_script(BENCHMARK, *tiny)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = dict(re.findall(r"\[scaling\] +(\w+): \d+ runs, (\d+) stopped early", done.stdout))
    assert runs.keys() == {"off", "auto", "ranked"}
    assert runs["off"] == "0" and int(runs["auto"]) > 0 and int(runs["ranked"]) > 0
    assert re.search(
        r"incumbent's true val_bpb at the GPU-hours every arm spent: "
        r"off \d\.\d{4}, auto \d\.\d{4}, ranked \d\.\d{4}; "
        r"auto - off [+-]\d\.\d{4} \([+-]\d\.\d{4}\.\.[+-]\d\.\d{4}\), ranked - off ",
        done.stdout,
    )
    assert "with the stopped runs ranked among the rest by the proposer against" in done.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seeds", ["40", "10"])  # at 10 no uniform draw hits all three tops
def test_the_corner_benchmark_prints_each_shape_parameters_odds_against_uniform(
    seeds: str,
) -> None:
    done = run_script(ROOT / "benchmarks" / "broad_corners.py", "--seeds", seeds, "--steps", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split(" | ")[0]: line for line in done.stdout.splitlines() if line[:2] == "| "}
    assert rows.keys() >= {"| uniform", "| first", "| proposals 2..2"}
    cell = r"\d\.\d{3} \((\d+\.\d\dx|no uniform hit)\)"
    assert re.fullmatch(rf"\| first \| {cell} \| {cell} \| {cell} \| {cell} \|", rows["| first"])
