"""What an operator watches: the relay's counters, gauges and call latencies in the Prometheus
text format, and the answers of its small local HTTP port (``/metrics``, ``/healthz``).

Nothing here opens a socket: ``relay.cli`` serves :meth:`RelayMetrics.http_answer` on the
``metrics_listen`` address. Counters are read from ``Relay.metrics()`` when scraped, so a scrape
costs nothing between scrapes. No label carries a mailbox, an identity or an address: the port
is for the operator, and what it publishes must not map who talks to whom.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from node.core import wire
from node.core.errors import ErrorCode

__all__ = ["GAUGES", "MAX_REQUEST_HEAD", "PREFIX", "RelayMetrics", "method_name"]

PREFIX = "qpc_relay"
MAX_REQUEST_HEAD = 8192  # one GET line and a few headers; a scraper sends far less

# Names in ``Relay.metrics()`` that say what is held now; every other name counts events.
GAUGES = frozenset(
    {
        "connections_inbound",
        "connections_half_open",
        "connections_outbound",
        "request_streams_open",
        "request_bytes_buffered",
        "stream_bytes_out_of_order",
        "mailboxes",
        "store_bytes",
        "accounts",
        "sessions",
        "pending_logins",
    }
)
# Counters the service keeps that are not refusals of one call.
_NOT_EVENTS = {"envelopes_in", "envelopes_expired"}
# Refusals made below the service (the transport), which never reach the call observer, by
# the error code the caller gets; "dropped" is a packet or connection refused without an answer.
_TRANSPORT_REFUSALS = {
    "frame_too_large": "frameTooLarge",
    "malformed_request": "malformedRequest",
    "unknown_method": "unknownMethod",
    "stream_refused_connection_calls": "busy",
    "stream_refused_total_calls": "busy",
    "stream_refused_connection_bytes": "busy",
    "stream_refused_total_bytes": "busy",
    "stream_read_timeout": "timeout",
    "connection_closed_stalled": "dropped",
    "connection_refused_identity": "dropped",
    "initial_refused_half_open": "dropped",
    "initial_refused_connections": "dropped",
    "initial_refused_host": "dropped",
    "retry_token_invalid": "dropped",
    "handshake_timeout": "dropped",
}
_AUTH_FAILURES = {
    "refused_login": "wrong_password",
    "refused_login_unknown": "unknown_user",
    "refused_session": "bad_token",
    "refused_unauthenticated": "no_session",
    "refused_login_rate": "rate_limited",
}
# Call latency: from a local fetch (~1 ms) to the longest long poll (25 s) and the deadline.
_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    40.0,
)


def method_name(request: wire.Request) -> str:
    """``Deliver`` → ``deliver``, ``FetchKeyPackage`` → ``fetch_key_package``."""
    name = type(request).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _code_name(code: ErrorCode | int) -> str:
    try:
        words = ErrorCode(code).name.lower().split("_")
    except ValueError:
        return "unknown"
    return words[0] + "".join(w.title() for w in words[1:])


class _Snapshot(Collector):
    """Reads the relay's counters and gauges at scrape time."""

    def __init__(self, owner: RelayMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterable[Metric]:
        values = self._owner.source()
        yield _counter("envelopes_in", "Envelopes accepted by deliver.", values)
        yield _counter("envelopes_expired", "Envelopes deleted at the end of their TTL.", values)
        auth = CounterMetricFamily(
            f"{PREFIX}_auth_failures", "Failed logins and refused sessions.", labels=["reason"]
        )
        events = CounterMetricFamily(
            f"{PREFIX}_events", "Everything else the relay counts, by trigger.", labels=["event"]
        )
        transport = CounterMetricFamily(
            f"{PREFIX}_transport_refusals",
            "Streams, frames and connections refused below the service, by the code sent.",
            labels=["code", "trigger"],
        )
        for name in sorted(values):
            if name in GAUGES or name in _NOT_EVENTS:
                continue
            if name in _AUTH_FAILURES:
                auth.add_metric([_AUTH_FAILURES[name]], values[name])
            if name in _TRANSPORT_REFUSALS:
                transport.add_metric([_TRANSPORT_REFUSALS[name], name], values[name])
            else:
                events.add_metric([name], values[name])
        refusals = CounterMetricFamily(
            f"{PREFIX}_refusals",
            "Calls, streams and connections refused, by the error code the caller got "
            '("dropped": refused without an answer).',
            labels=["code"],
        )
        by_code = Tally(self._owner.refused)
        for name, code in _TRANSPORT_REFUSALS.items():
            by_code[code] += values.get(name, 0)
        for code in sorted(by_code):
            refusals.add_metric([code], by_code[code])
        yield auth
        yield events
        yield transport
        yield refusals
        for name in sorted(GAUGES):
            gauge = GaugeMetricFamily(f"{PREFIX}_{name}", _GAUGE_HELP.get(name, name))
            gauge.add_metric([], values.get(name, 0))
            yield gauge
        depth = self._owner.depth()
        if depth is not None:
            stored = GaugeMetricFamily(
                f"{PREFIX}_mailbox_depth_envelopes",
                "Envelopes waiting in all mailboxes (total), and in the fullest one (max).",
                labels=["of"],
            )
            stored.add_metric(["total"], depth[0])
            stored.add_metric(["max"], depth[1])
            yield stored


_GAUGE_HELP = {
    "connections_inbound": "Inbound QUIC connections.",
    "connections_half_open": "Inbound connections whose handshake has not completed.",
    "connections_outbound": "Connections this relay dialed.",
    "request_streams_open": "Request streams being read or served.",
    "request_bytes_buffered": "Request bytes reserved by streams being read or served.",
    "stream_bytes_out_of_order": "Stream bytes held by aioquic behind gaps.",
    "mailboxes": "Mailboxes holding at least one envelope.",
    "store_bytes": "Encoded envelope bytes in the store.",
    "accounts": "Accounts.",
    "sessions": "Live sessions.",
    "pending_logins": "Logins started and not finished.",
}


def _counter(name: str, doc: str, values: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc)
    family.add_metric([], values.get(name, 0))
    return family


class RelayMetrics:
    """The relay's Prometheus registry.

    :param source: ``Relay.metrics`` (counters and gauges by name), read at each scrape.
    :param depth: (envelopes stored, envelopes in the fullest mailbox), or None when unknown.
    """

    def __init__(
        self,
        source: Callable[[], Mapping[str, int]],
        depth: Callable[[], tuple[int, int] | None] | None = None,
    ) -> None:
        self.source = source
        self.depth: Callable[[], tuple[int, int] | None] = depth or (lambda: None)
        self.healthy = True
        self.refused: Tally[str] = Tally()
        self.registry = CollectorRegistry(auto_describe=False)
        self._latency = Histogram(
            f"{PREFIX}_call_duration_seconds",
            "Time from a decoded request to its answer, by method (wait includes its long poll).",
            ["method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._calls = Counter(
            f"{PREFIX}_calls",
            'Calls answered by the service, by method and result ("ok" or the error code).',
            ["method", "result"],
            registry=self.registry,
        )
        self._out = Counter(
            f"{PREFIX}_envelopes_out", "Envelopes sent by fetch and wait.", registry=self.registry
        )
        self._acked = Counter(
            f"{PREFIX}_envelopes_acked",
            "Envelopes removed by their owner's ack.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_calls_in_flight", "Calls being served now.", registry=self.registry
        )
        self.registry.register(_Snapshot(self))
        # Per call, a label lookup takes a lock and builds a key: the children are kept, one
        # per request type and (method, result), both fixed sets (the wire's calls and codes).
        self._latency_of: dict[type, Histogram] = {}
        self._calls_of: dict[tuple[type, str], Counter] = {}

    def observe(self, request: wire.Request, response: wire.Response, seconds: float) -> None:
        """The service's call observer (``RelayService.observer``)."""
        kind = type(request)
        latency = self._latency_of.get(kind)
        if latency is None:
            latency = self._latency_of[kind] = self._latency.labels(method_name(request))
        latency.observe(seconds)
        if isinstance(response, wire.ErrorResult):
            result = _code_name(response.code)
            self.refused[result] += 1
        else:
            result = "ok"
            if isinstance(response, wire.FetchResult):
                self._out.inc(len(response.envelopes))
            elif isinstance(response, wire.AckResult):
                self._acked.inc(response.removed)
        calls = self._calls_of.get((kind, result))
        if calls is None:
            calls = self._calls_of[kind, result] = self._calls.labels(method_name(request), result)
        calls.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def http_answer(self, head: bytes) -> bytes:
        """The whole HTTP/1.0 answer to a request whose head (request line and headers) is
        ``head``: ``GET /metrics`` and ``GET /healthz`` (503 once the relay is stopping);
        anything else is refused."""
        line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _answer(400, b"bad request\n")
        verb, target = parts[0], parts[1].split(b"?", 1)[0]
        if verb != b"GET":
            return _answer(405, b"method not allowed\n")
        if target == b"/metrics":
            return _answer(200, self.render(), CONTENT_TYPE_PLAIN_0_0_4)
        if target == b"/healthz":
            if self.healthy:
                return _answer(200, b"ok\n")
            return _answer(503, b"shutting down\n")
        return _answer(404, b"not found\n")


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS[503] = "Service Unavailable"


def _answer(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.0 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
