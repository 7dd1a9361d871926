"""Reading the track's history as parameter values: what ``tpe`` and ``portfolio`` learn from.

A result teaches a history-aware proposer something only when its train.py equals the
parent's beyond hyperparameter values: the hash of everything else (its skeleton) must
match. Readings are cached by source hash, since the same history is read on every
proposal.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from autoresearchd.hyperparams import hyperparameter_name
from autoresearchd.literals import Value, read_literal
from autoresearchd.models import sha256_text

#: Sources remembered by the history cache before it starts over.
CACHE_LIMIT = 20_000


@dataclass(frozen=True, slots=True)
class Reading:
    """A source's hyperparameter values and the hash of everything else (its skeleton)."""

    skeleton: str
    values: dict[str, Value]


def read_source(source: str) -> Reading | None:
    """Split ``source`` into values and skeleton, or None if it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return None
    values: dict[str, Value] = {}
    for stmt in tree.body:
        name = hyperparameter_name(stmt)
        found = read_literal(stmt.value) if name and isinstance(stmt, ast.Assign) else None
        if name is None or found is None or not isinstance(stmt, ast.Assign):
            continue
        values[name] = found[1]
        # The literal's kind stays in the skeleton: 65536 and 2**16 are different code.
        stmt.value = ast.Constant(value=f"<{found[0]}>")
    try:
        dump = ast.dump(tree)
    except RecursionError:
        return None
    return Reading(sha256_text(dump), values)


class HistoryReader:
    """Maps sources to parameter values when they share the parent's skeleton (cached)."""

    def __init__(self) -> None:
        self._cache: dict[str, Reading | None] = {}

    def reading(self, source: str, sha256: str = "") -> Reading | None:
        key = sha256 or sha256_text(source)
        if key not in self._cache:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = read_source(source)
        return self._cache[key]

    def values(self, skeleton: str, source: str, sha256: str = "") -> dict[str, Value] | None:
        """The values of ``source`` if its code equals the skeleton's beyond parameters."""
        reading = self.reading(source, sha256)
        return reading.values if reading and reading.skeleton == skeleton else None
