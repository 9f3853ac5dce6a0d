"""The web UI against a hostile peer and hostile web pages: XSS shown as text, CSRF and DNS
rebinding refused, nothing without the token."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.web_support import (
    accept_invitation,
    api,
    browser,
    chromium_path,
    open_page,
    web_node,
)

pytestmark = pytest.mark.slow

HOSTILE_NAME = "<img src=x onerror=window.__pwned=1>"
HOSTILE_TEXT = '<script>window.__pwned=2</script><img src=x onerror="window.__pwned=3"> & <b>'


@pytest.fixture(autouse=True)
def _needs_chromium() -> None:
    chromium_path()


@contextlib.asynccontextmanager
async def evil_site(html: str) -> AsyncIterator[str]:
    """Another origin on this machine (another port): what a malicious page can try."""

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


async def test_a_hostile_peer_name_and_message_are_shown_as_text(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with (
        web_node(tmp_path, "alice") as alice,
        web_node(tmp_path, HOSTILE_NAME) as mallory,
        browser() as chromium,
        api(alice) as alice_api,
        api(mallory) as mallory_api,
    ):
        pa = await open_page(chromium, alice)
        link = (await alice_api.get("/api/state"))["me"]["link"]
        dm = (await mallory_api.post("/api/dm", {"person": link}))["conversation"]
        await accept_invitation(pa)
        await expect(pa.locator("#title")).to_have_text(HOSTILE_NAME)
        await mallory_api.post(f"/api/conversations/{dm['id']}/messages", {"text": HOSTILE_TEXT})
        await expect(pa.locator("#messages .msg.in .text")).to_have_text(HOSTILE_TEXT)
        await expect(pa.locator("#messages .msg.in .sender")).to_have_text(HOSTILE_NAME)
        await expect(pa.locator("#conversations")).to_contain_text(HOSTILE_NAME)
        assert await pa.locator("img, script:not([src]), b").count() == 0
        assert await pa.evaluate("window.__pwned") is None


async def test_other_origins_rebinding_and_strangers_without_the_token_are_refused(
    tmp_path: Path,
) -> None:
    async with (
        web_node(tmp_path, "alice") as alice,
        browser() as chromium,
        api(alice) as alice_api,
    ):
        state = await alice_api.get("/api/state")
        notepad = state["conversations"][0]["id"]
        target = f"{alice.base}/api/conversations/{notepad}/messages"
        pa = await open_page(chromium, alice)
        # A page of another origin, opened in the same browser that holds alice's cookie
        # (another port on 127.0.0.1 is the same *site*: SameSite does not stop it; Origin does).
        html = f"""<!doctype html><title>evil</title><script>
        (async () => {{
          const out = {{}};
          try {{
            await fetch({json.dumps(target)}, {{method: "POST", mode: "no-cors",
              credentials: "include", headers: {{"Content-Type": "text/plain"}},
              body: JSON.stringify({{text: "csrf: simple request"}})}});
            out.simple = "sent";
          }} catch (e) {{ out.simple = "blocked"; }}
          try {{
            const r = await fetch({json.dumps(target)}, {{method: "POST", credentials: "include",
              headers: {{"Content-Type": "application/json", "X-CSRF-Token": "guess"}},
              body: JSON.stringify({{text: "csrf: preflighted"}})}});
            out.preflighted = r.status;
          }} catch (e) {{ out.preflighted = "blocked"; }}
          try {{
            const r = await fetch({json.dumps(alice.base + "/api/state")}, {{credentials: "include"}});
            out.read = await r.text();
          }} catch (e) {{ out.read = "blocked"; }}
          document.title = "done";
          document.body.dataset.out = JSON.stringify(out);
        }})();
        </script><body></body>"""
        async with evil_site(html) as evil_url:
            evil = await pa.context.new_page()
            await evil.goto(evil_url)
            await evil.wait_for_function("document.title === 'done'")
            out = json.loads(await evil.get_attribute("body", "data-out"))
        assert out["preflighted"] == "blocked"
        assert out["read"] == "blocked"
        texts = [
            m["text"]
            for m in (await alice_api.get(f"/api/conversations/{notepad}/messages"))["messages"]
        ]
        assert not any(t.startswith("csrf") for t in texts), texts

        port = alice.base.rsplit(":", 1)[1]
        async with aiohttp.ClientSession(cookie_jar=alice_api.session.cookie_jar) as session:
            # DNS rebinding: a page at evil.example whose name now points at 127.0.0.1.
            async with session.get(
                f"{alice.base}/api/state", headers={"Host": f"evil.example:{port}"}
            ) as r:
                assert r.status == 421
            # Same origin but no CSRF token, or another origin with the right one.
            async with session.post(
                target, json={"text": "x"}, headers={"Origin": alice.base}
            ) as r:
                assert r.status == 403
            async with session.post(
                target,
                json={"text": "x"},
                headers={"Origin": "http://evil.example", "X-CSRF-Token": alice_api.csrf},
            ) as r:
                assert r.status == 403
        async with aiohttp.ClientSession() as stranger:
            async with stranger.get(f"{alice.base}/api/state") as r:
                assert r.status == 401
            async with stranger.get(f"{alice.base}/?token={'0' * 64}") as r:
                assert r.status == 401
                assert "set-cookie" not in r.headers
            async with stranger.get(f"{alice.base}/") as r:
                assert r.status == 401
                csp = r.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "default-src 'none'" in csp
        # The real one still works, and the cookie it gives cannot be read by scripts.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as me:
            async with me.get(alice.url, allow_redirects=False) as r:
                assert r.status == 303
                cookie = r.headers["Set-Cookie"]
                assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert await pa.evaluate("document.cookie") == ""
