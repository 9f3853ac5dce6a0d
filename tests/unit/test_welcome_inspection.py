"""Reading a Welcome before joining (``MlsClient.inspect_welcome``): who invites, to which
group, with whom, and the MLS state left exactly as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.core.identity import Identity
from node.mls import GroupError, MlsClient
from node.transport.runtime import RealRuntime


@pytest.fixture
def runtime() -> Iterator[RealRuntime]:
    made = RealRuntime("qpc-welcome-test")
    try:
        yield made
    finally:
        made.close()


def test_inspect_twice_then_join_still_works(tmp_path: Path, runtime: RealRuntime) -> None:
    alice, carol = MlsClient(Identity.generate(), runtime), MlsClient(Identity.generate(), runtime)
    bob_identity, key = Identity.generate(), b"k" * 32
    state = tmp_path / "bob.mls"
    bob = MlsClient(bob_identity, runtime, state, key)
    group = alice.create_group(b"room")
    _commit, welcome = group.commit([bob.key_package(), carol.key_package()])
    assert welcome is not None
    before = state.read_bytes()

    first = bob.inspect_welcome(welcome)
    again = bob.inspect_welcome(welcome)

    assert first == again
    assert first.group_id == b"room"
    assert first.sender == alice.identity
    assert first.committer == alice.identity
    assert first.members == [alice.identity, bob.identity, carol.identity]
    assert bob.group_ids() == []
    assert state.read_bytes() == before  # nothing written
    # The KeyPackage the Welcome was made for is still there, in memory and on disk.
    reopened = MlsClient(bob_identity, runtime, state, key)  # the older client may not write now
    assert reopened.inspect_welcome(welcome) == first
    joined = reopened.join(welcome)
    assert joined.group_id == b"room"
    assert joined.members() == first.members


def test_a_welcome_not_for_us_or_not_a_welcome_is_a_group_error(runtime: RealRuntime) -> None:
    alice, bob = MlsClient(Identity.generate(), runtime), MlsClient(Identity.generate(), runtime)
    stranger = MlsClient(Identity.generate(), runtime)
    group = alice.create_group(b"room")
    _commit, welcome = group.commit([bob.key_package()])
    assert welcome is not None
    for data in (welcome, b"", b"not mls", welcome[:-3], stranger.key_package()):
        with pytest.raises(GroupError):
            stranger.inspect_welcome(data)
    assert bob.inspect_welcome(welcome).sender == alice.identity
