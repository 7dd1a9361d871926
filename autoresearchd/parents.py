"""Which network best a worker may mutate: the trust policy applied to parents (contract 2).

Under ``params-only`` a best from the memory becomes a parent only if the trust check accepts
it against the local baseline; a refused best falls back to the last parent accepted for that
baseline. :class:`Parents` keeps that cache for one worker and shares the daemon's set of
refused sha256s, so each refusal is reported once. It decides only; the worker logs and
records the refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoresearchd.models import Best, Candidate
from autoresearchd.trust import check_params_only


@dataclass(frozen=True, slots=True)
class Refusal:
    """A network best refused for the first time, and why: to be recorded as ``invalid``."""

    candidate: Candidate
    reason: str


class Parents:
    """Chooses a worker's parent from a best; ``refused`` is shared by the daemon's workers."""

    def __init__(self, refused: set[str]) -> None:
        self.refused = refused
        self._trusted: dict[str, Candidate] = {}  # network bests accepted, by baseline sha

    def choose(
        self, best: Best, baseline: Candidate, trust: str
    ) -> tuple[Candidate, Refusal | None]:
        """``best`` as a parent if ``trust`` accepts it, else the last trusted parent.

        A refusal is returned only the first time a best is refused; after that the fallback
        is chosen silently.
        """
        candidate = Candidate(
            source=best.train_py, parent_sha256=None, description="best", proposer="memory"
        )
        if trust != "params-only" or candidate.sha256 == baseline.sha256:
            return candidate, None
        fallback = self._trusted.get(baseline.sha256, baseline)
        if candidate.sha256 in self.refused:
            return fallback, None
        verdict = check_params_only(baseline.source, candidate.source)
        if verdict.ok:
            self._trusted[baseline.sha256] = candidate
            return candidate, None
        self.refused.add(candidate.sha256)
        return fallback, Refusal(candidate, verdict.reason)
