"""What every proposer shares: the :class:`Proposer` Protocol, its context and fresh candidates.

A proposer turns a parent train.py into a fresh candidate. It is handed a
:class:`ProposalContext` that the worker builds from the collective memory, and an
``is_known`` callback that asks the memory whether a source was ever run or is claimed
now; :func:`fresh_candidate` applies a set of changes and keeps the result only when
neither this proposer nor the swarm has seen it. The strategies build on this module and
:mod:`autoresearchd.proposers.auto` picks one from the config, so this module imports none
of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from autoresearchd.hyperparams import Param
from autoresearchd.literals import Value
from autoresearchd.models import Candidate, Note, Result, sha256_text
from autoresearchd.mutation import apply_changes, describe

DEFAULT_ATTEMPTS = 50

#: Asks the collective memory whether a source hash was ever run or is claimed now.
IsKnown = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class ProposalContext:
    """What the swarm knows when a proposal is made (empty when the memory is out of reach).

    ``results`` are the track's results, newest first, from every agent; ``in_flight``
    holds the sources of candidates being run now, which a proposal should steer away from;
    ``hypotheses`` and ``insights`` are the swarm's notes, newest first. ``device`` is the
    kind of device the candidate will run on (``cuda`` or ``cpu``; empty when unknown): a
    parameter whose space names another kind is left alone (:func:`hyperparams.movable`).
    ``tier`` is the device's VRAM tier (empty when unknown): history-aware search learns
    from that tier's results, since another tier's val_bpb sits on another scale.
    """

    results: Sequence[Result] = ()
    in_flight: Sequence[str] = ()
    hypotheses: Sequence[Note] = ()
    insights: Sequence[Note] = ()
    device: str = ""
    tier: str = ""


EMPTY_CONTEXT = ProposalContext()


class Proposer(Protocol):
    """A search strategy: one fresh candidate derived from ``parent``, or None if it has none.

    This is a Protocol; implementations raise :class:`MutationError` when the parent's
    hyperparameter block cannot be read, and :class:`ProposalError` when a failure is worth
    recording as a result. ``uses_history`` says whether ``context`` is read, so the worker
    fetches the history only for strategies that learn from it.
    """

    name: str
    uses_history: bool

    async def propose(
        self, parent: Candidate, is_known: IsKnown, context: ProposalContext = EMPTY_CONTEXT
    ) -> Candidate | None: ...


async def fresh_candidate(
    proposer: str,
    parent: Candidate,
    params: Mapping[str, Param],
    changes: Mapping[str, Value],
    proposed: set[str],
    is_known: IsKnown,
) -> Candidate | None:
    """``parent`` with ``changes``, unless there are none or the result is not fresh.

    Fresh means neither proposed before by this proposer (``proposed``, which it joins) nor
    known to the swarm (run or claimed).
    """
    if not changes:
        return None
    source = apply_changes(parent.source, changes)
    digest = sha256_text(source)
    if digest in proposed or await is_known(digest):
        return None
    proposed.add(digest)
    return Candidate(source, parent.sha256, describe(params, changes), proposer, digest)
