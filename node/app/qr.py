"""QR codes drawn in a terminal with Unicode half blocks (segno makes the code).

Two rows of modules share one line of text: ``█`` is light above and below, ``▀`` light above,
``▄`` light below, a space dark in both. Light modules are drawn (the text colour), dark ones
left as the background, so the code reads right on a dark terminal; phone scanners also read
it inverted on a light one. The quiet zone is the standard four modules. No escape sequences
are written: the output is plain text, safe in a pipe or a log.
"""

from __future__ import annotations

from collections.abc import Iterable

QUIET_ZONE = 4
_BLOCKS = {(True, True): "█", (True, False): "▀", (False, True): "▄", (False, False): " "}

__all__ = ["QUIET_ZONE", "qr_matrix", "qr_text"]


def qr_matrix(data: str) -> list[list[bool]]:
    """The QR code of ``data`` (error correction M, or better when it fits), quiet zone
    included, as rows of modules: True for dark."""
    import segno  # here, not at the top: keeps `quicnprotochat --help` fast

    code = segno.make(data, error="m", micro=False)
    return [[bool(m) for m in row] for row in code.matrix_iter(border=QUIET_ZONE)]


def qr_text(data: str) -> str:
    """The QR code of ``data`` as lines of text (see the module docstring)."""
    return "\n".join(_lines(qr_matrix(data)))


def _lines(matrix: list[list[bool]]) -> Iterable[str]:
    width = len(matrix[0]) if matrix else 0
    for top in range(0, len(matrix), 2):
        upper = matrix[top]
        lower = matrix[top + 1] if top + 1 < len(matrix) else [False] * width
        # The blocks draw light modules: light is "not dark".
        yield "".join(_BLOCKS[(not u, not d)] for u, d in zip(upper, lower, strict=True))
