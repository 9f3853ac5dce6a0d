"""The web UI as people use it: ``quicnprotochat web`` nodes, a real relay, headless Chromium.

Screenshots of the main views are taken on every run; with QUICNPROTOCHAT_SCREENSHOTS=1 they
replace the ones in docs/img/ (docs/web.md shows them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RelayProcess
from tests.e2e.web_support import (
    accept_invitation,
    ask,
    browser,
    chromium_path,
    invite_link,
    open_conversation,
    open_page,
    say,
    web_node,
)

pytestmark = pytest.mark.slow
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


@pytest.fixture(autouse=True)
def _needs_chromium() -> None:
    chromium_path()


async def shoot(page: Any, shots: Path, name: str) -> None:
    path = shots / f"web-{name}.png"
    await page.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("QUICNPROTOCHAT_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(exist_ok=True)
        shutil.copy(path, DOCS_IMG / path.name)


async def test_two_pages_dm_both_ways_a_group_of_three_reload_and_the_relay_down(
    tmp_path: Path, relay_process: RelayProcess
) -> None:
    from playwright.async_api import expect

    shots = tmp_path / "shots"
    shots.mkdir()
    async with (
        web_node(tmp_path, "alice", relay_process) as alice,
        web_node(tmp_path, "bob", relay_process) as bob,
        web_node(tmp_path, "carol", relay_process) as carol,
        browser() as chromium,
    ):
        pa = await open_page(chromium, alice)
        pb = await open_page(chromium, bob)
        await expect(pa.locator("#relay")).to_have_text("relay connected")

        # Bob opens a DM with alice's link; she is asked first (he is a stranger to her).
        await ask(pb, "#new-dm", await invite_link(pa))
        await expect(pb.locator("#title")).to_have_text("alice")
        await expect(pa.locator(".invitation")).to_contain_text("invites you")
        await shoot(pa, shots, "invitation")
        await accept_invitation(pa)
        await expect(pa.locator("#title")).to_have_text("bob")
        await say(pb, "hello alice")
        await expect(pa.locator("#messages")).to_contain_text("hello alice")
        await say(pa, "hi bob, how are you?")
        await expect(pb.locator("#messages")).to_contain_text("hi bob, how are you?")
        # Per-recipient delivery state under one's own message.
        await expect(pa.locator(".msg.out .delivery").last).to_have_text(
            "bob: delivered", timeout=30_000
        )
        await shoot(pa, shots, "dm")

        # A group of three: alice makes it and invites bob (a contact now) and carol (a link).
        pc = await open_page(chromium, carol)
        carol_link = await invite_link(pc)
        await ask(pa, "#new-group", "Book club")
        await expect(pa.locator("#title")).to_have_text("Book club")
        await pa.click("#members-btn")
        for count, person in ((2, "bob"), (3, carol_link)):
            await pa.fill("#invite-person", person)
            await pa.press("#invite-person", "Enter")
            await expect(pa.locator("ul.members > li")).to_have_count(count)
            # The list is redrawn in place: the next name goes where the last one went.
            await expect(pa.locator("#invite-person")).to_be_focused()
            await expect(pa.locator("#invite-person")).to_have_value("")
        await shoot(pa, shots, "members")
        await pa.keyboard.press("Escape")
        # A stranger to carol: shown by fingerprint until she accepts.
        await expect(pc.locator(".invitation")).to_contain_text("invites you to a group of 3")
        await accept_invitation(pc)
        await expect(pc.locator("#title")).to_have_text("Book club")
        await say(pc, "hi all, carol here")
        await expect(pa.locator("#messages")).to_contain_text("hi all, carol here")
        # Bob is elsewhere: the group appears in his list with its unread count.
        await expect(
            pb.locator("#conversations button.conv", has_text="Book club").locator(".unread")
        ).to_have_text("1")
        await shoot(pb, shots, "unread")
        await open_conversation(pb, "Book club")
        await expect(pb.locator("#messages")).to_contain_text("hi all, carol here")
        await say(pb, "bob agrees")
        await expect(pc.locator("#messages")).to_contain_text("bob agrees")
        await expect(pa.locator("#messages")).to_contain_text("bob agrees")
        await shoot(pa, shots, "group")

        # A reload keeps history (it is the node's, not the page's).
        await pb.reload()
        await pb.wait_for_selector("body[data-loaded]")
        await expect(pb.locator("#title")).to_have_text("Book club")
        await expect(pb.locator("#messages")).to_contain_text("hi all, carol here")
        await open_conversation(pb, "alice")
        await expect(pb.locator("#messages")).to_contain_text("hi bob, how are you?")

        # A page that lost its event stream gets what it missed when it reconnects: the
        # stream is dropped while the network is down, and comes back when it is up again.
        await pb.context.set_offline(True)
        await pb.evaluate("reconnect()")
        await expect(pb.locator("body.offline")).to_have_count(1)
        await open_conversation(pa, "bob")
        await say(pa, "said while your page was away")
        await pb.context.set_offline(False)
        await expect(pb.locator("#messages")).to_contain_text("said while your page was away")

        # The relay stops: the page says so, and direct chat goes on.
        relay_process.stop()
        await expect(pa.locator("#relay")).to_have_text("relay unreachable")
        await say(pa, "the relay is down but we are not")
        await expect(pb.locator("#messages")).to_contain_text("the relay is down but we are not")
        await expect(pb.locator("#relay")).to_have_text("relay unreachable")
        await shoot(pa, shots, "relay-down")

        # Verify with the safety number and its QR code; both sides show the same number.
        await pa.click("#members-btn")
        await pa.locator("ul.members button", has_text="Verify").first.click()
        number_a = await pa.inner_text("pre.safety")
        await expect(pa.locator("img.qr")).to_be_visible()
        await shoot(pa, shots, "verify")
        await pa.click("text=They match: mark verified")
        await expect(pa.locator("dialog p.ok")).to_have_text("Marked verified.")
        await pa.keyboard.press("Escape")
        await pb.click("#members-btn")
        await pb.locator("ul.members button", has_text="Verify").first.click()
        assert await pb.inner_text("pre.safety") == number_a
        await pb.keyboard.press("Escape")

        # A narrow window, dark: the list slides in from a button; the keyboard alone works.
        narrow = await open_page(
            chromium, alice, viewport={"width": 390, "height": 760}, color_scheme="dark"
        )
        await expect(narrow.locator("#sidebar")).not_to_be_in_viewport()
        await narrow.focus("#menu")
        await narrow.keyboard.press("Enter")
        await expect(narrow.locator("#sidebar")).to_be_in_viewport()
        await shoot(narrow, shots, "narrow-dark-list")
        await narrow.locator("#conversations button.conv", has_text="bob").focus()
        await narrow.keyboard.press("Enter")
        await expect(narrow.locator("#title")).to_have_text("bob")
        await narrow.focus("#text")
        await narrow.keyboard.type("typed on a phone-sized window")
        await narrow.keyboard.press("Enter")
        await expect(pb.locator("#messages")).to_contain_text("typed on a phone-sized window")
        await shoot(narrow, shots, "narrow-dark")
