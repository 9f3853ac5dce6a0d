from __future__ import annotations

import random
from pathlib import Path

import pytest

from node.core import wire
from node.core.errors import ErrorCode, LocalProtocolError, RemoteProtocolError


def envelope(kind: wire.EnvelopeKind = wire.EnvelopeKind.APPLICATION) -> wire.Envelope:
    return wire.Envelope(
        id=bytes(range(16)),
        recipient=b"\x07" * 32,
        kind=kind,
        payload=b"mls bytes" * 10,
        group_id=b"group-1",
        created_at_ms=1_700_000_000_000,
    )


@pytest.mark.parametrize("kind", list(wire.EnvelopeKind))
def test_envelope_round_trip(kind: wire.EnvelopeKind) -> None:
    env = envelope(kind)
    assert wire.decode_envelope(wire.encode_envelope(env)) == env


@pytest.mark.parametrize(
    "request_",
    [
        wire.Deliver((envelope(), envelope(wire.EnvelopeKind.WELCOME))),
        wire.Fetch(mailbox=b"\x01" * 32, cursor=42, limit=10),
        wire.Ack(mailbox=b"\x01" * 32, ids=(b"a" * 16, b"b" * 16)),
        wire.FetchKeyPackage(identity=b"\x02" * 32),
    ],
)
def test_request_round_trip(request_: wire.Request) -> None:
    assert wire.decode_request(wire.encode_request(request_)) == request_


@pytest.mark.parametrize(
    "response",
    [
        wire.ErrorResult(ErrorCode.UNAUTHORIZED, "no"),
        wire.DeliverResult((b"a" * 16,)),
        wire.FetchResult((envelope(),), cursor=7),
        wire.AckResult(3),
        wire.FetchKeyPackageResult(b"kp"),
        wire.FetchKeyPackageResult(b"x-wing kp", (b"0x0001 kp",)),
    ],
)
def test_response_round_trip(response: wire.Response) -> None:
    assert wire.decode_response(wire.encode_response(response)) == response


def test_a_key_package_answer_of_the_first_version_still_reads() -> None:
    import schemas

    msg = schemas.rpc.Response.new_message()
    msg.init("fetchKeyPackage").keyPackage = b"only kp"
    answer = wire.decode_response(msg.to_bytes())
    assert isinstance(answer, wire.FetchKeyPackageResult)
    assert answer.key_packages == (b"only kp",)
    # And an old reader finds the preferred KeyPackage where it always was.
    data = wire.encode_response(wire.FetchKeyPackageResult(b"first", (b"second",)))
    with schemas.rpc.Response.from_bytes(data) as reader:
        assert bytes(reader.fetchKeyPackage.keyPackage) == b"first"


def test_a_key_package_answer_holds_at_most_a_few() -> None:
    import schemas

    msg = schemas.rpc.Response.new_message()
    p = msg.init("fetchKeyPackage")
    p.keyPackage = b"kp"
    more = p.init("moreKeyPackages", wire.MAX_KEY_PACKAGES)
    for i in range(wire.MAX_KEY_PACKAGES):
        more[i] = b"kp%d" % i
    with pytest.raises(RemoteProtocolError, match="KeyPackages in one answer"):
        wire.decode_response(msg.to_bytes())
    with pytest.raises(LocalProtocolError):
        wire.encode_response(wire.FetchKeyPackageResult(b"kp", (b"more",) * 4))
    three = wire.FetchKeyPackageResult(b"kp", (b"more",) * 3)
    assert wire.decode_response(wire.encode_response(three)) == three


def test_envelope_with_wrong_id_length_is_refused_when_decoded() -> None:
    import schemas

    msg = schemas.envelope.Envelope.new_message(id=b"short", recipient=b"\x07" * 32)
    with pytest.raises(RemoteProtocolError, match="16 bytes"):
        wire.decode_envelope(msg.to_bytes())


