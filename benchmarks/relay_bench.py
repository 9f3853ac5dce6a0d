"""Relay throughput and latency: deliver → fetch → ack by 1, 10 and 100 concurrent clients, beside
the raw rate of the same three calls on the same transport with no storage, auth or limits.

Run by hand, never in CI timing::

    .venv/bin/python benchmarks/relay_bench.py
    .venv/bin/python benchmarks/relay_bench.py --json --seconds 10 --clients 1,10,100

Everything binds to 127.0.0.1. The relay is a child process (``python -m relay run``, SQLite
store, its default limits except the per-caller rates, which would measure the limiter) and so
is the echo service (this script with ``--echo``): an Endpoint whose handler answers deliver with
the ids, fetch with an envelope of the same size, ack with 1, storing nothing. One *round* is one
client's deliver of one envelope to its own mailbox, a fetch that returns it and the ack: an
envelope delivered, fetched and acknowledged. ``envelopes_per_s`` counts rounds per second over
all clients, ``p50_ms``/``p99_ms`` are round latencies, ``peak_rss_mb`` the relay's VmRSS peak;
``raw_p50_ms``/``raw_p99_ms`` are the echo's, and ``relay_cpu_s``/``echo_cpu_s`` the CPU seconds
each server spent in the measured part.

The clients are spread over ``--client-procs`` processes (this script with ``--client-worker``;
by default about 25 clients a process, at most two processes a core), so that one client
process's own queue is not what the latency measures; ``--client-procs 0`` runs them in this
process as before. They still share the machine's cores with the servers. Each client makes its
rounds back to back, so at N clients the mean latency is N / envelopes_per_s whatever the
server (Little's law); ``--interval-ms`` instead has each client begin a round every so often
(an offered load; each round timed from when it was due). The echo and the relay take
``--slices`` turns per point, so that the machine's other load drifting during a run falls on
both alike. ``--profile FILE`` runs the relays
under cProfile (``FILE.<backend>-<relays>.relay<n>``, written when they stop).

``--backend sqlite,postgresql --relays 1,2`` adds rows for each backend and number of relay
processes (issue 12). PostgreSQL is a throwaway server this script starts (initdb + pg_ctl, as
the tests do, ``tests/pg_support.py``) unless ``--dsn`` names one; the relays of one row share
it, each deployed the first one's identity key, and the clients are dealt out between them.
With several relays ``peak_rss_mb`` is the sum of their peaks. ``relay_cpu_s`` and ``db_cpu_s``
are the CPU seconds the relay processes and the database server's processes (own server only)
spent in the measured part: where the time goes.

Then ``--connect`` clients (default 1,000) dial the relay at once with the node's default
deadlines (10 s for the handshake, 10 s for the call, ``node.app.router``) and each makes one
fetch; the relay's ``max_connections_per_host`` is raised to 4,096 for this, since they all come
from one address. Printed as ``connect_storm`` beside the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.core import wire
from node.core.addresses import Address, parse_address
from node.core.errors import NodeError
from node.core.identity import Identity
from node.transport.connection import Caller, PeerConnection
from node.transport.endpoint import Endpoint
from node.transport.runtime import RealRuntime
from relay.accounts import SETUP_FILE

LOOPBACK = "127.0.0.1"
PAYLOAD = 1024  # bytes of sealed payload per envelope: a short chat message with MLS overhead
NODE_DIAL_DEADLINE = 10.0  # node.app.router: relay_deadline
NODE_CALL_DEADLINE = 10.0
UNLIMITED = {
    "QUICNPROTOCHAT_RELAY_CALLS_PER_SECOND": "1000000",
    "QUICNPROTOCHAT_RELAY_CALL_BURST": "1000000",
    "QUICNPROTOCHAT_RELAY_ENVELOPES_PER_MAILBOX_PER_SECOND": "1000000",
    "QUICNPROTOCHAT_RELAY_ENVELOPE_BURST_PER_MAILBOX": "1000000",
    "QUICNPROTOCHAT_RELAY_NEW_MAILBOXES_PER_SECOND": "1000000",
    "QUICNPROTOCHAT_RELAY_NEW_MAILBOX_BURST": "1000000",
    "QUICNPROTOCHAT_RELAY_MAX_CONNECTIONS_PER_HOST": "4096",
    "QUICNPROTOCHAT_RELAY_MAX_HALF_OPEN": "2048",
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Child:
    """A server child process that prints one JSON ready line."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        host, _, port = ready["address"].rpartition(":")
        self.address = (host, int(port))
        self.identity = bytes.fromhex(ready["identity"])
        self.peak = rss_mb(self.proc.pid)

    def sample(self) -> None:
        self.peak = max(self.peak, rss_mb(self.proc.pid))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def children_of(parent: int) -> list[int]:
    """The database server's processes: its postmaster and every child of it."""
    found = [parent]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == parent:
                found.append(int(entry.name))
    return found


