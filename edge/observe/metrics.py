"""Prometheus metrics: counted on the request path in plain dicts, published once a second.

``RequestMetrics`` is an ``ExchangeObserver`` (edge/observe/observer.py): per finished
exchange it folds the Host into a bounded label (:mod:`edge.observe.metrics_labels`) and
increments a few dict entries (requests, the duration histogram's bucket, upstream
failures, the auth outcome). Nothing is encoded, written or locked there (measured: see
docs/metrics.md). ``connection_event`` counts TLS handshakes by result.

Everything else is read where it is already counted, when the numbers are published:
the config watcher (applies, rejected keys, Redis), the PROXY stages (refusals), the open
connections, the PAT verifier, the tunnels, ACME and the request-log writer. ``Publisher``
turns those and the request counts into :class:`~edge.observe.metrics_files.Sample` s and
writes the ones that changed into this worker's files (edge/observe/metrics_files.py),
every ``PUBLISH_INTERVAL`` and right before a scrape, so a scrape sees every worker.

The families (their names and labels are a contract, listed in docs/metrics.md) are the
``Family`` constants below.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.utils import floatToGoString

from edge.observe.metrics_files import Labels, ProcessFiles, Sample
from edge.observe.metrics_labels import (
    METHOD_OTHER,
    METHODS,
    OTHER,
    HostLabels,
    status_class,
    upstream_labels,
)
from edge.observe.observer import TLS_FAILED, TLS_OK

if TYPE_CHECKING:
    from edge.config.snapshot import Snapshot
    from edge.observe.accesslog import AccessRecord

__all__ = ["BUCKETS", "Family", "Publisher", "RequestMetrics"]

PUBLISH_INTERVAL = 1.0  # seconds between two writes of a worker's totals

# request duration buckets, seconds (the ``le`` labels)
BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_BOUNDS_MS: tuple[float, ...] = tuple(b * 1000 for b in BUCKETS)
_LE: tuple[str, ...] = (*(str(floatToGoString(b)) for b in BUCKETS), "+Inf")  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its full name (a counter's ends in ``_total``), the file it is
    written to (``counter``, ``histogram``, ``gauge_{mode}``) and its help text."""

    name: str
    file: str
    help: str

    @property
    def metric(self) -> str:
        return self.name.removesuffix("_total") if self.file == "counter" else self.name

    def sample(self, value: float, labels: Labels = ()) -> Sample:
        return Sample(self.file, self.metric, self.name, labels, float(value), self.help)

    def part(self, name: str, value: float, labels: Labels) -> Sample:
        """A sample of a histogram (``_bucket`` with ``le``, ``_sum``)."""
        return Sample(self.file, self.metric, name, labels, float(value), self.help)


C, LIVESUM, LIVEMIN, LIVEMAX = "counter", "gauge_livesum", "gauge_livemin", "gauge_livemax"
REQUESTS = Family("edge_requests_total", C, "Finished exchanges by host, method, status class.")
DURATION = Family(
    "edge_request_duration_seconds", "histogram", "Exchange duration (head in to last byte out)."
)
WORKER_REQUESTS = Family("edge_worker_requests_total", C, "Finished exchanges by worker.")
UPSTREAM_ERRORS = Family(
    "edge_upstream_errors_total", C, "Upstream failures answered 502 (error) or 504 (timeout)."
)
AUTH = Family("edge_auth_requests_total", C, "Access checks by proxy and outcome.")
CONNECTIONS = Family("edge_connections_open", LIVESUM, "Open client connections by listener.")
TLS_HANDSHAKES = Family("edge_tls_handshakes_total", C, "TLS handshakes by result.")
PROXY_REFUSALS = Family(
    "edge_proxy_header_refusals_total", C, "Connections refused at the PROXY header, by reason."
)
CONFIG_APPLIES = Family("edge_config_applies_total", C, "Configuration snapshots applied.")
CONFIG_REJECTED = Family("edge_config_rejected_keys", LIVEMAX, "Configuration keys refused.")
CONFIG_GENERATION = Family("edge_config_generation", LIVEMAX, "Generation of the configuration.")
REDIS_UP = Family("edge_redis_up", LIVEMIN, "1 when every worker's config watcher has Redis.")
REDIS_OUTAGE = Family(
    "edge_redis_current_outage_seconds",
    LIVEMAX,
    "Length of the current Redis outage (0: connected).",
)
REDIS_OUTAGE_TOTAL = Family(
    "edge_redis_outage_seconds_total", C, "Seconds without Redis since the node started."
)
PAT = Family("edge_pat_verifications_total", C, "Personal access token checks by result.")
TUNNELS_OPEN = Family("edge_tunnels_open", LIVESUM, "Port-forward tunnels open.")
TUNNELS_OPENED = Family("edge_tunnels_opened_total", C, "Port-forward tunnels opened.")
TUNNEL_BYTES = Family("edge_tunnel_bytes_total", C, "Bytes carried by tunnels, by direction.")
ACME_ORDERS = Family("edge_acme_orders_total", C, "ACME certificate orders by result.")
CERT_DAYS = Family(
    "edge_certificate_days_left", LIVEMIN, "Days until each stored certificate expires."
)
REQLOG_QUEUE = Family("edge_request_log_queue", LIVESUM, "Request-log entries waiting.")
REQLOG_WRITTEN = Family("edge_request_log_written_total", C, "Request-log entries written.")
REQLOG_DROPPED = Family(
    "edge_request_log_dropped_total", C, "Request-log entries dropped (queue full)."
)
REQLOG_FAILED = Family(
    "edge_request_log_failed_total", C, "Request-log entries lost in a failed batch write."
)
WORKERS = Family("edge_workers", LIVESUM, "Workers publishing metrics.")

