"""Load the hub at a set arrival rate with ``wrk``; a trivial endpoint is the ceiling.

The client must not eat the cores it measures, so the load comes from ``wrk`` (compiled
C) replaying recorded JSON-RPC requests, paced open-loop: request ``j`` is due at
``start + j / rate`` whatever the replies before it did, and its latency counts from
when it was due, so a hub that falls behind shows it in p99 instead of slowing the load.
``--threads`` wrk threads (2) share ``--connections`` connections (64): on a small machine a
thread per connection took CPU from the hub (about 90 us a request against 50 for two).

1. **Record.** ``--agents`` verified agents run ``--ops`` logical operations through our
   real client (:class:`~autoresearchd.memory.ensue_client.EnsueMemory`) against an in-process
   hub on a scratch SQLite file: a mix of claim (20%), publish of a keep result (20%),
   best read (30%), a list of 50 claims (15%) and a search (15%), or with ``--write-heavy``
   claims and publishes (40% each) among fewer reads, or with ``--writes-only`` nothing
   else. Every HTTP request is recorded; requests per logical operation are counted here.
2. **Ceiling.** A trivial Starlette endpoint (it reads the body and answers a fixed
   JSON-RPC reply) under the same uvicorn settings as ``hub serve``, loaded closed-loop
   to find its top rate, then paced at the request rate the hub will be offered, for its
   CPU per request.
3. **Hub.** For each setup (SQLite with one process, committing with ``synchronous =
   FULL`` in groups as a hub does and, for comparison, with ``NORMAL``, with a commit per
   write, and with the package of ``--compare-tree`` (a checkout of another commit, which
   prepares its own file, in its own schema); SQLite with ``hub.workers = 2``, one config
   and one port as a user runs it; PostgreSQL with one and with ``--replicas`` processes on
   one database; each a fresh database in the recording's starting state), ``hub serve``
   gets the recording at ``--rate`` operations per second. The hub's CPU time is read from
   ``/proc`` before and after.

A replay is not a client: the requests of one publish do not wait on each other's
replies, so a compare-and-set can miss where the recording won (counted as JSON-RPC
errors and printed, with the recording's own count beside it).

    python benchmarks/hub_load.py --rate 2000 --ops 8000 --replicas 2
    python benchmarks/hub_load.py --skip-postgres --rate 1000
    python benchmarks/hub_load.py --skip-postgres --write-heavy --rate 300 --ops 3000
    git worktree add /tmp/before HEAD~1 && python benchmarks/hub_load.py --skip-postgres \
        --write-heavy --compare-tree /tmp/before

Last, as ratios: the hub's CPU per operation against the trivial endpoint's per request,
each PostgreSQL setup's throughput against SQLite's, SQLite's two workers against its one
process (throughput and p99), what durable SQLite commits
(``FULL``) cost against ``NORMAL``, and group commit against a commit per write (and against
``--compare-tree``): throughput and p99.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import psycopg

from autoresearchd.config import HubConfig
from autoresearchd.hub.app import build_app
from autoresearchd.hub.credentials import hash_key
from autoresearchd.hub.storage.auto import open_store
from autoresearchd.hub.storage.rows import Agent
from autoresearchd.logs import configure_logging
from autoresearchd.memory.ensue_client import EnsueMemory
from autoresearchd.models import Result, Status, sha256_text
from autoresearchd.testing.pgcluster import start_cluster
from autoresearchd.testing.processes import cpu_seconds, worker_pids

ORG = "bench"
TRACK = "synthetic"
URL = "http://hub.bench/"
MIX = (("claim", 0.20), ("publish", 0.20), ("best", 0.30), ("list", 0.15), ("search", 0.15))
WRITE_HEAVY = (("claim", 0.4), ("publish", 0.4), ("best", 0.1), ("list", 0.05), ("search", 0.05))
#: Only the writes, so what a commit costs is not hidden behind what a search does.
WRITES_ONLY = (("claim", 0.5), ("publish", 0.5))
#: Runs ``hub serve`` with the package first found in ``paths`` (none: this one) and the
#: SQLite store's settings patched, for the comparisons only: ``synchronous = NORMAL``
#: (a hub itself always commits with ``FULL``), or a commit per write instead of groups.
PATCHED_HUB = (
    "import runpy, sys; sys.path[:0] = {paths!r}; import autoresearchd.hub.storage.sqlite as s;"
    " {patch}; sys.argv[0] = 'autoresearchd';"
    " runpy.run_module('autoresearchd', run_name='__main__')"
)
NORMAL_SYNC = "s.SYNCHRONOUS = 'NORMAL'"
COMMIT_PER_WRITE = "s.GROUP_LIMIT = 1"
UNLIMITED = {
    "rate_limit_per_s": 1e9,
    "rate_limit_burst": 10**9,
    "rate_limit_ip_per_s": 1e9,
    "rate_limit_ip_burst": 10**9,
    "auth_rate_limit_per_s": 1e9,
    "auth_rate_limit_burst": 10**9,
}
WORDS = ("warmup", "cosine", "rope", "muon", "lr", "depth", "window", "norm", "batch", "swiglu")

# The replay: each wrk thread paces its share of the requests over its connections. A
# connection about to send reserves the thread's next request in delay() (timers fire in
# the order they are due, so request() takes the earliest reserved); a reply is matched to
# its request by the JSON-RPC id, which the runner set to the request's index.
LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } ard_timespec;
int clock_gettime(int clk, ard_timespec *tp);
]]
local ts = ffi.new("ard_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local rate = tonumber(os.getenv("ARD_RATE"))
local folder = os.getenv("ARD_REQUESTS")
local ports = {}
for p in string.gmatch(os.getenv("ARD_PORTS"), "%d+") do ports[#ports + 1] = p end
local threads, count, begin = {}, 0, now_ms() + 300

function setup(thread)
  thread:set("tid", count)
  thread:set("t0", begin)
  thread.addr = wrk.lookup("127.0.0.1", ports[(count % #ports) + 1])[1]
  count = count + 1
  threads[#threads + 1] = thread
end

-- Each thread reads only its own requests: {global index, Authorization, body}.
function init(args)
  reqs = dofile(folder .. "/req_" .. tid .. ".lua")
  nxt, head, tail, reserved = 1, 1, 0, {}
  got, lat, http_err, rpc_err, item_err, last = 0, {}, 0, 0, 0, 0
  idle, idle_out = wrk.format("GET", "/healthz"), 0  -- sent only once all requests are out
  verified = tid ~= 0
end

local function due(k) return t0 + k * 1000 / rate end

function delay()
  if nxt > #reqs then return 1000 end
  tail = tail + 1
  reserved[tail] = nxt
  nxt = nxt + 1
  local wait = due(reqs[reserved[tail]][1]) - now_ms()
  if wait < 0 then return 0 end
  return math.floor(wait)
end

function request()
  if not verified then  -- wrk builds one request to check the script: not sent
    verified = true
    return idle
  end
  if head > tail then  -- nothing left to send
    idle_out = idle_out + 1
    return idle
  end
  local r = reqs[reserved[head]]
  reserved[head] = nil
  head = head + 1
  return wrk.format("POST", "/", {["Authorization"] = r[2],
    ["Content-Type"] = "application/json"}, r[3])
end

function response(status, headers, body)
  local k = tonumber(string.match(body, '^{"jsonrpc":"2.0","id":(%d+)'))
  if k == nil and idle_out > 0 then  -- the reply to an idle GET
    idle_out = idle_out - 1
    return
  end
  k = k or -1  -- a reply that names no request: an HTTP error
  local t = now_ms()
  got = got + 1
  if k >= 0 then lat[#lat + 1] = t - due(k) end
  last = t
  if status ~= 200 or k < 0 then http_err = http_err + 1
  elseif string.find(body, '"error":', 1, true) then rpc_err = rpc_err + 1
  elseif string.find(body, '\\"status\\": \\"error\\"', 1, true) then
    item_err = item_err + 1
  end
  if got >= #reqs and not finished then  -- tell the runner, which stops wrk when all are done
    finished = true
    io.open(folder .. "/done_" .. tid, "w"):close()
  end
end

function done(summary, latency, requests)
  local all, h, r, it, last_t = {}, 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    for _, v in ipairs(thread:get("lat")) do all[#all + 1] = v end
    h = h + thread:get("http_err")
    r = r + thread:get("rpc_err")
    it = it + thread:get("item_err")
    last_t = math.max(last_t, thread:get("last"))
  end
  table.sort(all)
  local function q(p)
    if #all == 0 then return 0 end
    return all[math.min(#all, math.floor(#all * p) + 1)]
  end
  io.write(string.format("ARD %d %.3f %.3f %.3f %.3f %d %d %d %.3f\n", #all, q(0.5), q(0.99),
    q(0.999), all[#all] or 0, h, r, it, (last_t - begin) / 1000))
end
"""

