"""Relay accounts: OPAQUE (RFC 9807) registration and login, and the sessions a login opens.

The password never reaches the relay: it stores an OPAQUE registration record per username and,
at login, answers the client's KE1 with a KE2 only the password's holder can finish. A finished
login yields a 32-byte session token bound to the caller's identity key (the key its QUIC
handshake proved); the relay keeps only the token's SHA-256 hash, with an expiry, and a logout
deletes it. See ``docs/adr/0005-opaque-accounts.md`` for the choices made here.

* **No username oracle at login.** A name nobody holds gets a fake record (RFC 9807 §10.9)
  derived from the relay's secret OPRF seed, so it answers exactly like a real account with a
  wrong password, and the same name always meets the same record, across restarts too.
* **Guessing is rate-limited before any work**, per username and per source address: every
  ``loginStart`` spends a token from both buckets and only a finished login gives it back
  (an OPAQUE client can test a password against KE2 without ever sending KE3, so counting
  only failed finishes would count nothing).
* **Login state stays in this process**, bounded in count and in time: a login must finish on
  the connection identity that started it, within ``login_timeout_ms``.

The OPAQUE library draws its own randomness from the operating system (it takes no RNG): the
simulator does not run accounts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import opaque_ke_py as opaque
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from node.core import wire
from node.core.errors import CryptoError, ErrorCode, StorageError
from node.core.keyfile import DEFAULT_KDF, SEAL_RANDOM_SIZE, KdfParams, open_sealed, seal
from node.core.runtime import Runtime
from node.core.wire import (
    KE1_SIZE,
    KE3_SIZE,
    LOGIN_ID_SIZE,
    REGISTRATION_REQUEST_SIZE,
    REGISTRATION_UPLOAD_SIZE,
    TOKEN_SIZE,
    USERNAME,
    USERNAME_RULE,
)
from node.transport.connection import Caller
from relay.limits import TokenBuckets
from relay.store_accounts import (
    AccountStore,
    Session,
    TooManyAccountsError,
    UsernameTakenError,
)
from relay.store_api import AccountBackend, SqliteAccounts

log = logging.getLogger(__name__)

MODES = ("open", "required")

# The ristretto255 generator (RFC 9496 §4.4): a fixed valid element to evaluate the OPRF on.
_GENERATOR = bytes.fromhex("e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76")
# Credential identifiers for fake client keys; ':' is outside USERNAME, so no real account
# can share one.
_FAKE_KEY_PREFIX = b"qpc-fake-client-key:"


@dataclass(frozen=True)
class AccountLimits:
    """Account policy and the bounds on what strangers can make the relay hold or do."""

    mode: str = "open"  # "required": only identities with a live session use mailboxes
    session_ttl_ms: int = 30 * 24 * 3600 * 1000
    max_sessions_per_account: int = 8
    login_attempts_per_minute: float = 5.0  # per username and per address; success refunds
    login_attempt_burst: int = 10
    registrations_per_minute: float = 1.0  # per source address
    registration_burst: int = 5
    max_pending_logins: int = 1024
    max_pending_logins_per_identity: int = 4
    login_timeout_ms: int = 30_000
    max_accounts: int = 1_000_000

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"accounts must be one of {', '.join(MODES)}")


@dataclass
class _PendingLogin:
    username: str
    identity: bytes
    host: str
    state: bytes
    started: float  # runtime monotonic seconds


class AccountError(CryptoError):
    """The relay's OPAQUE setup could not be read."""


SETUP_FILE = "opaque-setup.qpce"


