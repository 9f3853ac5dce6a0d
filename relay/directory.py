"""The relay's Directory service: KeyPackages held for offline owners, and usernames.

* ``publishKeyPackages``: the caller's own KeyPackages only. Each is verified (signature,
  lifetime, a credential naming the caller's proven identity key) before anything is stored;
  one naming anyone else refuses the whole call. The pool is bounded per identity and suite,
  each KeyPackage in size, and all of them in bytes.
* ``fetchKeyPackage(identity)``: one KeyPackage per suite the owner published, its preferred
  suite first; a single-use one is used up, the last-resort one is handed out when none is
  left and stays. Charged per caller and per source address before any work, since every
  answer spends an owner's single-use KeyPackage.
* ``resolveUser`` / ``resolveIdentity``: the binding a finished login makes (the identity
  that last logged in as a username; ``docs/adr/0007-relay-directory.md``). Both are charged
  to one lookup allowance per caller and per address, hits and misses alike, so names cannot
  be enumerated fast and the allowance says nothing of whether a name exists.

The store is a :class:`~relay.store_api.DirectoryBackend` (embedded SQLite or PostgreSQL);
blocking work (verifying KeyPackages) and the clock come from the
:class:`~node.core.runtime.Runtime`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from node.core import wire
from node.core.errors import ErrorCode, StorageError
from node.core.identity import IDENTITY_KEY_SIZE
from node.core.runtime import Runtime
from node.mls import GroupError, key_package_info
from node.transport.connection import Caller
from relay.directory_store import DirectoryQuotaError
from relay.limits import TokenBuckets
from relay.store_api import DirectoryBackend, StoreUnavailableError

log = logging.getLogger(__name__)

# How much more a source address may spend than one identity: many people share one.
ADDRESS_FACTOR = 4
# Logins started and not finished whose username is remembered for the binding (the account
# service bounds pending logins too; this only bounds what the directory keeps of them).
MAX_PENDING_BINDINGS = 1024

DIRECTORY_CALLS = (
    wire.PublishKeyPackages,
    wire.FetchKeyPackage,
    wire.ResolveUser,
    wire.ResolveIdentity,
)


@dataclass(frozen=True)
class DirectoryLimits:
    """Bounds on what a caller may store or ask (see ``docs/operations.md``)."""

    max_key_package_bytes: int = 8192
    key_package_low_water: int = 4  # below this many single-use ones, the owner is told
    key_package_max_age_ms: int = 28 * 24 * 3600 * 1000
    key_package_fetches_per_minute: float = 30.0
    key_package_fetch_burst: int = 20
    lookups_per_minute: float = 30.0
    lookup_burst: int = 20
    publishes_per_minute: float = 10.0
    publish_burst: int = 10


class DirectoryService:
    """Answers the directory calls, and binds usernames as logins finish."""

    def __init__(
        self,
        store: DirectoryBackend,
        runtime: Runtime,
        limits: DirectoryLimits,
        counters: Counter[str],
    ) -> None:
        self._store = store
        self.limits = limits
        self.counters = counters
        self._run = runtime.run_blocking
        self._wall_ms = runtime.wall_ms
        self._monotonic = runtime.monotonic

        def buckets(per_minute: float, burst: int, factor: int = 1) -> TokenBuckets:
            return TokenBuckets(per_minute * factor / 60, burst * factor)

        fetches, fetch_burst = limits.key_package_fetches_per_minute, limits.key_package_fetch_burst
        self._fetches = buckets(fetches, fetch_burst)
        self._fetches_by_address = buckets(fetches, fetch_burst, ADDRESS_FACTOR)
        self._lookups = buckets(limits.lookups_per_minute, limits.lookup_burst)
        self._lookups_by_address = buckets(
            limits.lookups_per_minute, limits.lookup_burst, ADDRESS_FACTOR
        )
        self._publishes = buckets(limits.publishes_per_minute, limits.publish_burst)
        # login id -> (username, identity) of a login started and not yet finished.
        self._pending: dict[bytes, tuple[str, bytes]] = {}

    def _refuse(self, trigger: str, code: ErrorCode, message: str) -> wire.ErrorResult:
        self.counters[trigger] += 1
        log.info("refused a directory call", extra={"trigger": trigger})
        return wire.ErrorResult(code, message)

    def _not_before_ms(self) -> int:
        return self._wall_ms() - self.limits.key_package_max_age_ms

    async def runs_low(self, identity: bytes) -> bool:
        """Whether the owner of ``identity`` should publish more KeyPackages here (False when
        the store cannot tell now: the owner is told at a later fetch)."""
        try:
            return await self._store.runs_low(identity, self.limits.key_package_low_water)
        except StorageError:
            return False

    async def handle(self, caller: Caller, request: wire.Request) -> wire.Response:
        try:
            return await self._handle(caller, request)
        except StoreUnavailableError:
            return self._refuse(
                "refused_store_unavailable",
                ErrorCode.BUSY,
                "the relay's database is unreachable: retry later",
            )
        except StorageError as exc:
            log.warning("a directory call failed in the store: %s", exc)
            return wire.ErrorResult(ErrorCode.INTERNAL, "the relay could not use its directory")

    async def _handle(self, caller: Caller, request: wire.Request) -> wire.Response:
        match request:
            case wire.PublishKeyPackages(single_use, last_resort):
                return await self._publish(caller, single_use, last_resort)
            case wire.FetchKeyPackage(identity):
                return await self._fetch(caller, identity)
            case wire.ResolveUser(username):
                return await self._resolve_user(caller, username)
            case wire.ResolveIdentity(identity):
                return await self._resolve_identity(caller, identity)
        return wire.ErrorResult(ErrorCode.UNKNOWN_METHOD, "unknown method")

    # --- KeyPackages ---------------------------------------------------------------------------

    async def _publish(
        self, caller: Caller, single_use: tuple[bytes, ...], last_resort: tuple[bytes, ...]
    ) -> wire.Response:
        if not self._publishes.take(caller.identity, self._monotonic()):
            return self._refuse(
                "refused_publish_rate", ErrorCode.RATE_LIMITED, "too many publishes: retry later"
            )
        largest = self.limits.max_key_package_bytes
        if any(len(kp) > largest for kp in (*single_use, *last_resort)):
            return self._refuse(
                "refused_key_package_size",
                ErrorCode.TOO_LARGE,
                f"a KeyPackage is at most {largest} bytes here",
            )
        now_ms = self._wall_ms()

        def verify() -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]] | str:
            checked: list[list[tuple[int, bytes]]] = [[], []]
            for kind, items in enumerate((single_use, last_resort)):
                for kp in items:
                    try:
                        identity, suite = key_package_info(kp, now_ms=now_ms)
                    except GroupError:
                        return "invalid"
                    if identity != caller.identity:
                        return "foreign"
                    checked[kind].append((suite, kp))
            return checked[0], checked[1]

        checked = await self._run(verify)
        if checked == "foreign":
            return self._refuse(
                "refused_key_package_foreign",
                ErrorCode.UNAUTHORIZED,
                "a KeyPackage is published only by the identity it names",
            )
        if isinstance(checked, str):
            return self._refuse(
                "refused_key_package_invalid",
                ErrorCode.MALFORMED_REQUEST,
                "not a valid, current KeyPackage",
            )
        singles, lasts = checked
        if len({suite for suite, _ in lasts}) != len(lasts):
            return self._refuse(
                "refused_key_package_invalid",
                ErrorCode.MALFORMED_REQUEST,
                "at most one last-resort KeyPackage per suite",
            )
        store = self._store
        try:
            counts = await store.publish(caller.identity, singles, lasts, now_ms)
        except DirectoryQuotaError as exc:
            code = (
                ErrorCode.STORE_FULL
                if exc.trigger == "refused_directory_full"
                else ErrorCode.LIMIT_EXCEEDED
            )
            return self._refuse(exc.trigger, code, str(exc))
        self.counters["key_packages_published"] += len(singles)
        return wire.PublishKeyPackagesResult(
            tuple(wire.KeyPackageCount(c.suite, c.single_use, c.last_resort) for c in counts),
            store.quotas.max_per_suite,
        )

    async def _fetch(self, caller: Caller, identity: bytes) -> wire.Response:
        if not _take_both(self._fetches, self._fetches_by_address, caller, self._monotonic()):
            return self._refuse(
                "refused_key_package_rate",
                ErrorCode.RATE_LIMITED,
                "too many KeyPackage requests: retry later",
            )
        if len(identity) != IDENTITY_KEY_SIZE:
            return self._refuse(
                "refused_directory_malformed",
                ErrorCode.MALFORMED_REQUEST,
                f"an identity key is {IDENTITY_KEY_SIZE} bytes",
            )
        taken = await self._store.take(identity, self._not_before_ms())
        if not taken:
            return wire.ErrorResult(ErrorCode.NOT_FOUND, "no KeyPackage of that identity here")
        self.counters["key_packages_served"] += 1
        return wire.FetchKeyPackageResult(taken[0], tuple(taken[1 : wire.MAX_KEY_PACKAGES]))

    async def purge_expired(self) -> int:
        return await self._store.purge_expired(self._not_before_ms())

    # --- usernames -----------------------------------------------------------------------------

    def _lookup_allowed(self, caller: Caller) -> bool:
        return _take_both(self._lookups, self._lookups_by_address, caller, self._monotonic())

    def _lookup_refused(self) -> wire.ErrorResult:
        return self._refuse(
            "refused_lookup_rate", ErrorCode.RATE_LIMITED, "too many lookups: retry later"
        )

    async def _resolve_user(self, caller: Caller, username: str) -> wire.Response:
        if not self._lookup_allowed(caller):
            return self._lookup_refused()
        if wire.USERNAME.fullmatch(username) is None:
            return self._refuse(
                "refused_directory_malformed", ErrorCode.MALFORMED_REQUEST, wire.USERNAME_RULE
            )
        found = await self._store.identity_of(username)
        if found is None:
            return wire.ErrorResult(ErrorCode.NOT_FOUND, "no one here goes by that name")
        return wire.ResolveUserResult(found)

    async def _resolve_identity(self, caller: Caller, identity: bytes) -> wire.Response:
        if not self._lookup_allowed(caller):
            return self._lookup_refused()
        if len(identity) != IDENTITY_KEY_SIZE:
            return self._refuse(
                "refused_directory_malformed",
                ErrorCode.MALFORMED_REQUEST,
                f"an identity key is {IDENTITY_KEY_SIZE} bytes",
            )
        found = await self._store.username_of(identity)
        if found is None:
            return wire.ErrorResult(ErrorCode.NOT_FOUND, "that identity has no name here")
        return wire.ResolveIdentityResult(found)

    async def after_account_call(
        self, caller: Caller, request: wire.Request, answer: wire.Response
    ) -> None:
        """Bind a username to the identity whose login for it just finished. The account
        service keeps the username of a login to itself: it is remembered here from the
        start, by login id, for the caller that started it."""
        if isinstance(request, wire.LoginStart) and isinstance(answer, wire.LoginStartResult):
            self._pending[answer.login_id] = (request.username, caller.identity)
            while len(self._pending) > MAX_PENDING_BINDINGS:
                del self._pending[next(iter(self._pending))]
            return
        if not isinstance(request, wire.LoginFinish):
            return
        pending = self._pending.pop(request.login_id, None)
        # The account service checked the login belongs to this caller; so does this.
        if not isinstance(answer, wire.SessionResult) or pending is None:
            return
        username, identity = pending
        if identity != caller.identity:
            return
        try:
            await self._store.bind(username, identity, self._wall_ms())
        except StorageError as exc:
            # The login stands; the name resolves to its earlier identity until the next one.
            log.warning("binding a username failed: %s", exc)
            return
        self.counters["usernames_bound"] += 1


def _take_both(own: TokenBuckets, by_address: TokenBuckets, caller: Caller, now: float) -> bool:
    """Spend one from the caller's bucket and its address's, or from neither."""
    host = caller.address[0]
    if own.available(caller.identity, now) < 1 or by_address.available(host, now) < 1:
        return False
    return own.take(caller.identity, now) and by_address.take(host, now)
