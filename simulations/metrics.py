"""What a simulation run measured, and the summary a report prints.

Every number is counted from what happened in the run — a message counts as delivered when the
recipient's node handed it to its user, a lookup as successful when it returned the owner's
newest record — never from what the scenario intended. A metric the scenario does not exercise
is ``None`` (no groups: no delivery ratio), never a made-up 0 or 1.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Lookup", "Metrics", "Sent", "percentile"]


@dataclass(frozen=True)
class Sent:
    """One message a member sent, and to whom it should arrive."""

    message_id: str
    group: int
    sender: int
    at: float
    recipients: frozenset[int]


@dataclass(frozen=True)
class Lookup:
    ok: bool
    hops: int
    queried: int
    duration_s: float


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (no interpolation: every value reported was observed)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Metrics:
    sent: dict[str, Sent] = field(default_factory=dict)
    # (message id, recipient) -> (arrival time, "direct" | "relay")
    arrived: dict[tuple[str, int], tuple[float, str]] = field(default_factory=dict)
    duplicates: int = 0  # a message shown twice to one user (must be 0)
    lost: dict[tuple[str, int], str] = field(default_factory=dict)  # filled by the run's end
    lookups: list[Lookup] = field(default_factory=list)
    convergence_s: list[float] = field(default_factory=list)
    unconverged_changes: int = 0
    membership_changes: int = 0
    forks: int | None = None
    wire_bytes: int = 0
    wire_datagrams: int = 0
    relay_envelopes: int = 0  # envelopes relays accepted
    relay_bytes: int = 0
    relay_peak_stored: int = 0  # envelopes held at once, all relays
    departures: Counter[str] = field(default_factory=Counter)  # "crash" / "leave"
    send_failures: Counter[str] = field(default_factory=Counter)

    # --- recording --------------------------------------------------------------------------

    def message_sent(self, sent: Sent) -> None:
        self.sent[sent.message_id] = sent

    def message_arrived(self, message_id: str, recipient: int, at: float, path: str) -> None:
        key = (message_id, recipient)
        if key in self.arrived:
            self.duplicates += 1
            return
        if message_id in self.sent:
            self.arrived[key] = (at, path)

    def undelivered(self) -> Iterable[tuple[str, int]]:
        for message_id, sent in self.sent.items():
            for recipient in sorted(sent.recipients):
                if (message_id, recipient) not in self.arrived:
                    yield message_id, recipient

    # --- summary ----------------------------------------------------------------------------

    def expected(self) -> int:
        return sum(len(s.recipients) for s in self.sent.values())

    def latencies_ms(self) -> list[float]:
        return [
            (at - self.sent[message_id].at) * 1000
            for (message_id, _), (at, _) in self.arrived.items()
        ]

    def latencies_by_path_ms(self) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {"direct": [], "relay": []}
        for (message_id, _), (at, path) in self.arrived.items():
            found.setdefault(path, []).append((at - self.sent[message_id].at) * 1000)
        return found

    def summary(self) -> dict[str, Any]:
        """The metrics object of a report (``--json``'s ``metrics``); None where unexercised."""
        expected = self.expected()
        delivered = len(self.arrived)
        latencies = self.latencies_ms()
        direct = sum(1 for _, path in self.arrived.values() if path == "direct")
        lookups_ok = [x for x in self.lookups if x.ok]
        return {
            "messages_sent": len(self.sent),
            "deliveries_expected": expected,
            "deliveries": delivered,
            "delivery_ratio": _ratio(delivered, expected),
            "lost": len(self.lost),
            "lost_by_cause": dict(sorted(Counter(self.lost.values()).items())),
            "duplicates": self.duplicates if expected else None,
            "latency_ms": {
                "p50": _round(percentile(latencies, 0.50)),
                "p95": _round(percentile(latencies, 0.95)),
                "p99": _round(percentile(latencies, 0.99)),
                "mean": _round(statistics.fmean(latencies)) if latencies else None,
            },
            "latency_ms_by_path": {
                path: {"p50": _round(percentile(values, 0.5)), "count": len(values)}
                for path, values in sorted(self.latencies_by_path_ms().items())
            },
            "direct_share": _ratio(direct, delivered),
            "relay_share": _ratio(delivered - direct, delivered),
            "relay_envelopes": self.relay_envelopes if self.relay_envelopes or expected else None,
            "relay_bytes": self.relay_bytes if self.relay_envelopes or expected else None,
            "relay_peak_stored": self.relay_peak_stored if expected else None,
            "lookups": len(self.lookups) or None,
            "lookup_success": _ratio(len(lookups_ok), len(self.lookups)),
            "lookup_hops_mean": (
                _round(statistics.fmean(x.hops for x in lookups_ok)) if lookups_ok else None
            ),
            "lookup_hops_max": max((x.hops for x in lookups_ok), default=None),
            "lookup_queried_mean": (
                _round(statistics.fmean(x.queried for x in lookups_ok)) if lookups_ok else None
            ),
            "wire_bytes": self.wire_bytes,
            "bytes_per_delivered_message": (
                _round(self.wire_bytes / delivered) if delivered else None
            ),
            "membership_changes": self.membership_changes if expected else None,
            "convergence_s": {
                "p50": _round(percentile(self.convergence_s, 0.50)),
                "max": _round(max(self.convergence_s, default=math.nan))
                if self.convergence_s
                else None,
                "unconverged": self.unconverged_changes if self.membership_changes else None,
            },
            "forks": self.forks,
            "departures": dict(sorted(self.departures.items())) or None,
        }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
