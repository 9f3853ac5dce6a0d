from __future__ import annotations

import pytest

from node.core.errors import RemoteProtocolError
from node.core.framing import PREFIX, FrameReader, FrameTooLargeError, encode_frame


def test_frame_round_trip_in_small_chunks() -> None:
    frame = encode_frame(b"hello world")
    reader = FrameReader(max_frame=64)
    for i in range(len(frame)):
        reader.feed(frame[i : i + 1])
    assert reader.finish() == b"hello world"


def test_oversized_frame_is_refused_from_its_prefix_alone() -> None:
    reader = FrameReader(max_frame=1024)
    with pytest.raises(FrameTooLargeError, match="exceeds"):
        reader.feed(PREFIX.pack(1025))


def test_truncated_frame_is_an_error_at_end_of_stream() -> None:
    reader = FrameReader(max_frame=1024)
    reader.feed(encode_frame(b"abcdef")[:-2])
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        reader.finish()


def test_bytes_after_the_frame_are_refused() -> None:
    reader = FrameReader(max_frame=1024)
    with pytest.raises(RemoteProtocolError, match="after the end"):
        reader.feed(encode_frame(b"abc") + b"x")


def test_encoding_refuses_a_frame_over_the_limit() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(b"x" * 11, max_frame=10)
