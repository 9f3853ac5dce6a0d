"""The local web UI (``quicnprotochat web``): one page, served by the node on loopback."""

from __future__ import annotations

from node.app.web.server import LOOPBACK_HOSTS, WebUI, WhoAmI

__all__ = ["LOOPBACK_HOSTS", "WebUI", "WhoAmI"]
