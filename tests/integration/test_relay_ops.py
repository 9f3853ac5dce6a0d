"""What an operator meets, against real relay processes on loopback: the metrics port parsed by
Prometheus's own parser, ``/healthz``, every key as an environment variable, production mode's
refusals, ``relay status`` beside a running relay, and SIGTERM answering the calls in flight."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.core import wire
from node.core.errors import ErrorCode, PeerUnreachableError
from node.core.framing import encode_frame
from node.core.identity import Identity
from node.transport.connection import PeerConnection
from tests.conftest import LOOPBACK, running_endpoint

PASSPHRASE = "ops test passphrase"
START_DEADLINE = 30.0


@dataclass
class OpsRelay:
    """A relay child process with its stderr in a file (a flood of log lines must never block
    it on a full pipe), started with extra arguments and environment variables."""

    data_dir: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    verbose: bool = False
    proc: subprocess.Popen[str] | None = None
    address: tuple[str, int] | None = None
    identity: bytes = b""
    metrics: str | None = None
    _stderr: IO[str] | None = None

    @property
    def stderr_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.stderr"

    def command(self) -> list[str]:
        if self.verbose:  # through the root group, so that -v sets the log level
            entry = ["-c", "from node.app.cli import main; main()", "-v", "relay", "run"]
        else:
            entry = ["-m", "relay", "run"]
        return [sys.executable, *entry, "--data-dir", str(self.data_dir), "--json", *self.args]

    def start(self) -> None:
        env = dict(os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE=PASSPHRASE) | self.env
        if "QUICNPROTOCHAT_RELAY_LISTEN" not in self.env and "--listen" not in self.args:
            self.args = ("--listen", f"{LOOPBACK}:0", *self.args)
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=START_DEADLINE)
            raise RuntimeError(f"relay did not start: {self.stderr_path.read_text()}")
        ready = json.loads(line)
        host, _, port = ready["address"].rpartition(":")
        self.address = (host, int(port))
        self.identity = bytes.fromhex(ready["identity"])
        self.metrics = ready.get("metrics")

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stderr_lines(self) -> list[str]:
        return self.stderr_path.read_text().splitlines()

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()


@contextlib.contextmanager
def ops_relay(data_dir: Path, *args: str, verbose: bool = False, **env: str):  # type: ignore[no-untyped-def]
    relay = OpsRelay(data_dir, tuple(args), dict(env), verbose)
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


@contextlib.asynccontextmanager
async def client(
    relay: OpsRelay, identity: Identity | None = None
) -> AsyncIterator[PeerConnection]:
    assert relay.address is not None
    async with running_endpoint(identity or Identity.generate(), None) as endpoint:
        yield await endpoint.dial(relay.address, relay.identity)


def envelope(recipient: bytes, payload: bytes = b"sealed bytes") -> wire.Envelope:
    return wire.Envelope(os.urandom(16), recipient, wire.EnvelopeKind.APPLICATION, payload, b"g", 1)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def scrape(relay: OpsRelay) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client's parser."""
    status, text = await asyncio.to_thread(http_get, f"http://{relay.metrics}/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def relay_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE=PASSPHRASE) | env,
        check=False,
    )


# --- metrics ------------------------------------------------------------------------------


