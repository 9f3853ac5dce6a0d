"""Text that others chose, made safe to print: data, never terminal control.

Every string a peer chose (message text, display names, names from mDNS or the DHT, contact
names learned from a link) goes through :func:`terminal_safe` on its way to a terminal. What a
terminal would act on is shown instead of obeyed:

* C0 controls (U+0000-U+001F, among them ESC, BEL, BS, CR, LF and TAB) and DEL become their
  Unicode *control pictures*: ESC is shown as ``␛``, BEL as ``␇``, CR as ``␍``, DEL as ``␡``.
  An escape sequence (CSI ``ESC [``, OSC ``ESC ]`` such as an OSC 52 clipboard write, DCS, ...)
  therefore prints as harmless text, ``␛[31m``: its introducer is gone, so no part of it acts.
* C1 controls (U+0080-U+009F; U+009B is an 8-bit CSI, U+009D an 8-bit OSC), bidirectional
  embeddings, overrides, isolates and marks (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F,
  U+061C), the line and paragraph separators (U+2028, U+2029), surrogates and the invisible
  format characters (Unicode category Cf: U+200B, U+2060, U+FEFF, U+00AD, tag characters, ...)
  become ``<U+XXXX>``. Bidi marks are shown too: they are invisible, and with them a name
  can be made to look like another.
* Everything else is kept: letters of every script, accents and combining marks, CJK, emoji,
  and the joiners U+200C and U+200D that emoji sequences and several scripts need.

With ``multiline=True`` (message bodies), LF and CR LF end a line and are kept as ``\\n``; each
following line starts with ``continuation``, so a line inside a message can never pass for a
line of the program's own (``[bob] ...`` typed by alice stays indented under alice's line). A
CR alone is still shown as ``␍``: it would move the cursor back and let the rest of the line
overwrite what came before.

Pure: no I/O. Output meant for programs (``--json``) keeps the exact text instead.
"""

from __future__ import annotations

import unicodedata

# Shown as <U+XXXX>: invisible or direction-changing, or C1 controls.
_BIDI = frozenset(
    [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029]
)
# Cf characters that carry meaning in ordinary text: zero-width non-joiner and joiner.
_KEPT_FORMAT = frozenset([0x200C, 0x200D])
_CONTROL_PICTURE_BASE = 0x2400  # U+2400 SYMBOL FOR NULL .. U+241F SYMBOL FOR UNIT SEPARATOR
_DEL_PICTURE = "\N{SYMBOL FOR DELETE}"

__all__ = ["is_terminal_safe", "terminal_safe"]


def _shown(char: str) -> str | None:
    """How ``char`` is shown instead of itself, or None to keep it."""
    code = ord(char)
    if code < 0x20:
        return chr(_CONTROL_PICTURE_BASE + code)
    if code < 0x7F:
        return None
    if code == 0x7F:
        return _DEL_PICTURE
    if code <= 0x9F or code in _BIDI:
        return f"<U+{code:04X}>"
    if code in _KEPT_FORMAT:
        return None
    category = unicodedata.category(char)
    if category in ("Cf", "Cs", "Cc", "Zl", "Zp"):
        return f"<U+{code:04X}>"
    return None


def terminal_safe(text: str, *, multiline: bool = False, continuation: str = "  ") -> str:
    """``text`` with every control character, escape sequence and bidi control made visible.

    :param multiline: keep line breaks (LF or CR LF) as ``\\n``; otherwise they are shown as
        ``␊`` (and ``␍``), so a name always stays on one line.
    :param continuation: what each line after the first starts with, when ``multiline``. It
        must itself be safe; the default indents by two spaces.
    """
    if multiline:
        lines = text.replace("\r\n", "\n").split("\n")
        return ("\n" + continuation).join(_one_line(line) for line in lines)
    return _one_line(text)


def _one_line(text: str) -> str:
    out = []
    for char in text:
        shown = _shown(char)
        out.append(char if shown is None else shown)
    return "".join(out)


def is_terminal_safe(text: str, *, multiline: bool = False) -> bool:
    """Whether ``text`` holds nothing :func:`terminal_safe` would change (``\\n`` allowed when
    ``multiline``)."""
    return all(_shown(c) is None or (multiline and c == "\n") for c in text)
