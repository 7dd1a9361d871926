"""Tests for the pure hyperparameter block: literals, spaces, hyperparams and mutation."""

from __future__ import annotations

import ast
import io
import math
import random
import tokenize
from pathlib import Path

import pytest

from autoresearchd.errors import MutationError
from autoresearchd.hyperparams import Param, movable, parse_params
from autoresearchd.literals import float_text
from autoresearchd.mutation import apply_changes, describe, int_unit, neighbour, sample_changes
from autoresearchd.spaces import Space

FIXTURES = Path(__file__).parent / "fixtures"
KARPATHY = (FIXTURES / "karpathy_train.py").read_text(encoding="utf-8")
ANNOTATED = (FIXTURES / "annotated_train.py").read_text(encoding="utf-8")


def skeleton(source: str) -> str:
    """The module's AST dump with every top-level UPPER_CASE assignment's value blanked."""
    tree = ast.parse(source)
    for stmt in tree.body:
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
            and stmt.targets[0].id.isupper()
        ):
            stmt.value = ast.Constant("<blank>")
    return ast.dump(tree)


def comments(source: str) -> list[str]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [token.string for token in tokens if token.type == tokenize.COMMENT]


# --- parsing -----------------------------------------------------------------------------


def test_karpathy_layout_yields_every_constant_with_its_kind_and_value() -> None:
    params = parse_params(KARPATHY)
    assert {name: (p.kind, p.value) for name, p in params.items()} == {
        "ASPECT_RATIO": ("int", 64),
        "HEAD_DIM": ("int", 128),
        "WINDOW_PATTERN": ("str", "SSSL"),
        "TOTAL_BATCH_SIZE": ("pow2", 2**19),
        "EMBEDDING_LR": ("float", 0.6),
        "UNEMBEDDING_LR": ("float", 0.004),
        "MATRIX_LR": ("float", 0.04),
        "SCALAR_LR": ("float", 0.5),
        "WEIGHT_DECAY": ("float", 0.2),
        "ADAM_BETAS": ("tuple", (0.8, 0.95)),
        "WARMUP_RATIO": ("float", 0.0),
        "WARMDOWN_RATIO": ("float", 0.5),
        "FINAL_LR_FRAC": ("float", 0.0),
        "DEPTH": ("int", 8),
        "DEVICE_BATCH_SIZE": ("int", 128),
    }


def test_karpathy_layout_gets_inferred_spaces_relative_to_each_value() -> None:
    spaces = {name: str(p.space) for name, p in parse_params(KARPATHY).items()}
    assert spaces["MATRIX_LR"] == "log 0.004..0.4 (inferred)"
    assert spaces["EMBEDDING_LR"] == "log 0.06..1.0 (inferred)"  # a fraction is capped at 1
    assert spaces["DEPTH"] == "int 2..32 (inferred)"
    assert spaces["DEVICE_BATCH_SIZE"] == "int 32..512 (inferred)"
    assert spaces["TOTAL_BATCH_SIZE"] == "pow2 16..22 (inferred)"
    assert spaces["WINDOW_PATTERN"] == 'fixed "SSSL"'
    assert spaces["ADAM_BETAS"] == "fixed (0.8, 0.95)"
    assert spaces["WARMUP_RATIO"] == "fixed 0.0"  # zero is never scaled


def test_param_records_the_exact_source_span_of_its_literal() -> None:
    param = parse_params(KARPATHY)["TOTAL_BATCH_SIZE"]
    line = KARPATHY.splitlines()[param.line - 1]
    assert line[param.col : param.end_col] == param.source_text == "2**19"
    assert param.line == param.end_line


