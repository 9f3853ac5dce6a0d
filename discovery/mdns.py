"""LAN discovery over mDNS/DNS-SD with python-zeroconf: advertise, browse, keep a LAN table.

The node advertises ``<instance>._qpc._udp.local.`` with a TXT record carrying
the protocol version (``v``), its full compact fingerprint (``fp``), a display name (``name``)
and its QUIC port (``port``), and browses for everybody else's. What the TXT says is a claim:
entries live in a :class:`~discovery.lan.LanTable` as *claimed* until the router's QUIC
handshake proves the key and calls :meth:`MdnsService.confirm` (or :meth:`MdnsService.refute`).

mDNS only ever runs on the interfaces the caller names — there is no default — because
python-zeroconf otherwise joins every interface of the machine.

Usage::

    mdns = MdnsService(runtime, interfaces=["192.168.1.20"], identity_key=key,
                       display_name="alice", port=4433)
    await mdns.start()
    event = await mdns.events.get()          # LanEvent(ADDED, LanPeer(...))
    peers = mdns.lookup(compact_fingerprint(bob_key))
    ...
    await mdns.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Sequence

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from discovery.lan import (
    PROTOCOL_VERSION,
    Address,
    LanEvent,
    LanPeer,
    LanTable,
    clean_name,
    compact_fingerprint,
    is_fingerprint,
    usable_address,
)
from node.core.runtime import Runtime

log = logging.getLogger(__name__)

SERVICE_TYPE = "_qpc._udp.local."
_MAX_TXT_VALUE = 200  # a TXT string is at most 255 bytes including "key="


def ip_version_for(interfaces: Sequence[str]) -> IPVersion:
    """V4Only for IPv4 interface addresses, V6Only for IPv6 ones, All for a mix.

    Raises :class:`ValueError` for anything but concrete unicast IP addresses: a wildcard such
    as ``0.0.0.0`` would mean "every interface", which discovery never does.
    """
    if not interfaces:
        raise ValueError("mDNS needs at least one interface address; it never picks its own")
    versions = set()
    for text in interfaces:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an interface IP address") from None
        if ip.is_unspecified or ip.is_multicast:
            raise ValueError(f"{text} names no single interface; pass the interface's address")
        versions.add(ip.version)
    if versions == {4}:
        return IPVersion.V4Only
    if versions == {6}:
        return IPVersion.V6Only
    return IPVersion.All


class MdnsService:
    """Advertises this node and tracks the others on the chosen interfaces.

    zeroconf opens its own multicast sockets, which no runtime can hand in: a simulation gives
    its nodes a LAN table of its own instead (``discovery.resolver.LanSource``).

    :param runtime: the wall clock for the table's first/last-seen times, and the tasks that
        resolve services.
    :param interfaces: IP addresses of the interfaces to use (required; usually the address
        the node's QUIC endpoint listens on).
    :param advertise: False to only browse.
    :param on_event: called for every :class:`LanEvent`, in addition to :attr:`events`.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        interfaces: Sequence[str],
        identity_key: bytes,
        display_name: str,
        port: int,
        advertise: bool = True,
        addresses: Sequence[str] | None = None,
        on_event: Callable[[LanEvent], None] | None = None,
        resolve_timeout: float = 3.0,
        event_queue_size: int = 256,
    ) -> None:
        self.interfaces = tuple(interfaces)
        self.ip_version = ip_version_for(self.interfaces)
        self.fingerprint = compact_fingerprint(identity_key)
        self.display_name = clean_name(display_name)
        self.port = port
        self.advertise = advertise
        self.addresses = tuple(addresses) if addresses is not None else self.interfaces
        self.table = LanTable()
        self.events: asyncio.Queue[LanEvent] = asyncio.Queue(maxsize=event_queue_size)
        self.events_dropped = 0
        self._on_event = on_event
        self._runtime = runtime
        self._clock_ms = runtime.wall_ms
        self._resolve_timeout_ms = int(resolve_timeout * 1000)
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        # Insertion-ordered (a set's order follows memory addresses): stops run in one order.
        self._tasks: dict[asyncio.Task[None], None] = {}
        # Bumped on every browse event of a name, so a slow resolve that finishes after the
        # service was removed (or changed again) does not resurrect old data.
        self._generation: dict[str, int] = {}

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._zc is not None

    @property
    def service_name(self) -> str | None:
        """Our registered instance name (zeroconf may have renamed it to avoid a clash)."""
        return None if self._info is None else self._info.name

    async def start(self) -> None:
        """Join mDNS on the chosen interfaces, register our service, start browsing.

        Registration probes for name clashes first (about a second, RFC 6762 §8.1).
        """
        if self._zc is not None:
            raise RuntimeError("mDNS is already running")
        self._zc = AsyncZeroconf(interfaces=list(self.interfaces), ip_version=self.ip_version)
        try:
            self._browser = AsyncServiceBrowser(
                self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_service_change]
            )
            if self.advertise:
                self._info = self._service_info(f"qpc-{self.fingerprint}.{SERVICE_TYPE}")
                await self._zc.async_register_service(self._info, allow_name_change=True)
        except BaseException:
            await self.stop()
            raise

    async def update(self, *, display_name: str | None = None, port: int | None = None) -> None:
        """Re-announce with a new display name and/or port (browsers see an UPDATED event)."""
        if display_name is not None:
            self.display_name = clean_name(display_name)
        if port is not None:
            self.port = port
        if self._zc is None or self._info is None:
            return
        self._info = self._service_info(self._info.name)
        await self._zc.async_update_service(self._info)

    async def stop(self) -> None:
        """Say goodbye, stop browsing and leave mDNS. Safe to call twice."""
        zc, self._zc = self._zc, None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if zc is not None:
            # async_close sends goodbyes for our registration, then closes the sockets.
            await zc.async_close()
        self._info = None

    # --- advertising ----------------------------------------------------------------------

    def _service_info(self, name: str) -> AsyncServiceInfo:
        name_bytes = self.display_name.encode("utf-8")[:_MAX_TXT_VALUE]
        properties: dict[str | bytes, str | bytes | None] = {
            "v": PROTOCOL_VERSION,
            "fp": self.fingerprint,
            "name": name_bytes,
            "port": str(self.port),
        }
        return AsyncServiceInfo(
            SERVICE_TYPE,
            name,
            port=self.port,
            properties=properties,
            server=f"qpc-{self.fingerprint[:20]}.local.",
            parsed_addresses=list(self.addresses),
        )

    # --- browsing -------------------------------------------------------------------------

    def _on_service_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if self._zc is None or (self._info is not None and name == self._info.name):
            return
        generation = self._generation.get(name, 0) + 1
        self._generation[name] = generation
        if state_change is ServiceStateChange.Removed:
            self._generation.pop(name, None)
            self._emit(self.table.remove(name))
            return
        task = self._runtime.spawn(self._resolve(name, generation))
        self._tasks[task] = None
        task.add_done_callback(lambda done: self._tasks.pop(done, None))

    async def _resolve(self, name: str, generation: int) -> None:
        zc = self._zc
        if zc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zc.zeroconf, self._resolve_timeout_ms):
            log.debug("mDNS service %s did not resolve", name)
            return
        if self._generation.get(name) != generation or self._zc is None:
            return
        self._observe(name, info)

    def _observe(self, name: str, info: AsyncServiceInfo) -> None:
        props = info.properties
        fingerprint = (props.get(b"fp") or b"").decode("ascii", errors="replace")
        if not is_fingerprint(fingerprint) or info.port is None:
            log.info("ignoring mDNS service %s: no usable fingerprint or port", name)
            return
        allow_ipv6 = self.ip_version is not IPVersion.V4Only
        addresses = [a for a in info.parsed_addresses() if usable_address(a, allow_ipv6=allow_ipv6)]
        if not addresses:
            return
        version = (props.get(b"v") or b"").decode("ascii", errors="replace")[:16]
        event = self.table.observe(
            name,
            fingerprint=fingerprint,
            name=clean_name(props.get(b"name") or b""),
            addresses=addresses,
            port=info.port,
            version=clean_name(version),
            now_ms=self._clock_ms(),
        )
        self._emit(event)

    def _emit(self, event: LanEvent | None) -> None:
        if event is None:
            return
        if self.events.full():
            # Nobody is draining the queue: the oldest event is the least useful.
            with contextlib.suppress(asyncio.QueueEmpty):
                self.events.get_nowait()
            self.events_dropped += 1
        self.events.put_nowait(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("LAN event callback failed")

    # --- what the router reports back -----------------------------------------------------

    def lookup(self, fingerprint: str) -> list[LanPeer]:
        """Unrefuted entries advertising ``fingerprint``, confirmed ones first."""
        return self.table.lookup(fingerprint)

    def confirm(
        self, fingerprint: str, proven_identity_key: bytes, address: Address | None = None
    ) -> list[LanEvent]:
        """Report what a handshake proved; see :meth:`LanTable.confirm`."""
        events = self.table.confirm(fingerprint, proven_identity_key, address)
        for event in events:
            self._emit(event)
        return events

    def refute(self, fingerprint: str, address: Address | None = None) -> list[LanEvent]:
        """Report a node that could not prove the key it advertises; see
        :meth:`LanTable.refute`."""
        events = self.table.refute(fingerprint, address)
        for event in events:
            self._emit(event)
        return events
