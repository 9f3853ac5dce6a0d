"""Seeded randomness for the libraries that draw their own: aioquic and rpcudp.

The node code takes all its randomness from its ``Runtime``, but the libraries under it do
not: aioquic draws connection IDs, stateless-reset tokens, TLS client/server randoms and path
challenges from ``os.urandom`` and generates its ECDHE key shares (P-256, P-384, X25519, X448:
a client offers all four) with ``cryptography``'s own generator; rpcudp draws message ids from
``os.urandom``. None of that changes a datagram's *size* (so traffic counters repeat anyway),
but it changes every byte, so two runs would not be identical bit for bit.

:func:`seeded_libraries` replaces, only while it is active, the ``os``, ``x25519``, ``x448``
and ``ec`` names *inside those library modules* with proxies that draw from a seeded RNG. The
real modules are untouched, so nothing else in the process (including the real runtime or a
test outside the simulation) is affected. Which RNG: the one in :data:`AMBIENT_RNG`, which a
:class:`~simulations.runtime.SimRuntime` sets in its node's context — so a node's draws come
from its own stream, and adding a node does not perturb the others — or else one fallback
stream seeded by the scenario (draws made outside any node's context, e.g. by a test's main
coroutine).

Ed25519 signatures (our certificates) are deterministic by construction (RFC 8032 §5.1.6);
ECDSA ones are not, and that is one reason the node uses Ed25519 certificates.

Order, too, is drawn from outside the seed where a library iterates a ``set`` of objects: their
hashes are memory addresses, so the order changes from process to process (and from run to run
in one process). aioquic's ``_write_application`` collects the streams it served into a ``set``
and appends them to its service queue in that set's order, so two calls in flight on one
connection went out in either order (seen in a 200-node run: the first differing datagram).
:func:`seeded_libraries` therefore also gives ``aioquic.quic.connection`` a ``set`` of its own,
:class:`InsertionOrderedSet`, which iterates in insertion order — the order aioquic served the
streams in, which is what its comment ("putting served ones at the end") means anyway.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
import types
from collections.abc import Iterable, Iterator, MutableSet
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519

__all__ = [
    "AMBIENT_RNG",
    "ORDERED_SET_MODULES",
    "PATCHED_MODULES",
    "InsertionOrderedSet",
    "ambient_bytes",
    "seeded_libraries",
]

T = TypeVar("T")

AMBIENT_RNG: contextvars.ContextVar[random.Random | None] = contextvars.ContextVar(
    "simulations_ambient_rng", default=None
)
"""The RNG library-internal draws come from in the current node's context."""

_fallback: random.Random | None = None

# Group orders (SEC 2 §2.4.2, §2.5.1, §2.6.1): a private scalar must lie in [1, n - 1].
_CURVE_ORDERS: dict[str, int] = {
    "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "secp384r1": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "secp521r1": int(
        "01FF" + "FFFFFFFF" * 7 + "FFFFFFFA"
        "51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}

PATCHED_MODULES = (
    "aioquic.tls",
    "aioquic.quic.connection",
    "aioquic.quic.packet",
    "aioquic.quic.retry",
    "rpcudp.protocol",
)
"""The modules whose ``os`` (and, for ``aioquic.tls``, key-generation) names are replaced."""


ORDERED_SET_MODULES = ("aioquic.quic.connection",)
"""The modules whose ``set`` is replaced by :class:`InsertionOrderedSet`."""

_MISSING = object()


class InsertionOrderedSet(MutableSet[T]):
    """A ``set`` that iterates in insertion order (a dict's keys), whatever its items' hashes."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._items: dict[T, None] = dict.fromkeys(items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, value: T) -> None:
        self._items[value] = None

    def discard(self, value: T) -> None:
        self._items.pop(value, None)

    def update(self, *others: Iterable[T]) -> None:
        for other in others:
            self._items.update(dict.fromkeys(other))

    def copy(self) -> InsertionOrderedSet[T]:
        return InsertionOrderedSet(self._items)

    def __repr__(self) -> str:
        return f"InsertionOrderedSet({list(self._items)!r})"


def ambient_bytes(n: int) -> bytes:
    """``n`` bytes from the current node's ambient RNG, else the scenario's fallback."""
    rng = AMBIENT_RNG.get()
    if rng is None:
        rng = _fallback
    if rng is None:
        raise RuntimeError("seeded randomness was asked for outside seeded_libraries()")
    return rng.randbytes(n)


class _Proxy(types.ModuleType):
    """A stand-in for a module: the given overrides, everything else from the real one."""

    def __init__(self, real: types.ModuleType, **overrides: Any) -> None:
        super().__init__(real.__name__, real.__doc__)
        self._real = real
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _x25519_generate() -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.from_private_bytes(ambient_bytes(32))


def _x448_generate() -> x448.X448PrivateKey:
    return x448.X448PrivateKey.from_private_bytes(ambient_bytes(56))


def _ec_generate(curve: ec.EllipticCurve, backend: Any = None) -> ec.EllipticCurvePrivateKey:
    order = _CURVE_ORDERS.get(curve.name)
    if order is None:
        raise ValueError(f"no seeded key generation for curve {curve.name}")
    width = (order.bit_length() + 7) // 8 + 8  # 64 extra bits make the modulo bias negligible
    scalar = int.from_bytes(ambient_bytes(width), "big") % (order - 1) + 1
    return ec.derive_private_key(scalar, curve)


def _proxies() -> dict[str, dict[str, Any]]:
    seeded_os = _Proxy(os, urandom=ambient_bytes)
    tls_names: dict[str, types.ModuleType] = {
        "os": seeded_os,
        "x25519": _Proxy(
            x25519,
            X25519PrivateKey=_Proxy(
                types.ModuleType("X25519PrivateKey"), generate=_x25519_generate
            ),
        ),
        "x448": _Proxy(
            x448,
            X448PrivateKey=_Proxy(types.ModuleType("X448PrivateKey"), generate=_x448_generate),
        ),
        "ec": _Proxy(ec, generate_private_key=_ec_generate),
    }
    names: dict[str, dict[str, Any]] = {
        name: (tls_names if name == "aioquic.tls" else {"os": seeded_os})
        for name in PATCHED_MODULES
    }
    for name in ORDERED_SET_MODULES:
        names.setdefault(name, {})["set"] = InsertionOrderedSet
    return names


@contextlib.contextmanager
def seeded_libraries(fallback_seed: int) -> Iterator[None]:
    """While active, aioquic and rpcudp draw from :data:`AMBIENT_RNG` (or a fallback stream
    seeded with ``fallback_seed``) instead of the operating system, and aioquic's connection
    module iterates its sets in insertion order.

    Not re-entrant and not thread-safe: one simulation per process at a time.
    """
    global _fallback
    import importlib

    if _fallback is not None:
        raise RuntimeError("seeded_libraries() is already active")
    saved: list[tuple[types.ModuleType, str, Any]] = []
    _fallback = random.Random(fallback_seed)  # noqa: S311 -- seeded on purpose
    try:
        for module_name, names in _proxies().items():
            module = importlib.import_module(module_name)
            for attr, proxy in names.items():
                # ``set`` is a builtin: the module has no name of its own to save.
                saved.append((module, attr, module.__dict__.get(attr, _MISSING)))
                setattr(module, attr, proxy)
        yield
    finally:
        for module, attr, original in reversed(saved):
            if original is _MISSING:
                delattr(module, attr)
            else:
                setattr(module, attr, original)
        _fallback = None
