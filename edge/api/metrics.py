"""``GET /metrics``: the node's Prometheus metrics, on the API port, without a token.

The answering worker first writes its own latest totals, then reads every worker's files
(edge/observe/metrics_files.py, rendered by edge/observe/metrics_render.py) in a thread, so
the loop never waits on file reads, and
answers the text exposition format (``text/plain; version=0.0.4``). Only the API port
answers it (loopback by default): through ``API_HOSTNAME`` on a public listener it is a
404, so the metrics are never public by accident.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from edge.api.http import ApiError, NotFound, error_response
from edge.api.request import Endpoint
from edge.api.router import Router
from edge.http1.exchange import Exchange
from edge.observe.metrics_files import CONTENT_TYPE
from edge.observe.metrics_render import Renderer

__all__ = ["MetricsApi"]

log = logging.getLogger("edge.api.metrics")
_CONTENT_TYPE = CONTENT_TYPE.encode()


class MetricsApi:
    """The ``/metrics`` endpoint group: ``publish`` writes this worker's totals, then
    ``directory`` (every worker's files) is rendered."""

    def __init__(self, directory: str, publish: Callable[[], None], api_port: int) -> None:
        self.directory = directory
        self.renderer = Renderer(directory)
        self.publish = publish
        self.api_port = api_port
        self.tasks: set[asyncio.Task[None]] = set()

    def register(self, router: Router[Endpoint[Any]]) -> None:
        router.add("GET", "/metrics", Endpoint(None, inline=self._scrape))

    def _scrape(self, ex: Exchange) -> None:
        if ex.server_port != self.api_port:
            error_response(ex, NotFound())
            return
        task = asyncio.get_running_loop().create_task(
            self._answer(ex), name=f"metrics-{ex.request_id}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, ex: Exchange) -> None:
        try:
            self.publish()
            body = await asyncio.to_thread(self.renderer.render)
        except Exception:
            log.exception("metrics: scrape failed", extra={"fields": {"request_id": ex.request_id}})
            error_response(ex, ApiError("metrics unavailable"))
            return
        if not ex.finished:
            ex.respond(200, body, _CONTENT_TYPE, [(b"cache-control", b"no-store")])

    async def close(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
