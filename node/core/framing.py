"""Length-prefixed frames on a QUIC stream: one frame per direction per call.

A frame is a 4-byte big-endian length followed by that many bytes of Cap'n Proto message. The size
cap is enforced from the prefix, before any of the body is buffered: aioquic has no backpressure.
"""

from __future__ import annotations

import struct

from node.core.errors import RemoteProtocolError

PREFIX = struct.Struct(">I")
DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB: room for a Welcome to a large group, small enough to buffer


class FrameTooLargeError(RemoteProtocolError):
    """The peer announced or sent a frame larger than we accept."""


def encode_frame(body: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    if len(body) > max_frame:
        raise ValueError(f"frame of {len(body)} bytes exceeds the {max_frame}-byte limit")
    return PREFIX.pack(len(body)) + body


class FrameReader:
    """Accumulates one frame from stream chunks; call :meth:`feed` then :meth:`finish` at FIN."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max = max_frame
        self._buf = bytearray()
        self._length: int | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data
        if self._length is None and len(self._buf) >= PREFIX.size:
            (self._length,) = PREFIX.unpack_from(self._buf)
            if self._length > self._max:
                raise FrameTooLargeError(
                    f"frame of {self._length} bytes exceeds the {self._max}-byte limit"
                )
        if self._length is not None and len(self._buf) > PREFIX.size + self._length:
            raise RemoteProtocolError("data after the end of the frame")

    @property
    def announced(self) -> int | None:
        """The body length the prefix announced, once its 4 bytes have arrived."""
        return self._length

    @property
    def complete(self) -> bool:
        return self._length is not None and len(self._buf) == PREFIX.size + self._length

    def finish(self) -> bytes:
        """Return the frame body at end of stream, or raise if it is truncated."""
        if not self.complete:
            raise RemoteProtocolError("stream ended inside a frame")
        return bytes(self._buf[PREFIX.size :])
