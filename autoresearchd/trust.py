"""The params-only trust check (docs/architecture.md, contract 2): may a stranger's train.py run?

A candidate is accepted only if its AST equals the trusted baseline's once hyperparameter
literal values are set aside, and every new value is a literal of the baseline's kind inside
the baseline's space (declared or inferred, never read from the candidate's own comments).
Before the AST is compared, the candidate must be UTF-8 with no other coding declaration
(Python honours a ``# coding:`` comment when it runs the file, which could hide code from a
parser reading the text) and may use ASCII identifiers only (look-alike letters and NFKC
tricks make names that read the same but differ). The verdict names the first offending
difference with its line, e.g. ``line 42: MATRIX_LR: 0.9 is outside log 0.005..0.2``.
"""

from __future__ import annotations

import ast
import difflib
import io
import tokenize
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeGuard

from autoresearchd.hyperparams import Param, hyperparameter_name, parse_module, parse_params
from autoresearchd.literals import kind_phrase, literal_text, read_literal

SHOWN_CHARS = 60
_ALLOWED_ENCODINGS = ("utf-8", "utf-8-sig")
#: Nodes whose source text makes a readable "what changed"; others report their parent.
_SHOWABLE = (ast.stmt, ast.expr, ast.arg, ast.keyword, ast.alias, ast.arguments)


@dataclass(frozen=True, slots=True)
class TrustVerdict:
    """Accepted (``ok``), or refused with the first offending difference and its line."""

    ok: bool
    reason: str = ""
    line: int | None = None


ACCEPTED = TrustVerdict(ok=True)


def check_params_only(baseline: str, candidate: str) -> TrustVerdict:
    """Judge ``candidate`` against the trusted ``baseline``.

    Raises :class:`MutationError` if the baseline itself cannot be read: that is a local
    configuration problem, not a verdict on the candidate.
    """
    params = parse_params(baseline)
    base_tree = parse_module(baseline)
    refusal = _encoding_refusal(candidate)
    if refusal:
        return refusal
    try:
        # Parse the bytes Python will run, so any coding declaration is honoured as it would be.
        tree = ast.parse(candidate.encode("utf-8"))
    except SyntaxError as exc:
        return _refuse(exc.lineno or 1, f"does not parse: {exc.msg}")
    except ValueError as exc:
        return _refuse(1, f"does not parse: {exc}")
    except RecursionError:
        return _refuse(1, "nested too deeply to check")
    try:
        return (
            _identifier_refusal(candidate)
            or _compare_block(base_tree.body, tree.body, params, _last_line(tree))
            or ACCEPTED
        )
    except RecursionError:  # a parseable tree can still outgrow Python's recursion limit
        return _refuse(1, "nested too deeply to check")


def _last_line(tree: ast.Module) -> int:
    return (tree.body[-1].end_lineno or 1) if tree.body else 1


def _refuse(line: int, what: str) -> TrustVerdict:
    return TrustVerdict(ok=False, reason=f"line {line}: {what}", line=line)


def _encoding_refusal(candidate: str) -> TrustVerdict | None:
    readline = io.BytesIO(candidate.encode("utf-8")).readline
    try:
        encoding, _ = tokenize.detect_encoding(readline)
    except SyntaxError as exc:
        return _refuse(exc.lineno or 1, f"bad coding declaration: {exc.msg}")
    if encoding not in _ALLOWED_ENCODINGS:
        return _refuse(1, f"coding declaration {encoding!r} is not allowed (UTF-8 only)")
    return None


def _identifier_refusal(candidate: str) -> TrustVerdict | None:
    try:
        for token in tokenize.generate_tokens(io.StringIO(candidate, newline="").readline):
            if token.type == tokenize.NAME and not token.string.isascii():
                return _refuse(token.start[0], f"non-ASCII identifier {token.string!r}")
    except (tokenize.TokenError, SyntaxError) as exc:
        return _refuse(1, f"does not tokenize: {exc}")
    return None


# --- statement blocks --------------------------------------------------------------------


def _key(stmt: ast.stmt, top: bool) -> str:
    """What two statements must share to be matched; a top-level param's value is set aside."""
    name = hyperparameter_name(stmt) if top else None
    return f"param {name}" if name else ast.dump(stmt)


