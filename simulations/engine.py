"""One simulation run: the real ``Node``, relay and DHT code on a virtual clock and an
in-memory network, driven by a :class:`~simulations.scenario.Scenario`.

What is real: every node is a :class:`node.app.node.Node` (router, outbox, inbox, committer,
real MLS with the X-Wing suite, real QUIC with mutual TLS over the simulated datagrams), every
relay a :class:`relay.service.RelayService` behind a real :class:`Endpoint`, every DHT node a
:class:`discovery.dht.DhtNode`. What is not, and the report says so (``fidelity``): node stores
and MLS state live in memory (``fidelity.disk = "memory"``), relay mailboxes in SQLite files on
a RAM disk where one exists; a node's CPU time costs no simulated time; groups are formed with
KeyPackages handed over out of band (as an invite link or a relay directory would); mDNS is not
simulated (zeroconf opens its own sockets), so a node knows its contacts' addresses from the
start, as it would after discovery.

How a run goes: relays start, then nodes (each on its own host, behind NAT if the scenario says
so); groups form; members send messages as Poisson processes; committers change membership;
nodes come and go; partitions cut and heal. Workload and churn stop ``drain`` seconds before
the end and every absent node comes back, so what is still undelivered at the end is lost, and
each loss is classified by what the run's state shows at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discovery.dht import DhtConfig, DhtNode
from discovery.records import OwnRecord
from node.app.node import ChatMessage, Node
from node.app.presence import Presence, PresenceConfig
from node.app.router import RelayInfo
from node.core import wire
from node.core.addresses import Address
from node.core.errors import NodeError
from node.core.hybrid_kem import SEED_SIZE, HybridPrivateKey
from node.core.identity import Identity
from node.mls import MlsClient
from node.transport.connection import Caller
from node.transport.endpoint import Endpoint, EndpointConfig
from relay.service import RelayService
from relay.store import MailboxStore
from simulations.determinism import seeded_libraries
from simulations.loop import VirtualLoop, run_simulated
from simulations.metrics import Lookup, Metrics, Sent
from simulations.network import Fixed, LinkProfile, LogNormal, NatConfig, SimNetwork, Uniform
from simulations.runtime import SimRuntime, derive_seed
from simulations.scenario import Latency, Link, Scenario, Session

__all__ = ["Progress", "RunResult", "run_scenario"]

log = logging.getLogger(__name__)

NODE_PORT, DHT_PORT, RELAY_PORT = 4433, 4434, 7700
FORK_LABEL = "quicnprotochat simulation fork check"
# Simulated KeyPackages begin at the simulated epoch (in the past) and must still be valid by
# the system clock, which OpenMLS checks too (node.mls.MlsClient).
KEY_PACKAGE_LIFETIME_S = 50 * 365 * 24 * 3600
Progress = Callable[[float], None]  # called with the simulated time reached


@dataclass
class RunResult:
    scenario: Scenario
    simulated_s: float
    metrics: dict[str, Any]
    fidelity: dict[str, str]
    lost: list[dict[str, Any]]  # every lost delivery with its cause
    latencies_ms: list[float]
    lookups: list[Lookup]
    network: dict[str, int]
    # Every datagram sent up to the end (time, addresses, bytes), as SimNetwork.trace_digest:
    # two runs of one scenario and seed must agree on it, not only on the counts.
    wire_digest: str = ""


@dataclass
class _Relay:
    info: RelayInfo
    runtime: SimRuntime
    store: MailboxStore
    endpoint: Endpoint


@dataclass
class _Member:
    """One simulated person's node across its restarts."""

    index: int
    host: str
    identity: Identity
    relay: RelayInfo | None
    node: Node
    runtime: SimRuntime
    presence: Presence | None = None
    online: bool = True
    groups: dict[int, bytes] = field(default_factory=dict)  # scenario group -> group id