async def load_or_create_setup(
    path: Path, passphrase: bytes, runtime: Runtime, params: KdfParams = DEFAULT_KDF
) -> bytes:
    """The relay's OPAQUE server setup (OPRF seed and server keys), sealed at ``path`` with the
    relay passphrase; made on first use. It is the secret behind every record and fake record:
    losing it invalidates every account."""
    run = runtime.run_blocking
    try:
        if await run(path.exists):
            blob = await run(path.read_bytes)
            setup = await run(lambda: open_sealed(blob, passphrase))
            try:
                opaque.ServerSetupData.from_bytes(setup)
            except ValueError as exc:
                raise AccountError(f"{path} does not hold an OPAQUE setup") from exc
            return setup
        setup = opaque.server_setup().to_bytes()
        fresh = runtime.random_bytes(SEAL_RANDOM_SIZE)
        sealed = await run(lambda: seal(setup, passphrase, params, fresh))
        await run(lambda: _write_private(path, sealed))
        return setup
    except OSError as exc:
        raise StorageError(f"cannot use {path}: {exc.strerror}") from exc


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def token_hash(token: bytes) -> bytes:
    return hashlib.sha256(b"qpc-session-token:" + token).digest()


class FakeRecords:
    """RFC 9807 §10.9 fake records: for a name nobody holds, a record of the right shape whose
    client public key, masking key and envelope all derive from the relay's secret setup, so
    one name always meets the same record, and none can be told from a real one without the
    password it does not have."""

    def __init__(self, setup: opaque.ServerSetupData, setup_bytes: bytes) -> None:
        self._setup = setup
        self._key = HKDF(
            algorithm=hashes.SHA512(), length=64, salt=None, info=b"qpc/opaque-fake-records"
        ).derive(setup_bytes)

    def record(self, username: str) -> bytes:
        name = username.encode()
        # The client's "public key" is the OPRF of the generator under a key derived from the
        # setup's seed for this name: a valid group element whose discrete log nobody holds.
        public_key = opaque.server_registration_start(
            self._setup, _GENERATOR, _FAKE_KEY_PREFIX + name
        ).get_message()[:32]
        # Masking key (64), envelope nonce (32) and envelope MAC (64), as a real record has.
        rest = HKDFExpand(
            algorithm=hashes.SHA512(), length=160, info=b"qpc/opaque-fake-record:" + name
        ).derive(self._key)
        return public_key + rest


