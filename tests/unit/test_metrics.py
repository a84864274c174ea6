"""The metrics' pure parts: bounded labels, the request counters, the files and their sum."""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.observe.accesslog import AccessRecord
from edge.observe.metrics import (
    BUCKETS,
    FAMILIES,
    Publisher,
    RedisOutage,
    RequestMetrics,
    certificate_samples,
    connection_samples,
)
from edge.observe.metrics_files import ProcessFiles, forget_process, render
from edge.observe.metrics_labels import MEMO_MAX, HostLabels, status_class, upstream_labels
from edge.observe.metrics_render import Renderer


def record(
    host: str = "a.test",
    method: str = "GET",
    status: int = 200,
    ms: float = 3.0,
    upstream: str = "127.0.0.1:8080",
    error: str = "",
    phase: str = "",
) -> AccessRecord:
    return AccessRecord(
        "2026-01-01T00:00:00.000Z",
        "rid",
        "127.0.0.1",
        method,
        host,
        "/",
        status,
        0,
        0,
        ms,
        upstream,
        "",
        error=error,
        upstream_phase=phase,
    )


def families(text: bytes) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """family name -> (sample name, sorted labels) -> value"""
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for fam in text_string_to_metric_families(text.decode()):
        values = out.setdefault(fam.name, {})
        for s in fam.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# ------------------------------------------------------------------ labels


def test_host_labels_exact_wildcard_other() -> None:
    labels = HostLabels(["a.test"], [".w.test"])
    assert labels("a.test") == "a.test"
    assert labels("x.w.test") == "*.w.test"
    assert labels("y.x.w.test") == "*.w.test"
    assert labels("w.test") == "other"
    assert labels("b.test") == "other"
    assert labels("") == "other"


def test_host_labels_capped() -> None:
    names = [f"h{i:03}.test" for i in range(10)]
    labels = HostLabels(names, (), cap=3)
    assert labels.allowed == frozenset(names[:3])
    assert labels("h000.test") == "h000.test"
    assert labels("h009.test") == "other"


def test_status_and_upstream_labels() -> None:
    assert [status_class(s) for s in (0, 101, 204, 302, 404, 503, 600, -1)] == [
        "none", "1xx", "2xx", "3xx", "4xx", "5xx", "none", "none",
    ]  # fmt: skip
    assert upstream_labels(
        ["http://127.0.0.1:8080/x", "https://Backend.test", "http://[::1]:9000"]
    ) == {"127.0.0.1:8080", "backend.test:443", "::1:9000"}


# ------------------------------------------------------------------ request counters


def test_random_hosts_stay_bounded() -> None:
    m = RequestMetrics()
    m.set_labels(["a.test"], [".w.test"], [])
    rng = random.Random(7)
    for _ in range(10_000):
        host = "".join(rng.choices(string.ascii_lowercase, k=12)) + ".example"
        m.exchange_done(record(host=host, method=rng.choice(["GET", "BREW", "X" * 40])))
    m.exchange_done(record(host="a.test"))
    m.exchange_done(record(host="q.w.test"))
    assert {host for host, _, _ in m.counts} == {"other", "a.test", "*.w.test"}
    assert {method for _, method, _ in m.counts} == {"GET", "OTHER"}
    assert len(m._memo) <= MEMO_MAX
    assert len(m.sums) == 3


def test_samples_fold_status_and_histogram() -> None:
    m = RequestMetrics()
    m.set_labels(["a.test"], [], ["http://127.0.0.1:8080"])
    for status in (200, 201, 404):
        m.exchange_done(record(status=status, ms=0.5))
    m.exchange_done(record(status=502, ms=2000.0, error="bad_gateway", phase="connect"))
    m.exchange_done(
        record(status=504, ms=70_000.0, error="gateway_timeout", upstream="10.9.9.9:1",
               phase="response")
    )  # fmt: skip
    m.connection_event("tls_handshake_failed", "127.0.0.1", 1, "", "")
    by = {(s.name, s.labels): s.value for s in m.samples()}
    req = "edge_requests_total"
    assert by[(req, (("host", "a.test"), ("method", "GET"), ("status", "2xx")))] == 2
    assert by[(req, (("host", "a.test"), ("method", "GET"), ("status", "4xx")))] == 1
    assert by[(req, (("host", "a.test"), ("method", "GET"), ("status", "5xx")))] == 2
    bucket = "edge_request_duration_seconds_bucket"
    assert by[(bucket, (("host", "a.test"), ("le", "0.001")))] == 3
    assert by[(bucket, (("host", "a.test"), ("le", "2.5")))] == 1
    assert by[(bucket, (("host", "a.test"), ("le", "+Inf")))] == 1
    assert by[("edge_request_duration_seconds_sum", (("host", "a.test"),))] == pytest.approx(
        72.0015
    )
    err = "edge_upstream_errors_total"
    connect, response = ("phase", "connect"), ("phase", "response")
    assert by[(err, (("upstream", "127.0.0.1:8080"), connect, ("kind", "error")))] == 1
    assert by[(err, (("upstream", "other"), response, ("kind", "timeout")))] == 1
    assert by[("edge_tls_handshakes_total", (("result", "failed"),))] == 1


def test_families_are_named_by_the_contract() -> None:
    for fam in FAMILIES:
        assert fam.name.startswith("edge_")
        assert (fam.file == "counter") == fam.name.endswith("_total")
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)


# ------------------------------------------------------------------ files and the sum


