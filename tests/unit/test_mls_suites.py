"""Which ciphersuite a new group uses, from what its invitees offer (``node.core.suites``)."""

from __future__ import annotations

import pytest

from node.core.suites import (
    OFFERED,
    X25519_AES128GCM,
    XWING,
    NoCommonSuiteError,
    SuiteChoice,
    choose,
    suite_name,
)

BOB, CAROL, DAVE = b"b" * 32, b"c" * 32, b"d" * 32
NAMES = {BOB: "bob", CAROL: "carol", DAVE: "dave"}


def test_x_wing_when_every_invitee_offers_it() -> None:
    both = {XWING, X25519_AES128GCM}
    assert choose({BOB: both, CAROL: {XWING}}) == SuiteChoice(XWING)
    assert choose({}) == SuiteChoice(XWING)
    assert choose({BOB: both}).describe(NAMES) == "X-Wing"


def test_0x0001_when_any_invitee_lacks_x_wing_and_it_says_who() -> None:
    both = {XWING, X25519_AES128GCM}
    choice = choose({BOB: {X25519_AES128GCM}, CAROL: both})
    assert choice == SuiteChoice(X25519_AES128GCM, (BOB,))
    assert choice.describe(NAMES) == "0x0001: bob offers no X-Wing"
    two = choose({BOB: {X25519_AES128GCM}, CAROL: both, DAVE: [X25519_AES128GCM]})
    assert two.describe(NAMES) == "0x0001: bob, dave offer no X-Wing"


def test_an_invitee_that_fits_no_common_suite_is_named() -> None:
    with pytest.raises(NoCommonSuiteError, match=r"^carol offers no KeyPackage for 0x0001$"):
        choose({BOB: {X25519_AES128GCM}, CAROL: {XWING}}, NAMES)
    with pytest.raises(NoCommonSuiteError, match=r"^bob offers no KeyPackage for X-Wing or 0x0001"):
        choose({BOB: {0x0003}}, NAMES)
    with pytest.raises(NoCommonSuiteError) as caught:
        choose({BOB: set()})
    assert caught.value.peer == BOB and caught.value.wanted == OFFERED


def test_suite_names() -> None:
    assert [suite_name(s) for s in (XWING, X25519_AES128GCM, 0x0003)] == [
        "X-Wing",
        "0x0001",
        "0x0003",
    ]