FAMILIES: tuple[Family, ...] = (
    REQUESTS, DURATION, WORKER_REQUESTS, UPSTREAM_ERRORS, AUTH, CONNECTIONS, TLS_HANDSHAKES,
    PROXY_REFUSALS, CONFIG_APPLIES, CONFIG_REJECTED, CONFIG_GENERATION, REDIS_UP, REDIS_OUTAGE,
    REDIS_OUTAGE_TOTAL, PAT, TUNNELS_OPEN, TUNNELS_OPENED, TUNNEL_BYTES, ACME_ORDERS, CERT_DAYS,
    REQLOG_QUEUE, REQLOG_WRITTEN, REQLOG_DROPPED, REQLOG_FAILED, WORKERS,
)  # fmt: skip

CERT_LABEL_CAP = 200


class RequestMetrics:
    """The request path's counters of one worker (an ``ExchangeObserver``).

    ``config_installed`` (a config watcher listener) renews the bounded label sets.
    """

    __slots__ = (
        "_hosts",
        "_hosts_published",
        "_memo",
        "_seen",
        "_seen_buckets",
        "_seen_sums",
        "_totals",
        "_upstreams",
        "applies",
        "auth",
        "buckets",
        "counts",
        "sums",
        "tls",
        "total",
        "upstream_errors",
    )

    def __init__(self) -> None:
        # (host label, method label, status) -> count; the status is folded into its class
        # when published (a division less here)
        self.counts: dict[tuple[str, str, int], int] = {}
        # (host label, bucket) -> count: the bucket is an index in BUCKETS, len(BUCKETS)
        # for +Inf (per bucket counts: the collector makes them cumulative at a scrape)
        self.buckets: dict[tuple[str, int], int] = {}
        self.sums: dict[str, float] = {}  # host label -> the durations' sum, in ms
        self.upstream_errors: dict[tuple[str, str, str], int] = {}
        self.auth: dict[tuple[str, str], int] = {}
        self.tls = {"ok": 0, "failed": 0}
        self.applies = 0
        self.total = 0  # exchanges counted, as of the last samples()
        # what samples() last saw, to send only what changed
        self._seen: dict[tuple[str, str, int], int] = {}
        self._totals: dict[Labels, int] = {}
        self._seen_buckets: dict[tuple[str, int], int] = {}
        self._seen_sums: dict[str, float] = {}
        self._hosts_published: set[str] = set()
        self._hosts = HostLabels()
        self._memo: dict[str, str] = self._hosts.memo
        self._upstreams: frozenset[str] = frozenset()

    # ------------------------------------------------------------ the request path
    def exchange_done(self, r: AccessRecord) -> None:
        host = self._memo.get(r.host)
        if host is None:
            host = self._host_label(r.host)
        key = (host, METHODS.get(r.method, METHOD_OTHER), r.status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        ms = r.duration_ms
        bucket = (host, bisect_left(_BOUNDS_MS, ms))
        hist = self.buckets
        hist[bucket] = hist.get(bucket, 0) + 1
        sums = self.sums
        sums[host] = sums.get(host, 0.0) + ms
        if r.error and r.upstream:
            self._upstream_failed(r)
        if r.auth:  # the access check's outcome, under the proxy's host label
            outcome = (host, r.auth)
            self.auth[outcome] = self.auth.get(outcome, 0) + 1

    def _host_label(self, host: str) -> str:
        return self._hosts(host)  # remembered in self._memo (bounded) for the next time

    def _upstream_failed(self, r: AccessRecord) -> None:
        if r.status == 502:
            kind = "error"
        elif r.status == 504:
            kind = "timeout"
        else:
            return
        upstream = r.upstream if r.upstream in self._upstreams else OTHER
        key = (upstream, r.upstream_phase or "response", kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def connection_event(
        self, kind: str, client_ip: str, client_port: int, sni: str, detail: str
    ) -> None:
        """The hub's connection events: TLS handshakes (PROXY refusals are read from the
        PROXY stages' own counters, with their reason)."""
        if kind == TLS_OK:
            self.tls["ok"] += 1
        elif kind == TLS_FAILED:
            self.tls["failed"] += 1

    # ------------------------------------------------------------ configuration
    def config_installed(self, snapshot: Snapshot) -> None:
        self.applies += 1
        self.set_labels(
            snapshot.exact.keys(),
            snapshot.wildcards.keys(),
            [p.target_url for p in (*snapshot.exact.values(), *snapshot.wildcards.values())],
        )

    def set_labels(
        self, exact: Iterable[str], wildcards: Iterable[str], upstream_urls: Iterable[str]
    ) -> None:
        hosts = HostLabels(tuple(exact), tuple(wildcards))
        self._hosts = hosts
        self._memo = hosts.memo
        self._upstreams = upstream_labels(upstream_urls)

    # ------------------------------------------------------------ publishing
    def samples(self) -> list[Sample]:
        """The samples whose value changed since the last call (all of them the first
        time): what changed is found by comparing each entry with its value at the last
        call, so a publish costs a dict walk and no work per unchanged series."""
        out: list[Sample] = []
        seen, totals = self._seen, self._totals
        for key, n in list(self.counts.items()):
            old = seen.get(key, 0)
            if n == old:
                continue
            seen[key] = n
            self.total += n - old
            host, method, status = key
            labels: Labels = (("host", host), ("method", method), ("status", status_class(status)))
            totals[labels] = total = totals.get(labels, 0) + n - old
            out.append(REQUESTS.sample(total, labels))
        bucket_name, sum_name = DURATION.name + "_bucket", DURATION.name + "_sum"
        seen_buckets = self._seen_buckets
        for (host, i), n in list(self.buckets.items()):
            if seen_buckets.get((host, i)) == n:
                continue
            if host not in self._hosts_published:
                # every bucket of a new host, zeros included: a scrape has them all
                self._hosts_published.add(host)
                for j, le in enumerate(_LE):
                    if (host, j) not in self.buckets:
                        out.append(DURATION.part(bucket_name, 0, (("host", host), ("le", le))))
            seen_buckets[(host, i)] = n
            out.append(DURATION.part(bucket_name, n, (("host", host), ("le", _LE[i]))))
        for host, ms in list(self.sums.items()):
            if self._seen_sums.get(host) != ms:
                self._seen_sums[host] = ms
                out.append(DURATION.part(sum_name, ms / 1000, (("host", host),)))
        for (upstream, phase, kind), n in list(self.upstream_errors.items()):
            labels = (("upstream", upstream), ("phase", phase), ("kind", kind))
            out.append(UPSTREAM_ERRORS.sample(n, labels))
        for (proxy, outcome), n in list(self.auth.items()):
            out.append(AUTH.sample(n, (("proxy", proxy), ("outcome", outcome))))
        for result, n in self.tls.items():
            out.append(TLS_HANDSHAKES.sample(n, (("result", result),)))
        return out


Source = Callable[[], Iterable[Sample]]


class Publisher:
    """Writes this worker's samples (the request counters and every source) to its
    files; ``run`` does it every ``interval`` until stopped, and once more at the end."""

    name = "metrics"

    def __init__(
        self,
        files: ProcessFiles,
        requests: RequestMetrics,
        sources: Iterable[Source] = (),
        interval: float = PUBLISH_INTERVAL,
    ) -> None:
        self.files = files
        self.requests = requests
        self.sources: list[Source] = list(sources)
        self.interval = interval
        self.publishes = 0
        self.written = 0
        self.last_error: str | None = None

    def publish(self) -> None:
        samples: list[Sample] = [WORKERS.sample(1)]
        samples.extend(self.requests.samples())
        for source in self.sources:
            try:
                samples.extend(source())
            except Exception as exc:  # one broken source must not hide the others
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self.written += self.files.write(samples)
        self.publishes += 1

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                self.publish()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
        finally:
            self.publish()  # the last counts of a draining worker

    def health(self) -> Mapping[str, object]:
        return {
            "publishes": self.publishes,
            "written": self.written,
            "last_error": self.last_error,
        }


# ---------------------------------------------------------------- sources (sans-IO)


class RedisOutage:
    """Redis up/down as the config watcher sees it, with the outage's length; ``total``
    (node-wide seconds without Redis) is counted by one worker only, so it is not
    multiplied by the number of workers."""

    __slots__ = ("_down_since", "_total", "_was", "counts_total")

    def __init__(self, counts_total: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts_total = counts_total
        self._down_since: float | None = None
        self._total = 0.0
        self._was = clock

    def samples(self, connected: bool, now: float | None = None) -> list[Sample]:
        now = self._was() if now is None else now
        current = 0.0
        if connected:
            if self._down_since is not None:
                self._total += now - self._down_since
                self._down_since = None
        elif self._down_since is None:
            self._down_since = now
        else:
            current = now - self._down_since
        out = [REDIS_UP.sample(1 if connected else 0), REDIS_OUTAGE.sample(current)]
        if self.counts_total:
            out.append(REDIS_OUTAGE_TOTAL.sample(self._total + current))
        return out


def config_samples(applies: int | None, rejected: int, generation: int) -> list[Sample]:
    """``applies`` None: counted by another worker."""
    out = [CONFIG_REJECTED.sample(rejected), CONFIG_GENERATION.sample(generation)]
    if applies is not None:
        out.append(CONFIG_APPLIES.sample(applies))
    return out


def connection_samples(listeners: Iterable[str]) -> list[Sample]:
    """``listeners``: one name per open connection (plain, tls, proxy, proxy_tls)."""
    counts = dict.fromkeys(("plain", "tls", "proxy", "proxy_tls"), 0)
    for name in listeners:
        counts[name] = counts.get(name, 0) + 1
    return [CONNECTIONS.sample(n, (("listener", name),)) for name, n in counts.items()]


def proxy_refusal_samples(refused_peers: int, invalid_headers: int) -> list[Sample]:
    return [
        PROXY_REFUSALS.sample(refused_peers, (("reason", "untrusted_peer"),)),
        PROXY_REFUSALS.sample(invalid_headers, (("reason", "invalid_header"),)),
    ]


def pat_samples(stats: Mapping[str, int]) -> list[Sample]:
    """The PAT verifier's ``stats()``."""
    return [
        PAT.sample(stats.get("hits", 0), (("result", "cache_hit"),)),
        PAT.sample(stats.get("misses", 0), (("result", "cache_miss"),)),
        PAT.sample(stats.get("rejected", 0), (("result", "overloaded"),)),
        PAT.sample(stats.get("failures", 0), (("result", "failed"),)),
    ]


def tunnel_samples(health: Mapping[str, object]) -> list[Sample]:
    """The tunnel registry's ``health()``."""

    def num(name: str) -> float:
        value = health.get(name, 0)
        return float(value) if isinstance(value, int | float) else 0.0

    return [
        TUNNELS_OPEN.sample(num("open")),
        TUNNELS_OPENED.sample(num("opened")),
        TUNNEL_BYTES.sample(num("bytes_in"), (("direction", "in"),)),
        TUNNEL_BYTES.sample(num("bytes_out"), (("direction", "out"),)),
    ]


def acme_samples(issued: int, failed: int) -> list[Sample]:
    return [
        ACME_ORDERS.sample(issued, (("result", "issued"),)),
        ACME_ORDERS.sample(failed, (("result", "failed"),)),
    ]


def certificate_samples(expires: Mapping[str, str | None], now: float) -> list[Sample]:
    """Days left per certificate from the records' ``expires_at`` (ISO 8601); records
    without a readable date are left out; at most ``CERT_LABEL_CAP`` certificates."""
    from datetime import datetime

    out: list[Sample] = []
    for name in sorted(expires)[:CERT_LABEL_CAP]:
        text = expires[name]
        if not text:
            continue
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        out.append(CERT_DAYS.sample(round((when - now) / 86400, 3), (("cert", name),)))
    return out


def reqlog_samples(health: Mapping[str, object] | None) -> list[Sample]:
    """The request-log writer's ``health()`` (None: the log is off, all zero)."""
    health = health or {}

    def num(name: str) -> float:
        value = health.get(name, 0)
        return float(value) if isinstance(value, int | float) else 0.0

    return [
        REQLOG_QUEUE.sample(num("queued")),
        REQLOG_WRITTEN.sample(num("written")),
        REQLOG_DROPPED.sample(num("dropped")),
        REQLOG_FAILED.sample(num("failed")),
    ]


def worker_samples(worker_id: int, requests: int) -> list[Sample]:
    return [WORKER_REQUESTS.sample(requests, (("worker", str(worker_id)),))]