def _compare_block(
    base: Sequence[ast.stmt],
    cand: Sequence[ast.stmt],
    params: Mapping[str, Param] | None,
    line: int,
) -> TrustVerdict | None:
    """The first difference between two statement lists (``params`` only at module level)."""
    top = params is not None
    matcher = difflib.SequenceMatcher(
        a=[_key(s, top) for s in base], b=[_key(s, top) for s in cand], autojunk=False
    )
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        for b, c in zip(base[i1:i2], cand[j1:j2], strict=False):
            found = _compare_param(b, c, params) if tag == "equal" else _compare_nodes(b, c)
            if found:
                return found
        found = _extra(base[i1 + (j2 - j1) : i2], cand[j1 + (i2 - i1) : j2], cand[j2:], line)
        if found:
            return found
    return None


def _extra(
    removed: Sequence[ast.stmt], added: Sequence[ast.stmt], after: Sequence[ast.stmt], line: int
) -> TrustVerdict | None:
    """Unpaired statements; a removal is reported where the next candidate statement is."""
    if added:
        return _refuse(added[0].lineno, f"new statement: {_show(added[0])}")
    if removed:
        where = after[0].lineno if after else line
        return _refuse(where, f"statement removed: {_show(removed[0])}")
    return None


def _compare_param(
    base: ast.stmt, cand: ast.stmt, params: Mapping[str, Param] | None
) -> TrustVerdict | None:
    name = hyperparameter_name(base) if params is not None else None
    param = params.get(name) if params is not None and name else None
    if param is None or not isinstance(cand, ast.Assign):
        return _compare_nodes(base, cand)
    return _judge_value(param, cand.value)


def _judge_value(param: Param, node: ast.expr) -> TrustVerdict | None:
    found = read_literal(node)
    if found is None:
        return _refuse(node.lineno, f"{param.name}: literal became an expression: {_show(node)}")
    kind, value = found
    text = literal_text(kind, value, '"')
    if kind != param.kind:
        return _refuse(
            node.lineno, f"{param.name}: expected {kind_phrase(param.kind)} literal, got {text}"
        )
    if param.space.kind == "fixed" and not param.space.contains(value):
        old = literal_text(param.kind, param.value, param.source_text)
        return _refuse(node.lineno, f"{param.name}: {text} differs from the fixed value {old}")
    if not param.space.contains(value):
        return _refuse(node.lineno, f"{param.name}: {text} is outside {param.space}")
    return None


# --- nodes -------------------------------------------------------------------------------

_Shown = tuple[ast.AST, ast.AST]


def _compare_nodes(base: ast.stmt, cand: ast.stmt) -> TrustVerdict | None:
    return _diff(base, cand, (base, cand), cand.lineno)


def _diff(base: object, cand: object, shown: _Shown, line: int) -> TrustVerdict | None:
    """The first difference, reported on the innermost readable node (``shown``) around it."""
    if isinstance(base, list) and isinstance(cand, list):
        return _diff_list(base, cand, shown, line)
    if isinstance(base, ast.AST) and isinstance(cand, ast.AST):
        if isinstance(base, _SHOWABLE) and isinstance(cand, _SHOWABLE):
            shown, line = (base, cand), getattr(cand, "lineno", line)
        if type(base) is not type(cand):
            return _changed(shown, line)
        for field in base._fields:
            found = _diff(getattr(base, field, None), getattr(cand, field, None), shown, line)
            if found:
                return found
        return None
    if type(base) is type(cand) and base == cand:
        return None
    return _changed(shown, line)


def _diff_list(
    base: list[object], cand: list[object], shown: _Shown, line: int
) -> TrustVerdict | None:
    if _statements(base) and _statements(cand):
        return _compare_block(base, cand, None, line)
    for b, c in zip(base, cand, strict=False):
        found = _diff(b, c, shown, line)
        if found:
            return found
    if len(cand) > len(base):
        extra = cand[len(base)]
        what = f"added {_show_item(extra)} to: {_show(shown[1])}"
        return _refuse(getattr(extra, "lineno", line), what)
    if len(base) > len(cand):
        what = f"removed {_show_item(base[len(cand)])} from: {_show(shown[1])}"
        return _refuse(line, what)
    return None


def _statements(items: list[object]) -> TypeGuard[list[ast.stmt]]:
    return all(isinstance(item, ast.stmt) for item in items)


def _changed(shown: _Shown, line: int) -> TrustVerdict:
    base, cand = shown
    return _refuse(line, f"changed code: {_show(cand)} (was: {_show(base)})")


def _show(node: ast.AST) -> str:
    """The first line of a node's source (past decorators), shortened for a one-line reason."""
    if not isinstance(node, _SHOWABLE):
        return type(node).__name__
    lines = ast.unparse(node).split("\n")
    text = next((line for line in lines if not line.startswith("@")), lines[0])
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _show_item(item: object) -> str:
    return _show(item) if isinstance(item, ast.AST) else repr(item)
