"""Real ``quicnprotochat web`` processes and a real headless Chromium, for the web UI's tests.

The browser is Debian's ``chromium`` driven by Playwright with ``executable_path``: Playwright
never downloads a browser here. Without chromium the tests skip, saying how to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RelayProcess

SCRIPT = Path(sys.executable).with_name("quicnprotochat")
INSTALL_CHROMIUM = "apt-get install -y --no-install-recommends chromium fonts-dejavu-core"
START_DEADLINE = 60.0
UI_TIMEOUT_MS = 30_000  # a condition the page must reach (a message arriving, a state shown)


def chromium_path() -> str:
    found = os.environ.get("QUICNPROTOCHAT_CHROMIUM") or shutil.which("chromium")
    if found is None:
        pytest.skip(f"chromium is not installed; install it with: {INSTALL_CHROMIUM}")
    return found


@dataclass
class WebNode:
    name: str
    proc: asyncio.subprocess.Process
    url: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.url.split("/?", 1)[0]


async def _drain(node: WebNode) -> None:
    """Keep reading its output (logs included) so the pipe never fills and blocks it."""
    assert node.proc.stdout is not None
    while raw := await node.proc.stdout.readline():
        node.lines.append(raw.decode(errors="replace").rstrip("\n"))


@contextlib.asynccontextmanager
async def web_node(
    tmp: Path, name: str, relay: RelayProcess | None = None, *extra: str
) -> AsyncIterator[WebNode]:
    env = dict(os.environ, QUICNPROTOCHAT_PASSPHRASE=f"{name} passphrase")
    args = ["--no-dht", "--no-mdns", *extra]
    if relay is not None:
        assert relay.address is not None and relay.identity is not None
        args += ["--relay", f"{relay.address[0]}:{relay.address[1]}"]
        args += ["--relay-key", relay.identity.hex()]
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        "web",
        "--name",
        name,
        "--data-dir",
        str(tmp / re.sub(r"\W", "_", name)),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    node = WebNode(name, proc)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(START_DEADLINE):
            while True:
                raw = await proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"{name} exited: {node.lines}")
                line = raw.decode().rstrip("\n")
                node.lines.append(line)
                if match := re.match(r"^open (http://127\.0\.0\.1:\d+/\?token=[0-9a-f]+)$", line):
                    node.url = match.group(1)
                    break
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    drain = asyncio.ensure_future(_drain(node))
    try:
        yield node
    finally:
        if proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(20):
                await proc.wait()
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    path = chromium_path()
    async with async_playwright() as playwright:
        # --no-sandbox: the tests run as root, where Chromium's sandbox cannot start.
        launched = await playwright.chromium.launch(
            executable_path=path, args=["--no-sandbox"], headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


async def open_page(launched: Any, node: WebNode, **context: Any) -> Any:
    """A page of its own (its own cookies), signed in with the node's printed URL."""
    context.setdefault("viewport", {"width": 1100, "height": 720})
    ctx = await launched.new_context(**context)
    page = await ctx.new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.goto(node.url)
    await page.wait_for_selector("body[data-loaded]")
    return page


async def invite_link(page: Any) -> str:
    await page.click("#invite-me")
    link: str = await page.input_value("textarea.link")
    await page.keyboard.press("Escape")
    return link


async def ask(page: Any, button: str, text: str) -> None:
    """Click a button that asks for one line (new DM, new group), type it, submit."""
    await page.click(button)
    await page.fill("#ask", text)
    await page.press("#ask", "Enter")
    await page.wait_for_selector("dialog[open]", state="detached")


async def say(page: Any, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


async def open_conversation(page: Any, title: str) -> None:
    from playwright.async_api import expect

    await page.locator("#conversations button.conv", has_text=title).first.click()
    await expect(page.locator("#title")).to_have_text(title)


async def accept_invitation(page: Any) -> None:
    await page.locator(".invitation button", has_text="Accept").first.click()


class Api:
    """A signed-in client of one node's web API (what the page does, without a browser)."""

    def __init__(self, node: WebNode, session: Any) -> None:
        self.node = node
        self.session = session
        self.csrf = ""

    async def get(self, path: str) -> Any:
        async with self.session.get(self.node.base + path) as response:
            assert response.status == 200, (path, response.status, await response.text())
            return await response.json()

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        headers = {"Origin": self.node.base, "X-CSRF-Token": self.csrf}
        async with self.session.post(self.node.base + path, json=body, headers=headers) as r:
            assert r.status == 200, (path, r.status, await r.text())
            return await r.json()


@contextlib.asynccontextmanager
async def api(node: WebNode) -> AsyncIterator[Api]:
    import aiohttp

    # unsafe=True: aiohttp keeps no cookies for an IP address otherwise.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(node.url) as response:
            assert response.status == 200
        client = Api(node, session)
        client.csrf = (await client.get("/api/state"))["csrf"]
        yield client
