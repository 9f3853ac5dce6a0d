"""Membership changes under the committer protocol (DESIGN §6, ADR 0003).

Each group has one committer, its creator. The committer changes the group by committing and
fans the commit out to every member of the epoch it ends (removed members included, so they
learn it) and the Welcome to the members it adds. Everyone else proposes:

* **Add** and **Remove** proposals go to the committer alone. The binding re-issues them in
  the commit by value, so no other member needs to have seen them (RFC 9420 §12.4 allows
  either; by value spares every member a message and removes an ordering hazard).
* **Update** proposals go to every member. A commit can cover another member's Update only by
  reference (RFC 9420 §12.4: by value it would update the committer's own leaf), and a member
  must hold a proposal before it can process a commit that references it. Proposal and commit
  then travel from different senders on different paths; a member that gets the commit first
  keeps it (:class:`~node.mls.MissingProposalError`) and applies it once the proposal is in.

The committer commits whatever proposals are pending as soon as it has applied one, so an
absent committer delays membership changes (the proposals wait in the proposer's outbox or at
the relay), never messages.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from node.app.inbox import DEFERRED, Applied
from node.app.outbox import Outbox, SendReport
from node.core import wire
from node.core.errors import (
    LocalProtocolError,
    ProposalRejectedError,
    StorageError,
    UnknownGroupError,
)
from node.core.runtime import BlockingRunner, Clock
from node.mls import (
    ContentType,
    GroupError,
    MlsGroup,
    OwnCommit,
    StaleEpochError,
    key_package_identity,
    read_header,
)

log = logging.getLogger(__name__)

COMMIT_RETRY_MIN, COMMIT_RETRY_MAX = 1.0, 30.0  # seconds, while state cannot be written

MAX_REJECTIONS = 100  # kept for the user (and tests) to inspect; older ones are forgotten
MAX_PROPOSALS = 3  # times one wanted change is proposed before the node gives up on it

EnvelopeMaker = Callable[[bytes, wire.EnvelopeKind, bytes, bytes], tuple[bytes, wire.Envelope]]


@dataclass
class _Wanted:
    """A change this member proposed to the committer and has not seen committed yet."""

    add: bool  # True: add ``identity`` (with ``key_package``); False: remove it
    identity: bytes
    key_package: bytes | None
    proposed: int = 1

    def done(self, members: set[bytes]) -> bool:
        return (self.identity in members) is self.add


@dataclass(frozen=True)
class Rejection:
    """A proposal this node refused, and why."""

    envelope_id: bytes
    group_id: bytes
    error: ProposalRejectedError


class Membership:
    """Invites, removals and key updates for the node's groups, as committer or as member."""

    def __init__(
        self,
        own_identity: bytes,
        groups: dict[bytes, MlsGroup],
        outbox: Outbox,
        envelope: EnvelopeMaker,
        run: BlockingRunner,
        clock_ms: Clock,
    ) -> None:
        self._me = own_identity
        self._groups = groups
        self._outbox = outbox
        self._envelope = envelope
        # MLS calls write the state file: they run through the executor, never on the loop.
        self._run = run
        self._clock_ms = clock_ms
        # One commit and its queueing at a time per group, so the outbox holds commits in the
        # order they were made and each fan-out is that of its own commit.
        self._commit_locks: dict[bytes, asyncio.Lock] = {}
        self.rejections: collections.deque[Rejection] = collections.deque(maxlen=MAX_REJECTIONS)
        self.commit_due = asyncio.Event()
        # In memory only: after a restart, changes proposed before it are not proposed again.
        self._wanted: dict[bytes, list[_Wanted]] = {}

    def is_committer(self, group_id: bytes) -> bool:
        return self._group(group_id).committer == self._me

    def check_member(self, group_id: bytes) -> None:
        """Raise :class:`LocalProtocolError` unless this node is a member of the group."""
        self._group(group_id)

    def _group(self, group_id: bytes) -> MlsGroup:
        group = self._groups.get(group_id)
        if group is None:
            raise LocalProtocolError("no such group")
        if not group.is_active:
            raise LocalProtocolError("this node is no longer a member of that group")
        return group

    # --- what a user asks for -----------------------------------------------------------------

    async def add(self, group_id: bytes, key_packages: Sequence[bytes]) -> SendReport:
        """The committer commits the adds; anyone else proposes them to the committer."""
        group = self._group(group_id)
        if group.committer == self._me:
            return await self._commit(group, lambda: group.commit(key_packages))
        proposals = await self._run(lambda: [group.propose_add(kp) for kp in key_packages])
        now_ms = self._clock_ms()
        wanted = [_Wanted(True, key_package_identity(kp, now_ms=now_ms), kp) for kp in key_packages]
        self._want(group_id, wanted)
        return await self._to_committer(group, proposals)

    async def remove(self, group_id: bytes, identities: Sequence[bytes]) -> SendReport:
        group = self._group(group_id)
        proposals = await self._run(lambda: [group.propose_remove(i) for i in identities])
        if group.committer == self._me:
            # The committer's own proposals are committed with everything else pending.
            return await self._commit(group, group.commit)
        self._want(group_id, [_Wanted(False, identity, None) for identity in identities])
        return await self._to_committer(group, proposals)

    async def update_keys(self, group_id: bytes) -> SendReport:
        """Fresh leaf keys for this member (post-compromise security)."""
        group = self._group(group_id)
        if group.committer == self._me:
            if group.pending_proposals:
                # self_update refuses while adds are pending: commit those first.
                report = await self._commit(group, group.commit)
                more = await self._commit(group, group.self_update)
                report.paths.update(more.paths)
                report.failed.update(more.failed)
                return report
            return await self._commit(group, group.self_update)
        proposal = await self._run(group.propose_update)
        kind = wire.EnvelopeKind.PROPOSAL
        # By reference only, so every member needs it, not just the committer (module docstring).
        items = [
            self._envelope(m, kind, proposal, group_id) for m in group.members() if m != self._me
        ]
        return await self._outbox.send(items)

    def waits_on_commits(self, group_id: bytes) -> bool:
        """Whether this member asked the committer for changes it has not seen committed."""
        return bool(self._wanted.get(group_id))

    def _want(self, group_id: bytes, changes: list[_Wanted]) -> None:
        wanted = self._wanted.setdefault(group_id, [])
        wanted.extend(c for c in changes if all(c.identity != w.identity for w in wanted))

    async def after_commit(self, group_id: bytes) -> None:
        """A commit was applied: propose again, at the new epoch, what this member asked for
        and the commit did not do. A proposal belongs to its epoch: if the committer committed
        anything else before ours reached it, it refused ours as stale (ADR 0003)."""
        group = self._groups.get(group_id)
        wanted = self._wanted.pop(group_id, [])
        if group is None or not group.is_active or group.committer == self._me:
            return
        members = set(group.members())
        again = [w for w in wanted if not w.done(members)]
        for w in [w for w in again if w.proposed >= MAX_PROPOSALS]:
            log.warning("gave up a change proposed %d times and never committed", w.proposed)
        again = [w for w in again if w.proposed < MAX_PROPOSALS]
        if not again:
            return

        def propose_again() -> tuple[list[bytes], list[_Wanted]]:
            proposals, kept = [], []
            for w in again:
                w.proposed += 1
                try:
                    if w.key_package is not None:
                        proposals.append(group.propose_add(w.key_package))
                    else:
                        proposals.append(group.propose_remove(w.identity))
                except GroupError as exc:  # e.g. the KeyPackage expired meanwhile
                    log.warning("cannot propose a wanted change again: %s", exc)
                    continue
                kept.append(w)
            return proposals, kept

        proposals, kept = await self._run(propose_again)
        self._want(group_id, kept)
        if proposals:
            await self._to_committer(group, proposals)

    async def _to_committer(self, group: MlsGroup, proposals: list[bytes]) -> SendReport:
        kind = wire.EnvelopeKind.PROPOSAL
        items = [self._envelope(group.committer, kind, p, group.group_id) for p in proposals]
        return await self._outbox.send(items)

    async def _commit(self, group: MlsGroup, make: Callable[[], object]) -> SendReport:
        """Make one commit and queue it for the members of the epoch it ends, and its Welcome
        for the members it adds."""

        def commit() -> tuple[OwnCommit | None, int]:
            make()
            return group.own_commit(), group.epoch

        lock = self._commit_locks.setdefault(group.group_id, asyncio.Lock())
        async with lock:
            own, epoch = await self._run(commit)
            return await self._fan_out(group, own, epoch)

    async def _fan_out(self, group: MlsGroup, own: OwnCommit | None, epoch: int) -> SendReport:
        """Queue ``own``, the commit that made ``epoch`` of the group, for the members of the
        epoch it ended, and its Welcome for the members it added; the outbox records that it
        did, in the same transaction."""
        if own is None:
            raise LocalProtocolError("this node did not make the group's last commit")
        commit_kind, welcome_kind = wire.EnvelopeKind.COMMIT, wire.EnvelopeKind.WELCOME
        items = [self._envelope(m, commit_kind, own.commit, group.group_id) for m in own.recipients]
        if own.welcome is not None:
            items += [self._envelope(m, welcome_kind, own.welcome, b"") for m in own.joiners]
        log.info("committed epoch %d of a group (%d envelopes)", epoch, len(items))
        return await self._outbox.send(items, commit=(group.group_id, epoch))

    async def resend_lost_commits(self) -> None:
        """At start: queue again the fan-out of any own commit that the node made but died
        before queueing (the MLS state and the node's store are two files)."""
        for group in list(self._groups.values()):
            own = group.own_commit()
            if not group.is_active or own is None:
                continue
            queued = await self._outbox.queued_commit_epoch(group.group_id)
            if queued is None or queued < group.epoch:
                log.warning("queueing again a commit lost in a crash (epoch %d)", group.epoch)
                await self._fan_out(group, own, group.epoch)

    # --- the committer's loop -----------------------------------------------------------------

    async def commit_pending(self) -> None:
        """Commit the proposals waiting in every group this node commits for."""
        for group in list(self._groups.values()):
            if group.is_active and group.committer == self._me and group.pending_proposals:
                try:
                    await self._commit(group, group.commit)
                except GroupError as exc:
                    # A proposal that was valid alone can still clash with the rest (a KeyPackage
                    # expired since); the binding left the state as it was.
                    log.warning("could not commit pending proposals: %s", exc)

    async def run_committer(self) -> None:
        """While the node runs: commit soon after a proposal arrives (and once at start, for
        proposals applied before a restart)."""
        delay = COMMIT_RETRY_MIN
        while True:
            await self.commit_due.wait()
            self.commit_due.clear()
            try:
                # A commit made while its fan-out could not be queued (a full disk) goes first.
                await self.resend_lost_commits()
                await self.commit_pending()
            except StorageError as exc:
                log.warning("cannot commit now (retrying in %.0f s): %s", delay, exc)
                await asyncio.sleep(delay)  # a retry delay: the disk gives no event when it frees
                delay = min(delay * 2, COMMIT_RETRY_MAX)
                self.commit_due.set()
                continue
            delay = COMMIT_RETRY_MIN

    # --- receiving a proposal -----------------------------------------------------------------

    async def apply_proposal(self, env: wire.Envelope) -> Applied:
        """Store a member's proposal in its group; refuse anything else with a typed error."""
        group = self._groups.get(env.group_id)
        if group is None:
            # An Update can overtake the Welcome of a member added in the same epoch.
            return DEFERRED
        header = read_header(env.payload)
        if (
            header is None
            or header.content_type is not ContentType.PROPOSAL
            or header.group_id != env.group_id
        ):
            return self._reject(env, ProposalRejectedError("the envelope holds no MLS proposal"))
        try:
            await self._run(lambda: group.process(env.payload, delivery_id=env.id))
        except StaleEpochError as exc:
            if header.epoch > group.epoch:
                return DEFERRED  # the commit that opens its epoch is still on its way
            return self._reject(env, ProposalRejectedError(f"stale proposal: {exc}"))
        except GroupError as exc:
            # Not from a member of this epoch, forged, or tampered with: MLS authenticates it.
            return self._reject(env, ProposalRejectedError(f"refused proposal: {exc}"))
        if group.committer == self._me:
            self.commit_due.set()
        return None

    def unknown_group(self, env: wire.Envelope) -> None:
        """A proposal kept for a group never joined is being dropped."""
        self._reject(env, UnknownGroupError("proposal for a group this node does not hold"))

    def _reject(self, env: wire.Envelope, error: ProposalRejectedError) -> Applied:
        log.warning("dropped a proposal (trigger=%s): %s", type(error).__name__, error)
        self.rejections.append(Rejection(env.id, env.group_id, error))
        return None