PROFILE: Path | None = None  # --profile: each relay runs under cProfile, stats written here


def relay_child(data: Path, extra: dict[str, str] | None = None) -> Child:
    env = dict(os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE="bench") | UNLIMITED | (extra or {})
    python = [sys.executable]
    if PROFILE is not None:
        # Written when the relay exits after SIGTERM (its normal stop), one file per process.
        python += ["-m", "cProfile", "-o", f"{PROFILE}.{data.parent.name}.{data.name}"]
    cmd = [*python, "-m", "relay", "run", "--listen", f"{LOOPBACK}:0"]
    return Child([*cmd, "--data-dir", str(data), "--json"], env)


def echo_child() -> Child:
    return Child([sys.executable, __file__, "--echo"], dict(os.environ))


# --- the echo service ---------------------------------------------------------------------


async def echo_serve() -> None:
    filler = wire.Envelope(
        b"\0" * 16, b"\0" * 32, wire.EnvelopeKind.APPLICATION, b"x" * PAYLOAD, b"g", 1
    )

    async def handle(_caller: Caller, request: wire.Request) -> wire.Response:
        match request:
            case wire.Deliver(envelopes):
                return wire.DeliverResult(tuple(e.id for e in envelopes))
            case wire.Fetch(_mailbox, cursor, _limit):
                return wire.FetchResult((filler,), cursor + 1)
            case wire.Ack(_mailbox, ids):
                return wire.AckResult(len(ids))
        return wire.AckResult(0)

    runtime = RealRuntime("qpc-echo")
    me = Identity.generate()
    endpoint = Endpoint(me, handle, runtime)
    host, port = await endpoint.start(LOOPBACK, 0)
    print(json.dumps({"address": f"{host}:{port}", "identity": me.public_key.hex()}), flush=True)
    await asyncio.Event().wait()


# --- clients ------------------------------------------------------------------------------


async def open_clients(
    servers: list[Child], count: int, runtime: RealRuntime
) -> list[tuple[Endpoint, PeerConnection, Identity]]:
    async def one(n: int) -> tuple[Endpoint, PeerConnection, Identity]:
        server = servers[n % len(servers)]
        me = Identity.generate()
        endpoint = Endpoint(me, None, runtime)
        await endpoint.start(LOOPBACK, 0)
        conn = await endpoint.dial(server.address, server.identity, NODE_DIAL_DEADLINE)
        return endpoint, conn, me

    return list(await asyncio.gather(*(one(n) for n in range(count))))


Window = tuple[float, float]
"""(warm_until, stop_at) on the system-wide monotonic clock, which every process shares."""


