"""An in-memory datagram network for simulated nodes: latency, loss, bandwidth, partitions,
NAT filtering and host crashes, with counters of everything that went on the wire.

Hosts are IP address strings; each host binds its own ports. A datagram is decided at send
time (sender crashed? partitioned? lost? uplink queue full?) and, if it survives, scheduled
with ``loop.call_at`` to arrive after the uplink's serialization delay plus the link's
latency — never synchronously, because rpcudp sends a request before it registers the future
that waits for the reply. At arrival the receiver is checked again (crashed? anyone bound?
NAT filter?), since those can change while a datagram is in flight. Partitions are judged at
send time only: what was already on the wire when a link was cut still arrives, as on a real
network.

**Draws are keyed by the datagram, not by the order of sends.** Loss and latency for a datagram
come from a hash of (seed, send time, source, destination, bytes) rather than from one shared
stream. Code under simulation often sends several datagrams in the same instant in an order that
depends on memory addresses (iterating a ``set`` of connection objects, as
``Endpoint._protocols()`` does on close); with a shared stream that order would decide which
datagram is lost and the run would differ between processes. Keyed draws also mean that adding
a node leaves every other datagram's fate alone. The one quirk: byte-identical datagrams sent on
the same link in the same instant share one fate.

What is *not* modelled: address/port translation (a host behind NAT keeps its own address;
only inbound filtering is modelled), downlink bandwidth, reordering beyond what random latency
gives, duplication, ICMP errors (``error_received`` is never called), MTU limits.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import hashlib
import math
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from node.core.addresses import Address

__all__ = [
    "DropCause",
    "Fixed",
    "LatencyModel",
    "LinkProfile",
    "LogNormal",
    "NatConfig",
    "SimDatagramTransport",
    "SimHost",
    "SimNetwork",
    "TrafficCounters",
    "Uniform",
]

EPHEMERAL_PORTS = (49152, 65535)  # RFC 6335 §6: where port 0 binds land, in order
WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 -- names, not a bind


# --- latency ---------------------------------------------------------------------------------


class LatencyModel(Protocol):
    """One-way latency in seconds, drawn per datagram from the network's seeded RNG."""

    def sample(self, rng: random.Random) -> float: ...


@dataclass(frozen=True)
class Fixed:
    seconds: float

    def sample(self, rng: random.Random) -> float:
        return self.seconds


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class LogNormal:
    """Heavy-tailed latency as measured on the internet: ``median`` seconds, shape ``sigma``,
    never below ``floor`` (propagation delay)."""

    median: float
    sigma: float = 0.5
    floor: float = 0.0

    def sample(self, rng: random.Random) -> float:
        return max(self.floor, rng.lognormvariate(math.log(self.median), self.sigma))


@dataclass(frozen=True)
class LinkProfile:
    """How a link treats each datagram: one-way ``latency`` and independent ``loss``
    probability."""

    latency: LatencyModel = Fixed(0.001)
    loss: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss is a probability from 0 to 1")


# --- hosts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NatConfig:
    """Endpoint-dependent filtering (RFC 4787 §5, "address and port-dependent"): an inbound
    datagram from ``R`` to local port ``p`` passes only if ``p`` sent to ``R`` within the last
    ``timeout`` seconds (RFC 4787 REQ-5 asks ≥ 120 s; real boxes often keep 30 s)."""

    timeout: float = 30.0


class DropCause(enum.Enum):
    LOSS = "loss"
    PARTITION = "partition"
    NAT = "nat"
    QUEUE = "queue"
    NO_LISTENER = "no-listener"
    CRASHED = "crashed"


@dataclass
class TrafficCounters:
    """Datagrams and bytes: ``sent`` counts every datagram handed to the network (what went on
    the wire, dropped or not); ``delivered`` those a protocol received; ``dropped`` by cause."""

    sent_datagrams: int = 0
    sent_bytes: int = 0
    delivered_datagrams: int = 0
    delivered_bytes: int = 0
    dropped_datagrams: Counter[DropCause] = field(default_factory=Counter)
    dropped_bytes: Counter[DropCause] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        """A flat, comparable snapshot (for determinism checks and CSV rows)."""
        flat = {
            "sent_datagrams": self.sent_datagrams,
            "sent_bytes": self.sent_bytes,
            "delivered_datagrams": self.delivered_datagrams,
            "delivered_bytes": self.delivered_bytes,
        }
        for cause in DropCause:
            flat[f"dropped_datagrams_{cause.value}"] = self.dropped_datagrams[cause]
            flat[f"dropped_bytes_{cause.value}"] = self.dropped_bytes[cause]
        return flat


