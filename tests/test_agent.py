"""The command strategy with scripted stand-in agents: output, trust, and each failure mode."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from autoresearchd.config import ProposerConfig
from autoresearchd.errors import ProposalError
from autoresearchd.memory.protocol import Note
from autoresearchd.proposers.base import ProposalContext
from autoresearchd.proposers.command import CommandProposer

from .proposer_support import never, result
from .test_search import SMALL, parent, variant

#: A stand-in research agent: reads its context, then acts as its first argument says.
AGENT = """\
import json, os, pathlib, sys, time
context = pathlib.Path(os.environ["AUTORESEARCH_CONTEXT_DIR"])
out = pathlib.Path(sys.argv[2])
mode = sys.argv[1]
source = (context / "train.py").read_text()
seen = {name: json.loads((context / name).read_text()) for name in
        ("results.json", "hypotheses.json", "insights.json", "spaces.json")}
seen["brief"] = (context / "program.md").read_text()
(out.parent / "seen.json").write_text(json.dumps(seen))
if mode == "good":
    (out / "train.py").write_text(source.replace("LR = 0.01", "LR = 0.02"))
    (out / "description.txt").write_text("LR 0.01 → 0.02\\nignored second line\\n")
elif mode == "hostile":
    (out / "train.py").write_text("import socket\\n" + source)
elif mode == "broad":
    (out / "train.py").write_text(source + "print('more')\\n")
elif mode == "sleep":
    time.sleep(60)
elif mode == "fail":
    print("agent gave up: no idea")
    sys.exit(3)
"""


def proposer(tmp_path: Path, mode: str, timeout_s: float = 20.0, trust: str = "params-only"):  # type: ignore[no-untyped-def]
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    config = ProposerConfig(
        strategy="command",
        command=(sys.executable, str(script), mode, "{output}"),
        command_timeout_s=timeout_s,
    )
    return CommandProposer(config, baseline=SMALL, trust=trust)


@pytest.mark.anyio
async def test_agent_gets_the_context_and_its_script_becomes_a_candidate(tmp_path: Path) -> None:
    agent = proposer(tmp_path, "good")
    context = ProposalContext(
        results=[result(variant(LR=0.03), 1.1, n=1)],
        hypotheses=[Note("h", "alice", {"title": "try LR 0.05"}, 1.0)],
    )
    seen: dict[str, object] = {}
    original = agent.run_agent

    async def keep_seen(context_dir: Path, output_dir: Path) -> None:
        await original(context_dir, output_dir)
        seen.update(json.loads((output_dir.parent / "seen.json").read_text()))

    agent.run_agent = keep_seen
    candidate = await agent.propose(parent(), never, context)
    assert candidate is not None
    assert candidate.source == variant(LR=0.02)
    assert candidate.description == "LR 0.01 → 0.02"
    assert candidate.proposer == "command"
    assert seen["results.json"] == [
        {
            "id": "run-1",
            "agent_id": "someone",
            "status": "discard",
            "val_bpb": 1.1,
            "confirmed_bpb": None,
            "description": "",
            "proposer": "baseline",
            "vram_tier": "cpu",
            "completed_at": 0.0,
            "duration_s": 1.0,
            "error": "",
        }
    ]
    assert seen["hypotheses.json"] == [{"title": "try LR 0.05"}]
    assert seen["spaces.json"]["LR"] == {"value": "0.01", "space": "log 0.001..0.1"}  # type: ignore[index]
    assert "change only the values" in str(seen["brief"])


@pytest.mark.anyio
async def test_hostile_script_is_refused_as_invalid_with_the_trust_reason(tmp_path: Path) -> None:
    with pytest.raises(ProposalError) as info:
        await proposer(tmp_path, "hostile").propose(parent(), never)
    assert info.value.outcome == "invalid"
    assert "line 1: new statement: import socket" in str(info.value)
    assert info.value.source.startswith("import socket")


@pytest.mark.anyio
async def test_broad_change_passes_only_when_trust_is_sandboxed(tmp_path: Path) -> None:
    with pytest.raises(ProposalError):
        await proposer(tmp_path, "broad").propose(parent(), never)
    candidate = await proposer(tmp_path, "broad", trust="sandboxed").propose(parent(), never)
    assert candidate is not None and candidate.source.endswith("print('more')\n")
    assert candidate.description == "agent change"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("nothing", "agent wrote no train.py"),
        ("fail", "agent exited with status 3: agent gave up: no idea"),
    ],
)
async def test_failures_are_crash_outcomes_with_a_reason(
    tmp_path: Path, mode: str, reason: str
) -> None:
    with pytest.raises(ProposalError) as info:
        await proposer(tmp_path, mode).propose(parent(), never)
    assert info.value.outcome == "crash"
    assert str(info.value) == f"proposer command: {reason}"


@pytest.mark.anyio
async def test_agent_past_its_timeout_is_stopped_and_is_a_crash(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ProposalError) as info:
        await proposer(tmp_path, "sleep", timeout_s=1.0).propose(parent(), never)
    assert time.monotonic() - start < 10
    assert info.value.outcome == "crash"
    assert "agent timed out after 1s" in str(info.value)


@pytest.mark.anyio
async def test_known_or_unchanged_output_is_no_candidate(tmp_path: Path) -> None:
    async def everything(sha256: str) -> bool:
        return True

    assert await proposer(tmp_path, "good").propose(parent(), everything) is None


@pytest.mark.anyio
async def test_an_agent_is_asked_about_one_context_once(tmp_path: Path) -> None:
    """Each call may be a paid model call: the same question gets no second call, whether
    its answer had been run before or is running now; a new context is a new question."""
    agent = proposer(tmp_path, "good")
    calls: list[Path] = []
    original = agent.run_agent

    async def counted(context_dir: Path, output_dir: Path) -> None:
        calls.append(context_dir)
        await original(context_dir, output_dir)

    async def everything(sha256: str) -> bool:
        return True

    agent.run_agent = counted
    context = ProposalContext(results=[result(variant(LR=0.03), 1.1, n=1)])
    assert await agent.propose(parent(), everything, context) is None
    assert await agent.propose(parent(), everything, context) is None
    assert len(calls) == 1
    newer = ProposalContext(results=[result(variant(LR=0.05), 1.2, n=2), *context.results])
    assert await agent.propose(parent(), never, newer) is not None
    assert await agent.propose(parent(), never, newer) is None
    assert len(calls) == 2


def test_spaces_keep_their_device_qualifier_and_the_brief_names_the_device(
    tmp_path: Path,
) -> None:
    qualified = SMALL.replace("# search: int 2..8", "# search: int 2..8 device=cuda")
    config = ProposerConfig(strategy="command", command=(sys.executable, "-c", "pass"))
    agent = CommandProposer(config, baseline=qualified)
    where = tmp_path / "context"
    agent.write_context(where, parent(qualified), ProposalContext(device="cpu"))
    spaces = json.loads((where / "spaces.json").read_text())
    assert spaces["DEPTH"] == {"value": "4", "space": "int 2..8 device=cuda"}
    assert spaces["LR"]["space"] == "log 0.001..0.1"
    assert "runs on device `cpu`" in (where / "program.md").read_text()