def test_mutated_requests_never_escape_as_anything_but_protocol_errors() -> None:
    rng = random.Random(1234)
    base = bytearray(wire.encode_request(wire.Deliver((envelope(),))))
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(2000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        try:
            wire.decode_request(bytes(data))
            outcomes["ok"] += 1
        except RemoteProtocolError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0  # the fuzzer did reach the error paths


def test_garbage_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        wire.decode_request(b"\xff" * 40)
    with pytest.raises(RemoteProtocolError):
        wire.decode_response(b"")


def test_error_codes_match_the_schema_ordinals() -> None:
    import schemas
    from node.core.wire import _ERROR_CODE_NAMES

    ordinals = schemas.rpc.Error.Code.schema.enumerants
    assert {name: ordinals[name] for name in _ERROR_CODE_NAMES.values()} == {
        name: int(code) for code, name in _ERROR_CODE_NAMES.items()
    }
    assert set(ordinals) == set(_ERROR_CODE_NAMES.values())


def test_a_method_from_a_newer_schema_is_reported_as_unknown(tmp_path: Path) -> None:
    import capnp

    import schemas

    # A "newer" rpc.capnp: the same layout plus one more method in the Request union. File ids
    # must differ from the loaded schemas' (pycapnp aborts the process on a clash).
    envelope_text = (schemas.SCHEMA_DIR / "envelope.capnp").read_text()
    (tmp_path / "envelope.capnp").write_text(
        envelope_text.replace("@0xace5c86793aa8786;", "@0xace5c86793aa8787;")
    )
    text = (schemas.SCHEMA_DIR / "rpc.capnp").read_text()
    text = text.replace("@0xa6bc50ab19fa0164;", "@0xa6bc50ab19fa0165;")
    # After the Request union's last member, whatever its ordinal (the union grows).
    n = len(schemas.rpc.Request.schema.union_fields)
    last = next(line for line in text.splitlines(keepends=True) if f" @{n - 1} :" in line)
    text = text.replace(last, last + f"    later @{n} :Data;\n", 1)
    (tmp_path / "rpc.capnp").write_text(text)
    newer = capnp.load(str(tmp_path / "rpc.capnp"), imports=[str(tmp_path)])
    message = newer.Request.new_message()
    message.later = b"x"
    with pytest.raises(wire.UnknownMethodError):
        wire.decode_request(message.to_bytes())


def test_wait_round_trip() -> None:
    request = wire.Wait(mailbox=b"\x01" * 32, cursor=9, limit=5, timeout_ms=25_000)
    assert wire.decode_request(wire.encode_request(request)) == request


def test_a_failure_notice_round_trips_and_a_malformed_one_is_refused() -> None:
    import schemas

    gone = tuple(wire.Undelivered(bytes([n]) * 16, b"\x07" * 32) for n in range(3))
    failure = wire.DeliveryFailure(wire.FailureReason.EXPIRED, gone)
    assert wire.decode_delivery_failure(wire.encode_delivery_failure(failure)) == failure
    assert wire.decode_request(wire.encode_request(wire.Deliver((envelope(),), True))) == (
        wire.Deliver((envelope(),), failure_notice=True)
    )
    too_many = wire.DeliveryFailure(wire.FailureReason.EXPIRED, gone[:1] * 1025)
    with pytest.raises(LocalProtocolError):
        wire.encode_delivery_failure(too_many)

    def raw(count: int, id_size: int = 16, reason: int = 0) -> bytes:
        msg = schemas.envelope.DeliveryFailure.new_message()
        msg.reason = "expired"
        items = msg.init("envelopes", count)
        for i in range(count):
            items[i].id = b"i" * id_size
            items[i].recipient = b"r" * 32
        data = bytearray(msg.to_bytes())
        if reason:
            data[16] = reason  # past the segment table and root pointer: the enum
        return bytes(data)

    assert len(wire.decode_delivery_failure(raw(1024)).envelopes) == 1024
    for bad in (raw(1025), raw(1, id_size=15), raw(1, reason=9), b"\x00" * 3):
        with pytest.raises(RemoteProtocolError):
            wire.decode_delivery_failure(bad)