async def test_metrics_count_envelopes_refusals_and_latency_and_healthz_answers(
    tmp_path: Path,
) -> None:
    bob = Identity.generate()
    with ops_relay(tmp_path / "relay", "--metrics-listen", f"{LOOPBACK}:0") as relay:
        assert relay.metrics is not None and relay.metrics.startswith(f"{LOOPBACK}:")
        async with client(relay) as alice:
            sent = (envelope(bob.mailbox), envelope(bob.mailbox), envelope(bob.mailbox))
            answer = await alice.call(wire.Deliver(sent))
            assert isinstance(answer, wire.DeliverResult) and len(answer.accepted) == 3
            # Someone else's mailbox: refused, and counted by its code.
            refused = await alice.call(wire.Fetch(bob.mailbox, 0, 10))
            assert isinstance(refused, wire.ErrorResult)
            assert refused.code == ErrorCode.UNAUTHORIZED
            # A whole frame that is no request: answered, and counted below the service.
            garbage = wire.decode_response(await alice._exchange(encode_frame(b"\x07" * 24)))
            assert isinstance(garbage, wire.ErrorResult)
            assert garbage.code == ErrorCode.MALFORMED_REQUEST
        before = await scrape(relay)
        assert before[("qpc_relay_mailbox_depth_envelopes", (("of", "total"),))] == 3
        assert before[("qpc_relay_mailboxes", ())] == 1
        async with client(relay, bob) as bob_conn:
            fetched = await bob_conn.call(wire.Fetch(bob.mailbox, 0, 10))
            assert isinstance(fetched, wire.FetchResult) and len(fetched.envelopes) == 3
            acked = await bob_conn.call(wire.Ack(bob.mailbox, tuple(e.id for e in sent[:2])))
            assert acked == wire.AckResult(2)
        after = await scrape(relay)
        assert after[("qpc_relay_envelopes_in_total", ())] == 3
        assert after[("qpc_relay_envelopes_out_total", ())] == 3
        assert after[("qpc_relay_envelopes_acked_total", ())] == 2
        assert after[("qpc_relay_calls_total", (("method", "deliver"), ("result", "ok")))] == 1
        unauthorized = (("method", "fetch"), ("result", "unauthorized"))
        assert after[("qpc_relay_calls_total", unauthorized)] == 1
        assert after[("qpc_relay_refusals_total", (("code", "unauthorized"),))] == 1
        malformed = (("code", "malformedRequest"), ("trigger", "malformed_request"))
        assert after[("qpc_relay_transport_refusals_total", malformed)] == 1
        assert after[("qpc_relay_call_duration_seconds_count", (("method", "fetch"),))] == 2
        slowest = ("qpc_relay_call_duration_seconds_bucket", (("le", "+Inf"), ("method", "ack")))
        assert after[slowest] == 1
        assert after[("qpc_relay_connections_inbound", ())] >= 0
        assert after[("qpc_relay_events_total", (("event", "connections_accepted"),))] == 2
        assert ("qpc_relay_calls_in_flight", ()) in after
        assert await asyncio.to_thread(http_get, f"http://{relay.metrics}/healthz") == (200, "ok\n")
        missing = await asyncio.to_thread(http_get, f"http://{relay.metrics}/other")
        assert missing[0] == 404
        # Nothing published names a mailbox or an identity.
        text = (await asyncio.to_thread(http_get, f"http://{relay.metrics}/metrics"))[1]
        assert bob.mailbox.hex() not in text and bob.public_key.hex() not in text


async def test_auth_failures_are_counted_by_reason(tmp_path: Path) -> None:
    with ops_relay(tmp_path / "relay", "--metrics-listen", f"{LOOPBACK}:0") as relay:
        async with client(relay) as stranger:
            answer = await stranger.call(wire.Authenticate(os.urandom(wire.TOKEN_SIZE)))
            assert isinstance(answer, wire.ErrorResult)
            assert answer.code == ErrorCode.UNAUTHENTICATED
        samples = await scrape(relay)
        assert samples[("qpc_relay_auth_failures_total", (("reason", "bad_token"),))] == 1


def test_no_metrics_port_unless_asked(tmp_path: Path) -> None:
    with ops_relay(tmp_path / "relay") as relay:
        assert relay.metrics is None


# --- environment variables ----------------------------------------------------------------


def test_every_relay_toml_key_is_an_environment_variable(tmp_path: Path) -> None:
    from relay.config import (
        CHOICES,
        LIMIT_KEYS,
        OPS_DEFAULTS,
        ConfigError,
        env_name,
        load_settings,
    )

    config = tmp_path / "relay.toml"
    config.write_text('max_per_mailbox = 5\naccounts = "required"\nlisten = "127.0.0.1:1"\n')
    settings = load_settings(
        config,
        {
            env_name("max_per_mailbox"): "7",  # over the file
            env_name("address_validation"): "false",
            env_name("envelope_ttl_s"): "3600",
            env_name("log_format"): "json",
            env_name("data_dir"): str(tmp_path / "d"),
            "QUICNPROTOCHAT_RELAY_PASSPHRASE": "not a key",
            "UNRELATED": "x",
        },
    )
    assert settings.limits == {
        "max_per_mailbox": 7,
        "accounts": "required",
        "address_validation": False,
        "envelope_ttl_s": 3600.0,
    }
    assert settings.listen == "127.0.0.1:1"
    assert settings.data_dir == tmp_path / "d"
    assert settings.op("log_format") == "json"
    assert env_name("max_frame") == "QUICNPROTOCHAT_RELAY_MAX_FRAME"
    for key in [*LIMIT_KEYS, *OPS_DEFAULTS]:
        default = LIMIT_KEYS[key].default if key in LIMIT_KEYS else OPS_DEFAULTS[key]
        if key in CHOICES:
            text = CHOICES[key][-1]
        elif isinstance(default, bool):
            text = "true"
        elif isinstance(default, str):
            text = "127.0.0.1:0"
        else:
            text = "3"
        one = load_settings(None, {env_name(key): text})
        assert {**one.limits, **one.ops}[key] == (
            True if text == "true" else 3 if text == "3" else text
        ), key
    with pytest.raises(
        ConfigError,
        match=r"\$QUICNPROTOCHAT_RELAY_MAX_FRAME: max_frame must be a positive int \(got 'big'\)",
    ):
        load_settings(None, {env_name("max_frame"): "big"})
    with pytest.raises(ConfigError, match="did you mean QUICNPROTOCHAT_RELAY_MAX_FRAME"):
        load_settings(None, {"QUICNPROTOCHAT_RELAY_MAX_FRAM": "1"})
    with pytest.raises(ConfigError, match="must be a positive number"):
        load_settings(None, {env_name("envelope_ttl_s"): "nan"})
    with pytest.raises(ConfigError, match="log_format must be"):
        load_settings(None, {env_name("log_format"): "xml"})


