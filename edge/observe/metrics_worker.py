"""A worker's metrics: the observer, its files, the publisher and what it reads.

Everything here is read at publish time (once a second, and before a scrape) from the
counters the worker's parts already keep for ``/health``; nothing is added to the request
path but :class:`~edge.observe.metrics.RequestMetrics`. Counts that every worker makes of
the same node-wide thing (configuration applies, seconds without Redis) are published by
worker 0 alone, so they are not multiplied by the number of workers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from edge.api.people.directory import PeopleApi
from edge.observe.metrics import (
    Publisher,
    RedisOutage,
    RequestMetrics,
    Source,
    acme_samples,
    certificate_samples,
    config_samples,
    connection_samples,
    pat_samples,
    proxy_refusal_samples,
    reqlog_samples,
    tunnel_samples,
    worker_samples,
)
from edge.observe.metrics_files import ENV, ProcessFiles, Sample

if TYPE_CHECKING:
    from edge.http1.connection import HttpConnection
    from edge.worker import Worker

__all__ = ["WorkerMetrics", "listener_of"]


def listener_of(conn: HttpConnection) -> str:
    """``plain``, ``tls``, ``proxy`` or ``proxy_tls``: the kind of listener that accepted
    the connection (the API port's connections are ``plain``)."""
    proxied = conn.proxy_header is not None
    if conn.scheme == "https":
        return "proxy_tls" if proxied else "tls"
    return "proxy" if proxied else "plain"


class WorkerMetrics:
    """One worker's metrics: ``observer`` goes on the hub, ``publisher`` is a service,
    ``directory`` is the node's (``EDGE_METRICS_DIR``, set by the supervisor), or a
    private one removed by ``close`` for a worker run on its own."""

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        self.observer = RequestMetrics()
        directory = os.environ.get(ENV)
        self._own_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="edge-metrics-")
        self.files = ProcessFiles(self.directory)
        self.publisher = Publisher(self.files, self.observer)

    def read_from(self, worker: Worker) -> None:
        """Publish what ``worker``'s parts count, from now on."""
        self.publisher.sources.extend(_sources(worker, self.observer))

    def close(self) -> None:
        self.files.close()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _sources(worker: Worker, observer: RequestMetrics) -> list[Source]:
    first = worker.worker_id == 0
    outage = RedisOutage(counts_total=first)

    def config() -> Iterable[Sample]:
        snap = worker.watcher.snapshot
        applies = observer.applies if first else None
        return [
            *config_samples(applies, len(snap.rejected), snap.generation),
            *outage.samples(worker.watcher.connected),
            *certificate_samples(
                {name: record.expires_at for name, record in snap.certs.items()}, time.time()
            ),
        ]

    def connections() -> Iterable[Sample]:
        stages = worker.proxy_stages
        return [
            *connection_samples(listener_of(conn) for conn in worker.hub.connections),
            *proxy_refusal_samples(
                sum(stage.refused for stage in stages), sum(stage.invalid for stage in stages)
            ),
        ]

    verifiers = [g.people.verifier for g in worker.api.groups if isinstance(g, PeopleApi)]

    def services() -> Iterable[Sample]:
        reqlog = worker.reqlog
        issuer = worker.acme.issuer
        return [
            *(pat_samples(verifiers[0].stats()) if verifiers else ()),
            *tunnel_samples(worker.tunnels.health()),
            *acme_samples(issuer.issued, issuer.failed),
            *reqlog_samples(reqlog.health() if reqlog is not None else None),
            *worker_samples(worker.worker_id, observer.total),
        ]

    return [config, connections, services]
