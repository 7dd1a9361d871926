"""Logs: JSON lines off a TTY, console on request, library logs through the same pipeline."""

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from autoresearchd.logs import choose_format, configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_picks_json_off_a_tty_and_console_on_one() -> None:
    assert choose_format("auto", io.StringIO()) == "json"
    assert choose_format("auto", Tty()) == "console"
    assert choose_format("json", Tty()) == "json"


def test_events_are_json_lines_with_context() -> None:
    out = io.StringIO()
    configure_logging("json", "info", out)
    structlog.contextvars.bind_contextvars(device="GPU-1")
    try:
        structlog.get_logger("t").info("run_started", run_id="r1")
    finally:
        structlog.contextvars.clear_contextvars()
    record = json.loads(out.getvalue())
    assert record["event"] == "run_started"
    assert (record["device"], record["run_id"], record["level"]) == ("GPU-1", "r1", "info")
    assert "timestamp" in record


def test_library_logs_share_the_pipeline() -> None:
    out = io.StringIO()
    configure_logging("json", "info", out)
    logging.getLogger("uvicorn.error").info("Started server process")
    record = json.loads(out.getvalue())
    assert record["event"] == "Started server process" and record["logger"] == "uvicorn.error"


def test_level_filters_and_httpx_is_quiet() -> None:
    out = io.StringIO()
    configure_logging("json", "info", out)
    structlog.get_logger("t").debug("hidden")
    logging.getLogger("httpx").info("HTTP Request: POST ...")
    assert out.getvalue() == ""


def test_console_format_is_not_json() -> None:
    out = io.StringIO()
    configure_logging("console", "info", out)
    structlog.get_logger("t").info("daemon_started", workers=2)
    text = out.getvalue()
    assert "daemon_started" in text and "workers" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
