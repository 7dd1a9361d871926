"""A swarm's worth of results for the dashboard's tests, published through the real client.

:func:`fill` publishes, as three agents through :class:`EnsueMemory`, a lineage of kept
improvements, discards, provisional replicates, crashes, a hostile description, notes
and a live claim, so every page has real rows to show. :func:`new_result` builds more.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from autoresearchd.memory.ensue_client import EnsueMemory
from autoresearchd.memory.protocol import Note
from autoresearchd.models import Result, Status, sha256_text

TRACK = "synthetic"
HOSTILE = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'
BASE = "LR = 0.04\nDEPTH = 8\nWIDTH = 256\n"
_ids = itertools.count()


def source(lr: float, depth: int = 8) -> str:
    return f"LR = {lr}\nDEPTH = {depth}\nWIDTH = 256\n"


def new_result(
    agent: str,
    train_py: str,
    parent: str | None,
    *,
    status: Status = Status.DISCARD,
    val_bpb: float | None = 2.5,
    description: str = "LR 0.04 → 0.05",
    at: float = 1_700_000_000.0,
    provisional: bool = False,
    confirmed_bpb: float | None = None,
    tier: str = "small",
    proposer: str = "perturb",
) -> Result:
    n = next(_ids)
    return Result(
        id=f"{agent}-{n:06d}",
        agent_id=agent,
        track=TRACK,
        status=status,
        val_bpb=val_bpb,
        description=description,
        train_py=train_py,
        train_py_sha256=sha256_text(train_py),
        parent_sha256=None if parent is None else sha256_text(parent),
        seed=n,
        device_name="NVIDIA Test 16GB",
        device_uuid=f"GPU-{agent}",
        memory_gb=16.0,
        vram_tier=tier,
        started_at=at - 300,
        completed_at=at,
        duration_s=300.0,
        metrics={"num_steps": 100.0, "mfu_percent": 41.5},
        proposer=proposer,
        provisional=provisional,
        confirmed_bpb=confirmed_bpb,
        software={"python": "3.11.9", "torch": "2.4.0"},
    )


@dataclass
class Swarm:
    """What :func:`fill` published: every result, and the one with the hostile text."""

    results: list[Result] = field(default_factory=list)
    hostile: Result | None = None
    improved: Result | None = None


async def fill(memories: dict[str, EnsueMemory]) -> Swarm:
    """Publish a small swarm's history as ``alice``, ``bob`` and ``carol``."""
    swarm = Swarm()
    alice, bob, carol = memories["alice"], memories["bob"], memories["carol"]
    at = 1_700_000_000.0
    lrs = (0.05, 0.06, 0.07)
    parent = BASE
    for i, lr in enumerate(lrs):
        child = source(lr)
        at += 600
        swarm.results.append(
            await _publish(
                bob,
                new_result(
                    "bob",
                    child,
                    parent,
                    status=Status.KEEP,
                    val_bpb=2.49 - 0.05 * i,
                    confirmed_bpb=2.495 - 0.05 * i,
                    description=f"LR {lr - 0.01:.2f} → {lr:.2f}",
                    at=at,
                ),
            )
        )
        at += 600
        swarm.results.append(
            await _publish(
                alice,
                new_result(
                    "alice",
                    child,
                    parent,
                    status=Status.DISCARD,
                    val_bpb=2.50 - 0.05 * i,
                    description=f"LR {lr - 0.01:.2f} → {lr:.2f}",
                    at=at,
                    provisional=True,
                ),
            )
        )
        parent = child
    swarm.improved = swarm.results[-1]
    for j in range(6):
        at += 300
        swarm.results.append(
            await _publish(
                carol,
                new_result(
                    "carol",
                    source(0.07, 9 + j),
                    parent,
                    val_bpb=2.6 + 0.01 * j,
                    description=f"DEPTH 8 → {9 + j}",
                    at=at,
                    tier="medium",
                    proposer="tpe",
                ),
            )
        )
    at += 300
    swarm.results.append(
        await _publish(
            carol,
            new_result(
                "carol",
                source(0.07, 30),
                parent,
                status=Status.CRASH,
                val_bpb=None,
                description="DEPTH 8 → 30",
                at=at,
            ),
        )
    )
    at += 300
    swarm.hostile = await _publish(
        bob, new_result("bob", source(0.08), parent, val_bpb=2.55, description=HOSTILE, at=at)
    )
    swarm.results.append(swarm.hostile)
    await alice.put_note(
        "hypotheses",
        Note(
            "alice--h1",
            "alice",
            {
                "title": "higher LR",
                "hypothesis": "LR 0.07 improved; try 0.09",
                "suggested_config": {"LR": 0.09},
                "agent_id": "alice",
                "status": "open",
            },
            at,
        ),
    )
    await carol.put_note(
        "insights",
        Note(
            "carol--i1",
            "carol",
            {"insight": "DEPTH at or above 30 crashed 1/1 runs", "agent_id": "carol"},
            at,
        ),
    )
    await carol.claim(TRACK, sha256_text(source(0.09)), "carol", 3600.0)
    return swarm


async def _publish(memory: EnsueMemory, result: Result) -> Result:
    await memory.publish(result)
    return result
