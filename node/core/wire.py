"""Cap'n Proto codec for envelopes and RPC messages: Python values in, bytes out, and back.

Decoding reads each field exactly once into frozen dataclasses, under a traversal and nesting
limit, and turns every decoder failure into :class:`RemoteProtocolError`. pycapnp validates lazily
(a flipped bit often surfaces only when the field is read), so a decode that succeeds proves
only shape: integrity comes from MLS.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import capnp

import schemas
from node.core.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

ENVELOPE_ID_SIZE = 16
MAILBOX_SIZE = 32
MAX_NESTING = 32
DECODE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    UnicodeDecodeError,
    capnp.KjException,
    AttributeError,
)


class EnvelopeKind(enum.Enum):
    COMMIT = "commit"
    WELCOME = "welcome"
    PROPOSAL = "proposal"
    APPLICATION = "application"
    KEY_PACKAGE_REQUEST = "keyPackageRequest"
    SEALED = "sealed"
    DELIVERY_FAILED = "deliveryFailed"


@dataclass(frozen=True)
class Envelope:
    id: bytes
    recipient: bytes
    kind: EnvelopeKind
    payload: bytes
    group_id: bytes
    created_at_ms: int

    def __post_init__(self) -> None:
        if len(self.id) != ENVELOPE_ID_SIZE:
            raise ValueError(f"envelope id must be {ENVELOPE_ID_SIZE} bytes")
        if len(self.recipient) != MAILBOX_SIZE:
            raise ValueError(f"envelope recipient must be a {MAILBOX_SIZE}-byte mailbox")

    def __repr__(self) -> str:
        return (
            f"Envelope(id={self.id.hex()}, kind={self.kind.value}, "
            f"payload={len(self.payload)} bytes)"
        )


# --- requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deliver:
    envelopes: tuple[Envelope, ...]
    # Relay: keep who delivered these, to tell them (a deliveryFailed envelope in their own
    # mailbox there) of any that expires unfetched.
    failure_notice: bool = False


@dataclass(frozen=True)
class Fetch:
    mailbox: bytes
    cursor: int
    limit: int


@dataclass(frozen=True)
class Ack:
    mailbox: bytes
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class FetchKeyPackage:
    identity: bytes


@dataclass(frozen=True)
class Wait:
    mailbox: bytes
    cursor: int
    limit: int
    timeout_ms: int


# Directory (relay). KeyPackages in one publishKeyPackages call, counted before any is copied.
MAX_PUBLISH_KEY_PACKAGES = 64
# Suites in one answer's counts (far more than there are).
MAX_SUITE_COUNTS = 16


@dataclass(frozen=True)
class PublishKeyPackages:
    """The caller's own KeyPackages for the relay to hand out while it is offline."""

    key_packages: tuple[bytes, ...]
    last_resort: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        return (
            f"PublishKeyPackages({len(self.key_packages)} single-use, "
            f"{len(self.last_resort)} last-resort)"
        )


@dataclass(frozen=True)
class ResolveUser:
    username: str


@dataclass(frozen=True)
class ResolveIdentity:
    identity: bytes


# Accounts (OPAQUE, RFC 9807). The OPAQUE messages and tokens stay out of reprs: nothing that
# reaches a log may carry them.

USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
USERNAME_RULE = "a username is 1-32 of a-z 0-9 . _ - and starts with a letter or digit"
# Sizes of the OPAQUE messages of the one suite (Ristretto255, TripleDH, SHA-512, Argon2id).
REGISTRATION_REQUEST_SIZE = 32
REGISTRATION_UPLOAD_SIZE = 192
KE1_SIZE = 96
KE2_SIZE = 320
KE3_SIZE = 64
LOGIN_ID_SIZE = 16
TOKEN_SIZE = 32


@dataclass(frozen=True)
class RegisterStart:
    username: str
    request: bytes = field(repr=False)


@dataclass(frozen=True)
class RegisterFinish:
    username: str
    upload: bytes = field(repr=False)


@dataclass(frozen=True)
class LoginStart:
    username: str
    request: bytes = field(repr=False)


