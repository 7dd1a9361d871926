"""The conformance suite every collective-memory backend must pass (docs/architecture.md, 4).

A backend's test module subclasses :class:`MemoryConformance` and overrides the
``make_memory`` fixture with a factory that builds a fresh, unopened backend driven by the
given clock. Everything here speaks only the ``CollectiveMemory`` Protocol, so a network
backend reuses it verbatim.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from autoresearchd.errors import MemoryBackendError
from autoresearchd.memory.protocol import CollectiveMemory, Note
from autoresearchd.models import Result, Status, sha256_text

TRACK = "synthetic"
TTL_S = 60.0

_ids = itertools.count()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MemoryFactory = Callable[[FakeClock], CollectiveMemory]


def make_result(**changes: Any) -> Result:
    """A complete result with every field set; ``changes`` override any of them."""
    n = next(_ids)
    source = changes.pop("train_py", f"LR = {n}\n")
    fields: dict[str, Any] = {
        "id": f"run-{n:06d}",
        "agent_id": "alice",
        "track": TRACK,
        "status": Status.KEEP,
        "val_bpb": 1.0,
        "description": f"LR {n} → {n + 1}",
        "train_py": source,
        "train_py_sha256": sha256_text(source),
        "parent_sha256": sha256_text("parent"),
        "seed": 1234 + n,
        "device_name": "NVIDIA H100 80GB HBM3",
        "device_uuid": "GPU-0000",
        "memory_gb": 79.6,
        "vram_tier": "xl",
        "started_at": 1_700_000_000.0 + n,
        "completed_at": 1_700_000_300.0 + n,
        "duration_s": 300.0,
    }
    fields.update(changes)
    return Result(**fields)


class MemoryConformance:
    """Backend-agnostic behaviour of a collective memory. Subclass and override ``make_memory``."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def make_memory(self) -> MemoryFactory:
        raise NotImplementedError("a backend's test class must override make_memory")

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    async def memory(
        self, make_memory: MemoryFactory, clock: FakeClock
    ) -> AsyncIterator[CollectiveMemory]:
        async with make_memory(clock) as memory:
            yield memory

    # --- claims -------------------------------------------------------------------------

    async def test_concurrent_claims_of_one_sha_have_exactly_one_winner(
        self, memory: CollectiveMemory
    ) -> None:
        wins: list[str] = []

        async def try_claim(agent: str) -> None:
            if await memory.claim(TRACK, "sha-a", agent, TTL_S):
                wins.append(agent)

        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(try_claim, f"agent-{i}")
        assert len(wins) == 1

    async def test_claim_blocks_others_until_ttl_expires(
        self, memory: CollectiveMemory, clock: FakeClock
    ) -> None:
        assert await memory.claim(TRACK, "sha-a", "alice", TTL_S)
        clock.advance(TTL_S - 1)
        assert not await memory.claim(TRACK, "sha-a", "bob", TTL_S)
        clock.advance(2)
        assert await memory.claim(TRACK, "sha-a", "bob", TTL_S)
        assert not await memory.claim(TRACK, "sha-a", "alice", TTL_S)

    async def test_owner_reclaim_succeeds_and_refreshes_expiry(
        self, memory: CollectiveMemory, clock: FakeClock
    ) -> None:
        assert await memory.claim(TRACK, "sha-a", "alice", TTL_S)
        clock.advance(TTL_S - 1)
        assert await memory.claim(TRACK, "sha-a", "alice", TTL_S)
        clock.advance(TTL_S - 1)  # past the first expiry, inside the refreshed one
        assert not await memory.claim(TRACK, "sha-a", "bob", TTL_S)

    async def test_claims_are_per_track_and_per_sha(self, memory: CollectiveMemory) -> None:
        assert await memory.claim(TRACK, "sha-a", "alice", TTL_S)
        assert await memory.claim(TRACK, "sha-b", "bob", TTL_S)
        assert await memory.claim("other-track", "sha-a", "bob", TTL_S)

    async def test_release_frees_the_claim_for_others(self, memory: CollectiveMemory) -> None:
        assert await memory.claim(TRACK, "sha-a", "alice", TTL_S)
        await memory.release(TRACK, "sha-a", "alice")
        assert await memory.claim(TRACK, "sha-a", "bob", TTL_S)

    async def test_release_by_non_owner_is_a_no_op(self, memory: CollectiveMemory) -> None:
        assert await memory.claim(TRACK, "sha-a", "alice", TTL_S)
        await memory.release(TRACK, "sha-a", "bob")
        await memory.release(TRACK, "sha-unclaimed", "bob")
        assert not await memory.claim(TRACK, "sha-a", "bob", TTL_S)

    # --- publish and bests ----------------------------------------------------------------

    async def test_publish_is_idempotent_by_result_id(self, memory: CollectiveMemory) -> None:
        result = make_result(val_bpb=1.99)
        first = await memory.publish(result)
        replay = await memory.publish(result.with_(val_bpb=0.5, description="changed"))
        assert first.created
        assert not replay.created
        assert replay.best_improved == ()
        assert await memory.results(TRACK) == [result]
        best = await memory.get_best(TRACK)
        assert best is not None and best.val_bpb == 1.99

    async def test_first_keep_result_sets_track_and_tier_best(
        self, memory: CollectiveMemory, clock: FakeClock
    ) -> None:
        result = make_result(val_bpb=1.99, vram_tier="medium")
        outcome = await memory.publish(result)
        assert outcome.created
        assert set(outcome.best_improved) == {"track", "medium"}
        for tier in (None, "medium"):
            best = await memory.get_best(TRACK, tier)
            assert best is not None
            assert (best.track, best.tier, best.val_bpb) == (TRACK, tier, 1.99)
            assert (best.result_id, best.agent_id) == (result.id, result.agent_id)
            assert (best.train_py, best.train_py_sha256) == (
                result.train_py,
                result.train_py_sha256,
            )
            assert best.updated_at == clock()

    async def test_empty_memory_has_no_best(self, memory: CollectiveMemory) -> None:
        assert await memory.get_best(TRACK) is None
        assert await memory.get_best(TRACK, "small") is None

    async def test_only_a_strictly_lower_bpb_moves_the_best(self, memory: CollectiveMemory) -> None:
        first = make_result(val_bpb=1.99)
        await memory.publish(first)
        tie = await memory.publish(make_result(val_bpb=1.99))
        worse = await memory.publish(make_result(val_bpb=2.01))
        assert tie.best_improved == worse.best_improved == ()
        better = make_result(val_bpb=1.98)
        assert (await memory.publish(better)).best_improved == ("track", "xl")
        best = await memory.get_best(TRACK)
        assert best is not None and best.result_id == better.id

    async def test_tier_best_moves_without_the_track_best(self, memory: CollectiveMemory) -> None:
        await memory.publish(make_result(val_bpb=1.9, vram_tier="xl"))
        small = make_result(val_bpb=1.95, vram_tier="small")
        assert (await memory.publish(small)).best_improved == ("small",)
        track_best = await memory.get_best(TRACK)
        small_best = await memory.get_best(TRACK, "small")
        assert track_best is not None and track_best.val_bpb == 1.9
        assert small_best is not None and small_best.result_id == small.id
        assert await memory.get_best(TRACK, "medium") is None

    async def test_confirmed_bpb_is_what_the_best_records(self, memory: CollectiveMemory) -> None:
        await memory.publish(make_result(val_bpb=1.97, confirmed_bpb=1.975))
        best = await memory.get_best(TRACK)
        assert best is not None and best.val_bpb == 1.975
        lucky = make_result(val_bpb=1.9, confirmed_bpb=1.98)
        assert (await memory.publish(lucky)).best_improved == ()

    @pytest.mark.parametrize(
        "status", [Status.DISCARD, Status.CRASH, Status.TIMEOUT, Status.INVALID]
    )
    async def test_non_keep_results_never_move_a_best(
        self, memory: CollectiveMemory, status: Status
    ) -> None:
        outcome = await memory.publish(make_result(status=status, val_bpb=0.5))
        assert outcome.created and outcome.best_improved == ()
        assert await memory.get_best(TRACK) is None
        await memory.publish(make_result(val_bpb=1.99))
        await memory.publish(make_result(status=status, val_bpb=0.5))
        best = await memory.get_best(TRACK)
        assert best is not None and best.val_bpb == 1.99

    @pytest.mark.parametrize("bpb", [None, math.inf, math.nan])
    async def test_keep_without_a_finite_bpb_never_moves_a_best(
        self, memory: CollectiveMemory, bpb: float | None
    ) -> None:
        outcome = await memory.publish(make_result(val_bpb=bpb))
        assert outcome.created and outcome.best_improved == ()
        assert await memory.get_best(TRACK) is None

    async def test_bests_are_per_track(self, memory: CollectiveMemory) -> None:
        await memory.publish(make_result(val_bpb=1.9, track="other"))
        await memory.publish(make_result(val_bpb=1.99))
        best = await memory.get_best(TRACK)
        assert best is not None and best.val_bpb == 1.99

    async def test_concurrent_keep_publishes_end_with_the_true_minimum(
        self, memory: CollectiveMemory
    ) -> None:
        rng = random.Random(7)
        tiers = ("small", "medium", "large", "xl")
        results = [
            make_result(val_bpb=rng.uniform(1.9, 2.1), vram_tier=rng.choice(tiers))
            for _ in range(60)
        ]
        async with anyio.create_task_group() as tg:
            for result in results:
                tg.start_soon(memory.publish, result)
        assert len(await memory.results(TRACK, limit=None)) == len(results)
        for tier in (None, *tiers):
            pool = [r for r in results if tier is None or r.vram_tier == tier]
            winner = min(pool, key=lambda r: r.val_bpb or math.inf)
            best = await memory.get_best(TRACK, tier)
            assert best is not None
            assert (best.val_bpb, best.result_id) == (winner.val_bpb, winner.id)

    async def test_best_history_lists_every_move_newest_first(
        self, memory: CollectiveMemory, clock: FakeClock
    ) -> None:
        assert await memory.best_history(TRACK) == []
        first = make_result(val_bpb=1.99, vram_tier="small")
        await memory.publish(first)
        clock.advance(10)
        await memory.publish(make_result(val_bpb=2.2))  # moves nothing
        second = make_result(val_bpb=1.95, vram_tier="medium")
        await memory.publish(second)
        history = await memory.best_history(TRACK)
        assert [(c.result_id, c.val_bpb) for c in history] == [(second.id, 1.95), (first.id, 1.99)]
        assert history[0].at >= history[1].at  # a network memory stamps moves by its own clock
        latest = history[0]
        assert (latest.agent_id, latest.description, latest.train_py_sha256) == (
            second.agent_id,
            second.description,
            second.train_py_sha256,
        )
        assert [c.result_id for c in await memory.best_history(TRACK, "small")] == [first.id]
        assert len(await memory.best_history(TRACK, limit=1)) == 1
        assert await memory.best_history("other") == []

    # --- reading results ------------------------------------------------------------------

    async def test_results_are_newest_first_then_by_insertion(
        self, memory: CollectiveMemory
    ) -> None:
        old = make_result(completed_at=100.0)
        tie_first = make_result(completed_at=200.0)
        tie_second = make_result(completed_at=200.0)
        new = make_result(completed_at=300.0)
        for result in (tie_first, new, old, tie_second):
            await memory.publish(result)
        assert await memory.results(TRACK) == [new, tie_second, tie_first, old]

    async def test_results_limit_and_track_filter(self, memory: CollectiveMemory) -> None:
        mine = [make_result(completed_at=float(t)) for t in range(5)]
        other = make_result(track="other", completed_at=99.0)
        for result in (*mine, other):
            await memory.publish(result)
        assert await memory.results(TRACK, limit=2) == [mine[4], mine[3]]
        assert await memory.results(TRACK, limit=None) == mine[::-1]
        assert await memory.results("other") == [other]
        assert await memory.results() == [other, *mine[::-1]]
        assert await memory.results(limit=1) == [other]
        assert await memory.results("missing") == []

    async def test_every_result_field_round_trips(self, memory: CollectiveMemory) -> None:
        result = make_result(
            status=Status.DISCARD,
            val_bpb=1.987654321,
            description="MATRIX_LR 0.04 → 0.05, DEPTH 8 → 9",
            train_py='MATRIX_LR = 0.05  # search: log 0.005..0.2\nprint("ünïcode")\n',
            parent_sha256=None,
            delta_vs_best=0.0123,
            metrics={"mfu_percent": 41.5, "num_steps": 953.0, "custom_metric": -1.25},
            proposer="perturb",
            provisional=True,
            confirmed_bpb=1.99,
            error="none",
            software={"python": "3.11.9", "torch": "2.5.1", "driver": "550.54"},
        )
        await memory.publish(result)
        (stored,) = await memory.results(TRACK)
        assert stored == result
        assert stored.to_record() == result.to_record()
        assert Result.from_record(stored.to_record()) == result

    # --- was_run --------------------------------------------------------------------------

    async def test_was_run_sees_published_results(self, memory: CollectiveMemory) -> None:
        result = make_result(status=Status.CRASH, val_bpb=None)
        assert not await memory.was_run(TRACK, result.train_py_sha256)
        await memory.publish(result)
        assert await memory.was_run(TRACK, result.train_py_sha256)
        assert not await memory.was_run("other", result.train_py_sha256)

    async def test_was_run_sees_live_claims_but_not_expired_ones(
        self, memory: CollectiveMemory, clock: FakeClock
    ) -> None:
        assert await memory.claim(TRACK, "sha-a", "alice", TTL_S)
        assert await memory.was_run(TRACK, "sha-a")
        clock.advance(TTL_S + 1)
        assert not await memory.was_run(TRACK, "sha-a")

    async def test_was_run_forgets_a_released_claim(self, memory: CollectiveMemory) -> None:
        assert await memory.claim(TRACK, "sha-a", "alice", TTL_S)
        await memory.release(TRACK, "sha-a", "alice")
        assert not await memory.was_run(TRACK, "sha-a")

    # --- notes ----------------------------------------------------------------------------

    @pytest.mark.parametrize("kind", ["hypotheses", "insights"])
    async def test_notes_round_trip_newest_first(self, memory: CollectiveMemory, kind: str) -> None:
        old = Note("lr-up", "alice", {"text": "raise LR", "tags": ["lr"], "score": 0.5}, 10.0)
        new = Note("depth-down", "bob", {"text": "fewer layers", "nested": {"a": 1}}, 20.0)
        assert await memory.put_note(kind, old)
        assert await memory.put_note(kind, new)
        assert await memory.notes(kind) == [new, old]
        assert await memory.notes(kind, limit=1) == [new]

    async def test_note_kinds_are_separate(self, memory: CollectiveMemory) -> None:
        await memory.put_note("hypotheses", Note("k", "alice", {"text": "h"}, 1.0))
        assert await memory.notes("insights") == []

    async def test_put_note_with_an_existing_key_returns_false(
        self, memory: CollectiveMemory
    ) -> None:
        note = Note("lr-up", "alice", {"text": "raise LR"}, 10.0)
        assert await memory.put_note("insights", note)
        assert not await memory.put_note("insights", Note("lr-up", "bob", {"text": "x"}, 11.0))
        assert await memory.notes("insights") == [note]

    @pytest.mark.parametrize("kind", ["results", "best", ""])
    async def test_unknown_note_kind_is_refused(self, memory: CollectiveMemory, kind: str) -> None:
        with pytest.raises(MemoryBackendError, match="note kind"):
            await memory.put_note(kind, Note("k", "alice", {}, 1.0))
        with pytest.raises(MemoryBackendError, match="note kind"):
            await memory.notes(kind)