async def client_rounds(
    servers: list[tuple[Address, bytes]],
    clients: int,
    first: int,
    start: Callable[[], Awaitable[Window]],
    interval: float = 0.0,
) -> dict[str, Any]:
    """``clients`` clients (numbered from ``first``, dealt out over ``servers``) dial, await
    ``start`` for the window, and make rounds until its end: back to back, or each one
    ``interval`` seconds after the one before (from a random phase); the latencies of the
    rounds begun in the measured part (from ``warm_until`` on). A paced round is timed from
    when it was due, so a client that falls behind counts its wait too."""
    runtime = RealRuntime("qpc-bench")
    endpoints: list[Endpoint] = []

    async def one(n: int) -> tuple[PeerConnection, Identity]:
        address, key = servers[n % len(servers)]
        me = Identity.generate()
        endpoint = Endpoint(me, None, runtime)
        endpoints.append(endpoint)
        await endpoint.start(LOOPBACK, 0)
        return await endpoint.dial(address, key, NODE_DIAL_DEADLINE), me

    latencies: list[float] = []
    errors = 0

    async def loop(conn: PeerConnection, me: Identity, warm_until: float, stop_at: float) -> None:
        nonlocal errors
        cursor = 0
        due = time.monotonic() + random.random() * interval
        while (started := time.monotonic()) < stop_at:
            if interval:
                await asyncio.sleep(max(0.0, due - started))
                started, due = due, due + interval
                if started >= stop_at:
                    break
            env = wire.Envelope(
                os.urandom(16), me.mailbox, wire.EnvelopeKind.APPLICATION,
                os.urandom(PAYLOAD), b"g", 1,
            )  # fmt: skip
            try:
                delivered = await conn.call(wire.Deliver((env,)))
                fetched = await conn.call(wire.Fetch(me.mailbox, cursor, 16))
                if not isinstance(delivered, wire.DeliverResult):
                    raise NodeError(f"deliver: {delivered}")
                if not isinstance(fetched, wire.FetchResult) or not fetched.envelopes:
                    raise NodeError(f"fetch: {fetched}")
                cursor = fetched.cursor
                ids = tuple(e.id for e in fetched.envelopes)
                acked = await conn.call(wire.Ack(me.mailbox, ids))
                if not isinstance(acked, wire.AckResult):
                    raise NodeError(f"ack: {acked}")
            except NodeError:
                errors += 1
                continue
            if started >= warm_until:
                latencies.append(time.monotonic() - started)

    try:
        opened = await asyncio.gather(*(one(first + n) for n in range(clients)))
        warm_until, stop_at = await start()
        await asyncio.gather(*(loop(conn, me, warm_until, stop_at) for conn, me in opened))
    finally:
        for endpoint in endpoints:
            await endpoint.close()
        runtime.close()
    return {"latencies": latencies, "errors": errors}


async def client_worker() -> None:
    """``--client-worker``: one client process. Reads its task as one JSON line, prints a
    line once its connections are open, reads the window as one line, and prints its
    latencies as one JSON line."""
    loop = asyncio.get_running_loop()
    task = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    servers = [(parse_address(a), bytes.fromhex(k)) for a, k in task["servers"]]

    async def start() -> Window:
        print(json.dumps({"ready": True}), flush=True)
        window = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
        return float(window[0]), float(window[1])

    clients, first, interval = int(task["clients"]), int(task["first"]), float(task["interval"])
    result = await client_rounds(servers, clients, first, start, interval)
    print(json.dumps(result), flush=True)