async def test_a_relay_process_takes_its_settings_from_the_environment(tmp_path: Path) -> None:
    with ops_relay(
        tmp_path / "relay",
        QUICNPROTOCHAT_RELAY_METRICS_LISTEN=f"{LOOPBACK}:0",
        QUICNPROTOCHAT_RELAY_MAX_PER_MAILBOX="2",
    ) as relay:
        assert relay.metrics is not None
        bob = Identity.generate()
        async with client(relay) as alice:
            answer = await alice.call(wire.Deliver((envelope(bob.mailbox),) * 1))
            assert isinstance(answer, wire.DeliverResult)
            more = (envelope(bob.mailbox), envelope(bob.mailbox))
            full = await alice.call(wire.Deliver(more))
            assert isinstance(full, wire.ErrorResult) and full.code == ErrorCode.QUOTA_EXCEEDED
    bad = relay_cli("run", "--data-dir", str(tmp_path / "r2"), QUICNPROTOCHAT_RELAY_CALL_BURST="-3")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "ERROR: $QUICNPROTOCHAT_RELAY_CALL_BURST: call_burst must be a positive int (got -3)"
    ]


# --- production mode ----------------------------------------------------------------------


def test_production_mode_refuses_a_plain_store_an_open_directory_and_open_accounts(
    tmp_path: Path,
) -> None:
    data = tmp_path / "relay"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    run = relay_cli("run", "--data-dir", str(data), "--listen", f"{LOOPBACK}:0",
                    QUICNPROTOCHAT_PRODUCTION="1")  # fmt: skip
    assert run.returncode == 1
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("ERROR: production mode ($QUICNPROTOCHAT_PRODUCTION) refuses: ")
    assert "set db_key" in line
    assert f"the data directory {data} is open to other users (mode 0755)" in line
    assert 'accounts = "open" serves any key' in line
    assert not (data / "relay.key").exists()  # refused before anything was made
    # Required accounts and a private directory leave only the store's encryption.
    data.chmod(0o700)
    run = relay_cli("run", "--data-dir", str(data), "--listen", f"{LOOPBACK}:0",
                    QUICNPROTOCHAT_PRODUCTION="1", QUICNPROTOCHAT_RELAY_ACCOUNTS="required")  # fmt: skip
    assert run.returncode == 1
    [line] = run.stderr.strip().splitlines()
    assert "db_key" in line and "open to other users" not in line and "accounts" not in line


def test_production_checks_pass_when_each_is_met(tmp_path: Path) -> None:
    from relay.config import production_problems

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    keyed = {"db_key": "x" * 64, "accounts": "required"}
    assert production_problems(keyed, private, allow_open_accounts=False) == []
    opened = {"db_key": "x" * 64, "accounts": "open"}
    assert production_problems(opened, private, allow_open_accounts=True) == []
    assert production_problems(opened, tmp_path / "new", allow_open_accounts=True) == []
    assert len(production_problems(opened, private, allow_open_accounts=False)) == 1


# --- status -------------------------------------------------------------------------------