def test_annotated_spaces_of_every_kind_are_read_from_trailing_comments() -> None:
    spaces = {name: p.space for name, p in parse_params(ANNOTATED).items()}
    assert spaces["MATRIX_LR"] == Space("log", 0.005, 0.2, declared=True)
    assert spaces["WEIGHT_DECAY"] == Space("float", 0.0, 0.3, declared=True)
    assert spaces["DEPTH"] == Space("int", 2, 8, declared=True)
    assert spaces["TOTAL_BATCH_SIZE"] == Space("pow2", 10, 17, declared=True)
    assert spaces["HEAD_DIM"] == Space("choice", choices=(32, 64, 128), declared=True)
    assert spaces["WINDOW_PATTERN"].choices == ("L", "SL", "SSL", "SSSL")
    assert spaces["USE_QK_NORM"].choices == (True, False)
    assert spaces["SOFTCAP"] == Space("float", -30.0, -5.0, declared=True)
    assert spaces["SEQ_LEN"] == Space("fixed", choices=(256,), declared=True)
    assert spaces["WARMDOWN_RATIO"] == Space("log", 0.05, 1.0)  # plain comment: inferred
    assert spaces["INIT_SEED"].kind == "fixed"  # the seed is never a hyperparameter


def test_hash_inside_a_string_is_not_an_annotation() -> None:
    source = 'X = "a # search: log 1..2"  # search: choice "a # search: log 1..2" "b"\n'
    source += 'print("# search: int 1..2")\n'
    assert parse_params(source)["X"].space.choices == ("a # search: log 1..2", "b")


def test_non_literals_lowercase_names_and_multi_target_assignments_are_not_params() -> None:
    source = "x = 1\nA = B = 2\nC = foo()\nD: int = 3\nE = 2**99\nF = 3**2\nG = None\nH = 4\n"
    assert list(parse_params(source)) == ["H"]


def test_a_negative_number_and_a_multi_line_tuple_are_literals() -> None:
    params = parse_params("NEG = -0.5\nBETAS = (\n    0.9,\n    0.99,\n)\n")
    assert (params["NEG"].value, params["NEG"].source_text) == (-0.5, "-0.5")
    assert params["BETAS"].value == (0.9, 0.99)
    assert (params["BETAS"].line, params["BETAS"].end_line) == (2, 5)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("LR = 0.04  # search: log 0.2..0.005", "LOW < HIGH"),
        ("LR = 0.04  # search: log 0.0..0.2", "LOW > 0"),
        ("LR = 0.04  # search: log 0.005-0.2", "LOW..HIGH"),
        ("LR = 0.04  # search: log a..b", "not numbers"),
        ("LR = 0.04  # search: int 1..4", "applies to an int literal"),
        ("N = 4  # search: int 2.5..8", "not numbers"),
        ("N = 2**4  # search: pow2 2..99", "exponents must lie"),
        ("N = 4  # search: banana 1..9", "malformed search annotation 'banana 1..9'"),
        ("N = 4  # search: fixed please", "malformed"),
        ("N = 4  # search:", "malformed"),
        ('W = "L"  # search: choice', "malformed"),
        ('W = "L"  # search: choice "L" 3', "choice 3 is not a str literal"),
        ('W = "L"  # search: choice "L" SL', "malformed"),
        ("N = 4  # search: choice 1 -x", "malformed"),
        ("LR = 0.9  # search: log 0.005..0.2", "0.9 is outside log 0.005..0.2"),
        ('W = "X"  # search: choice "L" "SL"', '"X" is outside choice "L" "SL"'),
        ("def f():\n    pass  # search: int 1..2", "not on a hyperparameter line"),
    ],
)
def test_malformed_annotation_raises_with_its_line(line: str, message: str) -> None:
    source = "import os\n\n" + line + "\n"
    with pytest.raises(MutationError, match=message) as caught:
        parse_params(source)
    assert caught.value.line == source.splitlines().index(line.splitlines()[-1]) + 1


def test_numeric_and_negative_choices_parse() -> None:
    params = parse_params("N = -2  # search: choice -2 0 3\nF = 0.5  # search: choice 0.5 1e-3\n")
    assert params["N"].space.choices == (-2, 0, 3)
    assert params["F"].space.choices == (0.5, 0.001)


def test_duplicate_param_and_syntax_error_raise_with_line() -> None:
    with pytest.raises(MutationError, match="assigned twice") as caught:
        parse_params("A = 1\nB = 2\nA = 3\n")
    assert caught.value.line == 3
    with pytest.raises(MutationError, match="does not parse") as caught:
        parse_params("A = 1\ndef (\n")
    assert caught.value.line == 2


