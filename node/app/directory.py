"""The node's side of the relay directory: its KeyPackage pool there, usernames, and the
KeyPackages of peers who are offline.

* **Pool upkeep.** After start, and whenever a fetch answer from the relay says the pool runs
  low (``FetchResult.key_packages_low``), the node tops its single-use KeyPackages at the
  relay up to ``pool_target`` per suite and refreshes its last-resort ones there. Publishes
  are at least ``min_interval`` apart and carry a bounded number of KeyPackages, which come
  from the node's own bounded pool (``MlsClient.serve_key_packages``): a relay that always
  says "low" costs a publish a minute, never unbounded MLS state.
* **Names.** :meth:`DirectoryClient.resolve_user` and :meth:`DirectoryClient.username_of` ask
  the node's relay; answers are checked (a 32-byte key, a valid username) and positive ones
  kept for a few minutes, bounded, since the relay rate-limits lookups.
* **A peer's KeyPackages** from the relay that holds its mailbox: the node checks them as it
  checks those the peer sends itself (``Node._fetch_key_packages``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from node.app.router import RelayInfo, Router
from node.core import wire
from node.core.errors import ErrorCode, NodeError, RelayError
from node.core.identity import IDENTITY_KEY_SIZE
from node.core.runtime import Runtime
from node.mls import MlsClient
from node.transport.endpoint import Endpoint

log = logging.getLogger(__name__)

POOL_TARGET = 8  # single-use KeyPackages per suite the node keeps at its relay
MIN_PUBLISH_INTERVAL = 60.0  # seconds between publishes
RETRY_MIN, RETRY_MAX = 5.0, 300.0
CACHE_SIZE = 256
CACHE_TTL = 300.0  # seconds a resolved name is trusted without asking again
CALL_DEADLINE = 10.0


class DirectoryError(RelayError):
    """A directory call failed: the relay is unreachable, refused it or answered oddly."""


class UnknownUserError(DirectoryError):
    """No one goes by that username at the relay."""


class NoKeyPackageError(DirectoryError):
    """The relay holds no KeyPackage of that identity."""


class DirectoryRateLimitedError(DirectoryError):
    """The relay refuses more lookups from this node for now."""


class _Cache:
    """A small map whose entries expire, oldest dropped first past ``CACHE_SIZE``."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._items: OrderedDict[object, tuple[float, object]] = OrderedDict()

    def get(self, key: object) -> object | None:
        found = self._items.get(key)
        if found is None or found[0] < self._now():
            self._items.pop(key, None)
            return None
        return found[1]

    def put(self, key: object, value: object) -> None:
        self._items.pop(key, None)
        self._items[key] = (self._now() + CACHE_TTL, value)
        while len(self._items) > CACHE_SIZE:
            self._items.popitem(last=False)