TRIVIAL_APP = """
import sys
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from autoresearchd.hub.serve import uvicorn_server

import re
ID = re.compile(rb'"id":([0-9]+)}$')  # the replay's requests end with their index
HEAD = b'{"jsonrpc":"2.0","id":'
TAIL = b',"result":{"content":[{"type":"text","text":"{}"}]}}'

async def endpoint(request):
    found = ID.search(await request.body())
    reply = HEAD + (found.group(1) if found else b"null") + TAIL
    return Response(reply, media_type="application/json")

async def health(request):
    return Response(b"ok")

app = Starlette(routes=[Route("/", endpoint, methods=["POST"]),
                        Route("/healthz", health, methods=["GET"])])
uvicorn_server(app, "127.0.0.1", int(sys.argv[1])).run()
"""


@dataclass
class Recording:
    requests: list[tuple[str, str]]  # (Authorization header, body), in order
    per_op: dict[str, float]  # requests per logical operation, by kind
    ops: int
    rpc_errors: int  # JSON-RPC error replies the recording itself got
    item_errors: int  # and replies with an item refused or already there


@dataclass
class Load:
    label: str
    completed: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    http_errors: int
    rpc_errors: int
    item_errors: int
    seconds: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    def line(self, per_op: float) -> str:
        ops = self.completed / per_op
        return (
            f"{self.label}: {self.completed} requests ({ops:.0f} ops) in {self.seconds:.2f} s ="
            f" {self.rate:.0f} req/s = {self.rate / per_op:.0f} ops/s; latency from due time"
            f" p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, p99.9 {self.p999_ms:.1f} ms,"
            f" max {self.max_ms:.1f} ms; errors: http {self.http_errors}, rpc {self.rpc_errors},"
            f" item {self.item_errors}; CPU {self.cpu_s * 1e6 / max(1, self.completed):.0f}"
            f" us/request, {self.cpu_s * 1e6 * per_op / max(1, self.completed):.0f} us/op"
        )


