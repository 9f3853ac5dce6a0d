"""What ``quicnprotochat chat`` does with a typed line and how it shows what happens.

Terminal-free: :class:`ChatSession` turns lines into calls on the application layer and events
into styled lines for a :class:`Screen`; ``node.app.chat_cli`` puts prompt_toolkit around it.
Every string a peer chose goes through ``terminal_safe`` before it is shown.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from node.app.contact_book import ContactError
from node.app.conversations import Conversation, ConversationKind
from node.app.events import (
    ConversationChanged,
    DeliveryChanged,
    Event,
    InvitationReceived,
    Joined,
    MembersChanged,
    MessageAdded,
    Overflow,
    PeerKeyChanged,
)
from node.app.identity_view import verify_lines
from node.app.invitations import PendingInvitation
from node.app.messages import DeliveryState, Direction, Message
from node.app.messenger import Messenger
from node.app.outbox import SendReport
from node.app.store import SeenPeer
from node.core.addresses import format_address
from node.core.display import terminal_safe
from node.core.errors import NodeError
from node.core.identity import fingerprint

__all__ = ["COMMANDS", "ChatSession", "Screen"]

DEFAULT_HISTORY = 20


class Screen(Protocol):
    def show(self, text: str, style: str = "") -> None:
        """One line (or several, already made safe). Styles: "", "me", "status", "warn",
        "error"."""


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    help: str


COMMANDS = (
    Command("dm", "NAME|@USER|KEY|LINK", "open the direct conversation with someone"),
    Command("group", "NAME", "create a group and switch to it"),
    Command("switch", "CONV", "switch to a conversation (by name or id)"),
    Command("list", "", "list conversations with unread counts"),
    Command("history", "[N]", "show the last N messages here (default 20)"),
    Command("leave", "", "leave this conversation"),
    Command("invite", "NAME|@USER|KEY|LINK", "add someone to this group"),
    Command("remove", "NAME", "remove a member from this group"),
    Command("members", "", "list this conversation's members"),
    Command("join", "[N]", "list strangers' invitations, or accept number N"),
    Command("refuse", "N", "refuse invitation number N"),
    Command("whoami", "", "your name, fingerprint and invite link"),
    Command("verify", "NAME [confirm]", "show the safety number; confirm marks them verified"),
    Command(
        "petname", "NAME NEWNAME", "call a contact NEWNAME here, whatever they call themselves"
    ),
    Command("peers", "", "peers seen on the LAN or in the DHT, and contacts"),
    Command("help", "", "this list"),
    Command("quit", "", "leave the chat (also Ctrl-D)"),
)
_BY_NAME = {c.name: c for c in COMMANDS}


class ChatSession:
    def __init__(
        self,
        messenger: Messenger,
        screen: Screen,
        *,
        whoami: Callable[[], list[str]],
        peers: Callable[[], Awaitable[list[SeenPeer]]],
    ) -> None:
        self.app = messenger
        self.screen = screen
        self._whoami = whoami
        self._peers = peers
        convs = messenger.conversations()
        self.current: Conversation = convs[-1] if convs else messenger.notepad()

    # --- the prompt -------------------------------------------------------------------------

    def prompt(self) -> str:
        return f"[{terminal_safe(self.app.title(self.current))}]> "

    def completions(self) -> list[str]:
        """Words worth completing: commands, conversation names and contact names."""
        # A command that takes an argument completes with the space after it.
        words = [f"/{c.name} " if c.args else f"/{c.name}" for c in COMMANDS]
        words += [self.app.title(c) for c in self.app.conversations()]
        words += [v.name for v in self.app.contacts.all()]
        return sorted(set(words), key=str.casefold)

    # --- typed lines ------------------------------------------------------------------------

    async def handle(self, line: str) -> bool:
        """Do what ``line`` says. Returns False when the user asked to quit."""
        text = line.rstrip("\r\n")
        if not text.strip():
            return True
        if text.startswith("//"):
            await self._send(text[1:])
            return True
        if not text.startswith("/"):
            await self._send(text)
            return True
        name, _, args = text[1:].partition(" ")
        command = _BY_NAME.get(name.lower())
        if command is None:
            shown = terminal_safe(name)
            self._error(f"unknown command /{shown} (nothing was sent; /help lists them)")
            return True
        if command.name == "quit":
            return False
        try:
            await getattr(self, f"_cmd_{command.name}")(args.strip())
        except (NodeError, ContactError) as exc:
            self._error(terminal_safe(str(exc)))
        return True

    async def _send(self, text: str) -> None:
        try:
            message = await self.app.send(self.current.id, text)
        except NodeError as exc:
            self._error(f"not sent: {terminal_safe(str(exc))}")
            return
        self._show_delivery(message)

    def _show_delivery(self, message: Message) -> None:
        for d in message.deliveries:
            name = terminal_safe(d.recipient_name)
            if d.state is DeliveryState.RELAY:
                self._status(f"  -> {name}: left at the relay")
            elif d.state is DeliveryState.QUEUED:
                why = f" ({terminal_safe(d.reason)})" if d.reason else ""
                self._status(f"  -> {name}: queued, will retry{why}")
            elif d.state is DeliveryState.FAILED:
                self._error(f"  -> {name}: failed: {terminal_safe(d.reason)}")

    # --- commands ---------------------------------------------------------------------------

    async def _cmd_help(self, _args: str) -> None:
        for c in COMMANDS:
            usage = f"/{c.name} {c.args}".rstrip()
            self._status(f"{usage:<28} {c.help}")
        self._status("a line starting with // sends a literal /")

    async def _cmd_dm(self, args: str) -> None:
        peer = await self._peer(args, "/dm NAME|KEY|LINK")
        conv = await self.app.direct(peer)
        self._switch_to(conv)
        self._status(f"ciphersuite {self.app.ciphersuite(conv.id)}")

    async def _cmd_group(self, args: str) -> None:
        if not args:
            self._error("usage: /group NAME")
            return
        conv = await self.app.create_group(args)
        self._switch_to(conv)
        self._status("invite people with /invite NAME|KEY|LINK")

    async def _cmd_switch(self, args: str) -> None:
        if not args:
            self._error("usage: /switch CONV (see /list)")
            return
        conv = self.app.find(args)
        self._switch_to(conv)
        unread = [c for c in await self.app.with_unread() if c.id == conv.id]
        if unread and unread[0].unread:
            await self._print_history(min(unread[0].unread, DEFAULT_HISTORY))
        await self.app.mark_read(conv.id)

    async def _cmd_list(self, _args: str) -> None:
        for conv in await self.app.with_unread():
            mark = "*" if conv.id == self.current.id else " "
            unread = f"  ({conv.unread} unread)" if conv.unread else ""
            kind = conv.kind.value
            title = terminal_safe(self.app.title(conv))
            self._status(f"{mark} {conv.id}  {kind:<7} {title}{unread}")

    async def _cmd_history(self, args: str) -> None:
        try:
            count = int(args) if args else DEFAULT_HISTORY
        except ValueError:
            self._error("usage: /history [N]")
            return
        await self._print_history(max(1, count))
        await self.app.mark_read(self.current.id)

    async def _print_history(self, count: int) -> None:
        messages = await self.app.history(self.current.id, limit=count)
        if not messages:
            self._status("(no messages yet)")
        for message in messages:
            self._show_message(message, here=True)

    async def _cmd_leave(self, _args: str) -> None:
        title = self.app.title(self.current)
        await self.app.leave(self.current.id)
        self._status(f"left {terminal_safe(title)}")
        self._switch_to(self.app.notepad())

    async def _cmd_invite(self, args: str) -> None:
        peer = await self._peer(args, "/invite NAME|KEY|LINK")
        report = await self.app.invite(self.current.id, [peer])
        self._report(report, f"invited {terminal_safe(self.app.contacts.name(peer))}")

    async def _cmd_remove(self, args: str) -> None:
        if not args:
            self._error("usage: /remove NAME")
            return
        peer = self._member(args)
        report = await self.app.remove(self.current.id, peer)
        self._report(report, f"removed {terminal_safe(self.app.contacts.name(peer))}")

    async def _cmd_members(self, _args: str) -> None:
        self._status(f"ciphersuite {self.app.ciphersuite(self.current.id)}")
        committer = self.app.committer(self.current.id)
        for member in self.app.members(self.current.id):
            view = self.app.contacts
            marks = []
            if member == committer:
                marks.append("committer")
            if member != self.app.node.public_key and view.is_verified(member):
                marks.append("verified")
            extra = f"  [{', '.join(marks)}]" if marks else ""
            self._status(f"{terminal_safe(view.name(member))}  {fingerprint(member)}{extra}")

    async def _cmd_join(self, args: str) -> None:
        invitations = self.app.invitations()
        if not args:
            if not invitations:
                self._status("no pending invitations")
            for inv in invitations:
                self._status(self._invitation_line(inv))
            return
        chosen = self._invitation(args, "/join [N]")
        conv = await self.app.accept_invitation(chosen.id)
        self._switch_to(conv)

    async def _cmd_refuse(self, args: str) -> None:
        chosen = self._invitation(args, "/refuse N")
        await self.app.refuse_invitation(chosen.id)
        self._status(f"refused invitation {chosen.id}")

    def _invitation(self, args: str, usage: str) -> PendingInvitation:
        for inv in self.app.invitations():
            if args.strip() == str(inv.id):
                return inv
        raise ContactError(f"no invitation {args.strip()!r} is waiting (usage: {usage})")

    def _invitation_line(self, inv: PendingInvitation) -> str:
        who = terminal_safe(inv.inviter_name)
        return (
            f"invitation {inv.id} from {who} ({fingerprint(inv.inviter)}) to a group of "
            f"{inv.members}: /join {inv.id} to accept, /refuse {inv.id} to refuse"
        )

    async def _cmd_whoami(self, _args: str) -> None:
        for line in self._whoami():
            self._status(line)

    async def _cmd_verify(self, args: str) -> None:
        words = args.split()
        confirm = len(words) > 1 and words[-1].lower() == "confirm"
        name = " ".join(words[:-1] if confirm else words)
        if not name:
            self._error("usage: /verify NAME [confirm]")
            return
        peer = await self._peer(name, "/verify NAME")
        contacts = self.app.contacts
        if confirm:
            await contacts.mark_verified(peer)
            self._status(f"{terminal_safe(contacts.name(peer))} is marked verified")
            return
        for line in verify_lines(contacts.name(peer), peer, contacts.safety_number(peer)):
            self._status(line)
        self._status(f"if they match: /verify {terminal_safe(name)} confirm")

    async def _cmd_petname(self, args: str) -> None:
        who, _, new = args.rpartition(" ")
        if not who or not new:
            self._error("usage: /petname NAME NEW")
            return
        peer = await self._peer(who, "/petname NAME NEW")
        await self.app.contacts.set_petname(peer, new)
        self._status(f"{terminal_safe(fingerprint(peer))} is now {terminal_safe(new)} here")

    async def _cmd_peers(self, _args: str) -> None:
        seen = await self._peers()
        for peer in seen:
            address = format_address((peer.host, peer.port))
            self._status(
                f"{terminal_safe(peer.name)[:20]:<20} {peer.source:<4} {peer.status:<9} {address}"
            )
        contacts = self.app.contacts.all()
        for view in contacts:
            mark = " [verified]" if view.verified else ""
            self._status(f"contact: {terminal_safe(view.name)}  {view.fingerprint}{mark}")
        if not seen and not contacts:
            self._status("no peers seen and no contacts yet")

    # --- resolving people -------------------------------------------------------------------

    async def _peer(self, text: str, usage: str) -> bytes:
        """A person from a qpc:// link, a key, or a contact's name."""
        if not text:
            raise ContactError(f"usage: {usage}")
        return await self.app.resolve_person(text)

    def _member(self, text: str) -> bytes:
        return self.app.member_named(self.current.id, text)

    # --- events -----------------------------------------------------------------------------

    def show_event(self, event: Event) -> None:
        match event:
            case MessageAdded(conv_id, message):
                if message.direction is Direction.OUT:
                    return  # typed here: already on the screen
                self._show_message(message, here=conv_id == self.current.id)
            case DeliveryChanged(conv_id, _, recipient, state, reason):
                if state is DeliveryState.FAILED:
                    name = terminal_safe(self.app.contacts.name(recipient))
                    self._error(f"not delivered to {name}: {terminal_safe(reason)}")
            case Joined(conv, inviter, _):
                title = terminal_safe(self.app.title(conv))
                who = terminal_safe(self.app.contacts.name(inviter))
                what = "a direct conversation" if conv.kind is ConversationKind.DIRECT else title
                self._status(f"* {who} invited you to {what} (/switch {title})")
            case MembersChanged(conv_id, added, removed):
                where = terminal_safe(self.app.title(self.app.conversation(conv_id)))
                for key in added:
                    self._status(f"* {terminal_safe(self.app.contacts.name(key))} joined {where}")
                for key in removed:
                    self._status(f"* {terminal_safe(self.app.contacts.name(key))} left {where}")
            case ConversationChanged(conv):
                if conv.id == self.current.id:
                    self.current = conv
            case PeerKeyChanged(name, known, new):
                self._warn(
                    f"WARNING: a different key claims the name {terminal_safe(name)!s}: "
                    f"known {fingerprint(known)}, new {fingerprint(new)}. It is NOT treated as "
                    "the same person; /verify before trusting it."
                )
            case InvitationReceived(invitation):
                self._warn(self._invitation_line(invitation))
            case Overflow():
                self._warn("(too many events at once: some were not shown; /history shows all)")

    def _show_message(self, message: Message, *, here: bool) -> None:
        when = datetime.datetime.fromtimestamp(message.time_ms / 1000).strftime("%H:%M")
        who = terminal_safe(message.sender_name)
        where = ""
        if not here:
            conv = self.app.conversation(message.conversation)
            where = f"[{terminal_safe(self.app.title(conv))}] "
        prefix = f"{when} {where}{who}: "
        body = terminal_safe(message.text, multiline=True, continuation=" " * len(prefix))
        self.screen.show(prefix + body, "me" if message.direction is Direction.OUT else "")

    # --- helpers ----------------------------------------------------------------------------

    def _switch_to(self, conv: Conversation) -> None:
        self.current = conv
        self._status(f"now in {terminal_safe(self.app.title(conv))} ({conv.kind.value})")

    def _report(self, report: SendReport, done: str) -> None:
        if not report.failed:
            self._status(done)
            return
        for peer, why in report.failed.items():
            name = terminal_safe(self.app.contacts.name(peer))
            self._status(f"{done}; {name} not reached yet ({terminal_safe(why)})")

    def _status(self, text: str) -> None:
        self.screen.show(text, "status")

    def _warn(self, text: str) -> None:
        self.screen.show(text, "warn")

    def _error(self, text: str) -> None:
        self.screen.show(f"ERROR: {text}", "error")
