"""Downloads against a real HTTP server on loopback: resume, retry, checksum, offline."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from autoresearchd.errors import DataError
from autoresearchd.tracks import Track, prepare
from autoresearchd.tracks.download import download

BODY = bytes(range(256)) * 64  # 16 KiB
DIGEST = hashlib.sha256(BODY).hexdigest()


@dataclass
class Script:
    """What the server does: fail some requests, cut the first body short, log ranges."""

    body: bytes = BODY
    fail_first: int = 0  # answer this many requests with 503
    cut_first_at: int | None = None  # send only this many bytes of the first full body
    status: int = 200
    ranges: list[str | None] = field(default_factory=list)


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            script.ranges.append(self.headers.get("Range"))
            if len(script.ranges) <= script.fail_first or script.status != 200:
                self.send_error(503 if script.status == 200 else script.status)
                return
            start = _range_start(self.headers.get("Range"))
            body = script.body[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(script.body) - 1}/*")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if script.cut_first_at is not None:
                body, script.cut_first_at = body[: script.cut_first_at], None
                self.close_connection = True
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _range_start(header: str | None) -> int:
    return int(header.removeprefix("bytes=").split("-")[0]) if header else 0


Serve = Callable[[Script], str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start a loopback server that follows a script; returns its URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(script: Script) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}/input.txt"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_download_writes_the_verified_file(serve: Serve, tmp_path: Path) -> None:
    served = Script()
    url = serve(served)
    dest = download(url, tmp_path / "input.txt", sha256=DIGEST)
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "input.txt.part").exists()


def test_interrupted_download_resumes_with_a_range_request(serve: Serve, tmp_path: Path) -> None:
    served = Script(cut_first_at=5000)
    url = serve(served)
    with capture_logs() as logs:
        download(url, tmp_path / "f", sha256=DIGEST, wait_s=0.01)
    assert (tmp_path / "f").read_bytes() == BODY
    assert served.ranges == [None, "bytes=5000-"]
    assert [entry["event"] for entry in logs].count("download_retry") == 1


def test_server_errors_are_retried_then_succeed(serve: Serve, tmp_path: Path) -> None:
    served = Script(fail_first=2)
    url = serve(served)
    with capture_logs() as logs:
        download(url, tmp_path / "f", sha256=DIGEST, wait_s=0.01)
    assert (tmp_path / "f").read_bytes() == BODY
    retries = [entry for entry in logs if entry["event"] == "download_retry"]
    assert [entry["error"] for entry in retries] == ["HTTP 503", "HTTP 503"]


def test_checksum_mismatch_is_refused_and_discarded(serve: Serve, tmp_path: Path) -> None:
    served = Script(body=b"not what was pinned" * 100)
    url = serve(served)
    with pytest.raises(DataError) as info:
        download(url, tmp_path / "f", sha256=DIGEST)
    message = str(info.value)
    assert message.startswith(f"checksum mismatch for {url}: expected sha256 {DIGEST}")
    assert "\n" not in message
    assert not (tmp_path / "f").exists() and not (tmp_path / "f.part").exists()


def test_client_errors_are_not_retried(serve: Serve, tmp_path: Path) -> None:
    served = Script(status=404)
    url = serve(served)
    with pytest.raises(DataError, match="HTTP 404"):
        download(url, tmp_path / "f", sha256=DIGEST, wait_s=0.01)
    assert len(served.ranges) == 1


def test_server_down_fails_with_one_line_after_retries(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/input.txt"
    with pytest.raises(DataError) as info:
        download(url, tmp_path / "f", sha256=DIGEST, attempts=3, wait_s=0.01)
    message = str(info.value)
    assert message.startswith(f"cannot download {url} after 3 attempts: ConnectError")
    assert "\n" not in message


def test_prepare_downloads_and_splits_a_url_track(serve: Serve, tmp_path: Path) -> None:
    served = Script()
    url = serve(served)
    track = Track(
        name="loopback", kind="url", seq_len=64, eval_tokens=2**10, url=url, sha256=DIGEST
    )
    prepared = prepare(track, tmp_path)
    assert prepared.train_file.read_bytes() + prepared.val_file.read_bytes() == BODY
    assert prepared.eval_tokens == 2**10
    assert prepare(track, tmp_path) == prepared
    assert len(served.ranges) == 1  # the second call found the data prepared