class DirectoryClient:
    """Directory calls from one node (its endpoint, its MLS client, its relay)."""

    def __init__(
        self,
        endpoint: Endpoint,
        router: Router,
        mls: MlsClient,
        runtime: Runtime,
        *,
        pool_target: int = POOL_TARGET,
        min_interval: float = MIN_PUBLISH_INTERVAL,
    ) -> None:
        if not 0 <= pool_target <= wire.MAX_PUBLISH_KEY_PACKAGES // 4:
            raise ValueError(f"pool_target must be 0 to {wire.MAX_PUBLISH_KEY_PACKAGES // 4}")
        self._endpoint = endpoint
        self._router = router
        self._mls = mls
        self._run = runtime.run_blocking
        self._monotonic = runtime.monotonic
        self.pool_target = pool_target
        self.min_interval = min_interval
        self._low = asyncio.Event()
        self._names = _Cache(runtime.monotonic)
        # What the relay said it holds after the last publish, and how many publishes added
        # KeyPackages.
        self.last_counts: wire.PublishKeyPackagesResult | None = None
        self.publishes = 0

    # --- calls ---------------------------------------------------------------------------------

    async def _call(self, relay: RelayInfo | None, request: wire.Request) -> wire.Response:
        if relay is None:
            raise DirectoryError("no relay is configured")
        try:
            conn = await self._endpoint.dial(relay.address, relay.identity, CALL_DEADLINE)
            response = await conn.call(request, CALL_DEADLINE)
        except NodeError as exc:
            self._endpoint.drop(relay.address, relay.identity)
            raise DirectoryError(f"the relay is unreachable: {exc}") from exc
        if isinstance(response, wire.ErrorResult) and response.code is ErrorCode.RATE_LIMITED:
            raise DirectoryRateLimitedError("the relay refuses more lookups for now: retry later")
        return response

    @staticmethod
    def _refused(response: wire.Response) -> DirectoryError:
        if isinstance(response, wire.ErrorResult):
            return DirectoryError(f"the relay refused: {response.message}")
        return DirectoryError("the relay answered a directory call with something else")

    async def resolve_user(self, username: str) -> bytes:
        """The identity key that last logged in at our relay as ``username``.

        :raises UnknownUserError: no one goes by that name there.
        :raises DirectoryError: no relay, or it cannot be asked now (rate limit included)."""
        if wire.USERNAME.fullmatch(username) is None:
            raise DirectoryError(wire.USERNAME_RULE)
        cached = self._names.get(("user", username))
        if isinstance(cached, bytes):
            return cached
        response = await self._call(self._router.relay, wire.ResolveUser(username))
        if isinstance(response, wire.ErrorResult) and response.code is ErrorCode.NOT_FOUND:
            raise UnknownUserError(f"no one goes by @{username} at the relay")
        if not isinstance(response, wire.ResolveUserResult):
            raise self._refused(response)
        if len(response.identity) != IDENTITY_KEY_SIZE:
            raise DirectoryError("the relay answered with something that is not an identity key")
        self._names.put(("user", username), response.identity)
        return response.identity

    async def username_of(self, identity: bytes) -> str | None:
        """The username ``identity`` last logged in as at our relay, or None if it has none
        there. The relay's word: only the identity key is proven."""
        cached = self._names.get(("identity", identity))
        if isinstance(cached, str):
            return cached
        response = await self._call(self._router.relay, wire.ResolveIdentity(identity))
        if isinstance(response, wire.ErrorResult) and response.code is ErrorCode.NOT_FOUND:
            return None
        if not isinstance(response, wire.ResolveIdentityResult):
            raise self._refused(response)
        # A name is shown to people: only what the relay may register passes.
        if wire.USERNAME.fullmatch(response.username) is None:
            raise DirectoryError("the relay answered with a name it could not have registered")
        self._names.put(("identity", identity), response.username)
        return response.username

    async def fetch_key_packages(self, relay: RelayInfo, peer: bytes) -> wire.FetchKeyPackageResult:
        """The KeyPackages ``relay`` holds of ``peer``, unchecked (the caller checks them).

        :raises NoKeyPackageError: the relay holds none."""
        response = await self._call(relay, wire.FetchKeyPackage(peer))
        if isinstance(response, wire.ErrorResult) and response.code is ErrorCode.NOT_FOUND:
            raise NoKeyPackageError("the relay holds no KeyPackage of that peer")
        if not isinstance(response, wire.FetchKeyPackageResult):
            raise self._refused(response)
        return response

    # --- the pool at our relay -----------------------------------------------------------------

    def pool_runs_low(self) -> None:
        """The relay said our single-use KeyPackages there run low: top them up soon."""
        self._low.set()

    async def publish(self) -> wire.PublishKeyPackagesResult:
        """Refresh our last-resort KeyPackages at the relay, then top the single-use ones up
        to ``pool_target`` per suite. Returns what the relay holds afterwards."""
        mls, relay = self._mls, self._router.relay

        def last_resorts() -> list[bytes]:
            return [mls.last_resort_key_package(suite) for suite in mls.ciphersuites]

        lasts = await self._run(last_resorts)
        status = await self._call(relay, wire.PublishKeyPackages((), tuple(lasts)))
        if not isinstance(status, wire.PublishKeyPackagesResult):
            raise self._refused(status)
        room = {
            suite: min(self.pool_target, status.max_per_suite) - status.single_use(suite)
            for suite in mls.ciphersuites
        }
        if max(room.values(), default=0) <= 0:
            self.last_counts = status
            return status
        by_suite = dict(zip(mls.ciphersuites, lasts, strict=True))

        def fresh() -> list[bytes]:
            # Each round serves one of every suite from the node's bounded pool; once that is
            # full it serves the last-resort ones, which are already published.
            out: list[bytes] = []
            wanted = dict(room)
            for _ in range(max(wanted.values())):
                served = mls.serve_key_packages()
                for suite, key_package in zip(mls.ciphersuites, served, strict=False):
                    if wanted[suite] > 0 and key_package != by_suite[suite]:
                        out.append(key_package)
                        wanted[suite] -= 1
            return out

        single_use = await self._run(fresh)
        if not single_use:
            self.last_counts = status
            return status
        answer = await self._call(relay, wire.PublishKeyPackages(tuple(single_use)))
        if not isinstance(answer, wire.PublishKeyPackagesResult):
            raise self._refused(answer)
        self.last_counts = answer
        self.publishes += 1
        log.info("published %d KeyPackages at the relay", len(single_use))
        return answer

    async def keep_pool(self) -> None:
        """Publish after start, then whenever the relay says the pool runs low; at least
        ``min_interval`` apart, backing off while the relay cannot be reached."""
        backoff = RETRY_MIN
        while True:
            self._low.clear()
            try:
                await self.publish()
            except NodeError as exc:
                log.info("cannot publish KeyPackages now (retrying in %.0f s): %s", backoff, exc)
                await asyncio.sleep(backoff)  # a retry delay, not a wait for a condition
                backoff = min(backoff * 2, RETRY_MAX)
                continue
            backoff = RETRY_MIN
            # A bound on how often a relay can make us publish, not a wait for a condition.
            await asyncio.sleep(self.min_interval)
            await self._low.wait()
