"""The ``mixed`` strategy: a weighted draw among other proposers for each proposal."""

from __future__ import annotations

import random
from collections.abc import Mapping

from autoresearchd.models import Candidate
from autoresearchd.proposers.base import EMPTY_CONTEXT, IsKnown, ProposalContext, Proposer


class MixedProposer:
    """Draws a strategy by weight for each proposal; one with nothing to offer passes to the next.

    The candidate keeps the name of the strategy that made it, so results record it.
    """

    name = "mixed"

    def __init__(
        self, choices: Mapping[str, tuple[float, Proposer]], rng: random.Random | None = None
    ) -> None:
        self.choices = {name: pair for name, pair in choices.items() if pair[0] > 0}
        self._rng = rng or random.Random()
        self.uses_history = any(p.uses_history for _, p in self.choices.values())

    def order(self) -> list[str]:
        """Strategy names in a weighted random order (weighted sampling without replacement)."""
        keys = {name: self._rng.random() ** (1.0 / w) for name, (w, _) in self.choices.items()}
        return sorted(keys, key=keys.__getitem__, reverse=True)

    async def propose(
        self, parent: Candidate, is_known: IsKnown, context: ProposalContext = EMPTY_CONTEXT
    ) -> Candidate | None:
        for name in self.order():
            candidate = await self.choices[name][1].propose(parent, is_known, context)
            if candidate is not None:
                return candidate
        return None
