"""Relay accounts over real QUIC on loopback: OPAQUE registration and login, session tokens
bound to the identity key, ``accounts = "required"``, the failed-login limit, the node's token
cache, and that no secret reaches a log or the relay's store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import opaque_ke_py as opaque
import pytest

from node.app import relay_account
from node.app.relay_account import (
    RelayAccountClient,
    RelayAccountError,
    SessionRefusedError,
    WrongPasswordError,
    sign_in,
)
from node.app.router import RelayInfo
from node.core import wire
from node.core.errors import ErrorCode
from node.core.identity import Identity
from node.core.keyfile import FAST_KDF
from node.core.runtime import Runtime
from node.transport.connection import PeerConnection
from relay.server import Relay, RelayConfig
from tests.conftest import LOOPBACK, RelayProcess, running_endpoint
from tests.runtime_support import Runtimes

OPEN_LIMITS = {
    "calls_per_second": 10_000.0,
    "call_burst": 10_000,
    "login_attempts_per_minute": 600.0,
    "login_attempt_burst": 1_000,
    "registrations_per_minute": 600.0,
    "registration_burst": 1_000,
}
PASSWORD = "correct horse battery staple"


class Clock:
    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


@contextlib.asynccontextmanager
async def running_relay(data: Path, runtime: Runtime, **settings: Any) -> AsyncIterator[Relay]:
    config = RelayConfig(
        host=LOOPBACK,
        port=0,
        data_dir=data,
        passphrase=b"relay test",
        **(OPEN_LIMITS | settings),
    )
    relay = Relay(config, runtime)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


def info(relay: Relay) -> RelayInfo:
    assert relay._endpoint is not None
    return RelayInfo(relay._endpoint.local_address, relay._endpoint._identity.public_key)


@contextlib.asynccontextmanager
async def connect(relay: RelayInfo, identity: Identity) -> AsyncIterator[PeerConnection]:
    async with running_endpoint(identity, None) as endpoint:
        yield await endpoint.dial(relay.address, relay.identity)


def envelope_for(recipient: Identity) -> wire.Envelope:
    return wire.Envelope(
        id=os.urandom(16),
        recipient=recipient.mailbox,
        kind=wire.EnvelopeKind.APPLICATION,
        payload=b"ciphertext",
        group_id=b"g",
        created_at_ms=1,
    )


def no_password() -> str:
    raise AssertionError("a password was asked for although the cached session was valid")


async def log_in(
    relay: RelayInfo, identity: Identity, data_dir: Path, runtime: Runtime, user: str, **kw: Any
) -> relay_account.SignInResult:
    kw.setdefault("password", lambda: PASSWORD)
    return await sign_in(
        identity,
        relay,
        user,
        data_dir,
        b"node pass",
        runtime,
        bind_host=LOOPBACK,
        kdf=FAST_KDF,
        **kw,
    )


# --- against a real relay process ---------------------------------------------------------------


@pytest.fixture
def required_relay(tmp_path: Path) -> Any:
    config = tmp_path / "relay.toml"
    config.write_text('accounts = "required"\n')
    relay = RelayProcess(
        tmp_path / "relay", passphrase="test relay passphrase", extra_args=("--config", str(config))
    )
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


async def test_two_nodes_register_log_in_and_only_then_use_mailboxes(
    required_relay: RelayProcess, tmp_path: Path, runtimes: Runtimes
) -> None:
    assert required_relay.address is not None and required_relay.identity is not None
    relay = RelayInfo(required_relay.address, required_relay.identity)
    alice, bob = Identity.generate(), Identity.generate()
    envelope = envelope_for(bob)
    # Without a session, every mailbox call is refused with its own code.
    async with connect(relay, alice) as conn:
        for request in (
            wire.Deliver((envelope,)),
            wire.Fetch(alice.mailbox, 0, 10),
            wire.Wait(alice.mailbox, 0, 10, 1),
            wire.Ack(alice.mailbox, (envelope.id,)),
        ):
            answer = await conn.call(request)
            assert isinstance(answer, wire.ErrorResult), request
            assert answer.code is ErrorCode.UNAUTHENTICATED

    first = await log_in(relay, alice, tmp_path / "alice", runtimes(), "alice")
    second = await log_in(relay, bob, tmp_path / "bob", runtimes(), "bob")
    assert (first.how, second.how) == ("registered", "registered")
    assert first.session.token != second.session.token

    async with connect(relay, alice) as conn:
        assert await conn.call(wire.Deliver((envelope,))) == wire.DeliverResult((envelope.id,))
    async with connect(relay, bob) as conn:
        fetched = await conn.call(wire.Fetch(bob.mailbox, 0, 10))
        assert isinstance(fetched, wire.FetchResult)
        assert [e.id for e in fetched.envelopes] == [envelope.id]
        assert await conn.call(wire.Ack(bob.mailbox, (envelope.id,))) == wire.AckResult(1)

    # A session survives the relay's restart: accounts and token hashes are on disk.
    required_relay.stop()
    required_relay.start()
    assert required_relay.address is not None
    relay = RelayInfo(required_relay.address, relay.identity)
    again = await log_in(relay, bob, tmp_path / "bob", runtimes(), "bob", password=no_password)
    assert again.how == "reused"
    async with connect(relay, bob) as conn:
        assert isinstance(await conn.call(wire.Fetch(bob.mailbox, 0, 10)), wire.FetchResult)


# --- against an in-process relay (its clock and counters at hand) -------------------------------


async def test_wrong_password_and_unknown_user_are_indistinguishable(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    async with running_relay(tmp_path / "relay", runtimes()) as relay:
        target = info(relay)
        await log_in(target, Identity.generate(), tmp_path / "a", runtimes(), "alice")
        mallory = Identity.generate()
        async with connect(target, mallory) as conn:
            client = RelayAccountClient(conn.call, target.identity, runtimes())
            with pytest.raises(WrongPasswordError) as wrong:
                await client.login("alice", "not the password")
            with pytest.raises(WrongPasswordError) as unknown:
                await client.login("nobody", "not the password")
            assert type(wrong.value) is type(unknown.value)
            assert str(wrong.value).replace("alice", "X") == str(unknown.value).replace(
                "nobody", "X"
            )

            # On the wire: the same KE1 for a real and an unknown name gets answers of one
            # shape, and a wrong KE3 the same refusal.
            ke1 = opaque.client_login_start(b"guess").get_message()
            answers = [await conn.call(wire.LoginStart(n, ke1)) for n in ("alice", "nobody")]
            for answer in answers:
                assert isinstance(answer, wire.LoginStartResult)
                assert (len(answer.login_id), len(answer.response)) == (16, wire.KE2_SIZE)
            refusals = [
                await conn.call(wire.LoginFinish(a.login_id, os.urandom(64)))
                for a in answers
                if isinstance(a, wire.LoginStartResult)
            ]
            assert refusals[0] == refusals[1]
            assert isinstance(refusals[0], wire.ErrorResult)
            assert refusals[0].code is ErrorCode.UNAUTHENTICATED

            # An unknown name meets the same record every time: its KE2 opens exactly as
            # often as a real account's does with a wrong password, i.e. never, and the
            # relay's fake record for it does not change.
            fakes = relay.service.accounts
            assert fakes is not None
            assert fakes._fakes.record("nobody") == fakes._fakes.record("nobody")
            assert fakes._fakes.record("nobody") != fakes._fakes.record("nobody2")
        before = relay.service.accounts._fakes.record("nobody")  # type: ignore[union-attr]
    async with running_relay(tmp_path / "relay", runtimes()) as relay:
        assert relay.service.accounts is not None
        assert relay.service.accounts._fakes.record("nobody") == before


async def test_expired_revoked_and_foreign_tokens_are_refused(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    clock = Clock()
    async with running_relay(
        tmp_path / "relay", runtimes.clocked(clock), accounts="required", session_ttl_s=3600.0
    ) as relay:
        target = info(relay)
        alice, mallory = Identity.generate(), Identity.generate()
        signed = await log_in(target, alice, tmp_path / "a", runtimes(), "alice")
        token = signed.session

        async with connect(target, alice) as conn:
            client = RelayAccountClient(conn.call, target.identity, runtimes())
            assert await client.authenticate(token) == token.expires_at_ms
            assert isinstance(await conn.call(wire.Fetch(alice.mailbox, 0, 1)), wire.FetchResult)

        # Foreign: the token works only for the identity key that logged in.
        async with connect(target, mallory) as conn:
            client = RelayAccountClient(conn.call, target.identity, runtimes())
            with pytest.raises(SessionRefusedError):
                await client.authenticate(token)
            with pytest.raises(SessionRefusedError):
                await client.logout(token)  # nor can another identity revoke it
            answer = await conn.call(wire.Fetch(mallory.mailbox, 0, 1))
            assert isinstance(answer, wire.ErrorResult)
            assert answer.code is ErrorCode.UNAUTHENTICATED

        # Expired: past its lifetime on the relay's clock, it opens nothing.
        clock.offset_ms = 3600 * 1000 + 1
        async with connect(target, alice) as conn:
            client = RelayAccountClient(conn.call, target.identity, runtimes())
            with pytest.raises(SessionRefusedError):
                await client.authenticate(token)
            answer = await conn.call(wire.Fetch(alice.mailbox, 0, 1))
            assert isinstance(answer, wire.ErrorResult)
            assert answer.code is ErrorCode.UNAUTHENTICATED
        clock.offset_ms = 0

        # Revoked: a logout ends the session at once.
        async with connect(target, alice) as conn:
            client = RelayAccountClient(conn.call, target.identity, runtimes())
            await client.logout(token)
            with pytest.raises(SessionRefusedError):
                await client.authenticate(token)
            answer = await conn.call(wire.Fetch(alice.mailbox, 0, 1))
            assert isinstance(answer, wire.ErrorResult)
            assert answer.code is ErrorCode.UNAUTHENTICATED

        # The node notices the refused token and logs in afresh.
        again = await log_in(target, alice, tmp_path / "a", runtimes(), "alice")
        assert again.how == "logged in"
        assert again.session.token != token.token


async def test_failed_logins_are_rate_limited_per_name_and_per_address(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    async with running_relay(
        tmp_path / "relay",
        runtimes(),
        login_attempts_per_minute=0.01,
        login_attempt_burst=3,
    ) as relay:
        target = info(relay)
        # Successful logins give their attempt back: they never run out.
        alice = Identity.generate()
        for _ in range(4):
            await log_in(target, alice, tmp_path / f"a{_}", runtimes(), "alice")
        async with connect(target, Identity.generate()) as conn:
            client = RelayAccountClient(conn.call, target.identity, runtimes())
            for _ in range(3):
                with pytest.raises(WrongPasswordError):
                    await client.login("alice", "guess")
            with pytest.raises(RelayAccountError, match="too many login attempts"):
                await client.login("alice", "guess")
        assert relay.metrics()["refused_login_rate"] == 1
        # Per address: the same loopback address has spent its attempts on any name.
        async with connect(target, Identity.generate()) as conn:
            client = RelayAccountClient(conn.call, target.identity, runtimes())
            with pytest.raises(RelayAccountError, match="too many login attempts"):
                await client.login("someone-else", "guess")


async def test_logins_in_progress_are_bounded_and_bound_to_their_identity(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    async with running_relay(tmp_path / "relay", runtimes(), max_pending_logins=2) as relay:
        target = info(relay)
        ke1 = opaque.client_login_start(b"guess").get_message()
        async with (
            connect(target, Identity.generate()) as a,
            connect(target, Identity.generate()) as b,
        ):
            started = [
                await a.call(wire.LoginStart("x", ke1)),
                await b.call(wire.LoginStart("y", ke1)),
            ]
            third = await a.call(wire.LoginStart("z", ke1))
            assert isinstance(third, wire.ErrorResult) and third.code is ErrorCode.BUSY
            # Another identity cannot finish a's login, whatever it sends.
            first = started[0]
            assert isinstance(first, wire.LoginStartResult)
            stolen = await b.call(wire.LoginFinish(first.login_id, os.urandom(64)))
            assert isinstance(stolen, wire.ErrorResult)
            assert stolen.code is ErrorCode.UNAUTHENTICATED
            assert relay.metrics()["pending_logins"] == 2
            # Malformed sizes are refused before the library sees them.
            short = await a.call(wire.LoginStart("x", ke1[:95]))
            assert isinstance(short, wire.ErrorResult)
            assert short.code is ErrorCode.MALFORMED_REQUEST


async def test_a_restart_reuses_the_cached_token_until_it_is_refused(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    alice = Identity.generate()
    node_dir = tmp_path / "alice"
    async with running_relay(tmp_path / "relay", runtimes(), accounts="required") as relay:
        target = info(relay)
        first = await log_in(target, alice, node_dir, runtimes(), "alice")
        assert first.how == "registered"
        assert (node_dir / relay_account.SESSION_FILE).stat().st_mode & 0o777 == 0o600
        second = await log_in(target, alice, node_dir, runtimes(), "alice", password=no_password)
        assert second.how == "reused"
        assert second.session == first.session
        assert relay.metrics()["logins"] == 1
        # A lost cache: the name is taken (by us), so the node logs in instead.
        (node_dir / relay_account.SESSION_FILE).unlink()
        third = await log_in(target, alice, node_dir, runtimes(), "alice")
        assert third.how == "logged in"
        # A wrong password for an existing name is refused by name, and nothing is cached.
        with pytest.raises(WrongPasswordError):
            await log_in(
                target,
                Identity.generate(),
                tmp_path / "eve",
                runtimes(),
                "alice",
                password=lambda: "wrong",
            )
        assert not (tmp_path / "eve" / relay_account.SESSION_FILE).exists()


async def test_no_secret_reaches_a_log_or_the_relay_store(
    tmp_path: Path,
    runtimes: Runtimes,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    export_keys: list[bytes] = []
    finish: Callable[..., Any] = opaque.client_login_finish

    def spy(*args: Any) -> Any:
        result = finish(*args)
        export_keys.append(result.get_export_key())
        return result

    monkeypatch.setattr(relay_account.opaque, "client_login_finish", spy)
    caplog.set_level(logging.DEBUG)
    async with running_relay(tmp_path / "relay", runtimes(), accounts="required") as relay:
        target = info(relay)
        alice = Identity.generate()
        signed = await log_in(target, alice, tmp_path / "a", runtimes(), "alice")
        with pytest.raises(WrongPasswordError):
            await log_in(
                target,
                Identity.generate(),
                tmp_path / "b",
                runtimes(),
                "alice",
                password=lambda: "a wrong " + PASSWORD,
            )
        async with connect(target, alice) as conn:
            await RelayAccountClient(conn.call, target.identity, runtimes()).logout(signed.session)
    assert export_keys
    token = signed.session.token
    secrets = [PASSWORD.encode(), token, *export_keys]
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records).encode()
    assert caplog.records  # the calls were logged, just not their secrets
    for secret in secrets:
        for form in (secret, secret.hex().encode(), repr(secret).encode()):
            assert form not in text
    for path in (tmp_path / "relay").iterdir():
        blob = path.read_bytes()
        assert token not in blob and PASSWORD.encode() not in blob, path
    cached = (tmp_path / "a" / relay_account.SESSION_FILE).read_bytes()
    assert cached.startswith(b"QPCE") and token not in cached and token.hex().encode() not in cached


# --- the command line ---------------------------------------------------------------------------


async def run_node(
    tmp: Path, relay: RelayProcess, user: str, password: str
) -> tuple[int | None, str, str]:
    """``node run --relay-user`` until it says it listens (then SIGTERM), or until it exits."""
    assert relay.address is not None and relay.identity is not None
    env = dict(
        os.environ,
        QUICNPROTOCHAT_PASSPHRASE="node passphrase",
        QUICNPROTOCHAT_RELAY_PASSWORD=password,
    )
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("quicnprotochat")),
        *("node", "run", "--name", "alice", "--data-dir", str(tmp / "alice")),
        *("--listen", f"{LOOPBACK}:0", "--no-mdns", "--no-dht"),
        *("--relay", f"{relay.address[0]}:{relay.address[1]}", "--relay-key", relay.identity.hex()),
        *("--relay-user", user),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(60):
        while raw := await proc.stdout.readline():
            lines.append(raw.decode())
            if raw.startswith(b"listening on"):
                proc.terminate()
        err = (await proc.stderr.read()).decode()
        await proc.wait()
    return proc.returncode, "".join(lines), err


async def test_node_run_registers_then_reuses_its_session(
    required_relay: RelayProcess, tmp_path: Path
) -> None:
    _, out, err = await run_node(tmp_path, required_relay, "alice", PASSWORD)
    assert "relay account alice: registered" in out, err
    assert "could not fetch" not in err  # the first fetch already had a session
    _, out, err = await run_node(tmp_path, required_relay, "alice", "not used: cached")
    assert "relay account alice: reused" in out, err
    # Someone else's name: one line, no traceback, exit status 1.
    code, out, err = await run_node(tmp_path / "other", required_relay, "alice", "wrong")
    assert code == 1
    assert err.startswith("ERROR: wrong password for alice"), err
    assert "Traceback" not in err and PASSWORD not in err + out


def test_relay_refuses_an_unknown_accounts_mode(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('accounts = "sometimes"\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay",
            "run",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE="p"),
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert 'accounts must be "open" or "required"' in out.stderr
    assert "Traceback" not in out.stderr