@dataclass
class SimHost:
    """One simulated machine. ``kind`` names its class for per-class link profiles.

    :param uplink_bps: bits per second out of the host (None: unlimited, no queue).
    :param queue_bytes: what the uplink buffers before it drops (tail drop).
    """

    address: str
    kind: str = "default"
    uplink_bps: float | None = None
    queue_bytes: int = 256 * 1024
    nat: NatConfig | None = None
    crashed: bool = False
    counters: TrafficCounters = field(default_factory=TrafficCounters)
    ports: dict[int, SimDatagramTransport] = field(default_factory=dict)
    _next_port: int = EPHEMERAL_PORTS[0]
    _uplink_free_at: float = 0.0
    # (local port, remote address) -> last time this host sent there, for NAT filtering.
    _nat_sent: dict[tuple[int, Address], float] = field(default_factory=dict)
    _nat_sweep_at: int = 1024

    def note_outbound(self, port: int, remote: Address, now: float) -> None:
        """Open (or refresh) the NAT filter for ``remote`` at local ``port``."""
        bindings = self._nat_sent
        bindings[(port, remote)] = now
        if len(bindings) > self._nat_sweep_at and self.nat is not None:
            # Forget expired bindings now and then, so a long run's table stays bounded.
            oldest = now - self.nat.timeout
            for key in [k for k, t in bindings.items() if t < oldest]:
                del bindings[key]
            self._nat_sweep_at = max(1024, 2 * len(bindings))

    def allocate_port(self) -> int:
        low, high = EPHEMERAL_PORTS
        for _ in range(high - low + 1):
            port = self._next_port
            self._next_port = port + 1 if port < high else low
            if port not in self.ports:
                return port
        raise OSError(98, f"no free port on simulated host {self.address}")


# --- the network -----------------------------------------------------------------------------


