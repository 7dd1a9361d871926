"""Reading a train.py's hyperparameter block (docs/architecture.md, contract 2); pure.

A hyperparameter is a top-level ``NAME = literal`` assignment with an UPPER_CASE name (the
literals are in :mod:`autoresearchd.literals`). Each one is read with its space, declared
by a trailing ``# search: ...`` comment or inferred from its value
(:mod:`autoresearchd.spaces`), and its exact source span, so that
:mod:`autoresearchd.mutation` can rewrite the literal alone. Positions are in characters,
on lines split exactly as Python's tokenizer splits them.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass

from autoresearchd.errors import MutationError
from autoresearchd.literals import Value, kind_phrase, read_literal
from autoresearchd.spaces import Space, inferred_space, parse_annotation

_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_ANNOTATION = re.compile(r"#\s*search:(?P<spec>.*)")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


@dataclass(frozen=True, slots=True)
class Param:
    """One hyperparameter: its value, literal kind, space and exact source span.

    ``kind`` is the literal's form: ``int``, ``float``, ``str``, ``bool``, ``tuple`` or
    ``pow2`` (``value`` then holds ``2**k`` itself). Lines are 1-based, columns are
    character offsets on their line.
    """

    name: str
    value: Value
    kind: str
    space: Space
    line: int
    col: int
    end_line: int
    end_col: int
    source_text: str

    def movable_on(self, device: str = "") -> bool:
        """Whether a proposer on ``device`` (``cuda``, ``cpu``, empty: unknown) may change it."""
        return self.space.kind != "fixed" and self.space.applies_on(device)


def movable(params: Mapping[str, Param], device: str = "") -> dict[str, Param]:
    """The params a proposer on ``device`` may change, in source order.

    A parameter whose space names another device is treated as fixed: the script ignores it
    there, so a run that changes it only measures seed noise again.
    """
    return {name: param for name, param in params.items() if param.movable_on(device)}


@dataclass(frozen=True, slots=True)
class Slot:
    """A hyperparameter found in the AST, before its space is known."""

    name: str
    kind: str
    value: Value
    node: ast.expr
    stmt: ast.Assign


def hyperparameter_name(stmt: ast.stmt) -> str | None:
    """The target name if ``stmt`` is shaped like a hyperparameter (``NAME = ...``)."""
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
        return None
    target = stmt.targets[0]
    if isinstance(target, ast.Name) and _NAME.fullmatch(target.id):
        return target.id
    return None


def parse_module(source: str) -> ast.Module:
    """``ast.parse`` that raises :class:`MutationError` with the line of a syntax error."""
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise MutationError(f"train.py does not parse: {exc.msg}", line=exc.lineno) from None
    except ValueError as exc:  # null bytes, oversized int literals
        raise MutationError(f"train.py does not parse: {exc}") from None
    except RecursionError:
        raise MutationError("train.py does not parse: nested too deeply") from None


def find_slots(tree: ast.Module) -> dict[str, Slot]:
    """The hyperparameter assignments of ``tree`` by name; one assigned twice is an error."""
    slots: dict[str, Slot] = {}
    for stmt in tree.body:
        name = hyperparameter_name(stmt)
        found = read_literal(stmt.value) if name and isinstance(stmt, ast.Assign) else None
        if name is None or found is None or not isinstance(stmt, ast.Assign):
            continue
        if name in slots:
            first = slots[name].stmt.lineno
            raise MutationError(
                f"{name} is assigned twice (first on line {first})", line=stmt.lineno
            )
        slots[name] = Slot(name, found[0], found[1], stmt.value, stmt)
    return slots


def parse_params(
    source: str, *, spaces_from: Mapping[str, Param] | None = None
) -> dict[str, Param]:
    """The hyperparameters of ``source`` in source order.

    With ``spaces_from`` (the params of a trusted baseline), annotations in ``source`` are
    ignored and each space is the baseline's, so a script cannot widen its own space by
    editing a comment; a name the baseline lacks is fixed.
    """
    tree = parse_module(source)
    slots = find_slots(tree)
    lines = source_lines(source)
    if spaces_from is None:
        spaces = _declared_spaces(source, tree, slots)
    else:
        spaces = {name: _baseline_space(slot, spaces_from) for name, slot in slots.items()}
    params: dict[str, Param] = {}
    for name, slot in slots.items():
        space = spaces.get(name) or inferred_space(name, slot.kind, slot.value)
        params[name] = _param(slot, space, lines)
    return params


def _param(slot: Slot, space: Space, lines: list[str]) -> Param:
    line, col, end_line, end_col = node_span(slot.node, lines)
    text = cut(lines, line, col, end_line, end_col)
    return Param(slot.name, slot.value, slot.kind, space, line, col, end_line, end_col, text)


def _baseline_space(slot: Slot, baseline: Mapping[str, Param]) -> Space:
    trusted = baseline.get(slot.name)
    if trusted is None:
        return Space("fixed", choices=(slot.value,))
    if trusted.kind != slot.kind:
        kinds = kind_phrase(slot.kind), kind_phrase(trusted.kind)
        raise MutationError(
            f"{slot.name}: is {kinds[0]} literal, the baseline's is {kinds[1]}",
            line=slot.stmt.lineno,
        )
    return trusted.space


# --- annotations -------------------------------------------------------------------------


def _comments(source: str) -> dict[int, str]:
    """Comment text by line, read with ``tokenize`` so a ``#`` inside a string is not one."""
    comments: dict[int, str] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source, newline="").readline):
            if token.type == tokenize.COMMENT:
                comments[token.start[0]] = token.string
    except (tokenize.TokenError, SyntaxError) as exc:
        raise MutationError(f"train.py does not tokenize: {exc}") from None
    return comments