def test_a_source_nested_too_deeply_to_parse_raises_mutation_error() -> None:
    with pytest.raises(MutationError, match="nested too deeply"):
        parse_params("def f():\n    return " + "+1" * 5000 + "\n")


def test_spaces_from_a_baseline_replace_the_scripts_own_annotations() -> None:
    baseline = parse_params("LR = 0.04  # search: log 0.005..0.2\nN = 4\n")
    widened = "LR = 0.04  # search: log 0.005..9.0\nN = 5\nEXTRA = 1.0\n"
    params = parse_params(widened, spaces_from=baseline)
    assert params["LR"].space == Space("log", 0.005, 0.2, declared=True)
    assert params["N"].space == Space("int", 1, 16)  # inferred from the baseline's 4, not 5
    assert params["EXTRA"].space.kind == "fixed"
    with pytest.raises(MutationError, match="the baseline's is a float") as caught:
        parse_params('LR = "x"\n', spaces_from=baseline)
    assert caught.value.line == 1


# --- device qualifiers --------------------------------------------------------------------

QUALIFIED = """\
DEPTH = 8  # search: int 2..16 device=cuda
ACT = "relu"  # search: choice "relu" "gelu" device=cpu
LR = 0.01  # search: log 0.001..0.1
SEQ = 256  # search: fixed
"""


def test_a_device_qualifier_after_any_space_is_kept_in_the_space() -> None:
    params = parse_params(QUALIFIED)
    assert params["DEPTH"].space == Space("int", 2, 16, declared=True, device="cuda")
    assert params["ACT"].space == Space(
        "choice", choices=("relu", "gelu"), declared=True, device="cpu"
    )
    assert params["LR"].space == Space("log", 0.001, 0.1, declared=True)  # device None
    assert str(params["DEPTH"].space) == "int 2..16 device=cuda"
    assert str(params["ACT"].space) == 'choice "relu" "gelu" device=cpu'


def test_a_qualified_param_rewrites_and_describes_as_any_other() -> None:
    changed = apply_changes(QUALIFIED, {"DEPTH": 9})
    assert changed.splitlines()[0] == "DEPTH = 9  # search: int 2..16 device=cuda"
    assert describe(parse_params(QUALIFIED), {"DEPTH": 9}) == "DEPTH 8 → 9"


def test_a_baselines_device_qualifier_holds_for_a_script_judged_against_it() -> None:
    stranger = QUALIFIED.replace(" device=cuda", "")
    params = parse_params(stranger, spaces_from=parse_params(QUALIFIED))
    assert params["DEPTH"].space.device == "cuda"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("int 2..16 device=tpu", "expected device=cuda or device=cpu"),
        ("int 2..16 device=", "expected device=cuda or device=cpu"),
        ("int 2..16 device=cuda 4", "expected device=cuda or device=cpu at its end"),
        ("device=cuda", "expected a space before it"),
    ],
)
def test_a_bad_device_qualifier_is_a_one_line_error_naming_the_parameter(
    spec: str, message: str
) -> None:
    source = f"import os\nDEPTH = 8  # search: {spec}\n"
    with pytest.raises(MutationError, match=message) as caught:
        parse_params(source)
    assert str(caught.value).startswith(f"line 2: DEPTH: malformed search annotation {spec!r}")
    assert "\n" not in str(caught.value)
    assert caught.value.line == 2


def test_movable_leaves_out_fixed_params_and_those_another_device_reads() -> None:
    params = parse_params(QUALIFIED)
    assert list(movable(params, "cuda")) == ["DEPTH", "LR"]
    assert list(movable(params, "cpu")) == ["ACT", "LR"]
    assert list(movable(params, "")) == ["DEPTH", "ACT", "LR"]  # unknown device: all but fixed
    assert list(movable(params)) == ["DEPTH", "ACT", "LR"]


def test_an_unqualified_space_applies_on_every_device() -> None:
    lr = parse_params(QUALIFIED)["LR"]
    assert all(lr.space.applies_on(device) for device in ("cuda", "cpu", ""))
    assert all(lr.movable_on(device) for device in ("cuda", "cpu", ""))


# --- moves -------------------------------------------------------------------------------