def _latency(spec: Latency) -> Fixed | Uniform | LogNormal:
    if spec.kind == "fixed":
        return Fixed(spec.ms / 1000)
    if spec.kind == "uniform":
        return Uniform(spec.low_ms / 1000, spec.high_ms / 1000)
    return LogNormal(spec.median_ms / 1000, spec.sigma)


def _link(spec: Link) -> LinkProfile:
    return LinkProfile(latency=_latency(spec.latency), loss=spec.loss_share)


def _draw(rng: random.Random, session: Session) -> float:
    if session.kind == "exponential":
        return rng.expovariate(0.6931471805599453 / session.median_s)  # median = ln 2 / rate
    return rng.lognormvariate(0.0, session.sigma) * session.median_s


def drain_seconds(duration_s: float) -> float:
    """How long before the end sending and churn stop, so what is in flight can land."""
    return min(300.0, 0.2 * duration_s)


def node_address(index: int) -> str:
    n = index + 1
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def relay_address(index: int) -> str:
    return f"10.255.255.{index + 1}"


class _Run:
    def __init__(self, scenario: Scenario, progress: Progress | None, workdir: Path) -> None:
        self.s = scenario
        self.progress = progress
        self.workdir = workdir
        self.rng = random.Random(derive_seed(scenario.seed, "engine"))  # noqa: S311 -- seeded
        wan = _link(scenario.network.wan)
        self.network = SimNetwork(seed=scenario.seed, default_link=wan, trace=True)
        self.metrics = Metrics()
        self.relays: list[_Relay] = []
        self.members: list[_Member] = []
        self.group_ids: list[bytes] = []
        self.next_message = 0
        duration = scenario.duration_s
        self.drain_s = drain_seconds(duration)
        self.stop_s = duration - self.drain_s  # workload and churn end here
        self.tasks: list[asyncio.Task[None]] = []
        self.changes: list[tuple[int, float, int]] = []  # (group, commit time, epoch)
        self.creators: list[_Member] = []  # each group's committer
        self.index_of: dict[bytes, int] = {}
        self.senders: set[tuple[int, int]] = set()
        self.result: RunResult | None = None  # taken when the run ends, before any cleanup

    # --- building ---------------------------------------------------------------------------

    def _runtime(self, host: str, *labels: str) -> SimRuntime:
        return SimRuntime(self.network, host, seed=derive_seed(self.s.seed, *labels))

    async def _start_relays(self) -> None:
        for r in range(self.s.relays.count):
            host = relay_address(r)
            self.network.add_host(host, kind="relay")
            runtime = self._runtime(host, "relay", str(r))
            identity = Identity.from_seed(runtime.random_bytes(32))
            path = self.workdir / f"relay-{r}.sqlite3"
            store = await runtime.run_blocking(functools.partial(MailboxStore, path))
            service = RelayService(store, runtime, 1 << 20)
            handle = self._counting(service)
            config = EndpointConfig(max_frame=1 << 20, call_deadline=40.0)
            endpoint = Endpoint(identity, handle, runtime, config)
            address = await runtime.spawn(endpoint.start(host, RELAY_PORT))
            info = RelayInfo(address, identity.public_key)
            self.relays.append(_Relay(info, runtime, store, endpoint))

    def _counting(self, service: RelayService) -> Any:
        metrics = self.metrics
        stored = [0]

        async def handle(caller: Caller, request: wire.Request) -> wire.Response:
            response = await service.handle(caller, request)
            if isinstance(request, wire.Deliver) and isinstance(response, wire.DeliverResult):
                accepted = set(response.accepted)
                taken = [e for e in request.envelopes if e.id in accepted]
                metrics.relay_envelopes += len(taken)
                metrics.relay_bytes += sum(len(e.payload) for e in taken)
                stored[0] += len(taken)
                metrics.relay_peak_stored = max(metrics.relay_peak_stored, stored[0])
            elif isinstance(response, wire.AckResult):
                stored[0] -= response.removed
            return response

        return handle

    def _add_hosts(self) -> list[str]:
        net, n = self.s.network, self.s.network.nodes
        unreachable = set(self.rng.sample(range(n), round(net.unreachable_share * n)))
        lan_of: dict[int, int] = {}
        if net.lans:
            on_lan = sorted(self.rng.sample(range(n), round(net.lan_share * n)))
            lan_of = {index: k % net.lans for k, index in enumerate(on_lan)}
        lan_profile = _link(net.lan)
        for lan in range(net.lans):
            self.network.set_link(f"lan{lan}", f"lan{lan}", lan_profile)
        uplink = None if net.uplink_kbps is None else net.uplink_kbps * 1000
        nat = NatConfig(timeout=net.nat_timeout_s)
        hosts = []
        for index in range(n):
            host = node_address(index)
            kind = f"lan{lan_of[index]}" if index in lan_of else "wan"
            self.network.add_host(
                host, kind=kind, uplink_bps=uplink, nat=nat if index in unreachable else None
            )
            hosts.append(host)
        return hosts

    async def _start_members(self) -> None:
        hosts = self._add_hosts()
        for index, host in enumerate(hosts):
            runtime = self._runtime(host, "node", str(index), "life", "0")
            identity = Identity.from_seed(
                random.Random(derive_seed(self.s.seed, "identity", str(index))).randbytes(32)  # noqa: S311
            )
            relay = self.relays[index % len(self.relays)].info if self.relays else None
            mls = MlsClient(identity, runtime, key_package_lifetime_s=KEY_PACKAGE_LIFETIME_S)
            node = Node(identity, runtime, name=f"n{index}", relay=relay, mls=mls)
            member = _Member(index, host, identity, relay, node, runtime)
            self.index_of[identity.public_key] = index
            node.on_message = self._on_message(member)
            self.members.append(member)
        for member in self.members:
            await self._start(member)
        for member in self.members:
            for other in self.members:
                if other is not member:
                    self._introduce(member, other)

    def _on_message(self, member: _Member) -> Callable[[ChatMessage], None]:
        metrics, loop = self.metrics, asyncio.get_running_loop()

        def received(message: ChatMessage) -> None:
            message_id = message.text.split("|", 1)[0]
            metrics.message_arrived(message_id, member.index, loop.time(), message.path.value)

        return received

    def _introduce(self, member: _Member, other: _Member) -> None:
        """What an invite link says: who ``other`` is, where it listens, which relay it reads."""
        node = member.node
        node.contacts.add(other.identity.public_key, f"n{other.index}", (other.host, NODE_PORT))
        if other.relay is not None:
            node.router.peer_relays[other.identity.public_key] = other.relay

    async def _start(self, member: _Member) -> None:
        await member.runtime.spawn(member.node.start(member.host, NODE_PORT))
        if self.s.dht.enabled:
            member.presence = await self._presence(member)
        member.online = True

    async def _presence(self, member: _Member) -> Presence:
        bootstrap: list[Address] = []
        if member.index:
            bootstrap = [(self.members[0].host, DHT_PORT)]
        presence = Presence(
            member.node,
            PresenceConfig(mdns=False, dht=True, dht_port=DHT_PORT, bootstrap=bootstrap),
        )
        await member.runtime.spawn(presence.start())
        return presence

    # --- groups -----------------------------------------------------------------------------

    async def _form_groups(self) -> None:
        w = self.s.workload
        for g in range(w.groups):
            chosen = self.rng.sample(self.members, w.group_size)
            creator = chosen[0]
            self.creators.append(creator)
            group_id = await creator.runtime.spawn(creator.node.create_group())
            self.group_ids.append(group_id)
            creator.groups[g] = group_id
            key_packages = [await m.node.run(m.node.mls.key_package) for m in chosen[1:]]
            try:
                await creator.runtime.spawn(creator.node.membership.add(group_id, key_packages))
            except NodeError as exc:
                log.warning("group %d did not form: %s", g, exc)
            for m in chosen[1:]:
                m.groups[g] = group_id

    def _start_sender(self, member: _Member, group: int) -> None:
        if (member.index, group) not in self.senders:
            self.senders.add((member.index, group))
            self.tasks.append(member.runtime.spawn(self._sender(member, group)))

    async def _sender(self, member: _Member, group: int) -> None:
        w, loop = self.s.workload, asyncio.get_running_loop()
        rng = random.Random(derive_seed(self.s.seed, "sends", str(member.index), str(group)))  # noqa: S311
        await asyncio.sleep(max(0.0, w.start_s - loop.time()))
        while True:
            await asyncio.sleep(rng.expovariate(1.0 / w.message_interval_s))
            if loop.time() >= self.stop_s:
                return
            group_id = member.groups.get(group)
            mls_group = member.node.groups.get(group_id) if group_id is not None else None
            if not member.online or mls_group is None or not mls_group.is_active:
                continue
            message_id = f"m{self.next_message}"
            self.next_message += 1
            text = (message_id + "|").ljust(w.message_bytes, "x")
            recipients = frozenset(
                self.index_of[k] for k in mls_group.members() if k != member.identity.public_key
            )
            self.metrics.message_sent(
                Sent(message_id, group, member.index, loop.time(), recipients)
            )
            try:
                report = await member.node.send_text(group_id, text)  # type: ignore[arg-type]
            except NodeError as exc:
                self.metrics.send_failures[type(exc).__name__] += 1
                continue
            for why in report.failed.values():
                self.metrics.send_failures[why.split(":")[0][:60]] += 1

    async def _membership_changes(self, group: int) -> None:
        w, loop = self.s.workload, asyncio.get_running_loop()
        rng = random.Random(derive_seed(self.s.seed, "changes", str(group)))  # noqa: S311
        creator = self.creators[group]
        group_id = self.group_ids[group]
        await asyncio.sleep(max(0.0, w.start_s - loop.time()))
        add_next = False
        while True:
            await asyncio.sleep(rng.expovariate(1.0 / w.membership_change_interval_s))
            if loop.time() >= self.stop_s:
                return
            mls_group = creator.node.groups.get(group_id)
            if not creator.online or mls_group is None:
                continue
            in_group = set(mls_group.members())
            try:
                if add_next:
                    outside = [m for m in self.members if m.identity.public_key not in in_group]
                    if not outside:
                        continue
                    joiner = rng.choice(outside)
                    kp = await joiner.node.run(joiner.node.mls.key_package)
                    await creator.node.membership.add(group_id, [kp])
                    joiner.groups[group] = group_id
                    self._start_sender(joiner, group)
                else:
                    others = sorted(k for k in in_group if k != creator.identity.public_key)
                    if len(others) < 2:
                        add_next = True
                        continue
                    leaving = self.members[self.index_of[rng.choice(others)]]
                    await creator.node.remove(group_id, [leaving.identity.public_key])
                    leaving.groups.pop(group, None)
            except NodeError as exc:
                log.info("a membership change failed: %s", exc)
                continue
            add_next = not add_next
            self.metrics.membership_changes += 1
            self.changes.append((group, loop.time(), creator.node.groups[group_id].epoch))

    async def _watch_convergence(self) -> None:
        """Every half second: has each change reached every current member of its group?"""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.5)
            waiting = []
            for group, at, epoch in self.changes:
                group_id = self.group_ids[group]
                members = self.creators[group].node.groups[group_id].members()
                done = all(
                    (g := self.members[self.index_of[k]].node.groups.get(group_id)) is not None
                    and g.epoch >= epoch
                    for k in members
                )
                if done:
                    self.metrics.convergence_s.append(loop.time() - at)
                else:
                    waiting.append((group, at, epoch))
            self.changes = waiting

    # --- churn and partitions ---------------------------------------------------------------

    async def _churn(self, member: _Member) -> None:
        churn, loop = self.s.churn, asyncio.get_running_loop()
        assert churn is not None
        rng = random.Random(derive_seed(self.s.seed, "churn", str(member.index)))  # noqa: S311
        while True:
            # Every life ends by the time churn stops, so the node is up for the drain.
            await asyncio.sleep(min(_draw(rng, churn.session), max(0.0, self.stop_s - loop.time())))
            if loop.time() >= self.stop_s:
                return
            crash = rng.random() < churn.crash_share
            await self._depart(member, crash=crash)
            away = _draw(rng, churn.downtime)
            await asyncio.sleep(min(away, max(0.0, self.stop_s - loop.time())))
            await self._return(member)

    async def _depart(self, member: _Member, *, crash: bool) -> None:
        self.metrics.departures["crash" if crash else "leave"] += 1
        member.online = False
        if member.presence is not None:
            await member.runtime.spawn(member.presence.stop())
            member.presence = None
        if not crash:
            await member.runtime.spawn(member.node.endpoint.close())  # goodbyes to its peers
        member.node.go_offline()
        self.network.crash(member.host)

    async def _return(self, member: _Member) -> None:
        if member.online:
            return
        self.network.restart(member.host)
        await self._start(member)

    async def _partitions(self) -> None:
        loop = asyncio.get_running_loop()
        events = []
        for k, p in enumerate(self.s.partitions):
            events.append((p.at_s, "cut", k))
            events.append((p.heal_s, "heal", k))
        for at, what, k in sorted(events):
            await asyncio.sleep(max(0.0, at - loop.time()))
            if what == "heal":
                self.network.heal(f"p{k}")
                continue
            hosts = [m.host for m in self.members]
            self.rng.shuffle(hosts)
            split = round(self.s.partitions[k].split_share * len(hosts))
            relays = [relay_address(r) for r in range(len(self.relays))]
            self.network.partition(f"p{k}", hosts[:split] + relays, hosts[split:])

    # --- the run ----------------------------------------------------------------------------

    async def main(self) -> float:
        loop = asyncio.get_running_loop()
        if self.progress is not None:
            self.tasks.append(loop.create_task(self._report_progress()))
        if self.s.dht.only:
            await self._dht_only()
            self.metrics.wire_bytes = self.network.totals.sent_bytes
            self.metrics.wire_datagrams = self.network.totals.sent_datagrams
            self._freeze(loop.time())
            return loop.time()
        await self._start_relays()
        await self._start_members()
        await self._form_groups()
        for member in self.members:
            for group in sorted(member.groups):
                self._start_sender(member, group)
        if self.s.workload.membership_change_interval_s:
            for group, creator in enumerate(self.creators):
                self.tasks.append(creator.runtime.spawn(self._membership_changes(group)))
            self.tasks.append(loop.create_task(self._watch_convergence()))
        churn: list[asyncio.Task[None]] = []
        if self.s.churn is not None:
            churning = list(self.members)
            self.rng.shuffle(churning)
            for member in churning[: round(self.s.churn.share * len(churning))]:
                churn.append(loop.create_task(self._churn(member)))
        if self.s.partitions:
            self.tasks.append(loop.create_task(self._partitions()))
        if self.s.dht.lookups:
            self.tasks.append(loop.create_task(self._lookups_between_members()))
        await asyncio.sleep(self.stop_s - loop.time())
        await asyncio.gather(*churn)  # each brings its node back as churn stops
        await asyncio.sleep(max(0.0, self.s.duration_s - loop.time()))
        self._check(self.tasks)
        self._finish()
        self._freeze(loop.time())
        return loop.time()

    @staticmethod
    def _check(tasks: list[asyncio.Task[None]]) -> None:
        """A driver task that failed would leave the run quietly wrong: fail it loudly."""
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError("a simulation driver failed") from task.exception()

    async def _report_progress(self) -> None:
        assert self.progress is not None
        loop = asyncio.get_running_loop()
        step = max(1.0, self.s.duration_s / 200)
        while True:
            self.progress(loop.time())
            await asyncio.sleep(step)

    def _finish(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.metrics.wire_bytes = self.network.totals.sent_bytes
        self.metrics.wire_datagrams = self.network.totals.sent_datagrams
        self.metrics.unconverged_changes = len(self.changes)
        if self.s.workload.groups:
            self.metrics.forks = self._forks()
        self._classify_losses()

    def _freeze(self, simulated: float) -> None:
        """The result as the run ends: what leftover tasks do while they are cancelled
        afterwards is not part of it."""
        metrics = self.metrics
        self.result = RunResult(
            scenario=self.s,
            simulated_s=simulated,
            metrics=metrics.summary(),
            fidelity=_fidelity(self.s),
            lost=[
                {"message": m, "recipient": f"n{r}", "cause": cause}
                for (m, r), cause in sorted(metrics.lost.items())
            ],
            latencies_ms=sorted(metrics.latencies_ms()),
            lookups=list(metrics.lookups),
            network=self.network.totals.as_dict(),
            wire_digest=self.network.trace_digest,
        )

    def _forks(self) -> int:
        forks = 0
        for group_id in self.group_ids:
            seen: dict[int, set[bytes]] = {}
            for member in self.members:
                group = member.node.groups.get(group_id)
                if group is None or not group.is_active:
                    continue
                secret = group.exporter(FORK_LABEL, b"", 16)
                seen.setdefault(group.epoch, set()).add(secret)
            forks += sum(len(secrets) - 1 for secrets in seen.values())
        return forks

    def _classify_losses(self) -> None:
        """Why each missing delivery is missing, read from the state the run ends in."""
        queued: dict[int, set[bytes]] = {}
        for member in self.members:
            queued[member.index] = {r for r, _, _ in member.node.store.outbox()}
        for message_id, recipient in self.metrics.undelivered():
            sent = self.metrics.sent[message_id]
            target = self.members[recipient]
            group_id = self.members[sent.sender].groups.get(sent.group) or target.groups.get(
                sent.group
            )
            group = target.node.groups.get(group_id) if group_id is not None else None
            if not target.online:
                cause = "recipient offline at the end"
            elif target.identity.public_key in queued[sent.sender]:
                cause = "still in the sender's outbox"
            elif group is None:
                cause = "recipient never joined the group"
            elif not group.is_active:
                cause = "recipient removed from the group"
            elif target.node.store.pending_incoming():
                cause = "waiting at the recipient for an earlier commit"
            else:
                cause = "dropped by the recipient (epoch or decryption)"
            self.metrics.lost[(message_id, recipient)] = cause

    # --- the DHT -----------------------------------------------------------------------------

    async def _dht_only(self) -> None:
        """DHT nodes alone: join, publish each node's record, crash a share, then look up."""
        dht_cfg = self.s.dht
        config = DhtConfig(ksize=dht_cfg.ksize, alpha=dht_cfg.alpha)
        hosts = self._add_hosts()
        nodes: list[tuple[SimRuntime, DhtNode, Identity]] = []
        for index, host in enumerate(hosts):
            runtime = self._runtime(host, "dht", str(index))
            dht = DhtNode(runtime, config=config)
            await runtime.spawn(dht.start(host, DHT_PORT))
            identity = Identity.from_seed(runtime.random_bytes(32))
            nodes.append((runtime, dht, identity))
        # Nodes join in waves, each through a random node of the waves before it (a DHT grows
        # while it is used; one join at a time would take a simulated day at 10,000 nodes).
        joined = 1
        while joined < len(nodes):
            wave = nodes[joined : joined + max(1, joined // 2)]
            peers = [nodes[self.rng.randrange(joined)][1].address for _ in wave]
            await asyncio.gather(
                *(
                    runtime.spawn(dht.bootstrap([peer], 30.0))
                    for (runtime, dht, _), peer in zip(wave, peers, strict=True)
                )
            )
            joined += len(wave)
        records: list[tuple[Identity, int]] = []
        for start in range(0, len(nodes), 200):
            batch = []
            for runtime, dht, identity in nodes[start : start + 200]:
                envelope_key = HybridPrivateKey(runtime.random_bytes(SEED_SIZE)).public_key
                own = OwnRecord(identity, envelope_key, addresses=[(dht.address[0], NODE_PORT)])
                batch.append(runtime.spawn(dht.publish(own.sign(runtime.wall_ms()))))
                assert own.current is not None
                records.append((identity, own.current.record.sequence))
            await asyncio.gather(*batch)
        order = list(range(len(nodes)))
        self.rng.shuffle(order)
        crashed = set(order[: round(dht_cfg.crashed_share * len(nodes))])
        for index in sorted(crashed):
            nodes[index][0].crash()
        alive = [i for i in range(len(nodes)) if i not in crashed]
        await self._lookups([(nodes[i][0], nodes[i][1]) for i in alive], records, dht_cfg.lookups)

    async def _lookups_between_members(self) -> None:
        await asyncio.sleep(self.s.workload.start_s)
        pairs = [
            (m.runtime, m.presence.dht)
            for m in self.members
            if m.presence is not None and m.presence.dht is not None
        ]
        records = [(m.identity, 0) for m in self.members]
        await self._lookups(pairs, records, self.s.dht.lookups)

    async def _lookups(
        self,
        askers: list[tuple[SimRuntime, DhtNode]],
        records: list[tuple[Identity, int]],
        count: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = self.s.dht.lookup_deadline_s

        async def one(runtime: SimRuntime, dht: DhtNode, identity: Identity, sequence: int) -> None:
            started = loop.time()
            result = await dht.lookup_detailed(identity.public_key, deadline)
            found = result.record
            ok = found is not None and found.record.sequence >= sequence
            self.metrics.lookups.append(
                Lookup(ok, result.hops, result.queried, loop.time() - started)
            )

        batch: list[asyncio.Task[None]] = []
        for _ in range(count):
            runtime, dht = self.rng.choice(askers)
            identity, sequence = self.rng.choice(records)
            batch.append(runtime.spawn(one(runtime, dht, identity, sequence)))
            if len(batch) >= 20:
                await asyncio.gather(*batch)
                batch.clear()
        await asyncio.gather(*batch)


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    shm = Path("/dev/shm")  # noqa: S108 - a RAM disk for the relays, in a private temp dir
    with tempfile.TemporaryDirectory(prefix="qpc-sim-", dir=shm if shm.is_dir() else None) as tmp:
        yield Path(tmp)


def _fidelity(scenario: Scenario) -> dict[str, str]:
    """What the run used for real and what it replaced (the report's ``fidelity``)."""
    dht = "real (kademlia with our extensions)" if scenario.dht.enabled else "off"
    if scenario.dht.only:
        return {
            "nodes": "DHT nodes only (discovery.dht.DhtNode), no messenger nodes",
            "dht": dht,
            "cpu_time": "free (no simulated cost)",
        }
    return {
        "nodes": "real Node, router, outbox, inbox and committer",
        "mls": "real (OpenMLS, X-Wing)",
        "quic_tls": "real (aioquic, mutual TLS)",
        "dht": dht,
        "node_disk": "in memory",
        "relay_disk": "SQLite files on a RAM disk",
        "cpu_time": "free (no simulated cost)",
        "mdns": "not simulated: contacts' addresses are known from the start",
        "key_packages": "handed over out of band when groups form",
    }


def run_scenario(scenario: Scenario, progress: Progress | None = None) -> RunResult:
    """Run ``scenario`` to its end on a fresh virtual loop; deterministic for its seed."""
    with _workdir() as workdir, seeded_libraries(derive_seed(scenario.seed, "libraries")):
        run = _Run(scenario, progress, workdir)
        loop = VirtualLoop()
        run_simulated(run.main(), loop=loop, time_limit=scenario.duration_s + 600)
    assert run.result is not None  # main() returned, so it froze its result
    return run.result