# --- recording ---------------------------------------------------------------------------


class Recorder(httpx.AsyncBaseTransport):
    """Passes requests to the in-process hub and keeps each one's header and body."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[tuple[str, str]] = []
        self.errors = 0
        self.item_errors = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.requests.append((request.headers["authorization"], body.decode("utf-8")))
        response = await self.inner.handle_async_request(request)
        content = await response.aread()
        if b'"error":' in content:
            self.errors += 1
        elif b'\\"status\\": \\"error\\"' in content:
            self.item_errors += 1
        return httpx.Response(response.status_code, headers=response.headers, content=content)


def make_result(agent: str, rng: random.Random) -> Result:
    source = f"LR = {rng.random()!r}\n"
    return Result(
        id=uuid.UUID(int=rng.getrandbits(128)).hex,
        agent_id=agent,
        track=TRACK,
        status=Status.KEEP,
        val_bpb=rng.uniform(1.8, 2.4),  # above the synthetic track's floor
        description=f"{rng.choice(WORDS)} {rng.choice(WORDS)} tweak",
        train_py=source,
        train_py_sha256=sha256_text(source),
        parent_sha256=None,
        seed=rng.randrange(1 << 30),
        device_name="bench",
        device_uuid="GPU-bench",
        memory_gb=80.0,
        vram_tier="xl",
        started_at=1.0,
        completed_at=2.0,
        duration_s=1.0,
    )


def agent_keys(agents: int) -> list[tuple[str, str]]:
    return [(f"agent{i}", f"ard_bench-key-{i:05d}") for i in range(agents)]


async def prepare(database: str | Path, agents: int, *, migrate: bool = False) -> None:
    """The recording's starting state: the org and ``agents`` verified agents."""
    store = await open_store(database, migrate=migrate)
    try:
        await store.create_org(ORG, 0.0)
        for name, key in agent_keys(agents):
            await store.register(Agent(name, verified=True), hash_key(key), hash_key("c"), 0.0)
    finally:
        await store.close()


