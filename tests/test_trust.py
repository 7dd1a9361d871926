"""Tests for the params-only trust check: hostile variants refused, honest mutations accepted."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from autoresearchd.errors import MutationError
from autoresearchd.hyperparams import parse_params
from autoresearchd.models import Candidate
from autoresearchd.mutation import apply_changes, sample_changes
from autoresearchd.proposers.perturb import PerturbProposer
from autoresearchd.trust import TrustVerdict, check_params_only

FIXTURES = Path(__file__).parent / "fixtures"
BASELINE = (FIXTURES / "annotated_train.py").read_text(encoding="utf-8")
KARPATHY = (FIXTURES / "karpathy_train.py").read_text(encoding="utf-8")


def variant(old: str, new: str, source: str = BASELINE) -> str:
    assert source.count(old) == 1, f"fixture text not found exactly once: {old!r}"
    return source.replace(old, new)


def line_of(text: str, source: str) -> int:
    return source[: source.index(text)].count("\n") + 1


MAIN_CALL = 'if __name__ == "__main__":\n    main()\n'
HARNESS = "from autoresearchd.harness import evaluate_bpb, make_dataloader, report"
LR_LINE = "MATRIX_LR = 0.04  # search: log 0.005..0.2"

#: (id, text to replace, replacement, a fragment the reason must contain, where it must point)
HOSTILE: list[tuple[str, str, str, str, str]] = [
    ("new-import", "import math\n", "import math\nimport subprocess\n",
     "new statement: import subprocess", "import subprocess"),
    ("new-import-in-function", "    model = Model()\n", "    import socket\n    model = Model()\n",
     "new statement: import socket", "    import socket"),
    ("call-in-default-argument", "warmup: float = WARMUP_RATIO",
     "warmup: float = __import__('os').system('id')", "changed code: __import__('os')",
     "def lr_schedule"),
    ("call-in-decorator", "@torch.no_grad()", "@torch.no_grad(__import__('os').getpid())",
     "added __import__('os').getpid() to: torch.no_grad(", "@torch.no_grad"),
    ("new-decorator", "@torch.no_grad()\n", "@torch.no_grad()\n@print\n",
     "added print to: def estimate(", "@print"),
    ("call-in-f-string", 'loss {loss.item():.4f} #', "loss {__import__('os').getcwd()} #",
     "changed code: ", "            print(f"),
    ("call-in-lambda-default", "lambda v, scale=1.0:", "lambda v, scale=exec('import os'):",
     "changed code: exec('import os') (was: 1.0)", "    transform"),
    ("harness-import-module", HARNESS, HARNESS.replace("autoresearchd.harness", "evil.harness"),
     "changed code: from evil.harness import", "from evil"),
    ("harness-import-extra-name", HARNESS, HARNESS + ", _unsafe_hook",
     "added _unsafe_hook to: from autoresearchd.harness", "from autoresearchd.harness"),
    ("literal-becomes-arithmetic", "MATRIX_LR = 0.04 ", "MATRIX_LR = 0.04 + 0.01 ",
     "MATRIX_LR: literal became an expression: 0.04 + 0.01", "MATRIX_LR ="),
    ("literal-becomes-call", "MATRIX_LR = 0.04 ", "MATRIX_LR = float('0.05') ",
     "MATRIX_LR: literal became an expression: float('0.05')", "MATRIX_LR ="),
    ("dunder-import-in-literal-slot", 'WINDOW_PATTERN = "SSSL"',
     "WINDOW_PATTERN = __import__('os').name", "literal became an expression: __import__",
     "WINDOW_PATTERN"),
    ("literal-becomes-name", "DEPTH = 4 ", "DEPTH = HEAD_DIM ",
     "DEPTH: literal became an expression: HEAD_DIM", "DEPTH ="),
    ("literal-becomes-f-string", 'WINDOW_PATTERN = "SSSL"', "WINDOW_PATTERN = f\"{open('k')}\"",
     "WINDOW_PATTERN: literal became an expression: f", "WINDOW_PATTERN"),
    ("huge-power-in-literal-slot", "2**14 ", "2**99999999 ",
     "TOTAL_BATCH_SIZE: literal became an expression: 2 ** 99999999", "TOTAL_BATCH_SIZE"),
    ("out-of-declared-log-space", "MATRIX_LR = 0.04 ", "MATRIX_LR = 0.9 ",
     "MATRIX_LR: 0.9 is outside log 0.005..0.2", "MATRIX_LR ="),
    ("out-of-declared-int-space", "DEPTH = 4 ", "DEPTH = 9 ", "DEPTH: 9 is outside int 2..8",
     "DEPTH ="),
    ("out-of-declared-pow2-space", "2**14 ", "2**18 ",
     "TOTAL_BATCH_SIZE: 2**18 is outside pow2 10..17", "TOTAL_BATCH_SIZE"),
    ("out-of-declared-choice", 'WINDOW_PATTERN = "SSSL"', 'WINDOW_PATTERN = "SSSSSL"',
     'WINDOW_PATTERN: "SSSSSL" is outside choice "L" "SL" "SSL" "SSSL"', "WINDOW_PATTERN"),
    ("out-of-inferred-space", "WARMDOWN_RATIO = 0.5 ", "WARMDOWN_RATIO = 0.01 ",
     "WARMDOWN_RATIO: 0.01 is outside log 0.05..1.0 (inferred)", "WARMDOWN_RATIO"),
    ("fixed-param-changed", "SEQ_LEN = 256 ", "SEQ_LEN = 512 ",
     "SEQ_LEN: 512 differs from the fixed value 256", "SEQ_LEN ="),
    ("seed-changed", "INIT_SEED = 1234", "INIT_SEED = 1",
     "INIT_SEED: 1 differs from the fixed value 1234", "INIT_SEED"),
    ("fixed-tuple-changed", "(0.8, 0.95)", "(0.9, 0.99)",
     "ADAM_BETAS: (0.9, 0.99) differs from the fixed value (0.8, 0.95)", "ADAM_BETAS"),
    ("tuple-item-changes-kind", "(0.8, 0.95)", "(0.8, 1)", "ADAM_BETAS: (0.8, 1) differs",
     "ADAM_BETAS"),
    ("str-where-float", "MATRIX_LR = 0.04 ", "MATRIX_LR = '0.04' ",
     'MATRIX_LR: expected a float literal, got "0.04"', "MATRIX_LR ="),
    ("int-where-float", "MATRIX_LR = 0.04 ", "MATRIX_LR = 1 ",
     "MATRIX_LR: expected a float literal, got 1", "MATRIX_LR ="),
    ("int-where-bool", "USE_QK_NORM = True", "USE_QK_NORM = 1",
     "USE_QK_NORM: expected a bool literal, got 1", "USE_QK_NORM"),
    ("plain-int-where-power", "2**14 ", "16384 ",
     "TOTAL_BATCH_SIZE: expected a pow2 literal, got 16384", "TOTAL_BATCH_SIZE"),
    ("extra-top-level-statement", MAIN_CALL, MAIN_CALL + "print(open('/etc/passwd').read())\n",
     "new statement: print(open('/etc/passwd').read())", "print(open"),
    ("new-function", "\n\ndef main()", "\n\ndef helper():\n    return 1\n\n\ndef main()",
     "new statement: def helper():", "def helper"),
    ("changed-function-body", "        return 1.0\n", "        return 2.0\n",
     "changed code: 2.0 (was: 1.0)", "        return 2.0"),
    ("changed-class-body", "torch.nn.Linear(width, vocab, bias=False)",
     "torch.nn.Linear(width, vocab, bias=True)", "changed code: True (was: False)",
     "        self.head"),
    ("unicode-look-alike-param", "MATRIX_LR = 0.04 ", "MATRIX_LR = 0.04 \nMATRIX_L\u0430 = 0.05 ",
     "non-ASCII identifier 'MATRIX_L\u0430'", "MATRIX_L\u0430"),
    ("unicode-look-alike-function", "def lr_schedule(", "def lr_sch\u0435dule(",
     "non-ASCII identifier 'lr_sch\u0435dule'", "def lr_sch"),
    ("fullwidth-name-nfkc-equal", "MATRIX_LR = 0.04 ", "\uff2dATRIX_LR = 0.04 ",
     "non-ASCII identifier '\uff2dATRIX_LR'", "\uff2dATRIX_LR"),
    ("changed-main-block", MAIN_CALL, 'if __name__ == "__main__":\n    main()\n    exec("x")\n',
     "new statement: exec('x')", '    exec("x")'),
    ("main-block-condition", MAIN_CALL, 'if __name__ != "__main__":\n    main()\n',
     "changed code: ", "if __name__"),
    ("exec-added", "    model = Model()\n", "    exec('import os')\n    model = Model()\n",
     "new statement: exec('import os')", "    exec("),
    ("eval-in-expression", "step += 1", "step += eval('1')", "changed code: eval('1') (was: 1)",
     "        step +="),
    ("attribute-on-builtin", "ok=math.isfinite(1.0)", "ok=print.__self__.exec('x')",
     "changed code: print.__self__ (was: math)", "    report("),
    ("annotation-widened-to-allow-value", LR_LINE, "MATRIX_LR = 0.9  # search: log 0.005..2.0",
     "MATRIX_LR: 0.9 is outside log 0.005..0.2", "MATRIX_LR"),
    ("param-removed", "WEIGHT_DECAY = 0.1  # search: float 0.0..0.3\n", "",
     "statement removed: WEIGHT_DECAY = 0.1", "WARMUP_RATIO"),
    ("last-statement-removed", MAIN_CALL, "", "statement removed: if __name__", "    report("),
    ("param-added", "INIT_SEED = 1234\n", "INIT_SEED = 1234\nGRAD_CLIP = 1.0\n",
     "new statement: GRAD_CLIP = 1.0", "GRAD_CLIP"),
    ("params-reordered", "DEPTH = 4  # search: int 2..8\nHEAD_DIM = 64  # search: choice 32 64 128",
     "HEAD_DIM = 64  # search: choice 32 64 128\nDEPTH = 4  # search: int 2..8",
     "HEAD_DIM = 64", "HEAD_DIM"),
    ("statements-reordered", "import os\nimport time\n", "import time\nimport os\n",
     "import", "import time"),
    ("param-renamed", "WARMUP_RATIO = 0.0 ", "WARMUP_STEPS = 0.0 ",
     "WARMUP_STEPS", "WARMUP_STEPS"),
    ("param-becomes-multi-target", "MATRIX_LR = 0.04 ", "MATRIX_LR = lr = 0.04 ",
     "added lr to: MATRIX_LR = lr = 0.04", LR_LINE.replace("MATRIX_LR = ", "MATRIX_LR = lr = ")),
    ("param-becomes-annotated", "MATRIX_LR = 0.04 ", "MATRIX_LR: object = 0.04 ",
     "MATRIX_LR: object = 0.04", "MATRIX_LR:"),
    ("non-literal-upper-assignment-changed", 'os.environ.get("AUTORESEARCH_DATA_DIR", "data")',
     'os.environ.get("HOME", "data")', "changed code: 'HOME'", "DATA_DIR"),
    ("docstring-changed", '"""Linear warmup', '"""Cubic warmup', "changed code: ",
     '    """Cubic'),
    ("coding-declaration-utf7", '"""A small', '# coding: utf-7\n"""A small',
     "coding declaration 'utf-7' is not allowed", "# coding"),
    ("unknown-coding-declaration", '"""A small', '# coding: klingon\n"""A small',
     "bad coding declaration", "# coding"),
    ("syntax-error", "def main() -> None:", "def main( -> None:", "does not parse", "def main("),
    ("deep-expression-in-function", "        return 1.0\n", "        return " + "+1" * 5000 + "\n",
     "nested too deeply", '"""A small'),
    ("deep-expression-at-top-level", "LOG_EVERY = 10\n", "LOG_EVERY = " + "+1" * 2900 + "\n",
     "nested too deeply", '"""A small'),
    ("null-byte", "import math\n", "import math\n\x00\n", "does not", "import math"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "fragment", "where"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_variant_is_refused_naming_line_and_change(
    old: str, new: str, fragment: str, where: str
) -> None:
    candidate = variant(old, new)
    verdict = check_params_only(BASELINE, candidate)
    assert not verdict.ok
    assert fragment in verdict.reason
    assert verdict.reason.startswith(f"line {verdict.line}: ")
    if "\x00" not in candidate and "utf-7" not in candidate and "klingon" not in candidate:
        assert verdict.line == line_of(where, candidate)


def test_hostile_corpus_is_large_and_ids_are_unique() -> None:
    ids = [case[0] for case in HOSTILE]
    assert len(ids) >= 20 and len(set(ids)) == len(ids)


def test_huge_power_is_refused_without_computing_it() -> None:
    start = time.perf_counter()
    verdict = check_params_only(BASELINE, variant("2**14 ", "2**(10**100) "))
    assert not verdict.ok and time.perf_counter() - start < 1.0


def test_unmodified_baseline_is_accepted() -> None:
    assert check_params_only(BASELINE, BASELINE) == TrustVerdict(ok=True, reason="", line=None)
    assert check_params_only(KARPATHY, KARPATHY).ok


def test_comments_whitespace_and_annotations_may_change_if_values_stay_in_space() -> None:
    candidate = variant(LR_LINE, "MATRIX_LR   =   0.2   # search: log 0.19..0.21 (anything)")
    candidate = variant("# --- hyperparameters", "# --- knobs", candidate)
    assert check_params_only(BASELINE, candidate).ok


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.005 "),
        ("MATRIX_LR = 0.04 ", "MATRIX_LR = 2e-1 "),
        ("SOFTCAP = -15.0 ", "SOFTCAP = -5.0 "),
        ("SOFTCAP = -15.0 ", "SOFTCAP = -30.0 "),
        ("WEIGHT_DECAY = 0.1 ", "WEIGHT_DECAY = 0.0 "),
        ("2**14 ", "2 ** 17 "),
        ("HEAD_DIM = 64 ", "HEAD_DIM = 128 "),
        ("USE_QK_NORM = True", "USE_QK_NORM = False"),
        ("DEVICE_BATCH_SIZE = 16 ", "DEVICE_BATCH_SIZE = 64 "),
        ('WINDOW_PATTERN = "SSSL"', "WINDOW_PATTERN = 'L'"),
    ],
)
def test_values_on_the_bounds_of_their_space_are_accepted(old: str, new: str) -> None:
    verdict = check_params_only(BASELINE, variant(old, new))
    assert verdict.ok, verdict.reason


@pytest.mark.parametrize("baseline", [BASELINE, KARPATHY], ids=["annotated", "karpathy"])
def test_many_seeded_mutations_are_accepted(baseline: str) -> None:
    params = parse_params(baseline)
    for seed in range(80):
        candidate = apply_changes(baseline, sample_changes(params, random.Random(seed), 3))
        verdict = check_params_only(baseline, candidate)
        assert verdict.ok, (seed, verdict.reason)


@pytest.mark.anyio
async def test_a_chain_of_perturb_proposals_stays_trusted() -> None:
    """Each generation mutates the last accepted one; all stay inside the baseline's spaces."""

    async def never_known(sha256: str) -> bool:
        return False

    proposer = PerturbProposer(rng=random.Random(11), baseline=BASELINE)
    parent = Candidate(source=BASELINE, parent_sha256=None, description="baseline")
    for _ in range(60):
        child = await proposer.propose(parent, never_known)
        assert child is not None
        verdict = check_params_only(BASELINE, child.source)
        assert verdict.ok, (child.description, verdict.reason)
        parent = child


def test_a_malformed_baseline_raises_instead_of_judging() -> None:
    with pytest.raises(MutationError, match="outside"):
        check_params_only(variant("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.9 "), BASELINE)