class SimNetwork:
    """Hosts, links between them and the datagrams in flight.

    :param seed: keys the per-datagram draws of latency and loss (see the module docstring).
    :param default_link: the profile for host pairs with nothing more specific.
    :param trace: keep a digest of every datagram sent (time, addresses, bytes), so two runs
        can be compared bit for bit with :attr:`trace_digest`. It is a sum of per-datagram
        hashes: the same datagrams at the same times, in whatever order within an instant.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        default_link: LinkProfile | None = None,
        trace: bool = False,
    ) -> None:
        self._key = hashlib.sha256(f"simulations.network:{seed}".encode()).digest()[:32]
        self._draws = _DigestDraws()
        self.default_link = default_link or LinkProfile()
        self.hosts: dict[str, SimHost] = {}
        self.names: dict[str, list[str]] = {}
        self.totals = TrafficCounters()
        self._class_links: dict[frozenset[str], LinkProfile] = {}
        self._pair_links: dict[frozenset[str], LinkProfile] = {}
        self._partitions: dict[str, dict[str, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Arrivals run in a context of their own; the receiving transport then enters its
        # node's context (see SimDatagramTransport), never the sender's.
        self._neutral = contextvars.Context()
        self._trace: int | None = 0 if trace else None
        self._traced = 0

    # --- building ---------------------------------------------------------------------------

    def add_host(
        self,
        address: str,
        *,
        kind: str = "default",
        uplink_bps: float | None = None,
        queue_bytes: int = 256 * 1024,
        nat: NatConfig | None = None,
    ) -> SimHost:
        if address in self.hosts:
            raise ValueError(f"host {address} already exists")
        host = SimHost(address, kind, uplink_bps, queue_bytes, nat)
        self.hosts[address] = host
        return host

    def host(self, address: str) -> SimHost:
        try:
            return self.hosts[address]
        except KeyError:
            raise KeyError(f"no simulated host {address}") from None

    def set_link(self, kind_a: str, kind_b: str, profile: LinkProfile) -> None:
        """The profile between any host of class ``kind_a`` and any of ``kind_b`` (symmetric)."""
        self._class_links[frozenset((kind_a, kind_b))] = profile

    def set_link_between(self, host_a: str, host_b: str, profile: LinkProfile) -> None:
        """The profile between two particular hosts (overrides their classes; symmetric)."""
        self._pair_links[frozenset((host_a, host_b))] = profile

    def link(self, src: str, dst: str) -> LinkProfile:
        profile = self._pair_links.get(frozenset((src, dst)))
        if profile is not None:
            return profile
        a, b = self.hosts.get(src), self.hosts.get(dst)
        if a is not None and b is not None:
            profile = self._class_links.get(frozenset((a.kind, b.kind)))
        return profile or self.default_link

    def add_name(self, name: str, addresses: Iterable[str]) -> None:
        """A name ``resolve_host`` will answer (the simulation's DNS)."""
        self.names[name] = list(addresses)

    # --- partitions -------------------------------------------------------------------------

    def partition(self, name: str, *groups: Iterable[str]) -> None:
        """Cut every link between hosts of different ``groups`` until :meth:`heal` ``(name)``.

        Hosts in no group keep all their links. Several named partitions may hold at once.
        """
        membership: dict[str, int] = {}
        for index, group in enumerate(groups):
            for address in group:
                if address in membership:
                    raise ValueError(f"host {address} is in two groups of partition {name}")
                membership[address] = index
        self._partitions[name] = membership

    def heal(self, name: str) -> None:
        self._partitions.pop(name, None)

    def partitioned(self, src: str, dst: str) -> bool:
        for membership in self._partitions.values():
            a, b = membership.get(src), membership.get(dst)
            if a is not None and b is not None and a != b:
                return True
        return False

    # --- crashes ----------------------------------------------------------------------------

    def crash(self, address: str) -> None:
        """The host goes down: all its transports vanish and nothing reaches or leaves it."""
        host = self.host(address)
        host.crashed = True
        for transport in list(host.ports.values()):
            transport.abort()
        host._nat_sent.clear()
        host._uplink_free_at = 0.0

    def restart(self, address: str) -> None:
        """The host is up again, with no ports bound (its processes start afresh)."""
        self.host(address).crashed = False

    # --- binding ----------------------------------------------------------------------------

    def bind(
        self,
        address: str,
        port: int,
        protocol: asyncio.DatagramProtocol,
        *,
        context: contextvars.Context | None = None,
    ) -> SimDatagramTransport:
        """Bind ``protocol`` at ``(address, port)`` (0: the host's next free port) and call its
        ``connection_made``. Raises :class:`OSError` like a socket would."""
        host = self.hosts.get(address)
        if host is None:
            raise OSError(99, f"cannot bind {address}: no such simulated host")  # EADDRNOTAVAIL
        if host.crashed:
            raise OSError(100, f"cannot bind on {address}: the host is down")  # ENETDOWN
        if port == 0:
            port = host.allocate_port()
        elif port in host.ports:
            raise OSError(98, f"{address}:{port} is already bound")  # EADDRINUSE
        if not 0 < port <= 65535:
            raise OSError(22, f"bad port {port}")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if any(h.ports for h in self.hosts.values()):
                raise RuntimeError("a simulated network runs on one event loop at a time")
            self._loop = loop
        transport = SimDatagramTransport(self, host, port, protocol, context)
        host.ports[port] = transport
        transport._run(protocol.connection_made, transport)
        return transport

    def _unbind(self, transport: SimDatagramTransport) -> None:
        host = transport.host
        if host.ports.get(transport.port) is transport:
            del host.ports[transport.port]

    # --- moving datagrams -------------------------------------------------------------------

    def _drop(self, host: SimHost, cause: DropCause, size: int) -> None:
        for counters in (host.counters, self.totals):
            counters.dropped_datagrams[cause] += 1
            counters.dropped_bytes[cause] += size

    def send(self, transport: SimDatagramTransport, data: bytes, dst: Address) -> None:
        loop = self._loop
        assert loop is not None
        src_host = transport.host
        size = len(data)
        now = loop.time()
        for counters in (src_host.counters, self.totals):
            counters.sent_datagrams += 1
            counters.sent_bytes += size
        profile = self.link(src_host.address, dst[0])
        src = (src_host.address, transport.port)
        keyed = (
            self._trace is not None or profile.loss > 0.0 or not isinstance(profile.latency, Fixed)
        )
        if keyed:
            digest = self._digest(now, src, dst, data)
            if self._trace is not None:
                self._trace = (self._trace + int.from_bytes(digest, "big")) % _TRACE_MODULUS
                self._traced += 1
            self._draws.reset(digest)
        if src_host.crashed:
            self._drop(src_host, DropCause.CRASHED, size)
            return
        if src_host.nat is not None:
            src_host.note_outbound(transport.port, dst, now)
        if self.partitioned(src_host.address, dst[0]):
            self._drop(src_host, DropCause.PARTITION, size)
            return
        depart = now
        if src_host.uplink_bps is not None:
            # A FIFO uplink: the backlog is what is still to be serialized when this datagram
            # joins it. Tail drop when it would overflow the queue.
            start = max(now, src_host._uplink_free_at)
            backlog = (start - now) * src_host.uplink_bps / 8
            if backlog + size > src_host.queue_bytes:
                self._drop(src_host, DropCause.QUEUE, size)
                return
            depart = start + size * 8 / src_host.uplink_bps
            src_host._uplink_free_at = depart
        # Loss first, then latency, both from this datagram's own draws.
        if profile.loss > 0.0 and self._draws.random() < profile.loss:
            self._drop(src_host, DropCause.LOSS, size)
            return
        latency = max(0.0, profile.latency.sample(self._draws))
        loop.call_at(
            depart + latency, self._arrive, src_host, src, dst, data, context=self._neutral
        )

    def _arrive(self, src_host: SimHost, src: Address, dst: Address, data: bytes) -> None:
        size = len(data)
        host = self.hosts.get(dst[0])
        if host is None:
            self._drop(src_host, DropCause.NO_LISTENER, size)
            return
        if host.crashed:
            self._drop(src_host, DropCause.CRASHED, size)
            return
        transport = host.ports.get(dst[1])
        if transport is None or transport.is_closing():
            self._drop(src_host, DropCause.NO_LISTENER, size)
            return
        if host.nat is not None:
            assert self._loop is not None
            sent_at = host._nat_sent.get((dst[1], src))
            if sent_at is None or self._loop.time() - sent_at > host.nat.timeout:
                self._drop(src_host, DropCause.NAT, size)
                return
        for counters in (host.counters, self.totals):
            counters.delivered_datagrams += 1
            counters.delivered_bytes += size
        transport._run(transport.protocol.datagram_received, data, src)

    def _digest(self, now: float, src: Address, dst: Address, data: bytes) -> bytes:
        h = hashlib.blake2b(data, digest_size=64, key=self._key)
        h.update(struct.pack("!dHH", now, src[1], dst[1]))
        h.update(f"{src[0]}>{dst[0]}".encode())
        return h.digest()

    @property
    def trace_digest(self) -> str:
        """Hex digest of every datagram sent so far, with their count (``trace=True`` only)."""
        if self._trace is None:
            raise RuntimeError("the network was built without trace=True")
        return f"{self._traced}:{self._trace:064x}"


_TRACE_MODULUS = 1 << 512


class _DigestDraws(random.Random):
    """A ``random.Random`` whose numbers come from one datagram's digest (and, if a latency
    model wants more than eight, from hashes of it), so each datagram has its own draws.

    ``random()`` is what ``uniform``, ``lognormvariate`` and friends are built on.
    """

    def __init__(self) -> None:
        super().__init__(0)
        self._block = b""
        self._offset = 0

    def reset(self, digest: bytes) -> None:
        self._block = digest
        self._offset = 0

    def random(self) -> float:
        if self._offset + 8 > len(self._block):
            self._block = hashlib.blake2b(self._block).digest()
            self._offset = 0
        chunk = self._block[self._offset : self._offset + 8]
        self._offset += 8
        return (int.from_bytes(chunk, "big") >> 11) * (1.0 / (1 << 53))  # 53 bits, as CPython


class SimDatagramTransport(asyncio.DatagramTransport):
    """What a protocol bound on the simulated network sees in place of a UDP socket.

    Protocol callbacks run in ``context`` (the binding node's), so what they schedule and the
    randomness they draw belong to that node.
    """

    def __init__(
        self,
        network: SimNetwork,
        host: SimHost,
        port: int,
        protocol: asyncio.DatagramProtocol,
        context: contextvars.Context | None,
    ) -> None:
        super().__init__()
        self.network = network
        self.host = host
        self.port = port
        self.protocol = protocol
        self._context = context
        self._closing = False

    def _run(self, fn: Callable[..., object], *args: Any) -> None:
        if self._context is None:
            fn(*args)
        else:
            self._context.run(fn, *args)

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if addr is None:
            raise ValueError("a simulated datagram transport is unconnected: give an address")
        if self._closing:
            return  # like a closed socket's transport: the datagram never leaves
        self.network.send(self, bytes(data), (str(addr[0]), int(addr[1])))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return (self.host.address, self.port)
        if name == "peername":
            return None
        if name == "socket":
            return None  # there is no socket; callers that need one cannot be simulated
        if name == "family":
            return socket.AF_INET6 if ":" in self.host.address else socket.AF_INET
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._shut()

    def abort(self) -> None:
        self._shut()

    def _shut(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.network._unbind(self)
        loop = self.network._loop
        assert loop is not None
        # asyncio calls connection_lost soon after close, never inside it.
        loop.call_soon(self._run, self.protocol.connection_lost, None, context=self._neutral())

    def _neutral(self) -> contextvars.Context:
        return self.network._neutral

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def is_reading(self) -> bool:
        return not self._closing

    def pause_reading(self) -> None:
        raise NotImplementedError("simulated transports do not pause")

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.DatagramProtocol)
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def __repr__(self) -> str:
        return f"<SimDatagramTransport {self.host.address}:{self.port}>"
