"""A device's modes (pause, finish, resume, halted) and the daemon-wide ledger, each alone."""

from __future__ import annotations

import anyio
import pytest

from autoresearchd.models import Candidate, Status
from autoresearchd.worker.ledger import Ledger
from autoresearchd.worker.modes import DeviceControl, Mode
from tests.memory.conformance import make_result


def a_control() -> tuple[DeviceControl, anyio.Event]:
    stop_runs = anyio.Event()
    return DeviceControl(anyio.Event(), stop_runs), stop_runs


def candidate(source: str = "LR = 0.1\n") -> Candidate:
    return Candidate(source=source, parent_sha256=None, description="baseline")


@pytest.mark.anyio
async def test_finish_while_busy_lets_the_run_end_then_pauses_holding_no_claims() -> None:
    control, _ = a_control()
    control.finish(busy=True)
    assert control.mode is Mode.FINISHING and control.winding_down and not control.paused
    assert control.state(running=True, health="ok") == "finishing"
    released: list[bool] = []

    async def release_all() -> None:
        released.append(True)

    with anyio.move_on_after(0.2) as waited:
        await control.hold_while_paused(release_all)
    assert waited.cancelled_caught, "a paused device waits for resume"
    assert released == [True], "a paused device holds no claims"
    assert control.state(running=False, health="ok") == "paused"


@pytest.mark.anyio
async def test_a_pause_stops_the_run_in_progress_and_resume_ends_the_wait() -> None:
    control, _ = a_control()
    async with control.stop_signal() as stop:
        assert not stop.is_set()
        control.pause()
        assert stop.is_set(), "pausing stops the run now"
        assert control.state(running=True, health="ok") == "stopping"

    async def nothing_held() -> None:
        pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(control.hold_while_paused, nothing_held)
            await anyio.sleep(0.05)
            control.resume()
    assert control.mode is Mode.ACTIVE and not control.winding_down


@pytest.mark.anyio
async def test_a_run_started_while_paused_is_stopped_at_once_and_the_daemon_can_stop_it() -> None:
    control, stop_runs = a_control()
    control.finish(busy=False)  # nothing runs: finishing is pausing
    async with control.stop_signal() as stop:
        assert stop.is_set()
    control.resume()
    async with control.stop_signal() as stop:
        stop_runs.set()
        with anyio.fail_after(5):
            await stop.wait()


def test_a_halted_device_stays_halted_whatever_the_control_socket_asks() -> None:
    control, _ = a_control()
    control.halt("exit code 1: ModuleNotFoundError: No module named 'x'")
    control.pause()
    control.resume()
    control.finish(busy=True)
    assert control.mode is Mode.HALTED and "ModuleNotFoundError" in control.halted
    assert control.state(running=False, health="too_hot") == "halted"


def test_health_states_show_when_the_device_is_otherwise_idle() -> None:
    control, _ = a_control()
    assert control.state(running=False, health="foreign_process") == "waiting_foreign_process"
    assert control.state(running=False, health="ready") == "idle"
    assert control.state(running=True, health="too_hot") == "running"


def test_one_daemon_runs_a_candidate_once_at_a_time() -> None:
    ledger, first = Ledger(), candidate()
    assert ledger.take(first)
    assert not ledger.take(first), "another worker of ours already runs it"
    assert ledger.in_flight(first.sha256) and ledger.known(first.sha256)
    assert ledger.sources() == (first.source,)
    ledger.done(first.sha256)
    assert not ledger.known(first.sha256), "dropped unrun, it was never run"
    with ledger.running(first):
        assert ledger.in_flight(first.sha256)
    assert not ledger.in_flight(first.sha256)


def test_queued_runs_count_as_run_and_their_scores_as_measured_on_their_tier() -> None:
    ledger = Ledger()
    scored = make_result(vram_tier="xl", status=Status.DISCARD, val_bpb=1.25)
    crashed = make_result(vram_tier="xl", status=Status.CRASH, val_bpb=None)
    ledger.record(scored)
    ledger.record(crashed)
    assert ledger.known(scored.train_py_sha256) and ledger.known(crashed.train_py_sha256)
    assert ledger.measured_on("xl") == {scored.train_py_sha256: {scored.id: 1.25}}
    assert ledger.measured_on("small") == {}


def test_a_hypothesis_given_back_may_be_taken_up_again_and_the_first_failure_is_kept() -> None:
    ledger, made = Ledger(), candidate("LR = 0.2\n")
    ledger.hypotheses["hypotheses/alice--lr"] = made.sha256
    ledger.give_back(made)
    assert ledger.hypotheses == {}
    ledger.fail_baseline("first")
    ledger.fail_baseline("second")
    assert ledger.baseline_failed == "first"