def test_int_unit_is_one_below_sixteen_and_keeps_power_of_two_alignment_above() -> None:
    assert [int_unit(v) for v in (1, 8, 15, 16, 64, 100, 128, 768)] == [1, 1, 1, 2, 8, 4, 16, 64]


@pytest.mark.parametrize("name", list(parse_params(ANNOTATED)))
def test_neighbour_moves_inside_the_space_and_never_returns_the_same_value(name: str) -> None:
    param = parse_params(ANNOTATED)[name]
    rng = random.Random(name)
    for _ in range(200):
        value = neighbour(param, rng)
        assert param.space.contains(value)
        assert type(value) is type(param.value)
        assert (value == param.value) == (param.space.kind == "fixed")


def test_int_steps_are_one_or_two_units() -> None:
    params = parse_params(KARPATHY)
    rng = random.Random(0)
    depth = {neighbour(params["DEPTH"], rng) for _ in range(200)}
    batch = {neighbour(params["DEVICE_BATCH_SIZE"], rng) for _ in range(200)}
    assert depth == {6, 7, 9, 10}
    assert batch == {96, 112, 144, 160}


def test_pow2_steps_its_exponent_by_one() -> None:
    param = parse_params(KARPATHY)["TOTAL_BATCH_SIZE"]
    rng = random.Random(0)
    assert {neighbour(param, rng) for _ in range(100)} == {2**18, 2**20}


def test_log_moves_are_multiplicative_and_short() -> None:
    param = parse_params(KARPATHY)["MATRIX_LR"]
    rng = random.Random(0)
    for _ in range(300):
        value = neighbour(param, rng)
        assert isinstance(value, float)
        assert 1.1 * 0.99 <= max(value / 0.04, 0.04 / value) <= 2.0 * 1.01
        assert len(f"{value:.15g}".lstrip("0.").replace(".", "")) <= 3  # 3 significant digits


def test_a_random_walk_stays_inside_the_baselines_space() -> None:
    """Chained mutations judged in the baseline's spaces never drift outside them."""
    baseline = parse_params(KARPATHY)
    rng = random.Random(7)
    source = KARPATHY
    for _ in range(300):
        params = parse_params(source, spaces_from=baseline)
        source = apply_changes(source, sample_changes(params, rng, 3))
    for name, param in parse_params(source).items():
        assert baseline[name].space.contains(param.value), name


def test_a_param_at_a_bound_can_still_move_inward() -> None:
    param = parse_params("N = 8  # search: int 2..8\n")["N"]
    rng = random.Random(1)
    assert {neighbour(param, rng) for _ in range(50)} == {6, 7}


def test_sample_changes_picks_one_to_max_changes_movable_params() -> None:
    params = parse_params(ANNOTATED)
    rng = random.Random(3)
    sizes = set()
    for _ in range(300):
        changes = sample_changes(params, rng, 3)
        sizes.add(len(changes))
        assert all(params[name].space.kind != "fixed" for name in changes)
        assert "INIT_SEED" not in changes
    assert sizes == {1, 2, 3}


def test_sample_changes_is_empty_when_nothing_can_move() -> None:
    params = parse_params('A = "x"\nB = 0.0\nSEED = 3\nT = (1, 2)\n')
    assert sample_changes(params, random.Random(0), 3) == {}


def test_same_seed_gives_same_changes() -> None:
    params = parse_params(KARPATHY)
    first = [sample_changes(params, random.Random(seed), 3) for seed in range(20)]
    again = [sample_changes(params, random.Random(seed), 3) for seed in range(20)]
    assert first == again


# --- rewriting ---------------------------------------------------------------------------


def test_apply_changes_rewrites_only_the_literal_spans() -> None:
    changed = apply_changes(KARPATHY, {"MATRIX_LR": 0.05, "TOTAL_BATCH_SIZE": 2**20, "DEPTH": 10})
    before, after = KARPATHY.splitlines(), changed.splitlines()
    diff = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert diff == [
        ("TOTAL_BATCH_SIZE = 2**19 # ~524K tokens per optimizer step",
         "TOTAL_BATCH_SIZE = 2**20 # ~524K tokens per optimizer step"),
        ("MATRIX_LR = 0.04        # learning rate for matrix parameters (Muon)",
         "MATRIX_LR = 0.05        # learning rate for matrix parameters (Muon)"),
        ("DEPTH = 8               # number of transformer layers",
         "DEPTH = 10               # number of transformer layers"),
    ]  # fmt: skip


