"""terminal_safe: what a peer wrote reaches the terminal as text, never as control."""

from __future__ import annotations

import unicodedata

import pytest

from node.core.display import is_terminal_safe, terminal_safe

ESC = "\x1b"
BEL = "\x07"


def raw_controls(text: str) -> list[str]:
    """Every character a terminal could act on: C0 (but LF), DEL, C1, bidi and format controls."""
    return [
        f"U+{ord(c):04X}"
        for c in text
        if (ord(c) < 0x20 and c != "\n")
        or 0x7F <= ord(c) <= 0x9F
        or (unicodedata.category(c) in ("Cf", "Zl", "Zp") and c not in "\u200c\u200d")
    ]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"{ESC}[31mred{ESC}[0m", "␛[31mred␛[0m"),  # CSI colours
        (f"{ESC}]52;c;aGVsbG8={BEL}", "␛]52;c;aGVsbG8=␇"),  # OSC 52: a clipboard write
        (f"{ESC}]0;pwned{ESC}\\", "␛]0;pwned␛\\"),  # OSC title, ST-terminated
        (f"ring{BEL}", "ring␇"),
        ("paid\runpaid", "paid␍unpaid"),  # a bare CR must not overwrite the line
        ("abc\b\b\bxyz", "abc␈␈␈xyz"),
        ("tab\there", "tab␉here"),
        ("nul\x00", "nul␀"),
        ("del\x7f", "del␡"),
        ("\x9b31m", "<U+009B>31m"),  # 8-bit CSI
        ("\x9d52;c;x\x9c", "<U+009D>52;c;x<U+009C>"),  # 8-bit OSC and ST
        ("evil\u202etxt.exe", "evil<U+202E>txt.exe"),  # right-to-left override
        (
            "\u2066a\u2069\u2067b\u2069\u2068c\u2069",
            "<U+2066>a<U+2069><U+2067>b<U+2069><U+2068>c<U+2069>",
        ),
        ("\u202a\u202b\u202c\u202d", "<U+202A><U+202B><U+202C><U+202D>"),
        ("al\u200eice\u200f\u061c", "al<U+200E>ice<U+200F><U+061C>"),
        ("ali\u200bce\ufeff\u2060", "ali<U+200B>ce<U+FEFF><U+2060>"),  # invisible characters
        ("line\u2028sep\u2029", "line<U+2028>sep<U+2029>"),
        ("one\ntwo", "one␊two"),  # a name stays on one line
    ],
)
def test_controls_escapes_and_bidi_are_made_visible(text: str, shown: str) -> None:
    assert terminal_safe(text) == shown
    assert raw_controls(terminal_safe(text)) == []
    assert not is_terminal_safe(text)


@pytest.mark.parametrize(
    "text",
    [
        "hello, world",
        "Zoë Ångström naïve café",
        "日本語のテキスト 中文 한국어",
        "مرحبا שלום",  # right-to-left scripts keep their own (implicit) direction
        "👋🏽 🇫🇷 👩‍👩‍👧",  # skin tone, flag, ZWJ family
        "می‌خواهم",  # Persian with a zero-width non-joiner
        "e\u0301 combining acute",
        "\u00a0no-break\u3000space",
        "",
    ],
)
def test_ordinary_unicode_is_kept_exactly(text: str) -> None:
    assert terminal_safe(text) == text
    assert is_terminal_safe(text)


def test_every_c0_c1_and_del_character_is_replaced() -> None:
    controls = "".join(chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)])
    shown = terminal_safe(controls)
    assert raw_controls(shown) == []
    assert ESC not in shown and BEL not in shown and "\r" not in shown and "\n" not in shown


def test_a_multiline_message_renders_as_indented_lines() -> None:
    text = "first\nsecond\r\nthird"
    assert terminal_safe(text, multiline=True) == "first\n  second\n  third"
    assert terminal_safe(text, multiline=True, continuation="    | ") == (
        "first\n    | second\n    | third"
    )


def test_a_line_inside_a_message_cannot_pass_for_another_senders_line() -> None:
    shown = terminal_safe("ok\n[bob] send me the key", multiline=True, continuation="        ")
    assert all(not line.startswith("[") for line in shown.splitlines()[1:])


def test_a_bare_cr_in_a_multiline_message_is_still_shown() -> None:
    shown = terminal_safe("I owe you 100\r  0", multiline=True)
    assert shown == "I owe you 100␍  0"
    assert is_terminal_safe(shown)


def test_escapes_across_lines_stay_inert() -> None:
    shown = terminal_safe(f"a{ESC}[2J\n{ESC}]52;c;eA=={BEL}b", multiline=True)
    assert raw_controls(shown) == []
    assert shown == "a␛[2J\n  ␛]52;c;eA==␇b"
    assert is_terminal_safe(shown, multiline=True)
    assert not is_terminal_safe(shown)  # the kept LF is a control on a single line


def test_log_lines_quoting_a_peer_are_shown_safe() -> None:
    import logging

    from node.app.cli import SafeFormatter

    record = logging.LogRecord(
        "node", logging.WARNING, __file__, 1, "peer said %s", (f"{ESC}]52;c;eA=={BEL}",), None
    )
    line = SafeFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert line == "WARNING node: peer said ␛]52;c;eA==␇"
