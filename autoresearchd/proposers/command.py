"""The research-agent strategy (``command``): an external program writes the next train.py.

The program (an LLM coding agent, or any script) is started in its own process group with
a context directory: the parent ``train.py``, ``results.json`` (recent results, newest
first), ``hypotheses.json``, ``insights.json``, ``spaces.json`` (each hyperparameter's
value and space) and ``program.md``, a brief saying what to do. It must write
``train.py`` and a one-line ``description.txt`` into its output directory before
``proposer.command_timeout_s``; both paths also arrive as ``AUTORESEARCH_CONTEXT_DIR`` and
``AUTORESEARCH_OUTPUT_DIR`` and replace ``{context}`` and ``{output}`` in the command.
Its script passes the trust policy like any code from outside: params-only unless
``experiment.trust = "sandboxed"``. A timeout, a failure or no output raises
:class:`ProposalError` with outcome ``crash``; a refused script, outcome ``invalid``. The
worker records either as a result and carries on. An agent is asked about one context
once: until the parent or the swarm's history changes, it is not asked again, since each
call may be a paid model call and an idle worker asks every few seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import structlog

from autoresearchd.config import ProposerConfig
from autoresearchd.errors import MutationError, ProposalError
from autoresearchd.hyperparams import Param, parse_params
from autoresearchd.models import Candidate, Result, sha256_text
from autoresearchd.mutation import describe
from autoresearchd.procgroup import stop_group
from autoresearchd.proposers.base import EMPTY_CONTEXT, IsKnown, ProposalContext
from autoresearchd.trust import check_params_only

log = structlog.get_logger(__name__)

#: Results written to ``results.json``: enough to see trends, small enough to read.
CONTEXT_RESULTS = 50
#: Largest train.py accepted from an agent.
MAX_SCRIPT_BYTES = 1_000_000
MAX_DESCRIPTION_CHARS = 200
#: Seconds between SIGTERM and SIGKILL when an agent overruns.
KILL_GRACE_S = 2.0
#: Contexts remembered as answered (the newest few are the ones that recur).
ASKED_KEPT = 16
_RESULT_FIELDS = (
    "id",
    "agent_id",
    "status",
    "val_bpb",
    "confirmed_bpb",
    "description",
    "proposer",
    "vram_tier",
    "completed_at",
    "duration_s",
    "error",
)

PROGRAM_MD = """\
# Research brief

You are improving `train.py`, a training script, to lower `val_bpb` (validation bits per
byte, lower is better) on track `{track}` under a fixed time budget. Many machines run
candidates in parallel and share every result.

In this directory:
- `train.py`: the current best script (val_bpb {best}).
- `results.json`: recent results from everyone, newest first (status keep/discard/crash/
  timeout/invalid, val_bpb, the description of the change, the error of a failed run).
- `hypotheses.json`: open suggestions from others (`suggested_config`: parameter values).
- `insights.json`: findings from the history, such as regions that crash.
- `spaces.json`: every hyperparameter, its value and the space it may move in. A space
  ending in `device=cuda` or `device=cpu` is read on that device only; the candidate
  runs on device `{device}`, so changing a parameter of the other device changes nothing.

Write a new `train.py` and a one-line `description.txt` (like `MATRIX_LR 0.04 → 0.05`)
into `{output}`. Be quick: you have {timeout:g} seconds.