async def record(
    folder: Path, agents: int, ops: int, seed: int, mix: tuple[tuple[str, float], ...]
) -> Recording:
    database = folder / "record.sqlite"
    await prepare(database, agents)
    store = await open_store(database)
    recorder = Recorder(httpx.ASGITransport(app=build_app(store, bench_config())))
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    kinds = [kind for kind, _ in mix]
    weights = [weight for _, weight in mix]
    async with contextlib.AsyncExitStack() as stack:
        memories = [
            await stack.enter_async_context(
                EnsueMemory(URL, ORG, key, primary_track=TRACK, transport=recorder)
            )
            for _, key in agent_keys(agents)
        ]
        for _ in range(ops):
            i = rng.randrange(agents)
            kind = rng.choices(kinds, weights)[0]
            before = len(recorder.requests)
            await run_op(kind, memories[i], f"agent{i}", rng)
            counts[kind] += 1
            requests[kind] += len(recorder.requests) - before
    await store.close()
    per_op = {kind: requests[kind] / counts[kind] for kind in kinds if counts[kind]}
    per_op["all"] = len(recorder.requests) / ops
    return Recording(recorder.requests, per_op, ops, recorder.errors, recorder.item_errors)


async def run_op(kind: str, memory: EnsueMemory, agent: str, rng: random.Random) -> None:
    if kind == "claim":
        await memory.claim(TRACK, f"{rng.getrandbits(256):064x}", agent, 600.0)
    elif kind == "publish":
        await memory.publish(make_result(agent, rng))
    elif kind == "best":
        await memory.get_best(TRACK)
    elif kind == "list":
        # The client's own listings read every key; a bounded page is what a load sees.
        await memory.keys.tool("list_keys", {"prefix": f"@{ORG}/claims/", "limit": 50}, key=ORG)
    else:
        query = f"{rng.choice(WORDS)} {rng.choice(WORDS)}"
        await memory.keys.tool("search_memories", {"query": query, "limit": 10}, key=ORG)


def bench_config(**changes: object) -> HubConfig:
    return HubConfig(**UNLIMITED, require_email=False, replicates=0, org=ORG, **changes)  # type: ignore[arg-type]


# --- servers -----------------------------------------------------------------------------


def lua_requests(folder: Path, recording: Recording, threads: int) -> Path:
    """The recording split for ``threads`` wrk threads: request ``j`` goes to ``j % threads``,
    its JSON-RPC id set to ``j`` (the replay matches replies to requests by it)."""
    folder.mkdir(parents=True, exist_ok=True)
    outs = [(folder / f"req_{t}.lua").open("w", encoding="utf-8") for t in range(threads)]
    try:
        for out in outs:
            out.write("return {\n")
        for j, (auth, body) in enumerate(recording.requests):
            body = with_id(body, j)
            outs[j % threads].write(f"{{{j}, {_lua_string(auth)}, {_lua_string(body)}}},\n")
        for out in outs:
            out.write("}\n")
    finally:
        for out in outs:
            out.close()
    return folder


def with_id(body: str, request_id: int) -> str:
    """A recorded request with its id replaced, and nothing else changed: the client's
    compact JSON, written again the same way, must give back the recorded text."""
    message = json.loads(body)
    if _compact(message) != body or "id" not in message:
        raise SystemExit(f"a recorded request is not compact JSON with an id: {body[:200]}")
    del message["id"]  # last, as the client writes it, so a reply's id is found by its end
    message["id"] = request_id
    return _compact(message)


def _compact(message: object) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def _lua_string(text: str) -> str:
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def wait_healthy(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server on port {port} exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"the server on port {port} did not start")


@contextlib.contextmanager
def servers(commands: list[list[str]], ports: list[int], workers: int = 1) -> Iterator[list[int]]:
    """Run ``commands`` until the block ends; every process's pid, ``workers`` per command
    (a ``hub serve`` and the other workers it starts, once they listen)."""
    procs: list[subprocess.Popen[bytes]] = []
    pids: list[int] = []
    try:
        for command, port in zip(commands, ports, strict=True):
            procs.append(subprocess.Popen(command))
            wait_healthy(port, procs[-1])
            pids += [procs[-1].pid, *worker_pids(procs[-1].pid, port, workers - 1)]
        yield pids
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()