async def test_relay_status_reads_a_running_relays_stores(tmp_path: Path) -> None:
    bob, carol = Identity.generate(), Identity.generate()
    data = tmp_path / "relay"
    with ops_relay(data) as relay:
        async with client(relay) as alice:
            batch = (envelope(bob.mailbox), envelope(bob.mailbox), envelope(carol.mailbox))
            assert isinstance(await alice.call(wire.Deliver(batch)), wire.DeliverResult)
        shown = relay_cli("status", "--data-dir", str(data), "--json",
                          QUICNPROTOCHAT_RELAY_MAX_PER_MAILBOX="77")  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert status["mailboxes"]["mailboxes"] == 2
        assert status["mailboxes"]["envelopes"] == 3
        assert status["mailboxes"]["largest_mailbox"] == 2
        assert status["accounts"] == {"accounts": 0, "live_sessions": 0}
        assert status["limits"]["max_per_mailbox"] == 77
        assert status["limits"]["accounts"] == "open"
        text = relay_cli("status", "--data-dir", str(data))
        assert text.returncode == 0
        assert "mailboxes: 2 holding 3 envelopes" in text.stdout
        # Read only: the relay still serves what it holds.
        async with client(relay, bob) as bob_conn:
            fetched = await bob_conn.call(wire.Fetch(bob.mailbox, 0, 10))
            assert isinstance(fetched, wire.FetchResult) and len(fetched.envelopes) == 2
    nothing = relay_cli("status", "--data-dir", str(tmp_path / "none"))
    assert nothing.returncode == 1
    assert (
        nothing.stderr.strip()
        == f"ERROR: {tmp_path / 'none'} holds no relay store (mailboxes.sqlite3)"
    )


# --- SIGTERM ------------------------------------------------------------------------------


async def test_sigterm_answers_the_calls_in_flight_then_exits(tmp_path: Path) -> None:
    bob = Identity.generate()
    data = tmp_path / "relay"
    with ops_relay(data, "--metrics-listen", f"{LOOPBACK}:0",
                   QUICNPROTOCHAT_RELAY_SHUTDOWN_GRACE_S="10") as relay:  # fmt: skip
        assert relay.proc is not None
        async with client(relay) as alice, client(relay, bob) as bob_conn:
            # A long poll that would hold for 20 s, being served when the signal comes.
            poll = asyncio.ensure_future(bob_conn.call(wire.Wait(bob.mailbox, 0, 10, 20_000)))
            deadline = time.monotonic() + 10
            while (await scrape(relay))[("qpc_relay_calls_in_flight", ())] < 1:
                assert time.monotonic() < deadline, "the long poll never reached the relay"
                await asyncio.sleep(0.05)
            # And a burst of deliveries around the signal: each one the relay received is
            # answered (accepted, or busy once it is stopping); one still on its way when
            # the connections close is the caller's to retry.
            sent = [envelope(bob.mailbox) for _ in range(40)]
            calls = [asyncio.ensure_future(alice.call(wire.Deliver((e,)))) for e in sent]
            await asyncio.sleep(0.01)
            started = time.monotonic()
            relay.terminate()
            polled = await poll
            answers = await asyncio.gather(*calls, return_exceptions=True)
            assert time.monotonic() - started < 10
        assert isinstance(polled, wire.FetchResult)  # answered at once, not cut off
        assert all(isinstance(a, wire.Response | PeerUnreachableError) for a in answers), answers
        accepted = {
            e.id for e, a in zip(sent, answers, strict=True) if isinstance(a, wire.DeliverResult)
        }
        refused = [a for a in answers if isinstance(a, wire.ErrorResult)]
        assert all(a.code == ErrorCode.BUSY for a in refused)
        assert relay.proc.wait(timeout=20) == 0
        assert "relay stopped" in relay.stderr_lines()[-1]
    # Everything the relay acknowledged is in its store.
    with ops_relay(data) as again:
        async with client(again, bob) as bob_conn:
            fetched = await bob_conn.call(wire.Fetch(bob.mailbox, 0, 256))
            assert isinstance(fetched, wire.FetchResult)
            assert accepted <= {e.id for e in fetched.envelopes}


def test_one_relay_process_per_embedded_store_and_no_move_while_it_runs(tmp_path: Path) -> None:
    """A second relay on a running relay's data directory, and a move of that store to
    PostgreSQL (which would lose what the running one accepts after the copy), are refused in
    one line each; once it stopped, the directory is free again (a kill frees it too)."""
    data = tmp_path / "relay"
    dsn = "postgresql://postgres@127.0.0.1:1/never"  # refused before any connection
    with ops_relay(data):
        second = relay_cli("run", "--listen", "127.0.0.1:0", "--data-dir", str(data))
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"ERROR: another relay process runs on {data} (it holds relay.lock)"
        ]
        move = relay_cli("migrate", "--from-sqlite", str(data), QUICNPROTOCHAT_RELAY_DSN=dsn)
        assert move.returncode == 1
        assert move.stderr.strip().splitlines() == [
            f"ERROR: a relay is running on {data}: stop it first "
            "(what it accepted after the copy would be lost)"
        ]
    with ops_relay(data) as again:
        assert again.address is not None
        again.proc.kill()  # type: ignore[union-attr]
        again.proc.wait()  # type: ignore[union-attr]
    move = relay_cli("migrate", "--from-sqlite", str(data), QUICNPROTOCHAT_RELAY_DSN=dsn)
    assert "a relay is running" not in move.stderr
