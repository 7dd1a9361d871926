"""What the strategy tests share: a stored result of a source, and a memory that knows nothing."""

from __future__ import annotations

from autoresearchd.models import Result, Status, sha256_text


def result(source: str, val: float | None, status: Status = Status.DISCARD, n: int = 0) -> Result:
    """Run ``n`` of ``source`` as the history holds it: ``val`` its val_bpb."""
    return Result(
        id=f"run-{n}",
        agent_id="someone",
        track="t",
        status=status,
        val_bpb=val,
        description="",
        train_py=source,
        train_py_sha256=sha256_text(source),
        parent_sha256=None,
        seed=n,
        device_name="cpu",
        device_uuid="cpu-0",
        memory_gb=0.0,
        vram_tier="cpu",
        started_at=0.0,
        completed_at=0.0,
        duration_s=1.0,
    )


async def never(sha256: str) -> bool:
    """An ``is_known`` for which no candidate was run or claimed."""
    return False
