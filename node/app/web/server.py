"""The local web UI: one page served by the node itself, from its own event loop (aiohttp).

Theory of operation. The page is a view of the :class:`~node.app.messenger.Messenger`; nothing
here reaches into the router or MLS. What a browser on this machine may do is guarded in
this order, before any work is done for a request:

1. **Host** must name this server (``127.0.0.1``, ``localhost`` or ``[::1]`` with our port, or
   the host given with ``--web-listen``): a DNS-rebinding page, whose requests carry its own
   host name, is refused.
2. **Origin**, when the browser sends one, must be this server's: another site's page cannot
   read events or post anything, whatever the cookie.
3. **Session**: the access token printed at start (``/?token=…``, as Jupyter does) is traded for
   an HttpOnly, SameSite=Strict cookie; the token is compared in constant time, and the
   redirect drops it from the address bar. Every ``/api`` request needs the cookie.
4. **CSRF**: every state-changing request is a POST of JSON that carries the session's CSRF
   token in ``X-CSRF-Token`` (a custom header no form can send, and a token no other origin
   can read).

Every response carries a strict Content-Security-Policy (scripts, styles and images from this
server only, no inline script): the page builds its DOM with ``textContent``, so a message
like ``<img src=x onerror=…>`` is text, and the policy would stop it even if it were not.

Live updates are server-sent events. Each event gets a sequence number and is kept in a
bounded ring; a page that reconnects sends the last number it saw (``Last-Event-ID``) and gets
what it missed, or ``reset`` when that fell out of the ring (or the node restarted): then it
reloads what it shows from the API, so it loses nothing either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import io
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from node.app.contact_book import ContactError
from node.app.events import Event, Subscription
from node.app.messenger import Messenger
from node.app.store import SeenPeer
from node.app.web.views import (
    contact_json,
    conversation_json,
    event_json,
    invitation_json,
    message_json,
    peer_json,
)
from node.core.errors import NodeError
from node.core.identity import fingerprint
from node.core.safety_number import format_safety_number

__all__ = ["LOOPBACK_HOSTS", "WebUI", "WhoAmI"]

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
TOKEN_BYTES = 32
MAX_SESSIONS = 16  # browsers holding a cookie; the oldest is forgotten past this
MAX_STREAMS = 8  # open event streams at once
EVENT_RING = 2_000  # events kept for pages that reconnect
MAX_BODY = 300 * 1024  # a request body; a message is at most 256 KiB (node.MAX_MESSAGE_BYTES)
MAX_INPUT_CHARS = 4_096  # names, links, keys typed into a form
HEARTBEAT_SECONDS = 15.0
HISTORY_LIMIT = 200

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the first URL holds the token
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATIC = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
    "/icon.svg": ("icon.svg", "image/svg+xml"),
}
LOCKED_PAGE = (
    "<!doctype html><meta charset=utf-8><title>quicnprotochat</title>"
    "<p>Open the link that <code>quicnprotochat web</code> printed when it started.</p>"
)


@dataclass(frozen=True)
class WhoAmI:
    name: str
    key: bytes
    link: str  # this node's qpc:// invite link


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class _EventLog:
    """Serialized events with sequence numbers, the newest :data:`EVENT_RING` kept."""

    def __init__(self, boot: str) -> None:
        self.boot = boot
        self.last = 0
        self._ring: deque[tuple[int, str]] = deque(maxlen=EVENT_RING)
        self._wake = asyncio.Event()

    def add(self, data: str) -> None:
        self.last += 1
        self._ring.append((self.last, data))
        # Every stream waiting now wakes; the next waiters wait on a fresh event.
        self._wake.set()
        self._wake = asyncio.Event()

    def since(self, seq: int) -> list[tuple[int, str]] | None:
        """Events after ``seq``, or None when some of them are gone from the ring."""
        if seq > self.last:
            return None
        if seq == self.last:
            return []
        oldest = self._ring[0][0] if self._ring else self.last + 1
        if seq + 1 < oldest:
            return None
        return [item for item in self._ring if item[0] > seq]

    async def wait_after(self, seq: int) -> None:
        """Until an event after ``seq`` is added (callers bound the wait)."""
        if self.last > seq:
            return
        await self._wake.wait()


def _asset(name: str) -> bytes:
    return importlib.resources.files("node.app.web").joinpath("static", name).read_bytes()


class WebUI:
    """The web UI of one running node. :meth:`start` returns the URL to open (with the token).

    :param whoami: this node's name, key and invite link, as of now.
    :param peers: the nodes discovery has seen.
    :param extra_host: a host name besides loopback that requests may name (``--web-listen``).
    """

    def __init__(
        self,
        messenger: Messenger,
        *,
        whoami: Callable[[], WhoAmI],
        peers: Callable[[], Awaitable[list[SeenPeer]]],
        host: str = "127.0.0.1",
        port: int = 0,
        extra_host: str | None = None,
    ) -> None:
        self.app = messenger
        self._runtime = messenger.node.runtime
        self._whoami = whoami
        self._peers = peers
        self._host, self._port = host, port
        self._extra_host = extra_host
        self._token = self._runtime.random_bytes(TOKEN_BYTES).hex()
        self._sessions: OrderedDict[str, str] = OrderedDict()  # session id -> CSRF token
        self._log = _EventLog(self._runtime.random_bytes(6).hex())
        self._streams = 0
        self._allowed_hosts: frozenset[str] = frozenset()
        self._runner: web.AppRunner | None = None
        self._follower: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.port = 0

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = self._host if ":" not in self._host else f"[{self._host}]"
        return f"http://{host}:{self.port}/?token={self._token}"

    @property
    def cookie_name(self) -> str:
        # Cookies are not kept apart by port: two nodes on one machine need two names.
        return f"qpc_session_{self.port}"

    async def start(self) -> str:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        self._routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, shutdown_timeout=1.0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        extra = self._extra_host
        if extra is not None and ":" in extra:
            extra = f"[{extra}]"  # an IPv6 literal, as a Host header names it
        hosts = [*LOOPBACK_HOSTS, *([extra] if extra else [])]
        self._allowed_hosts = frozenset(f"{h}:{self.port}".casefold() for h in hosts)
        self._follower = self._runtime.spawn(self._follow())
        self.app.node.relay_listeners.append(self._relay_changed)
        return self.url

    async def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(ValueError):
            self.app.node.relay_listeners.remove(self._relay_changed)
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        if self._runner is not None:
            await self._runner.cleanup()

    async def _follow(self) -> None:
        """Serialize every event of the application layer into the ring, in order."""
        while True:
            sub: Subscription = self.app.subscribe()
            try:
                async for event in sub:
                    await self._publish(event)
            finally:
                sub.close()
            # Cut off (Overflow, already passed on as "reset"): subscribe again.

    async def _publish(self, event: Event) -> None:
        self._log.add(json.dumps(event_json(self.app, event)))

    def _relay_changed(self, state: str) -> None:
        self._log.add(json.dumps({"type": "relay", "state": state}))

    # --- the guard --------------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            self._check_origin(request)
            if request.path.startswith("/api/"):
                session = self._session_of(request)
                if request.method != "GET":
                    self._check_csrf(request, session)
            response = await handler(request)
        except _Refused as refused:
            response = web.json_response({"error": refused.text}, status=refused.status)
        except web.HTTPException as exc:
            response = web.json_response({"error": exc.reason}, status=exc.status)
        except (NodeError, ContactError) as exc:
            response = web.json_response({"error": str(exc)}, status=400)
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    def _check_origin(self, request: web.Request) -> None:
        host = request.headers.get("Host", "").casefold()
        if host not in self._allowed_hosts:
            raise _Refused(421, "this server answers only to its own address")
        origin = request.headers.get("Origin")
        if origin is not None and origin.casefold() != f"http://{host}":
            raise _Refused(403, "requests from other sites are refused")
        if request.method not in ("GET", "HEAD") and origin is None:
            raise _Refused(403, "a request that changes something must say where it comes from")

    def _session_of(self, request: web.Request) -> str:
        session = request.cookies.get(self.cookie_name, "")
        for known in self._sessions:
            if hmac.compare_digest(known, session):
                return known
        raise _Refused(401, "not signed in: open the link printed at start")

    def _check_csrf(self, request: web.Request, session: str) -> None:
        sent = request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(sent.encode(), self._sessions[session].encode()):
            raise _Refused(403, "missing or wrong CSRF token")
        if request.content_type != "application/json":
            raise _Refused(415, "send JSON")

    # --- routes -----------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        r = app.router
        for path, (name, kind) in STATIC.items():
            r.add_get(path, self._static_handler(path, name, kind))
        r.add_get("/api/state", self._state)
        r.add_get("/api/events", self._events)
        r.add_get("/api/peers", self._peers_view)
        r.add_get("/api/qr/me.svg", self._qr_me)
        r.add_get("/api/qr/safety/{key}.svg", self._qr_safety)
        r.add_get("/api/conversations/{conv}/messages", self._history)
        r.add_get("/api/conversations/{conv}/members", self._members)
        r.add_get("/api/contacts/{key}/verify", self._verify)
        r.add_post("/api/conversations/{conv}/messages", self._send)
        r.add_post("/api/conversations/{conv}/read", self._read)
        r.add_post("/api/conversations/{conv}/invite", self._invite)
        r.add_post("/api/conversations/{conv}/remove", self._remove)
        r.add_post("/api/conversations/{conv}/leave", self._leave)
        r.add_post("/api/dm", self._dm)
        r.add_post("/api/groups", self._group)
        r.add_post("/api/invitations/{id}/accept", self._accept)
        r.add_post("/api/invitations/{id}/refuse", self._refuse)
        r.add_post("/api/contacts/{key}/verify", self._confirm_verified)

    def _static_handler(
        self, path: str, name: str, kind: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        body = _asset(name)

        async def handler(request: web.Request) -> web.StreamResponse:
            if path == "/":
                token = request.query.get("token")
                if token is not None:
                    return self._sign_in(token)
                try:
                    self._session_of(request)
                except _Refused:
                    return web.Response(text=LOCKED_PAGE, content_type="text/html", status=401)
            return web.Response(body=body, content_type=kind, charset="utf-8")

        return handler

    def _sign_in(self, token: str) -> web.StreamResponse:
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            return web.Response(text=LOCKED_PAGE, content_type="text/html", status=401)
        session = self._runtime.random_bytes(TOKEN_BYTES).hex()
        self._sessions[session] = self._runtime.random_bytes(TOKEN_BYTES).hex()
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        response = web.HTTPSeeOther("/")
        response.set_cookie(self.cookie_name, session, httponly=True, samesite="Strict", path="/")
        return response

    async def _state(self, request: web.Request) -> web.StreamResponse:
        """Everything the page shows at first: who this is, conversations, invitations."""
        me = self._whoami()
        app = self.app
        return web.json_response(
            {
                "csrf": self._sessions[self._session_of(request)],
                "me": {
                    "name": me.name,
                    "key": me.key.hex(),
                    "fingerprint": fingerprint(me.key),
                    "link": me.link,
                },
                "conversations": [conversation_json(app, c) for c in await app.with_unread()],
                "invitations": [invitation_json(i) for i in app.invitations()],
                "relay": app.node.relay_state,
                "events": {"boot": self._log.boot, "last": self._log.last},
            }
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if self._streams >= MAX_STREAMS:
            raise _Refused(503, "too many open pages")
        resume = _last_seen(request, self._log.boot)
        response = web.StreamResponse(
            headers={**SECURITY_HEADERS, "Content-Type": "text/event-stream"}
        )
        self._streams += 1
        try:
            await response.prepare(request)
            await response.write(b"retry: 1000\n\n")
            after = resume if resume is not None else -1
            while not self._stopping.is_set():
                items = self._log.since(after) if after >= 0 else None
                if items is None:
                    # Resume is impossible: the page reloads, then continues from now.
                    after = self._log.last
                    await response.write(_sse(f"{self._log.boot}-{after}", '{"type": "reset"}'))
                    continue
                for seq, data in items:
                    await response.write(_sse(f"{self._log.boot}-{seq}", data))
                    after = seq
                if not items:
                    await response.write(b": still here\n\n")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEARTBEAT_SECONDS):
                        await self._log.wait_after(after)
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self._streams -= 1
        return response

    async def _history(self, request: web.Request) -> web.StreamResponse:
        conv = self.app.conversation(request.match_info["conv"])
        before = _int_query(request, "before")
        limit = _int_query(request, "limit") or 50
        messages = await self.app.history(conv.id, min(limit, HISTORY_LIMIT), before)
        return web.json_response({"messages": [message_json(m) for m in messages]})

    async def _members(self, request: web.Request) -> web.StreamResponse:
        app = self.app
        conv = app.conversation(request.match_info["conv"])
        committer = app.committer(conv.id)
        me = app.node.public_key
        return web.json_response(
            {
                "ciphersuite": app.ciphersuite(conv.id),
                "members": [
                    {
                        "key": k.hex(),
                        "name": app.contacts.name(k),
                        "fingerprint": fingerprint(k),
                        "me": k == me,
                        "committer": k == committer,
                        "verified": k != me and app.contacts.is_verified(k),
                    }
                    for k in app.members(conv.id)
                ],
            }
        )

    async def _send(self, request: web.Request) -> web.StreamResponse:
        conv = self.app.conversation(request.match_info["conv"])
        text = await _field(request, "text", limit=None)
        message = await self.app.send(conv.id, text)
        return web.json_response({"message": message_json(message)})

    async def _read(self, request: web.Request) -> web.StreamResponse:
        await self.app.mark_read(request.match_info["conv"])
        return web.json_response({})

    async def _dm(self, request: web.Request) -> web.StreamResponse:
        peer = await self.app.resolve_person(await _field(request, "person"))
        conv = await self.app.direct(peer)
        return web.json_response({"conversation": conversation_json(self.app, conv)})

    async def _group(self, request: web.Request) -> web.StreamResponse:
        conv = await self.app.create_group(await _field(request, "name"))
        return web.json_response({"conversation": conversation_json(self.app, conv)})

    async def _invite(self, request: web.Request) -> web.StreamResponse:
        conv = self.app.conversation(request.match_info["conv"])
        peer = await self.app.resolve_person(await _field(request, "person"))
        report = await self.app.invite(conv.id, [peer])
        return web.json_response({"not_reached": _not_reached(self.app, report.failed)})

    async def _remove(self, request: web.Request) -> web.StreamResponse:
        conv = self.app.conversation(request.match_info["conv"])
        peer = _key(await _field(request, "key"))
        report = await self.app.remove(conv.id, peer)
        return web.json_response({"not_reached": _not_reached(self.app, report.failed)})

    async def _leave(self, request: web.Request) -> web.StreamResponse:
        await self.app.leave(request.match_info["conv"])
        return web.json_response({})

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        conv = await self.app.accept_invitation(_int_path(request, "id"))
        return web.json_response({"conversation": conversation_json(self.app, conv)})

    async def _refuse(self, request: web.Request) -> web.StreamResponse:
        await self.app.refuse_invitation(_int_path(request, "id"))
        return web.json_response({})

    async def _verify(self, request: web.Request) -> web.StreamResponse:
        peer = _key(request.match_info["key"])
        contacts = self.app.contacts
        digits = contacts.safety_number(peer)
        return web.json_response(
            {
                "contact": contact_json(contacts.view(peer)),
                "safety_number": format_safety_number(digits),
            }
        )

    async def _confirm_verified(self, request: web.Request) -> web.StreamResponse:
        peer = _key(request.match_info["key"])
        await self.app.contacts.mark_verified(peer)
        return web.json_response({"contact": contact_json(self.app.contacts.view(peer))})

    async def _peers_view(self, request: web.Request) -> web.StreamResponse:
        seen = await self._peers()
        return web.json_response(
            {
                "relay": self.app.node.relay_state,
                "seen": [peer_json(p) for p in seen],
                "contacts": [contact_json(v) for v in self.app.contacts.all()],
            }
        )

    async def _qr_me(self, request: web.Request) -> web.StreamResponse:
        return _svg(self._whoami().link)

    async def _qr_safety(self, request: web.Request) -> web.StreamResponse:
        return _svg(self.app.contacts.safety_number(_key(request.match_info["key"])))


def _sse(event_id: str, data: str) -> bytes:
    # json.dumps never writes a newline, so one data line carries the whole event.
    return f"id: {event_id}\ndata: {data}\n\n".encode()


def _last_seen(request: web.Request, boot: str) -> int | None:
    """The sequence number the page saw last, or None when it must reload (another boot)."""
    text = request.headers.get("Last-Event-ID") or request.query.get("after", "")
    seen_boot, _, number = text.partition("-")
    if seen_boot != boot or not number.isdigit() or len(number) > 18:
        return None
    return int(number)


async def _field(request: web.Request, name: str, limit: int | None = MAX_INPUT_CHARS) -> str:
    try:
        body: Any = await request.json()
    except ValueError:
        raise _Refused(400, "the body is not JSON") from None
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str):
        raise _Refused(400, f"{name!r} is missing")
    if limit is not None and len(value) > limit:
        raise _Refused(400, f"{name!r} is longer than {limit} characters")
    return value.strip() if limit is not None else value


def _int_query(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 18:
        raise _Refused(400, f"{name!r} is not a number")
    return int(text)


def _int_path(request: web.Request, name: str) -> int:
    text = request.match_info[name]
    if not text.isdigit() or len(text) > 18:
        raise _Refused(400, f"{name!r} is not a number")
    return int(text)


def _key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise _Refused(400, "not an identity key (64 hex digits)")
    return key


def _not_reached(app: Messenger, failed: dict[bytes, str]) -> list[dict[str, str]]:
    return [{"name": app.contacts.name(k), "why": why} for k, why in failed.items()]


def _svg(data: str) -> web.StreamResponse:
    import segno  # here: only a page that shows a QR code pays for it

    out = io.BytesIO()
    segno.make(data, error="m", micro=False).save(
        out, kind="svg", scale=4, border=4, dark="#000", light="#fff", xmldecl=False
    )
    return web.Response(body=out.getvalue(), content_type="image/svg+xml")