@dataclass(frozen=True)
class LoginFinish:
    login_id: bytes = field(repr=False)
    finalization: bytes = field(repr=False)


@dataclass(frozen=True)
class Authenticate:
    token: bytes = field(repr=False)


@dataclass(frozen=True)
class Logout:
    token: bytes = field(repr=False)


Request = (
    Deliver
    | Fetch
    | Ack
    | FetchKeyPackage
    | Wait
    | RegisterStart
    | RegisterFinish
    | LoginStart
    | LoginFinish
    | Authenticate
    | Logout
    | PublishKeyPackages
    | ResolveUser
    | ResolveIdentity
)


class UnknownMethodError(RemoteProtocolError):
    """The request names a method this side does not know (a newer peer, perhaps)."""


# --- responses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorResult:
    code: ErrorCode
    message: str


@dataclass(frozen=True)
class DeliverResult:
    accepted: tuple[bytes, ...]


@dataclass(frozen=True)
class FetchResult:
    envelopes: tuple[Envelope, ...]
    cursor: int
    # From a relay: the owner's single-use KeyPackages there run low (publish more).
    key_packages_low: bool = False


@dataclass(frozen=True)
class AckResult:
    removed: int


# KeyPackages in one fetchKeyPackage answer, one per suite: far more than any node offers.
MAX_KEY_PACKAGES = 4


@dataclass(frozen=True)
class FetchKeyPackageResult:
    """One KeyPackage per ciphersuite the callee offers, its preferred one first. The wire
    keeps the first in the field of the one-KeyPackage answer, so older callers still read
    it; the suite of each is in the KeyPackage itself (checked when it is used)."""

    key_package: bytes
    more: tuple[bytes, ...] = ()

    @property
    def key_packages(self) -> tuple[bytes, ...]:
        return (self.key_package, *self.more) if self.key_package else self.more


@dataclass(frozen=True)
class RegisterStartResult:
    response: bytes = field(repr=False)


@dataclass(frozen=True)
class RegisterFinishResult:
    pass


@dataclass(frozen=True)
class LoginStartResult:
    login_id: bytes = field(repr=False)
    response: bytes = field(repr=False)


@dataclass(frozen=True)
class SessionResult:
    token: bytes = field(repr=False)
    expires_at_ms: int


@dataclass(frozen=True)
class SessionInfo:
    expires_at_ms: int


@dataclass(frozen=True)
class LogoutResult:
    pass


@dataclass(frozen=True)
class KeyPackageCount:
    suite: int
    single_use: int
    last_resort: bool


@dataclass(frozen=True)
class PublishKeyPackagesResult:
    counts: tuple[KeyPackageCount, ...]
    max_per_suite: int

    def single_use(self, suite: int) -> int:
        return next((c.single_use for c in self.counts if c.suite == suite), 0)


@dataclass(frozen=True)
class ResolveUserResult:
    identity: bytes


@dataclass(frozen=True)
class ResolveIdentityResult:
    username: str


Response = (
    ErrorResult
    | DeliverResult
    | FetchResult
    | AckResult
    | FetchKeyPackageResult
    | RegisterStartResult
    | RegisterFinishResult
    | LoginStartResult
    | SessionResult
    | SessionInfo
    | LogoutResult
    | PublishKeyPackagesResult
    | ResolveUserResult
    | ResolveIdentityResult
)

# --- envelopes ------------------------------------------------------------------------------


def _fill_envelope(builder: Any, env: Envelope) -> None:
    builder.id = env.id
    builder.recipient = env.recipient
    builder.kind = env.kind.value
    builder.payload = env.payload
    builder.groupId = env.group_id
    builder.createdAt = env.created_at_ms


_KINDS_BY_ORDINAL = {
    ordinal: EnvelopeKind(name)
    for name, ordinal in schemas.envelope.Envelope.Kind.schema.enumerants.items()
}