Policy: {policy}
"""

POLICY = {
    "params-only": (
        "change only the values of the hyperparameter assignments at the top of the file, "
        "within the spaces in spaces.json; any other change is refused."
    ),
    "sandboxed": "any change is allowed; the script runs in a sandbox without network.",
}


class CommandProposer:
    """Asks an external program for the next candidate (strategy ``command``)."""

    name = "command"
    uses_history = True

    def __init__(
        self, config: ProposerConfig, baseline: str | None = None, trust: str = "params-only"
    ) -> None:
        self.command = config.command
        self.timeout_s = config.command_timeout_s
        self.baseline = baseline
        self.trust = trust if trust in POLICY else "params-only"
        self.track = ""
        self._asked: deque[str] = deque(maxlen=ASKED_KEPT)

    async def propose(
        self, parent: Candidate, is_known: IsKnown, context: ProposalContext = EMPTY_CONTEXT
    ) -> Candidate | None:
        if not self.command:
            return None
        question = self.question(parent, context)
        if question in self._asked:
            log.debug("agent_not_asked", reason="it answered this context before")
            return None
        with tempfile.TemporaryDirectory(prefix="autoresearchd-agent-") as tmp:
            root = Path(tmp)
            context_dir, output_dir = root / "context", root / "output"
            output_dir.mkdir()
            await anyio.to_thread.run_sync(self.write_context, context_dir, parent, context)
            await self.run_agent(context_dir, output_dir)
            self._asked.append(question)  # a failure is recorded, and so changes the context
            source, description = read_output(output_dir, self.name)
        return await self.judge(parent, source, description, is_known)

    def question(self, parent: Candidate, context: ProposalContext) -> str:
        """A digest of everything the agent is shown, so an unchanged context is spotted."""
        shown = [
            parent.sha256,
            [_brief(r) for r in context.results[:CONTEXT_RESULTS]],
            [n.value for n in context.hypotheses],
            [n.value for n in context.insights],
            context.device,
            self.trust,
        ]
        return hashlib.sha256(json.dumps(shown, default=str).encode()).hexdigest()

    def write_context(self, where: Path, parent: Candidate, context: ProposalContext) -> None:
        where.mkdir()
        (where / "train.py").write_text(parent.source, encoding="utf-8")
        recent = [_brief(r) for r in context.results[:CONTEXT_RESULTS]]
        _write_json(where / "results.json", recent)
        _write_json(where / "hypotheses.json", [n.value for n in context.hypotheses])
        _write_json(where / "insights.json", [n.value for n in context.insights])
        _write_json(where / "spaces.json", self.spaces(parent.source))
        best = _best_bpb(parent, context.results)
        track = context.results[0].track if context.results else "unknown"
        brief = PROGRAM_MD.format(
            track=track,
            best="unknown" if best is None else best,
            output=where.parent / "output",
            timeout=self.timeout_s,
            policy=POLICY[self.trust],
            device=context.device or "unknown",
        )
        (where / "program.md").write_text(brief, encoding="utf-8")

    def spaces(self, source: str) -> dict[str, dict[str, str]]:
        try:
            params = self._params(source)
        except MutationError:
            return {}
        return {n: {"value": p.source_text, "space": str(p.space)} for n, p in params.items()}

    def _params(self, source: str) -> dict[str, Param]:
        spaces = parse_params(self.baseline) if self.baseline else None
        return parse_params(source, spaces_from=spaces)

    async def run_agent(self, context_dir: Path, output_dir: Path) -> None:
        """Run the command in its own process group; its failures become ProposalErrors."""
        argv = [
            part.replace("{context}", str(context_dir)).replace("{output}", str(output_dir))
            for part in self.command
        ]
        env = {
            **os.environ,
            "AUTORESEARCH_CONTEXT_DIR": str(context_dir),
            "AUTORESEARCH_OUTPUT_DIR": str(output_dir),
        }
        log_path = context_dir.parent / "agent.log"
        log.info("agent_started", command=argv[0], timeout_s=self.timeout_s)
        with log_path.open("wb") as sink:
            code = await self._wait(argv, context_dir, env, sink)
        if code != 0:
            tail = _tail(log_path)
            raise ProposalError(
                f"agent exited with status {code}{': ' + tail if tail else ''}",
                outcome="crash",
                proposer=self.name,
            )

    async def _wait(self, argv: list[str], cwd: Path, env: Mapping[str, str], sink: Any) -> int:
        try:
            process = await anyio.open_process(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProposalError(
                f"cannot start agent {argv[0]!r}: {exc.strerror}",
                outcome="crash",
                proposer=self.name,
            ) from None
        try:
            with anyio.fail_after(self.timeout_s):
                return await process.wait()
        except TimeoutError:
            raise ProposalError(
                f"agent timed out after {self.timeout_s:g}s", outcome="crash", proposer=self.name
            ) from None
        finally:
            await _stop_group(process)

    async def judge(
        self, parent: Candidate, source: str, description: str, is_known: IsKnown
    ) -> Candidate | None:
        """Apply the trust policy; an unchanged or already-run script is no candidate."""
        if self.trust == "params-only":
            verdict = check_params_only(self.baseline or parent.source, source)
            if not verdict.ok:
                raise ProposalError(
                    f"script refused: {verdict.reason}",
                    outcome="invalid",
                    proposer=self.name,
                    source=source,
                )
        digest = sha256_text(source)
        if digest == parent.sha256 or await is_known(digest):
            log.info("agent_proposed_known", sha=digest[:12])
            return None
        description = description or self._describe(parent.source, source)
        log.info("agent_proposed", sha=digest[:12], description=description)
        return Candidate(source, parent.sha256, description, self.name, digest)

    def _describe(self, parent: str, source: str) -> str:
        try:
            before, after = self._params(parent), self._params(source)
        except MutationError:
            return "agent change"
        changes = {n: p.value for n, p in after.items() if n in before and p != before[n]}
        return describe(before, changes) or "agent change"


def read_output(output_dir: Path, proposer: str) -> tuple[str, str]:
    """The agent's ``train.py`` and first description line; no script is a crash."""
    script = output_dir / "train.py"
    try:
        if script.stat().st_size > MAX_SCRIPT_BYTES:
            raise ProposalError(
                f"agent wrote a train.py over {MAX_SCRIPT_BYTES} bytes",
                outcome="invalid",
                proposer=proposer,
            )
        source = script.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProposalError("agent wrote no train.py", outcome="crash", proposer=proposer) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProposalError(
            f"cannot read the agent's train.py: {exc}", outcome="invalid", proposer=proposer
        ) from None
    return source, _first_line(output_dir / "description.txt")


def _first_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = text.strip().splitlines()
    return lines[0].strip()[:MAX_DESCRIPTION_CHARS] if lines else ""


async def _stop_group(process: anyio.abc.Process) -> None:
    """SIGTERM the agent's process group, then SIGKILL after a grace: no orphans."""
    with anyio.CancelScope(shield=True):
        await stop_group(process, KILL_GRACE_S)
        await process.aclose()


def _brief(result: Result) -> dict[str, Any]:
    record = result.to_record()
    return {key: record[key] for key in _RESULT_FIELDS}


def _best_bpb(parent: Candidate, results: list[Result] | Any) -> float | None:
    values = [
        r.best_bpb for r in results if r.train_py_sha256 == parent.sha256 and r.best_bpb is not None
    ]
    return min(values, default=None)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:MAX_DESCRIPTION_CHARS] if lines else ""