def default_client_procs(clients: int) -> int:
    """About 25 clients a process, at most two processes a core: past that the processes
    only take turns on the same cores."""
    return max(1, min(-(-clients // 25), 2 * (os.cpu_count() or 1)))


async def rounds(
    servers: list[Child],
    clients: int,
    seconds: float,
    procs: int,
    db_parent: int | None = None,
    interval: float = 0.0,
) -> dict[str, Any]:
    """One slice: ``clients`` clients spread over ``procs`` client processes (0: in this one,
    as before ``--client-procs``), making rounds against ``servers`` for ``seconds``."""
    targets = [(f"{c.address[0]}:{c.address[1]}", c.identity.hex()) for c in servers]
    warm = min(1.0, seconds / 4)  # caches, first pages, connection windows
    relay_pids = [server.proc.pid for server in servers]
    db_pids: list[int] = []
    measured: dict[str, float] = {}

    async def measure(window: Window) -> None:
        """CPU seconds of the servers (and database) in the window, their peak RSS."""
        warm_until, stop_at = window
        await asyncio.sleep(max(0.0, warm_until - time.monotonic()))
        # The relays' pooled connections are open by now: each is a child of the postmaster.
        db_pids.extend(children_of(db_parent) if db_parent is not None else [])
        relay_cpu, db_cpu = cpu_seconds(relay_pids), cpu_seconds(db_pids)
        while (now := time.monotonic()) < stop_at:
            for server in servers:
                server.sample()
            await asyncio.sleep(min(0.2, stop_at - now))
        measured["relay_cpu_s"] = cpu_seconds(relay_pids) - relay_cpu
        measured["db_cpu_s"] = cpu_seconds(db_pids) - db_cpu if db_pids else float("nan")

    def window_from_now() -> Window:
        warm_until = time.monotonic() + warm
        return warm_until, warm_until + seconds

    results: list[dict[str, Any]] = []
    if procs <= 0:
        metering: list[asyncio.Task[None]] = []

        async def start_here() -> Window:
            window = window_from_now()
            metering.append(asyncio.ensure_future(measure(window)))
            return window

        servers_here = [(parse_address(a), bytes.fromhex(k)) for a, k in targets]
        results.append(await client_rounds(servers_here, clients, 0, start_here, interval))
        await asyncio.gather(*metering)
    else:
        results = await spread_rounds(targets, clients, procs, window_from_now, measure, interval)
    return {
        "latencies": [x for r in results for x in r["latencies"]],
        "seconds": seconds,
        "errors": sum(int(r["errors"]) for r in results),
        "relay_cpu_s": measured["relay_cpu_s"],
        "db_cpu_s": measured["db_cpu_s"],
    }


def summary(slices: list[dict[str, Any]]) -> dict[str, float]:
    """One point from its slices: rounds a second over all of them, latency percentiles."""
    done = sorted(x for s in slices for x in s["latencies"])
    latencies = done or [float("nan")]
    return {
        "per_s": len(done) / sum(s["seconds"] for s in slices),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": sum(s["errors"] for s in slices),
        "relay_cpu_s": sum(s["relay_cpu_s"] for s in slices),
        "db_cpu_s": sum(s["db_cpu_s"] for s in slices),
    }


async def spread_rounds(
    targets: list[tuple[str, str]],
    clients: int,
    procs: int,
    window_from_now: Callable[[], Window],
    measure: Callable[[Window], Awaitable[None]],
    interval: float,
) -> list[dict[str, Any]]:
    """The clients dealt out over ``procs`` client processes (this script with
    ``--client-worker``), started together once every one has its connections open."""
    procs = min(procs, clients)
    workers: list[asyncio.subprocess.Process] = []
    try:
        first = 0
        for n in range(procs):
            share = clients // procs + (1 if n < clients % procs else 0)
            worker = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--client-worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            workers.append(worker)
            assert worker.stdin is not None
            task = {"servers": targets, "clients": share, "first": first, "interval": interval}
            worker.stdin.write(json.dumps(task).encode() + b"\n")
            await worker.stdin.drain()
            first += share
        for worker in workers:
            assert worker.stdout is not None
            json.loads(await worker.stdout.readline())  # its connections are open
        window = window_from_now()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(json.dumps(window).encode() + b"\n")
            await worker.stdin.drain()
        await measure(window)
        results = []
        for worker in workers:
            assert worker.stdout is not None
            line = await worker.stdout.readline()
            if not line:
                raise RuntimeError("a client process ended without its results")
            results.append(json.loads(line))
        return results
    finally:
        for worker in workers:
            if worker.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.kill()
            await worker.wait()


async def connect_storm(server: Child, count: int) -> dict[str, Any]:
    runtime = RealRuntime("qpc-storm")
    endpoints: list[Endpoint] = []
    failures: dict[str, int] = {}

    async def one() -> float:
        me = Identity.generate()
        endpoint = Endpoint(me, None, runtime)
        endpoints.append(endpoint)
        await endpoint.start(LOOPBACK, 0)
        started = time.perf_counter()
        try:
            conn = await endpoint.dial(server.address, server.identity, NODE_DIAL_DEADLINE)
            answer = await conn.call(wire.Fetch(me.mailbox, 0, 1), NODE_CALL_DEADLINE)
            if not isinstance(answer, wire.FetchResult):
                raise NodeError(f"answered {answer}")
        except NodeError as exc:
            name = type(exc).__name__
            failures[name] = failures.get(name, 0) + 1
        return time.perf_counter() - started

    try:
        took = sorted(await asyncio.gather(*(one() for _ in range(count))))
        server.sample()
    finally:
        for endpoint in endpoints:
            await endpoint.close()
        runtime.close()
    return {
        "clients": count,
        "errors": sum(failures.values()),
        "failures": failures,
        "p50_s": round(statistics.median(took), 3),
        "max_s": round(took[-1], 3),
    }


class Service:
    """``relays`` relay processes of one service on one store (the first one's key and OPAQUE
    setup deployed to the others)."""

    def __init__(self, root: Path, relays: int, env: dict[str, str]) -> None:
        self.children: list[Child] = []
        try:
            for n in range(relays):
                data = root / f"relay{n}"
                if n:
                    data.mkdir(mode=0o700)
                    for name in ("relay.key", SETUP_FILE):
                        shutil.copy2(root / "relay0" / name, data / name)
                self.children.append(relay_child(data, env))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for child in self.children:
            child.stop()


def start_postgres(root: Path) -> tuple[str, list[int], Any]:
    """A throwaway server (tests/pg_support.py) and a migrated database on it."""
    from tests.pg_support import start_server

    server = start_server(root)
    dsn = server.create_database("qpc_bench")
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    return dsn, [postmaster], server


def migrate(dsn: str) -> None:
    env = dict(os.environ, QUICNPROTOCHAT_RELAY_DSN=dsn)
    subprocess.run([sys.executable, "-m", "relay", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    storm = None
    with tempfile.TemporaryDirectory(prefix="qpc-relay-bench-") as tmp:
        echo = echo_child()
        pg_server: Any = None
        try:
            for backend in args.backend:
                env: dict[str, str] = {}
                db_parent: int | None = None
                if backend == "postgresql":
                    dsn = args.dsn
                    if not dsn:
                        # Its own directory: the server's user cannot enter ours (0700).
                        pg_root = Path(tempfile.mkdtemp(prefix="qpc-bench-pg-"))
                        dsn, postmaster, pg_server = start_postgres(pg_root)
                    migrate(dsn)
                    env = {"QUICNPROTOCHAT_RELAY_STORE": "postgresql"}
                    env["QUICNPROTOCHAT_RELAY_DSN"] = dsn
                for relays in args.relays if backend == "postgresql" else [1]:
                    if backend == "postgresql" and pg_server is not None:
                        db_parent = postmaster[0]
                    root = Path(tmp) / f"{backend}-{relays}"
                    root.mkdir()
                    service = Service(root, relays, env)
                    try:
                        for clients in args.clients:
                            procs = args.client_procs
                            if procs is None:
                                procs = default_client_procs(clients)
                            pace = args.interval_ms / 1000
                            part = args.seconds / args.slices
                            for child in service.children:
                                child.peak = rss_mb(child.proc.pid)
                            # The echo and the relay take turns, so that a change in the
                            # machine's other load falls on both sides of the ratio alike.
                            raws, reals = [], []
                            for _ in range(args.slices):
                                raws.append(await rounds([echo], clients, part, procs, None, pace))
                                reals.append(
                                    await rounds(
                                        service.children, clients, part, procs, db_parent, pace
                                    )
                                )
                            raw, real = summary(raws), summary(reals)
                            row = make_row(backend, relays, clients, raw, real, service)
                            rows.append(
                                row | {"client_procs": procs, "interval_ms": args.interval_ms}
                            )
                            if not args.json:
                                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                        if args.connect and storm is None:
                            storm = await connect_storm(service.children[0], args.connect)
                    finally:
                        service.stop()
        finally:
            echo.stop()
            if pg_server is not None:
                pg_server.stop()
                shutil.rmtree(pg_server.root, ignore_errors=True)
    return {"rows": rows, "connect_storm": storm}


def make_row(
    backend: str,
    relays: int,
    clients: int,
    raw: dict[str, float],
    real: dict[str, float],
    service: Service,
) -> dict[str, Any]:
    db_cpu = real["db_cpu_s"]
    return {
        "backend": backend,
        "relays": relays,
        "clients": clients,
        "envelopes_per_s": round(real["per_s"], 1),
        "raw_per_s": round(raw["per_s"], 1),
        "ratio": round(real["per_s"] / raw["per_s"], 3),
        "p50_ms": round(real["p50_ms"], 2),
        "p99_ms": round(real["p99_ms"], 2),
        "peak_rss_mb": round(sum(c.peak for c in service.children), 1),
        "raw_p50_ms": round(raw["p50_ms"], 2),
        "raw_p99_ms": round(raw["p99_ms"], 2),
        "relay_cpu_s": round(real["relay_cpu_s"], 2),
        "echo_cpu_s": round(raw["relay_cpu_s"], 2),
        "db_cpu_s": None if db_cpu != db_cpu else round(db_cpu, 2),  # NaN: not our server
        "errors": int(real["errors"] + raw["errors"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument(
        "--clients",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 10, 100],
        help="concurrent clients per point, comma-separated [1,10,100]",
    )
    parser.add_argument(
        "--backend",
        type=lambda text: text.split(","),
        default=["sqlite"],
        help="stores to measure, comma-separated: sqlite, postgresql [sqlite]",
    )
    parser.add_argument(
        "--relays",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2],
        help="relay processes per PostgreSQL row, comma-separated [1,2]",
    )
    parser.add_argument("--dsn", default="", help="an existing PostgreSQL database to use")
    parser.add_argument("--connect", type=int, default=1000, help="clients dialing at once")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="run each relay under cProfile, writing FILE.<backend-relays>.<relayN>",
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=None,
        metavar="N",
        help="client processes per point; 0 runs the clients in this process"
        " [about 25 clients a process, at most 2 per core]",
    )
    parser.add_argument(
        "--interval-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="each client begins a round every MS milliseconds (an offered load, timed from"
        " when each round was due) instead of back to back [0: back to back]",
    )
    parser.add_argument(
        "--slices",
        type=int,
        default=3,
        metavar="N",
        help="the echo and the relay take N turns per point, each --seconds/N long [3]",
    )
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global PROFILE
    PROFILE = args.profile
    if args.echo:
        asyncio.run(echo_serve())
        return
    if args.client_worker:
        asyncio.run(client_worker())
        return
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result))
        return
    head = (
        "backend", "relays", "clients", "envelopes_per_s", "raw_per_s", "ratio", "p50_ms",
        "p99_ms", "raw_p99_ms", "peak_rss_mb", "relay_cpu_s", "echo_cpu_s", "db_cpu_s",
        "client_procs",
    )  # fmt: skip
    print(" ".join(f"{h:>15}" for h in head))
    for row in result["rows"]:
        print(" ".join(f"{row[h]!s:>15}" for h in head))
    if result["connect_storm"] is not None:
        print("connect storm:", json.dumps(result["connect_storm"]))


if __name__ == "__main__":
    main()