def hub_commands(
    folder: Path, database: str, replicas: int, patch: str = "", tree: str = "", workers: int = 1
) -> tuple[list[list[str]], list[int]]:
    commands, ports = [], []
    for i in range(replicas):
        port = free_port()
        config = folder / f"hub{i}.toml"
        limits = "".join(f"{name} = {value!r}\n" for name, value in UNLIMITED.items())
        config.write_text(
            f'[daemon]\nstate_dir = "{folder}"\nlog_level = "warning"\n[hub]\n'
            f'listen_port = {port}\norg = "{ORG}"\ndatabase = "{database}"\n{limits}'
            f"require_email = false\nreplicates = 0\nworkers = {workers}\n"
        )
        start = ["-m", "autoresearchd"]
        if patch or tree:
            paths = [tree] if tree else []
            start = ["-c", PATCHED_HUB.format(paths=paths, patch=patch or "pass")]
        commands.append([sys.executable, *start, "hub", "serve", "--config", str(config)])
        ports.append(port)
    return commands, ports


def wrk(
    label: str,
    requests: Path,
    ports: list[int],
    pids: list[int],
    rate: float,
    shape: tuple[int, int],
    total: int,
) -> Load:
    env = {
        **os.environ,
        "ARD_REQUESTS": str(requests),
        "ARD_RATE": str(rate),
        "ARD_PORTS": " ".join(map(str, ports)),
    }
    script = requests / "replay.lua"
    script.write_text(LUA)
    for stale in requests.glob("done_*"):
        stale.unlink()
    limit = total / min(rate, 500.0) + 10
    before = cpu_seconds(pids)
    threads, connections = shape
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{limit:.0f}s"]
    command += ["--timeout", "30s", "-s", str(script), f"http://127.0.0.1:{ports[0]}/"]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(requests.glob("done_*"))) >= threads:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # wrk stops its threads and reports
    out, err = proc.communicate()
    cpu = cpu_seconds(pids) - before
    line = next((ln for ln in out.splitlines() if ln.startswith("ARD ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no figures: {out[-500:]} {err[-500:]}")
    n, p50, p99, p999, peak, http, rpc, item, secs = line.split()[1:]
    return Load(
        label,
        int(n),
        float(p50),
        float(p99),
        float(p999),
        float(peak),
        int(http),
        int(rpc),
        int(item),
        float(secs),
        cpu,
    )


# --- the run -----------------------------------------------------------------------------


def fresh_schema(url: str, name: str) -> str:
    """A new schema ``name`` in the database at ``url``; a URL whose search_path is it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}".encode())
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"


def benchmark(folder: Path, args: argparse.Namespace, pg_url: str) -> None:
    started = time.monotonic()
    mix = WRITES_ONLY if args.writes_only else WRITE_HEAVY if args.write_heavy else MIX
    recording = anyio.run(record, folder, args.agents, args.ops, args.seed, mix)
    print(
        f"recorded {len(recording.requests)} requests for {recording.ops} operations"
        f" ({args.agents} agents) in {time.monotonic() - started:.1f} s;"
        f" errors while recording: rpc {recording.rpc_errors}, item {recording.item_errors}"
    )
    per_op = recording.per_op
    print(
        "requests per logical operation: "
        + ", ".join(f"{kind} {value:.2f}" for kind, value in per_op.items())
    )
    requests = lua_requests(folder / "requests", recording, args.threads)
    shape = (args.threads, args.connections)
    total = len(recording.requests)
    request_rate = args.rate * per_op["all"]

    port = free_port()
    trivial = folder / "trivial.py"
    trivial.write_text(TRIVIAL_APP)
    with servers([[sys.executable, str(trivial), str(port)]], [port]) as pids:
        # Closed loop (everything due at once) finds the ceiling; then the same pace as the hub.
        ceiling = wrk("trivial, closed loop", requests, [port], pids, 1e9, shape, total)
        paced = wrk("trivial, paced", requests, [port], pids, request_rate, shape, total)
    loads: list[Load] = []
    # (label, database, replicas, patch, tree, workers)
    setups: list[tuple[str, str, int, str, str, int]] = [
        ("SQLite, 1 process", str(folder / "hub.sqlite"), 1, "", "", 1),
        ("SQLite NORMAL, 1 process", str(folder / "hub_normal.sqlite"), 1, NORMAL_SYNC, "", 1),
        (
            "SQLite, a commit per write",
            str(folder / "hub_single.sqlite"),
            1,
            COMMIT_PER_WRITE,
            "",
            1,
        ),
        ("SQLite, 2 processes", str(folder / "hub_workers.sqlite"), 1, "", "", 2),
    ]
    if args.compare_tree:
        tree = str(Path(args.compare_tree).resolve())
        setups.append((f"SQLite, code of {tree}", str(folder / "hub_tree.sqlite"), 1, "", tree, 1))
    if pg_url:
        tag = uuid.uuid4().hex[:8]
        setups.append(("PostgreSQL, 1 process", fresh_schema(pg_url, f"b1_{tag}"), 1, "", "", 1))
        setups.append(
            (
                f"PostgreSQL, {args.replicas} replicas",
                fresh_schema(pg_url, f"b{args.replicas}_{tag}"),
                args.replicas,
                "",
                "",
                1,
            )
        )
    for label, database, replicas, patch, tree, workers in setups:
        if tree:
            prepare_with(tree, database, args.agents)
        else:
            anyio.run(_prepare, database, args.agents)
        place = folder / f"setup{len(loads)}"
        place.mkdir(parents=True)
        commands, ports = hub_commands(place, database, replicas, patch, tree, workers)
        with servers(commands, ports, workers) as pids:
            loads.append(wrk(label, requests, ports, pids, request_rate, shape, total))

    print(f"offered: {args.rate:.0f} ops/s = {request_rate:.0f} requests/s")
    print(ceiling.line(1.0) + "  [ceiling]")
    print(paced.line(1.0))
    for load in loads:
        print(load.line(per_op["all"]))
    trivial_cpu = paced.cpu_s / max(1, paced.completed)
    for load in loads:
        if load.label.startswith("PostgreSQL"):
            print(f"{load.label} / SQLite throughput: {load.rate / loads[0].rate:.3f}")
    for load in loads:
        hub_cpu = load.cpu_s * per_op["all"] / max(1, load.completed)
        ratio = hub_cpu / trivial_cpu
        print(f"{load.label}: hub CPU per operation / trivial CPU per request: {ratio:.2f}")
    full, normal, single, two = loads[0], loads[1], loads[2], loads[3]
    print(
        f"SQLite synchronous FULL / NORMAL: throughput {full.rate / normal.rate:.3f},"
        f" p99 {full.p99_ms / normal.p99_ms:.2f}"
    )
    if args.compare_tree:
        tree_load = loads[4]
        print(
            f"SQLite group commit / {tree_load.label}: throughput"
            f" {full.rate / tree_load.rate:.3f}, p99 {full.p99_ms / tree_load.p99_ms:.2f}"
        )
    print(
        f"SQLite group commit / a commit per write: throughput {full.rate / single.rate:.3f},"
        f" p99 {full.p99_ms / single.p99_ms:.2f}"
    )
    print(
        f"{two.label} / {full.label}: throughput {two.rate / full.rate:.3f},"
        f" p99 {two.p99_ms / full.p99_ms:.2f}"
    )


async def _prepare(database: str, agents: int) -> None:
    await prepare(
        database if database.startswith("postgres") else Path(database), agents, migrate=True
    )


#: Prepares a setup's database with the package first found in ``paths``: a file another
#: checkout serves must be in its schema, which may be older than this one's.
PREPARE_WITH = (
    "import sys; sys.path[:0] = {paths!r}; import anyio, hub_load;"
    " anyio.run(hub_load._prepare, {database!r}, {agents!r})"
)


def prepare_with(tree: str, database: str, agents: int) -> None:
    """:func:`_prepare`, run by the package in ``tree`` (this benchmark's code around it)."""
    paths = [tree, str(Path(__file__).resolve().parent)]
    code = PREPARE_WITH.format(paths=paths, database=database, agents=agents)
    subprocess.run([sys.executable, "-c", code], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="offered operations/s")
    parser.add_argument("--ops", type=int, default=8000, help="logical operations recorded")
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument(
        "--threads", type=int, default=2, help="wrk threads (each paces its share of the load)"
    )
    parser.add_argument("--replicas", type=int, default=2, help="PostgreSQL hub processes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--write-heavy", action="store_true", help="claims and publishes, 80%%")
    parser.add_argument("--writes-only", action="store_true", help="claims and publishes only")
    parser.add_argument(
        "--compare-tree",
        default="",
        help="also serve SQLite with the package in this folder (a checkout of another commit)",
    )
    parser.add_argument(
        "--database", default="", help="a postgresql:// URL (default: a throwaway cluster)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark needs wrk (apt-get install wrk)")
    configure_logging("console", "warning", sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip_postgres or args.database:
            benchmark(Path(tmp), args, "" if args.skip_postgres else args.database)
            return
        cluster = start_cluster({"synchronous_commit": "off"})
        try:
            benchmark(Path(tmp), args, cluster.url())
        finally:
            cluster.stop()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