def _declared_spaces(source: str, tree: ast.Module, slots: Mapping[str, Slot]) -> dict[str, Space]:
    owners = _comment_owners(tree, slots)
    spaces: dict[str, Space] = {}
    for line, comment in _comments(source).items():
        match = _ANNOTATION.match(comment)
        if match is None:
            continue
        slot = owners.get(line)
        if slot is None:
            raise MutationError("search annotation is not on a hyperparameter line", line=line)
        spaces[slot.name] = parse_annotation(slot, match["spec"].strip(), line)
    return spaces


def _comment_owners(tree: ast.Module, slots: Mapping[str, Slot]) -> dict[int, Slot]:
    """The hyperparameter a trailing comment belongs to, by the line the comment is on."""
    last_on_line: dict[int, ast.stmt] = {}
    for stmt in tree.body:
        last_on_line[stmt.end_lineno or stmt.lineno] = stmt
    owners: dict[int, Slot] = {}
    for slot in slots.values():
        line = slot.stmt.end_lineno or slot.stmt.lineno
        if last_on_line[line] is slot.stmt:
            owners[line] = slot
    return owners


# --- source positions --------------------------------------------------------------------


def source_lines(source: str) -> list[str]:
    """Lines split exactly where Python's tokenizer splits them (``\\n``, ``\\r\\n``, ``\\r``)."""
    return _LINE.findall(source)


def line_offsets(lines: list[str]) -> list[int]:
    """The character offset in the source at which each line starts."""
    offsets, total = [], 0
    for line in lines:
        offsets.append(total)
        total += len(line)
    return offsets


def node_span(node: ast.AST, lines: list[str]) -> tuple[int, int, int, int]:
    """A node's (line, col, end_line, end_col) in characters (``ast`` counts UTF-8 bytes)."""
    line, end_line = node.lineno, node.end_lineno or node.lineno  # type: ignore[attr-defined]
    col = _char_col(lines[line - 1], node.col_offset)  # type: ignore[attr-defined]
    end_col = _char_col(lines[end_line - 1], node.end_col_offset)  # type: ignore[attr-defined]
    return line, col, end_line, end_col


def _char_col(line: str, byte_col: int) -> int:
    return len(line.encode("utf-8")[:byte_col].decode("utf-8"))


def cut(lines: list[str], line: int, col: int, end_line: int, end_col: int) -> str:
    """The source text between two character positions."""
    if line == end_line:
        return lines[line - 1][col:end_col]
    middle = lines[line : end_line - 1]
    return "".join([lines[line - 1][col:], *middle, lines[end_line - 1][:end_col]])