def test_two_processes_summed_and_a_dead_ones_gauges_dropped(tmp_path: Path) -> None:
    d = str(tmp_path)
    workers = []
    for pid, n in ((101, 3), (102, 4)):
        m = RequestMetrics()
        m.set_labels(["a.test"], [], [])
        for _ in range(n):
            m.exchange_done(record(ms=20.0))
        pub = Publisher(ProcessFiles(d, pid), m, [lambda: connection_samples(["tls", "plain"])])
        pub.publish()
        workers.append(pub)
    got = families(render(d))
    key = ("edge_requests_total", (("host", "a.test"), ("method", "GET"), ("status", "2xx")))
    assert got["edge_requests"][key] == 7
    hist = got["edge_request_duration_seconds"]
    assert hist[("edge_request_duration_seconds_count", (("host", "a.test"),))] == 7
    assert hist[("edge_request_duration_seconds_bucket", (("host", "a.test"), ("le", "0.01")))] == 0
    le = ("le", "0.025")
    assert hist[("edge_request_duration_seconds_bucket", (("host", "a.test"), le))] == 7
    assert got["edge_connections_open"][("edge_connections_open", (("listener", "tls"),))] == 2
    assert got["edge_workers"][("edge_workers", ())] == 2
    # the first process dies: its counts stay, its open connections and itself leave
    forget_process(d, 101)
    got = families(render(d))
    assert got["edge_requests"][key] == 7
    assert got["edge_connections_open"][("edge_connections_open", (("listener", "tls"),))] == 1
    assert got["edge_workers"][("edge_workers", ())] == 1
    # its successor counts on top
    m = RequestMetrics()
    m.set_labels(["a.test"], [], [])
    m.exchange_done(record())
    Publisher(ProcessFiles(d, 103), m).publish()
    assert families(render(d))["edge_requests"][key] == 8
    assert len(BUCKETS) + 1 == sum(1 for name, _ in hist if name.endswith("_bucket"))


def test_only_changed_values_are_written(tmp_path: Path) -> None:
    files = ProcessFiles(str(tmp_path), 5)
    m = RequestMetrics()
    pub = Publisher(files, m)
    pub.publish()
    first = pub.written
    pub.publish()
    assert pub.written == first  # nothing changed
    m.exchange_done(record())
    pub.publish()
    assert pub.written > first


def test_redis_outage() -> None:
    outage = RedisOutage(counts_total=True)
    vals = lambda samples: {s.name: s.value for s in samples}  # noqa: E731
    assert vals(outage.samples(True, now=0.0))["edge_redis_up"] == 1
    assert vals(outage.samples(False, now=10.0))["edge_redis_current_outage_seconds"] == 0
    got = vals(outage.samples(False, now=15.0))
    assert (got["edge_redis_up"], got["edge_redis_current_outage_seconds"]) == (0, 5.0)
    assert got["edge_redis_outage_seconds_total"] == 5.0
    got = vals(outage.samples(True, now=17.0))
    assert got["edge_redis_current_outage_seconds"] == 0
    assert got["edge_redis_outage_seconds_total"] == 7.0
    assert "edge_redis_outage_seconds_total" not in vals(RedisOutage(False).samples(False))


def test_certificate_days_left() -> None:
    expires = datetime(2027, 1, 15, 8, tzinfo=UTC)
    now = (expires - timedelta(days=12, hours=12)).timestamp()
    got = certificate_samples({"a": "2027-01-15T08:00:00Z", "b": None, "c": "not a date"}, now)
    assert [(s.labels, s.value) for s in got] == [((("cert", "a"),), 12.5)]


def test_the_renderer_writes_what_prometheus_client_writes(tmp_path: Path) -> None:
    """Every sample, type and help text the same, over live and dead workers' files."""
    d = str(tmp_path)
    m = RequestMetrics()
    hosts = [f"h{i}.test" for i in range(5)]
    m.set_labels(hosts, [".w.test"], ["http://127.0.0.1:1"])
    for i, host in enumerate([*hosts, "x.w.test", "nowhere.test"]):
        for status in (200, 404, 502, 0):
            m.exchange_done(record(host=host, status=status, ms=i * 7.5, error="e"))
    outages = [RedisOutage(True), RedisOutage(False)]
    for pid, listeners, up in ((1, ["tls"], False), (2, ["plain", "proxy"], True), (3, [], True)):
        outage = outages[pid % 2]
        sources = [
            lambda ls=listeners: connection_samples(ls),
            lambda o=outage, u=up: o.samples(u),
            lambda: certificate_samples({"c": "2030-01-01T00:00:00Z"}, 0.0),
        ]
        Publisher(ProcessFiles(d, pid), m, sources).publish()
    forget_process(d, 3)
    renderer = Renderer(d)

    def parsed(text: bytes) -> set[tuple[object, ...]]:
        return {
            (f.name, f.type, f.documentation, s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(text.decode())
            for s in f.samples
        }

    expected = parsed(render(d))
    assert len(expected) > 100
    assert parsed(renderer.render()) == expected
    assert parsed(renderer.render()) == expected  # again, from the keys it remembers


def test_no_two_families_share_a_name() -> None:
    """A counter ``x_total`` is the family ``x``: no gauge or histogram may be called ``x``
    (the collector would merge them)."""
    bases = [f.name.removesuffix("_total") for f in FAMILIES]
    assert len(set(bases)) == len(bases)


def test_a_file_being_created_is_skipped(tmp_path: Path) -> None:
    """A worker's file exists empty for a moment before it is sized: a scrape then skips
    it rather than failing."""
    m = RequestMetrics()
    m.exchange_done(record())
    Publisher(ProcessFiles(str(tmp_path), 1), m).publish()
    (tmp_path / "counter_2.db").touch()
    text = Renderer(str(tmp_path)).render().decode()
    assert 'edge_requests_total{host="other",method="GET",status="2xx"} 1.0' in text
