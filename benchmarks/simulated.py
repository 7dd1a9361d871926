"""A simulated run's record, as a track's history holds it, for the benchmarks' stand-ins.

The proposers, the promotion rule and early stopping read :class:`~autoresearchd.models.Result`
records; a benchmark that drives them with simulated runs builds each record here, so a new
field of the record has one place to get its benchmark value.
"""

from __future__ import annotations

from typing import Any

from autoresearchd.models import Result, Status, sha256_text


def simulated_run(
    n: int, source: str, status: Status, val_bpb: float | None, **changes: Any
) -> Result:
    """Run ``n`` of ``source`` on a simulated device, with ``changes`` to any other field.

    ``train_py_sha256`` defaults to the source's hash; a benchmark that knows its sources
    only by hash passes it with an empty ``source``.
    """
    fields: dict[str, Any] = {
        "id": f"run-{n}",
        "agent_id": "bench",
        "track": "bench",
        "status": status,
        "val_bpb": val_bpb,
        "description": "",
        "train_py": source,
        "parent_sha256": None,
        "seed": n,
        "device_name": "sim",
        "device_uuid": "sim",
        "memory_gb": 80.0,
        "vram_tier": "sim",
        "started_at": float(n),
        "completed_at": float(n),
        "duration_s": 0.0,
        **changes,
    }
    if "train_py_sha256" not in fields:
        fields["train_py_sha256"] = sha256_text(source)
    return Result(**fields)
