"""A node's account at its relay: OPAQUE (RFC 9807) registration and login, and the session
token it yields, cached in the data directory.

``quicnprotochat node run --relay-user NAME`` calls :func:`sign_in` before the node starts, so
that a relay with ``accounts = "required"`` serves its very first fetch. The first use of a name
at a relay registers it, later uses log in; the token is sealed in ``relay.session`` (QPCE, under
the node's passphrase) and reused until it expires, so a restart asks for no password. A token
the relay no longer honours (expired, revoked) leads to a fresh login.

The password is asked for only when a login is needed: from a no-echo prompt when stdin is a
terminal, else from ``$QUICNPROTOCHAT_RELAY_PASSWORD``. It, the token and OPAQUE's export key
are never logged; the export key is not even kept.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import opaque_ke_py as opaque

from node.app.node import Node
from node.app.router import RelayInfo
from node.core import wire
from node.core.errors import CryptoError, ErrorCode, NodeError, RelayError, StorageError
from node.core.identity import Identity
from node.core.keyfile import DEFAULT_KDF, SEAL_RANDOM_SIZE, KdfParams, open_sealed, seal
from node.core.runtime import Runtime
from node.transport.endpoint import Endpoint

log = logging.getLogger(__name__)

PASSWORD_ENV = "QUICNPROTOCHAT_RELAY_PASSWORD"  # noqa: S105 - a variable name
SESSION_FILE = "relay.session"
MAX_PASSWORD_BYTES = 1024
# A cached token this close to its expiry is not worth presenting: log in afresh.
EXPIRY_MARGIN_MS = 60_000
_CACHE_VERSION = 1

Call = Callable[[wire.Request], Awaitable[wire.Response]]
PasswordSource = Callable[[], str]


class RelayAccountError(RelayError):
    """The relay refused an account call (its message says why)."""


class WrongPasswordError(RelayAccountError):
    """The relay does not know this username with this password."""


class UsernameTakenError(RelayAccountError):
    """Someone registered this username at the relay first."""


class SessionRefusedError(RelayAccountError):
    """The relay no longer honours this session token (expired, revoked, or not ours)."""


@dataclass(frozen=True)
class RelaySession:
    """A login's result: the token proves this identity's session at ``relay`` until
    ``expires_at_ms``."""

    relay: bytes
    username: str
    token: bytes = field(repr=False)
    expires_at_ms: int


def check_username(username: str) -> str:
    """The username as the relay wants it, or a :class:`RelayAccountError` saying why not."""
    if wire.USERNAME.fullmatch(username) is None:
        raise RelayAccountError(wire.USERNAME_RULE)
    return username


def _password_bytes(password: str) -> bytes:
    data = password.encode()
    if not data:
        raise RelayAccountError("the relay password is empty")
    if len(data) > MAX_PASSWORD_BYTES:
        raise RelayAccountError(f"the relay password is over {MAX_PASSWORD_BYTES} bytes")
    return data


def _refusal(answer: wire.Response, expected: type[wire.Response]) -> None:
    """Raise the typed error for an answer that is not ``expected``."""
    if isinstance(answer, expected):
        return
    if isinstance(answer, wire.ErrorResult):
        if answer.code is ErrorCode.CONFLICT:
            raise UsernameTakenError("that username is already registered at the relay")
        raise RelayAccountError(f"the relay refused: {answer.message}")
    raise RelayAccountError("the relay answered an account call with something else")


class RelayAccountClient:
    """OPAQUE's client side over one relay connection (``call`` sends one request). The
    Argon2 inside OPAQUE (~25 ms) runs on the runtime's executor, off the event loop."""

    def __init__(self, call: Call, relay: bytes, runtime: Runtime) -> None:
        self._call = call
        self._relay = relay
        self._run = runtime.run_blocking

    async def register(self, username: str, password: str) -> None:
        name, secret = check_username(username), _password_bytes(password)
        started = await self._run(lambda: opaque.client_registration_start(secret))
        answer = await self._call(wire.RegisterStart(name, started.get_message()))
        _refusal(answer, wire.RegisterStartResult)
        assert isinstance(answer, wire.RegisterStartResult)
        response = answer.response
        try:
            finished = await self._run(
                lambda: opaque.client_registration_finish(secret, started.get_state(), response)
            )
        except ValueError as exc:
            raise RelayAccountError("the relay's registration answer is not valid") from exc
        answer = await self._call(wire.RegisterFinish(name, finished.get_message()))
        _refusal(answer, wire.RegisterFinishResult)
        log.info("registered at the relay")

    async def login(self, username: str, password: str) -> RelaySession:
        name, secret = check_username(username), _password_bytes(password)
        started = await self._run(lambda: opaque.client_login_start(secret))
        answer = await self._call(wire.LoginStart(name, started.get_message()))
        _refusal(answer, wire.LoginStartResult)
        assert isinstance(answer, wire.LoginStartResult)
        login_id, response = answer.login_id, answer.response
        try:
            finished = await self._run(
                lambda: opaque.client_login_finish(secret, started.get_state(), response)
            )
        except ValueError:
            # KE2 did not open with this password: an unknown name and a wrong password are
            # the same to us, as they are to anyone watching.
            raise WrongPasswordError(
                f"wrong password for {name} at this relay (or the name is someone else's)"
            ) from None
        answer = await self._call(wire.LoginFinish(login_id, finished.get_message()))
        if isinstance(answer, wire.ErrorResult) and answer.code is ErrorCode.UNAUTHENTICATED:
            raise WrongPasswordError(f"the relay refused the login: {answer.message}")
        _refusal(answer, wire.SessionResult)
        assert isinstance(answer, wire.SessionResult)
        if len(answer.token) != wire.TOKEN_SIZE:
            raise RelayAccountError("the relay sent a session token of the wrong size")
        log.info("logged in at the relay")
        return RelaySession(self._relay, name, answer.token, answer.expires_at_ms)

    async def authenticate(self, session: RelaySession) -> int:
        """Present a cached token; returns its expiry, or raises :class:`SessionRefusedError`."""
        answer = await self._call(wire.Authenticate(session.token))
        if isinstance(answer, wire.ErrorResult) and answer.code is ErrorCode.UNAUTHENTICATED:
            raise SessionRefusedError(answer.message)
        _refusal(answer, wire.SessionInfo)
        assert isinstance(answer, wire.SessionInfo)
        return answer.expires_at_ms

    async def logout(self, session: RelaySession) -> None:
        """Revoke the session at the relay, for good."""
        answer = await self._call(wire.Logout(session.token))
        if isinstance(answer, wire.ErrorResult) and answer.code is ErrorCode.UNAUTHENTICATED:
            raise SessionRefusedError(answer.message)
        _refusal(answer, wire.LogoutResult)