class AccountService:
    """Serves the account calls and tells the mailbox calls who holds a live session."""

    def __init__(
        self,
        store: AccountStore | AccountBackend,
        setup: bytes,
        runtime: Runtime,
        limits: AccountLimits,
        counters: Counter[str],
    ) -> None:
        self._store: AccountBackend = (
            SqliteAccounts(store, runtime) if isinstance(store, AccountStore) else store
        )
        self._setup = opaque.ServerSetupData.from_bytes(setup)
        self._fakes = FakeRecords(self._setup, setup)
        self.limits = limits
        self.counters = counters
        self._run = runtime.run_blocking
        self._wall_ms = runtime.wall_ms
        self._monotonic = runtime.monotonic
        self._random = runtime.random_bytes
        per_second = limits.login_attempts_per_minute / 60
        self._by_username = TokenBuckets(per_second, limits.login_attempt_burst)
        self._by_address = TokenBuckets(per_second, limits.login_attempt_burst)
        self._registrations = TokenBuckets(
            limits.registrations_per_minute / 60, limits.registration_burst
        )
        # login id -> pending login, oldest first (a dict keeps insertion order).
        self._pending: dict[bytes, _PendingLogin] = {}

    @property
    def required(self) -> bool:
        return self.limits.mode == "required"

    async def may_use_mailboxes(self, identity: bytes) -> bool:
        if not self.required:
            return True
        return await self._store.has_live_session(identity, self._wall_ms())

    def _refuse(self, trigger: str, code: ErrorCode, message: str) -> wire.ErrorResult:
        self.counters[trigger] += 1
        log.info("refused an account call", extra={"trigger": trigger})
        return wire.ErrorResult(code, message)

    def unauthenticated(self) -> wire.ErrorResult:
        return self._refuse(
            "refused_unauthenticated",
            ErrorCode.UNAUTHENTICATED,
            "this relay serves mailboxes to logged-in accounts only: log in first",
        )

    async def handle(self, caller: Caller, request: wire.Request) -> wire.Response:
        match request:
            case wire.RegisterStart(username, message):
                return await self._register_start(caller, username, message)
            case wire.RegisterFinish(username, upload):
                return await self._register_finish(caller, username, upload)
            case wire.LoginStart(username, message):
                return await self._login_start(caller, username, message)
            case wire.LoginFinish(login_id, finalization):
                return await self._login_finish(caller, login_id, finalization)
            case wire.Authenticate(token):
                return await self._authenticate(caller, token)
            case wire.Logout(token):
                return await self._logout(caller, token)
        return wire.ErrorResult(ErrorCode.UNKNOWN_METHOD, "unknown method")

    # --- registration ---------------------------------------------------------------------------

    def _malformed(self, what: str) -> wire.ErrorResult:
        return self._refuse("refused_account_malformed", ErrorCode.MALFORMED_REQUEST, what)

    def _check_username(self, username: str) -> wire.ErrorResult | None:
        if USERNAME.fullmatch(username) is None:
            return self._malformed(USERNAME_RULE)
        return None

    async def _register_start(self, caller: Caller, username: str, message: bytes) -> wire.Response:
        if (bad := self._check_username(username)) is not None:
            return bad
        if len(message) != REGISTRATION_REQUEST_SIZE:
            return self._malformed("a registration request is 32 bytes")
        store = self._store
        if await store.exists(username):
            return self._taken()
        try:
            response = opaque.server_registration_start(
                self._setup, message, username.encode()
            ).get_message()
        except ValueError:
            return self._malformed("not an OPAQUE registration request")
        return wire.RegisterStartResult(response)

    def _taken(self) -> wire.ErrorResult:
        return self._refuse("refused_username_taken", ErrorCode.CONFLICT, "that username is taken")

    async def _register_finish(self, caller: Caller, username: str, upload: bytes) -> wire.Response:
        if (bad := self._check_username(username)) is not None:
            return bad
        if len(upload) != REGISTRATION_UPLOAD_SIZE:
            return self._malformed("a registration upload is 192 bytes")
        try:
            record = opaque.server_registration_finish(upload).get_password_file()
        except ValueError:
            return self._malformed("not an OPAQUE registration upload")
        # Charged only here, where an account is made: a start costs the relay one OPRF.
        if not self._registrations.take(caller.address[0], self._monotonic()):
            return self._refuse(
                "refused_registration_rate",
                ErrorCode.RATE_LIMITED,
                "too many registrations from this address: retry later",
            )
        store, now_ms = self._store, self._wall_ms()
        try:
            await store.register(username, record, now_ms)
        except UsernameTakenError:
            return self._taken()
        except TooManyAccountsError as exc:
            return self._refuse("refused_accounts_full", ErrorCode.STORE_FULL, str(exc))
        except StorageError:
            return wire.ErrorResult(ErrorCode.INTERNAL, "the relay could not store the account")
        self.counters["accounts_registered"] += 1
        log.info("registered an account")
        return wire.RegisterFinishResult()

    # --- login ----------------------------------------------------------------------------------

    async def _login_start(self, caller: Caller, username: str, message: bytes) -> wire.Response:
        if (bad := self._check_username(username)) is not None:
            return bad
        if len(message) != KE1_SIZE:
            return self._malformed("a login request is 96 bytes")
        now = self._monotonic()
        host = caller.address[0]
        if self._by_username.available(username, now) < 1 or (
            self._by_address.available(host, now) < 1
        ):
            return self._refuse(
                "refused_login_rate",
                ErrorCode.RATE_LIMITED,
                "too many login attempts for this name or from this address: retry later",
            )
        self._expire_pending(now)
        if len(self._pending) >= self.limits.max_pending_logins:
            return self._refuse("refused_pending_logins", ErrorCode.BUSY, "too many logins now")
        store = self._store
        stored = await store.record(username)
        # The fake record is derived whether or not it is used, so both paths cost the same.
        fake = self._fakes.record(username)
        record = fake if stored is None else stored
        try:
            started = opaque.server_login_start(self._setup, record, message, username.encode())
        except ValueError:
            return self._malformed("not an OPAQUE login request")
        self._by_username.take(username, now)
        self._by_address.take(host, now)
        self._limit_per_identity(caller.identity)
        login_id = self._random(LOGIN_ID_SIZE)
        self._pending[login_id] = _PendingLogin(
            username, caller.identity, host, started.get_state(), now
        )
        return wire.LoginStartResult(login_id, started.get_message())

    def _expire_pending(self, now: float) -> None:
        oldest_allowed = now - self.limits.login_timeout_ms / 1000
        while self._pending:
            login_id, pending = next(iter(self._pending.items()))
            if pending.started >= oldest_allowed:
                break
            del self._pending[login_id]
            self.counters["logins_abandoned"] += 1

    def _limit_per_identity(self, identity: bytes) -> None:
        mine = [k for k, p in self._pending.items() if p.identity == identity]
        for login_id in mine[: max(0, len(mine) - self.limits.max_pending_logins_per_identity + 1)]:
            del self._pending[login_id]

    def _wrong_login(self) -> wire.ErrorResult:
        return self._refuse(
            "refused_login", ErrorCode.UNAUTHENTICATED, "wrong username or password"
        )

    async def _login_finish(
        self, caller: Caller, login_id: bytes, finalization: bytes
    ) -> wire.Response:
        if len(login_id) != LOGIN_ID_SIZE or len(finalization) != KE3_SIZE:
            return self._malformed("a login finish is a 16-byte id and 64 bytes")
        now = self._monotonic()
        self._expire_pending(now)
        pending = self._pending.get(login_id)
        if pending is None or not hmac.compare_digest(pending.identity, caller.identity):
            return self._refuse(
                "refused_login_unknown",
                ErrorCode.UNAUTHENTICATED,
                "no such login in progress (it may have timed out): start again",
            )
        del self._pending[login_id]
        try:
            opaque.server_login_finish(pending.state, finalization)
        except ValueError:
            return self._wrong_login()
        # A finished login is not a guess: give back what its start spent.
        self._by_username.give_back(pending.username, now)
        self._by_address.give_back(pending.host, now)
        token = self._random(TOKEN_SIZE)
        wall = self._wall_ms()
        expires = wall + self.limits.session_ttl_ms
        session = Session(pending.username, caller.identity, expires)
        store, keep = self._store, self.limits.max_sessions_per_account
        try:
            await store.open_session(token_hash(token), session, wall, keep)
        except StorageError:
            return wire.ErrorResult(ErrorCode.INTERNAL, "the relay could not store the session")
        self.counters["logins"] += 1
        log.info("an account logged in")
        return wire.SessionResult(token, expires)

    # --- sessions -------------------------------------------------------------------------------

    async def _session_of(self, caller: Caller, token: bytes) -> tuple[bytes, Session] | None:
        """The caller's live session for ``token``, or None: unknown, expired, revoked and
        another identity's tokens all look alike to the caller."""
        if len(token) != TOKEN_SIZE:
            return None
        hashed = token_hash(token)
        session = await self._store.session(hashed)
        # Looked up by hash (which reveals nothing of a valid token); the identity binding is
        # compared in constant time.
        if session is None or not hmac.compare_digest(session.identity, caller.identity):
            return None
        if session.expires_ms <= self._wall_ms():
            return None
        return hashed, session

    def _bad_token(self) -> wire.ErrorResult:
        return self._refuse(
            "refused_session",
            ErrorCode.UNAUTHENTICATED,
            "this session is expired, revoked or not yours: log in again",
        )

    async def _authenticate(self, caller: Caller, token: bytes) -> wire.Response:
        found = await self._session_of(caller, token)
        if found is None:
            return self._bad_token()
        return wire.SessionInfo(found[1].expires_ms)

    async def _logout(self, caller: Caller, token: bytes) -> wire.Response:
        found = await self._session_of(caller, token)
        if found is None:
            return self._bad_token()
        hashed, store = found[0], self._store
        try:
            await store.revoke(hashed)
        except StorageError:
            return wire.ErrorResult(ErrorCode.INTERNAL, "the relay could not revoke the session")
        self.counters["logouts"] += 1
        return wire.LogoutResult()

    async def purge_expired(self) -> int:
        store, now_ms = self._store, self._wall_ms()
        return await store.purge_expired(now_ms)

    @property
    def pending_logins(self) -> int:
        return len(self._pending)
