"""Judging a result against the best: is it plausible, does it improve, does it promote.

Pure functions over :class:`Result` and :class:`Best`, no I/O. The worker asks these
whether a score is plausible for its track (finite, positive, within the track's bounds),
whether it beats the best by ``min_improvement`` (the screen for replication), what delta
to record, and how its own latest keep (not yet confirmed by the memory) combines with
the best the memory holds. How replication decides a promotion lives in
:mod:`autoresearchd.promotion`; the hub checks plausibility with the same function.
"""

from __future__ import annotations

import math

from autoresearchd.models import Best, Result, Status
from autoresearchd.tracks.definitions import score_bounds


def best_from(result: Result) -> Best:
    """The best a kept result makes, as this worker knows it before the memory confirms."""
    return Best(
        track=result.track,
        tier=result.vram_tier,
        val_bpb=result.best_bpb or math.inf,
        train_py=result.train_py,
        train_py_sha256=result.train_py_sha256,
        result_id=result.id,
        agent_id=result.agent_id,
        updated_at=result.completed_at,
    )


def covers(best: Best | None, own: Best) -> bool:
    """True when the memory's best already accounts for our own latest keep."""
    return best is not None and (best.result_id == own.result_id or best.val_bpb <= own.val_bpb)


def own_outdated(own: Best, best: Best | None, track: str) -> bool:
    """True when our own keep need no longer count: the memory caught up, or the track changed."""
    return own.track != track or covers(best, own)


def lowest(*bests: Best | None) -> Best | None:
    """The best with the lowest ``val_bpb`` among those known; None when none is."""
    known = [b for b in bests if b is not None]
    return min(known, key=lambda b: b.val_bpb) if known else None


def delta_vs_best(val_bpb: float | None, best: Best | None) -> float | None:
    """``val_bpb`` minus the best's; None unless both are finite.

    A hub seeds ``best/`` with an unscored baseline (an infinite ``val_bpb``), and an
    infinite delta is not valid JSON for the other clients that read our records.
    """
    if val_bpb is None or best is None or not math.isfinite(best.val_bpb):
        return None
    return val_bpb - best.val_bpb


def improves(val_bpb: float | None, best: Best | None, min_improvement: float) -> bool:
    """True when ``val_bpb`` beats the best by more than ``min_improvement``."""
    if val_bpb is None or not math.isfinite(val_bpb):
        return False
    return best is None or val_bpb < best.val_bpb - min_improvement


def implausible(val_bpb: float | None, track: str) -> str | None:
    """Why ``val_bpb`` cannot be an honest score on ``track``; None when it can be."""
    if val_bpb is None:
        return None
    floor, ceiling = score_bounds(track)
    if not math.isfinite(val_bpb):
        return f"val_bpb {val_bpb} is not finite"
    if val_bpb <= 0:
        return f"val_bpb {val_bpb} is not positive"
    if val_bpb < floor:
        return f"val_bpb {val_bpb} is below the {track} track's floor {floor:.4f}"
    if val_bpb > ceiling:
        return f"val_bpb {val_bpb} is above the {track} track's ceiling {ceiling:g}"
    return None


def plausible(result: Result) -> Result:
    """``result``, or the same result marked ``invalid`` with its reason when its score
    cannot be honest: such a run never reaches judging against the best."""
    reason = implausible(result.val_bpb, result.track)
    if reason is None:
        return result
    return result.with_(status=Status.INVALID, error=f"implausible: {reason}")