class SessionCache:
    """The node's session token at rest: ``relay.session`` in the data directory, sealed in
    the QPCE format under the node's passphrase, written atomically with mode 0600."""

    def __init__(
        self, path: Path, passphrase: bytes, runtime: Runtime, kdf: KdfParams = DEFAULT_KDF
    ) -> None:
        self.path = path
        self._passphrase = passphrase
        self._runtime = runtime
        self._kdf = kdf

    async def load(self) -> RelaySession | None:
        """The cached session, or None if there is none (or it cannot be read: a login will
        replace it). A wrong passphrase is an error, not a reason to log in again."""
        path, passphrase, run = self.path, self._passphrase, self._runtime.run_blocking
        try:
            if not await run(path.exists):
                return None
            blob = await run(path.read_bytes)
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
        plain = await run(lambda: open_sealed(blob, passphrase))
        try:
            data = json.loads(plain)
            if data.get("v") != _CACHE_VERSION:
                return None
            return RelaySession(
                relay=bytes.fromhex(data["relay"]),
                username=str(data["username"]),
                token=bytes.fromhex(data["token"]),
                expires_at_ms=int(data["expires_at_ms"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("the cached relay session in %s is damaged; logging in again", path)
            return None

    async def save(self, session: RelaySession) -> None:
        plain = json.dumps(
            {
                "v": _CACHE_VERSION,
                "relay": session.relay.hex(),
                "username": session.username,
                "token": session.token.hex(),
                "expires_at_ms": session.expires_at_ms,
            }
        ).encode()
        fresh = self._runtime.random_bytes(SEAL_RANDOM_SIZE)
        passphrase, kdf, path = self._passphrase, self._kdf, self.path
        run = self._runtime.run_blocking
        blob = await run(lambda: seal(plain, passphrase, kdf, fresh))
        try:
            await run(lambda: _write_private(path, blob))
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror}") from exc

    async def clear(self) -> None:
        path = self.path
        await self._runtime.run_blocking(lambda: path.unlink(missing_ok=True))


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True)
class SignInResult:
    session: RelaySession
    how: str  # "reused", "logged in" or "registered"


async def ensure_session(
    client: RelayAccountClient,
    cache: SessionCache,
    relay: bytes,
    username: str,
    password: Callable[[], Awaitable[str]],
    now_ms: int,
) -> SignInResult:
    """A session at ``relay`` for ``username``: the cached one if the relay still honours it,
    else a login (after registering, the first time this node uses the name at this relay)."""
    check_username(username)
    cached = await cache.load()
    ours = cached is not None and cached.relay == relay and cached.username == username
    if cached is not None and ours and cached.expires_at_ms - EXPIRY_MARGIN_MS > now_ms:
        try:
            await client.authenticate(cached)
        except SessionRefusedError:
            log.info("the cached relay session was refused; logging in again")
        else:
            return SignInResult(cached, "reused")
    secret = await password()
    how = "logged in"
    if not ours:
        # First use of this name here (as far as this node knows): register it. If it is
        # taken, it may be ours from an earlier cache; the login will tell.
        try:
            await client.register(username, secret)
            how = "registered"
        except UsernameTakenError:
            pass
    session = await client.login(username, secret)
    await cache.save(session)
    return SignInResult(session, how)


def password_from_terminal_or_env(username: str) -> str:
    """The relay password: a no-echo prompt on a terminal, else ``$QUICNPROTOCHAT_RELAY_PASSWORD``.
    Blocking (it may wait for a person): run it on an executor."""
    if sys.stdin.isatty():
        return getpass.getpass(f"relay password for {username}: ")
    secret = os.environ.get(PASSWORD_ENV, "")
    if not secret:
        raise RelayAccountError(
            f"--relay-user needs a password: run in a terminal, or set {PASSWORD_ENV}"
        )
    return secret


async def sign_in(
    identity: Identity,
    relay: RelayInfo,
    username: str,
    data_dir: Path,
    passphrase: bytes,
    runtime: Runtime,
    *,
    bind_host: str,
    password: PasswordSource | None = None,
    kdf: KdfParams = DEFAULT_KDF,
) -> SignInResult:
    """Make sure ``identity`` holds a session at ``relay`` as ``username``, over a short-lived
    connection of its own (before the node's endpoint exists, so the node's first fetch is
    already served). ``password`` is asked only if a login is needed; by default
    :func:`password_from_terminal_or_env`."""
    check_username(username)
    source = password or (lambda: password_from_terminal_or_env(username))
    endpoint = Endpoint(identity, None, runtime)
    await endpoint.start(bind_host, 0)
    try:
        connection = await endpoint.dial(relay.address, relay.identity)
        client = RelayAccountClient(connection.call, relay.identity, runtime)
        cache = SessionCache(data_dir / SESSION_FILE, passphrase, runtime, kdf)

        async def ask() -> str:
            return await runtime.run_blocking(source)

        return await ensure_session(client, cache, relay.identity, username, ask, runtime.wall_ms())
    except CryptoError as exc:
        raise StorageError(f"{data_dir / SESSION_FILE}: {exc}") from None
    finally:
        await endpoint.close()


async def sign_in_node(
    node: Node, relay: RelayInfo, username: str, data_dir: Path, passphrase: bytes, bind_host: str
) -> SignInResult:
    """:func:`sign_in` for an opened (not yet started) node; on failure the node is stopped
    (its store closed) before the error goes on to the command line."""
    try:
        return await sign_in(
            node.identity, relay, username, data_dir, passphrase, node.runtime, bind_host=bind_host
        )
    except NodeError:
        await node.stop()
        raise