def test_pow2_keeps_its_spacing_and_strings_keep_their_quotes() -> None:
    source = "B = 2 ** 19  # batch\nW = \"SSSL\"\nV = 'L'\n"
    changed = apply_changes(source, {"B": 2**17, "W": "SL", "V": "SSL"})
    assert changed == "B = 2 ** 17  # batch\nW = \"SL\"\nV = 'SSL'\n"


def test_apply_changes_handles_crlf_multibyte_text_and_multi_line_literals() -> None:
    source = 'A = "é"; B = 0.5\r\nT = (\r\n    0.9,\r\n    0.99,\r\n)  # betas\r\nC = 1\r\n'
    changed = apply_changes(source, {"B": 0.25, "T": (0.8, 0.95), "C": 2})
    assert changed == 'A = "é"; B = 0.25\r\nT = (0.8, 0.95)  # betas\r\nC = 2\r\n'


def test_apply_changes_writes_negative_values_and_coerces_ints_for_floats() -> None:
    changed = apply_changes("A = -1.5\nB = 2.0\n", {"A": 1.5, "B": -3})
    assert changed == "A = 1.5\nB = -3.0\n"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"NOPE": 1}, "NOPE is not a hyperparameter"),
        ({"F": "0.1"}, "F: expected a float value, got '0.1'"),
        ({"F": math.inf}, "expected a float value"),
        ({"N": 2.0}, "N: expected an int value"),
        ({"N": True}, "N: expected an int value"),
        ({"P": 3 * 2**10}, "P: expected a pow2 value"),
        ({"S": 1}, "S: expected a str value"),
        ({"T": [1, 2]}, "T: expected a tuple value"),
    ],
)
def test_apply_changes_refuses_unknown_names_and_wrong_kinds(
    changes: dict[str, object], message: str
) -> None:
    source = 'F = 0.1\nN = 3\nP = 2**10\nS = "x"\nT = (1, 2)\n'
    with pytest.raises(MutationError, match=message):
        apply_changes(source, changes)


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.05, "0.05"), (5.0, "5.0"), (3e-05, "3e-5"), (1e16, "1e16"), (-0.25, "-0.25")],
)
def test_float_text_is_short_and_never_padded(value: float, text: str) -> None:
    assert float_text(value) == text
    assert float(text) == value


def test_describe_uses_the_community_format_in_source_order() -> None:
    params = parse_params(KARPATHY)
    changes = {"DEPTH": 9, "MATRIX_LR": 0.05, "TOTAL_BATCH_SIZE": 2**20, "WINDOW_PATTERN": "L"}
    assert describe(params, changes) == (
        'WINDOW_PATTERN "SSSL" → "L", TOTAL_BATCH_SIZE 2**19 → 2**20, '
        "MATRIX_LR 0.04 → 0.05, DEPTH 8 → 9"
    )


@pytest.mark.parametrize("fixture", ["karpathy", "annotated"])
def test_seeded_mutations_keep_everything_but_the_chosen_literals(fixture: str) -> None:
    """Property check over many seeds: re-parses, same skeleton, same comments, in space."""
    source = KARPATHY if fixture == "karpathy" else ANNOTATED
    params = parse_params(source)
    for seed in range(120):
        changes = sample_changes(params, random.Random(seed), 3)
        assert changes, seed
        mutated = apply_changes(source, changes)
        assert skeleton(mutated) == skeleton(source)
        assert comments(mutated) == comments(source)
        _assert_only_changes(params, parse_params(mutated), changes)
        described = describe(params, changes).split(", ")
        assert [part.split(" ")[0] for part in described] == [n for n in params if n in changes]


def _assert_only_changes(
    before: dict[str, Param], after: dict[str, Param], changes: dict[str, object]
) -> None:
    assert list(after) == list(before)
    for name, param in after.items():
        expected = changes.get(name, before[name].value)
        assert param.value == expected and type(param.value) is type(expected), name
        assert before[name].space.contains(param.value), name
        assert param.kind == before[name].kind, name
