"""The JSON API served on ``API_PORT`` (and on ``API_HOSTNAME`` through public listeners).

For now: ``GET /health``. Token-protected admin endpoints plug in here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from edge.errors import EdgeError
from edge.http1.exchange import Exchange

_json = msgspec.json.Encoder()


class NotFound(EdgeError):
    status = 404
    public_message = "no such endpoint"


class ApiApp:
    def __init__(self, health: Callable[[], dict[str, Any]]) -> None:
        self.health = health
        self.started = time.time()

    def handle(self, ex: Exchange) -> None:
        if ex.path == "/health" and ex.method in (b"GET", b"HEAD"):
            report = self.health()
            # degraded (redis down, rejected keys) still serves traffic: only draining is 503
            status = 503 if report.get("status") == "draining" else 200
            ex.respond(status, _json.encode(report) + b"\n", b"application/json")
            return
        ex.fail(NotFound())