def _read_envelope(reader: Any) -> Envelope:
    # Read the raw ordinal: pycapnp cannot name an enumerant from a newer schema.
    kind = _KINDS_BY_ORDINAL.get(int(reader.kind.raw))
    if kind is None:
        raise RemoteProtocolError("envelope has an unknown kind")
    try:
        return Envelope(
            id=bytes(reader.id),
            recipient=bytes(reader.recipient),
            kind=kind,
            payload=bytes(reader.payload),
            group_id=bytes(reader.groupId),
            created_at_ms=int(reader.createdAt),
        )
    except ValueError as exc:
        raise RemoteProtocolError(str(exc)) from exc


def _fill_envelopes(builder: Any, field: str, envelopes: Sequence[Envelope]) -> None:
    items = builder.init(field, len(envelopes))
    for i, env in enumerate(envelopes):
        _fill_envelope(items[i], env)


def encode_envelope(env: Envelope) -> bytes:
    msg = schemas.envelope.Envelope.new_message()
    _fill_envelope(msg, env)
    return bytes(msg.to_bytes())


def _limits(data: bytes) -> dict[str, int]:
    # Every read is charged against the traversal budget; twice the frame is ample for one pass.
    return {
        "traversal_limit_in_words": max(64, 2 * (len(data) // 8 + 1)),
        "nesting_limit": MAX_NESTING,
    }


def decode_envelope(data: bytes) -> Envelope:
    try:
        with schemas.envelope.Envelope.from_bytes(data, **_limits(data)) as reader:
            return _read_envelope(reader)
    except DECODE_EXCEPTIONS as exc:
        raise RemoteProtocolError("malformed envelope") from exc


# --- delivery-failure notices (payload of a deliveryFailed envelope) --------------------------

MAX_UNDELIVERED = 1024


class FailureReason(enum.Enum):
    EXPIRED = "expired"


@dataclass(frozen=True)
class Undelivered:
    id: bytes
    recipient: bytes  # the mailbox it was for


@dataclass(frozen=True)
class DeliveryFailure:
    """What a relay dropped undelivered, told to the node that delivered it."""

    reason: FailureReason
    envelopes: tuple[Undelivered, ...]


_REASONS_BY_ORDINAL = {
    ordinal: FailureReason(name)
    for name, ordinal in schemas.envelope.DeliveryFailure.Reason.schema.enumerants.items()
}


def encode_delivery_failure(failure: DeliveryFailure) -> bytes:
    if len(failure.envelopes) > MAX_UNDELIVERED:
        raise LocalProtocolError(f"at most {MAX_UNDELIVERED} envelopes in one failure notice")
    msg = schemas.envelope.DeliveryFailure.new_message()
    msg.reason = failure.reason.value
    items = msg.init("envelopes", len(failure.envelopes))
    for i, gone in enumerate(failure.envelopes):
        items[i].id = gone.id
        items[i].recipient = gone.recipient
    return bytes(msg.to_bytes())


def decode_delivery_failure(data: bytes) -> DeliveryFailure:
    """Parse a deliveryFailed payload; :class:`RemoteProtocolError` on anything malformed,
    an unknown reason, more than :data:`MAX_UNDELIVERED` entries or a wrong-sized id."""
    try:
        with schemas.envelope.DeliveryFailure.from_bytes(data, **_limits(data)) as msg:
            reason = _REASONS_BY_ORDINAL.get(int(msg.reason.raw))
            if reason is None:
                raise RemoteProtocolError("failure notice has an unknown reason")
            if len(msg.envelopes) > MAX_UNDELIVERED:
                raise RemoteProtocolError(f"more than {MAX_UNDELIVERED} envelopes in a notice")
            gone = tuple(Undelivered(bytes(e.id), bytes(e.recipient)) for e in msg.envelopes)
    except DECODE_EXCEPTIONS as exc:
        raise RemoteProtocolError("malformed failure notice") from exc
    if any(len(g.id) != ENVELOPE_ID_SIZE or len(g.recipient) != MAILBOX_SIZE for g in gone):
        raise RemoteProtocolError("failure notice names a malformed envelope id or mailbox")
    return DeliveryFailure(reason, gone)


# --- requests -------------------------------------------------------------------------------


def encode_request(req: Request) -> bytes:
    msg = schemas.rpc.Request.new_message()
    match req:
        case Deliver(envelopes, failure_notice):
            p = msg.init("deliver")
            _fill_envelopes(p, "envelopes", envelopes)
            p.failureNotice = failure_notice
        case Fetch(mailbox, cursor, limit):
            p = msg.init("fetch")
            p.mailbox = mailbox
            p.cursor = cursor
            p.limit = limit
        case Ack(mailbox, ids):
            p = msg.init("ack")
            p.mailbox = mailbox
            lst = p.init("ids", len(ids))
            for i, item in enumerate(ids):
                lst[i] = item
        case FetchKeyPackage(identity):
            msg.init("fetchKeyPackage").identity = identity
        case Wait(mailbox, cursor, limit, timeout_ms):
            p = msg.init("wait")
            p.mailbox = mailbox
            p.cursor = cursor
            p.limit = limit
            p.timeoutMs = timeout_ms
        case RegisterStart(username, request):
            p = msg.init("registerStart")
            p.username = username
            p.request = request
        case RegisterFinish(username, upload):
            p = msg.init("registerFinish")
            p.username = username
            p.upload = upload
        case LoginStart(username, request):
            p = msg.init("loginStart")
            p.username = username
            p.request = request
        case LoginFinish(login_id, finalization):
            p = msg.init("loginFinish")
            p.loginId = login_id
            p.finalization = finalization
        case Authenticate(token):
            msg.init("authenticate").token = token
        case Logout(token):
            msg.init("logout").token = token
        case PublishKeyPackages(key_packages, last_resort):
            if len(key_packages) + len(last_resort) > MAX_PUBLISH_KEY_PACKAGES:
                raise LocalProtocolError(
                    f"at most {MAX_PUBLISH_KEY_PACKAGES} KeyPackages in one publish"
                )
            p = msg.init("publishKeyPackages")
            _fill_data(p, "keyPackages", key_packages)
            _fill_data(p, "lastResort", last_resort)
        case ResolveUser(username):
            msg.init("resolveUser").username = username
        case ResolveIdentity(identity):
            msg.init("resolveIdentity").identity = identity
    return bytes(msg.to_bytes())


def _fill_data(builder: Any, field: str, items: Sequence[bytes]) -> None:
    lst = builder.init(field, len(items))
    for i, item in enumerate(items):
        lst[i] = item


def decode_request(data: bytes) -> Request:
    """Parse one request frame. Raises :class:`RemoteProtocolError` on anything malformed."""
    try:
        with schemas.rpc.Request.from_bytes(bytes(data), **_limits(data)) as msg:
            which = _method_of(msg)
            if which == "deliver":
                d = msg.deliver
                return Deliver(tuple(_read_envelope(e) for e in d.envelopes), bool(d.failureNotice))
            if which == "fetch":
                p = msg.fetch
                return Fetch(mailbox=bytes(p.mailbox), cursor=int(p.cursor), limit=int(p.limit))
            if which == "ack":
                p = msg.ack
                return Ack(mailbox=bytes(p.mailbox), ids=tuple(bytes(i) for i in p.ids))
            if which == "fetchKeyPackage":
                return FetchKeyPackage(bytes(msg.fetchKeyPackage.identity))
            if which == "wait":
                w = msg.wait
                return Wait(bytes(w.mailbox), int(w.cursor), int(w.limit), int(w.timeoutMs))
            if which == "registerStart":
                p = msg.registerStart
                return RegisterStart(str(p.username), bytes(p.request))
            if which == "registerFinish":
                p = msg.registerFinish
                return RegisterFinish(str(p.username), bytes(p.upload))
            if which == "loginStart":
                p = msg.loginStart
                return LoginStart(str(p.username), bytes(p.request))
            if which == "loginFinish":
                p = msg.loginFinish
                return LoginFinish(bytes(p.loginId), bytes(p.finalization))
            if which == "authenticate":
                return Authenticate(bytes(msg.authenticate.token))
            if which == "logout":
                return Logout(bytes(msg.logout.token))
            if which == "publishKeyPackages":
                p = msg.publishKeyPackages
                single, last = p.keyPackages, p.lastResort
                # Counted before any is copied: the frame limit bounds the bytes, this the work.
                if len(single) + len(last) > MAX_PUBLISH_KEY_PACKAGES:
                    raise RemoteProtocolError(
                        f"more than {MAX_PUBLISH_KEY_PACKAGES} KeyPackages in one publish"
                    )
                return PublishKeyPackages(
                    tuple(bytes(kp) for kp in single), tuple(bytes(kp) for kp in last)
                )
            if which == "resolveUser":
                return ResolveUser(str(msg.resolveUser.username))
            if which == "resolveIdentity":
                return ResolveIdentity(bytes(msg.resolveIdentity.identity))
    except UnknownMethodError:
        raise
    except DECODE_EXCEPTIONS as exc:
        raise RemoteProtocolError("malformed request") from exc
    raise UnknownMethodError("request names an unknown method")


def _method_of(msg: Any) -> str:
    try:
        ordinal = int(msg._which().raw)
    except (RuntimeError, capnp.KjException) as exc:
        # pycapnp cannot even name a discriminant its schema lacks ("Member was null").
        raise UnknownMethodError("request names an unknown method") from exc
    which = _REQUEST_METHODS.get(ordinal)
    if which is None:
        raise UnknownMethodError("request names an unknown method")
    return which


_REQUEST_METHODS: dict[int, str] = {
    field.discriminantValue: name
    for name, field in (
        (name, schemas.rpc.Request.schema.fields[name].proto)
        for name in schemas.rpc.Request.schema.union_fields
    )
}


# --- responses ------------------------------------------------------------------------------


def encode_response(resp: Response) -> bytes:
    msg = schemas.rpc.Response.new_message()
    match resp:
        case ErrorResult(code, message):
            e = msg.init("error")
            e.code = _ERROR_CODE_NAMES[code]
            e.message = message[:200]
        case DeliverResult(accepted):
            lst = msg.init("deliver").init("accepted", len(accepted))
            for i, item in enumerate(accepted):
                lst[i] = item
        case FetchResult(envelopes, cursor, key_packages_low):
            p = msg.init("fetch")
            _fill_envelopes(p, "envelopes", envelopes)
            p.cursor = cursor
            p.keyPackagesLow = key_packages_low
        case AckResult(removed):
            msg.init("ack").removed = removed
        case FetchKeyPackageResult(key_package, more):
            if len(more) >= MAX_KEY_PACKAGES:
                raise LocalProtocolError(f"at most {MAX_KEY_PACKAGES} KeyPackages in one answer")
            p = msg.init("fetchKeyPackage")
            p.keyPackage = key_package
            lst = p.init("moreKeyPackages", len(more))
            for i, item in enumerate(more):
                lst[i] = item
        case RegisterStartResult(response):
            msg.init("registerStart").response = response
        case RegisterFinishResult():
            msg.init("registerFinish")
        case LoginStartResult(login_id, response):
            p = msg.init("loginStart")
            p.loginId = login_id
            p.response = response
        case SessionResult(token, expires_at_ms):
            p = msg.init("loginFinish")
            p.token = token
            p.expiresAtMs = expires_at_ms
        case SessionInfo(expires_at_ms):
            msg.init("authenticate").expiresAtMs = expires_at_ms
        case LogoutResult():
            msg.init("logout")
        case PublishKeyPackagesResult(counts, max_per_suite):
            if len(counts) > MAX_SUITE_COUNTS:
                raise LocalProtocolError(f"at most {MAX_SUITE_COUNTS} suites in one answer")
            p = msg.init("publishKeyPackages")
            lst = p.init("counts", len(counts))
            for i, count in enumerate(counts):
                lst[i].suite = count.suite
                lst[i].singleUse = count.single_use
                lst[i].lastResort = count.last_resort
            p.maxPerSuite = max_per_suite
        case ResolveUserResult(identity):
            msg.init("resolveUser").identity = identity
        case ResolveIdentityResult(username):
            msg.init("resolveIdentity").username = username
    return bytes(msg.to_bytes())


_ERROR_CODE_NAMES = {
    ErrorCode.INTERNAL: "internal",
    ErrorCode.MALFORMED_REQUEST: "malformedRequest",
    ErrorCode.FRAME_TOO_LARGE: "frameTooLarge",
    ErrorCode.UNKNOWN_METHOD: "unknownMethod",
    ErrorCode.UNAUTHORIZED: "unauthorized",
    ErrorCode.NOT_FOUND: "notFound",
    ErrorCode.LIMIT_EXCEEDED: "limitExceeded",
    ErrorCode.TIMEOUT: "timeout",
    ErrorCode.RATE_LIMITED: "rateLimited",
    ErrorCode.QUOTA_EXCEEDED: "quotaExceeded",
    ErrorCode.TOO_LARGE: "tooLarge",
    ErrorCode.STORE_FULL: "storeFull",
    ErrorCode.BUSY: "busy",
    ErrorCode.UNAUTHENTICATED: "unauthenticated",
    ErrorCode.CONFLICT: "conflict",
    ErrorCode.SEALED_REFUSED: "sealedRefused",
}
_KNOWN_CODES = frozenset(int(code) for code in ErrorCode)


def decode_response(data: bytes) -> Response:
    """Parse one response frame. Raises :class:`RemoteProtocolError` on anything malformed."""
    try:
        with schemas.rpc.Response.from_bytes(bytes(data), **_limits(data)) as msg:
            which = str(msg.which())
            if which == "error":
                raw_code = int(msg.error.code.raw)
                code = ErrorCode(raw_code) if raw_code in _KNOWN_CODES else ErrorCode.INTERNAL
                return ErrorResult(code, str(msg.error.message))
            if which == "deliver":
                return DeliverResult(tuple(bytes(i) for i in msg.deliver.accepted))
            if which == "fetch":
                p = msg.fetch
                return FetchResult(
                    tuple(_read_envelope(e) for e in p.envelopes),
                    int(p.cursor),
                    bool(p.keyPackagesLow),
                )
            if which == "ack":
                return AckResult(int(msg.ack.removed))
            if which == "fetchKeyPackage":
                p = msg.fetchKeyPackage
                more = p.moreKeyPackages
                # Counted before any is copied: the frame limit bounds the bytes, this the work.
                if len(more) >= MAX_KEY_PACKAGES:
                    raise RemoteProtocolError(
                        f"more than {MAX_KEY_PACKAGES} KeyPackages in one answer"
                    )
                return FetchKeyPackageResult(bytes(p.keyPackage), tuple(bytes(kp) for kp in more))
            if which == "registerStart":
                return RegisterStartResult(bytes(msg.registerStart.response))
            if which == "registerFinish":
                return RegisterFinishResult()
            if which == "loginStart":
                p = msg.loginStart
                return LoginStartResult(bytes(p.loginId), bytes(p.response))
            if which == "loginFinish":
                p = msg.loginFinish
                return SessionResult(bytes(p.token), int(p.expiresAtMs))
            if which == "authenticate":
                return SessionInfo(int(msg.authenticate.expiresAtMs))
            if which == "logout":
                return LogoutResult()
            if which == "publishKeyPackages":
                p = msg.publishKeyPackages
                counts = p.counts
                if len(counts) > MAX_SUITE_COUNTS:
                    raise RemoteProtocolError(f"more than {MAX_SUITE_COUNTS} suites in one answer")
                return PublishKeyPackagesResult(
                    tuple(
                        KeyPackageCount(int(c.suite), int(c.singleUse), bool(c.lastResort))
                        for c in counts
                    ),
                    int(p.maxPerSuite),
                )
            if which == "resolveUser":
                return ResolveUserResult(bytes(msg.resolveUser.identity))
            if which == "resolveIdentity":
                return ResolveIdentityResult(str(msg.resolveIdentity.username))
    except DECODE_EXCEPTIONS as exc:
        raise RemoteProtocolError("malformed response") from exc
    raise RemoteProtocolError("response of an unknown kind")
