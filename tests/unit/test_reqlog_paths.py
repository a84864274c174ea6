"""The request log's pure parts: path normalisation, scrubbing, entries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.observe.accesslog import AccessRecord
from edge.observe.reqlog import (
    MAX_PATH,
    MAX_SEGMENT,
    MAX_SEGMENTS,
    ReqLogEntry,
    clean_upstream,
    entry_from_record,
    hour_of,
    index_method,
    normalise_path,
    record_flat,
    strip_query,
)
from edge.store import keys


@pytest.mark.parametrize(
    ("path", "normalised"),
    [
        ("/", "/"),
        ("/health", "/health"),
        ("/api/v1/users", "/api/v1/users"),
        ("/api/v1/users/", "/api/v1/users/"),
        ("/users/12345", "/users/{id}"),
        ("/users/0/orders/77", "/users/{id}/orders/{id}"),
        ("/items/550e8400-e29b-41d4-a716-446655440000", "/items/{id}"),
        ("/items/550E8400E29B41D4A716446655440000", "/items/{id}"),
        ("/commits/9f3a01bc7d2e4f5a6b7c8d9e0f1a2b3c4d5e6f70", "/commits/{id}"),
        ("/objects/deadbeef0123", "/objects/{id}"),
        ("/api/v1/tokens/t_8fK2mQ9xLp", "/api/v1/tokens/{id}"),
        ("/api/v1/users/u_a1b2c3", "/api/v1/users/{id}"),
        ("/api/v1/pats/pat_AbCdEfGhIjKlMnOpQr", "/api/v1/pats/{id}"),
        ("/tx/3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "/tx/{id}"),
        ("/s/dGhpcyBpcyBhIHRva2VuX2lk-_x9", "/s/{id}"),
        ("/files/12345.json", "/files/{id}.json"),
        ("/img/550e8400-e29b-41d4-a716-446655440000.png", "/img/{id}.png"),
        ("/users/42?token=secret&x=1", "/users/{id}"),
        ("/page#frag", "/page"),
        # words stay words
        ("/user_profile/settings", "/user_profile/settings"),
        ("/api/v2/status", "/api/v2/status"),
        ("/archive/2024-01-31", "/archive/2024-01-31"),
        ("/static/app.min.js", "/static/app.min.js"),
        ("/deadbeef", "/deadbeef"),  # short hex without a digit: a word
        ("/abcdefabcdefabcd", "/abcdefabcdefabcd"),  # no digit: a word
        ("/.well-known/openid-configuration", "/.well-known/openid-configuration"),
        ("/wp-admin/install.php", "/wp-admin/install.php"),
        ("/averyveryverylongwordwithoutdigits", "/averyveryverylongwordwithoutdigits"),
        # caps
        ("/" + "a" * (MAX_SEGMENT + 1), "/{id}"),
        ("/" + "/".join("abcdefghijkl"), "/" + "/".join("abcdefgh") + "/{more}"),
        # targets that are not paths
        ("*", "*"),
        ("http://example.com/x", "{other}"),
        ("", "{other}"),
    ],
)
def test_normalise_path(path: str, normalised: str) -> None:
    assert normalise_path(path) == normalised


def test_normalise_path_bounds_any_input() -> None:
    """Whatever comes in, the key part is short: at most MAX_SEGMENTS segments of at most
    MAX_SEGMENT characters, plus "{more}"."""
    long = "/" + "/".join(f"seg{i}-" + "x" * 60 for i in range(100))
    out = normalise_path(long)
    assert out.count("/") == MAX_SEGMENTS + 1
    assert len(out) <= (MAX_SEGMENTS + 1) * (MAX_SEGMENT + 1)


def test_distinct_ids_share_one_key() -> None:
    paths = {normalise_path(f"/api/v1/users/{n}/tokens/t_{n:08x}x9") for n in range(1000)}
    assert paths == {"/api/v1/users/{id}/tokens/{id}"}


@pytest.mark.parametrize(
    ("path", "stripped"),
    [
        ("/a?b=c", "/a"),
        ("/a#b?c", "/a"),
        ("/a?b#c", "/a"),
        ("/tunnel?ticket=T0P", "/tunnel"),
        ("/plain", "/plain"),
        ("?only", ""),
        ("/" + "x" * 5000, "/" + "x" * (MAX_PATH - 1)),
    ],
)
def test_strip_query(path: str, stripped: str) -> None:
    assert strip_query(path) == stripped


@pytest.mark.parametrize(
    ("upstream", "cleaned"),
    [
        ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("http://user:pw@10.0.0.1:80/base?key=k", "http://10.0.0.1:80/base"),
        ("https://a@b@host/x", "https://host/x"),
        ("10.0.0.1:5432", "10.0.0.1:5432"),
        ("http://host/p@th", "http://host/p@th"),
    ],
)
def test_clean_upstream(upstream: str, cleaned: str) -> None:
    assert clean_upstream(upstream) == cleaned


def test_index_method() -> None:
    assert index_method("GET") == "GET"
    assert index_method("PATCH") == "PATCH"
    assert index_method("get") == "OTHER"
    assert index_method("XYZZY") == "OTHER"


def test_hour_of() -> None:
    assert hour_of(0) == "19700101:00"
    assert hour_of(1764778499.5) == "20251203:16"
    assert keys.req_stats_requests(hour_of(0)) == "stats:requests:19700101:00"


def _record(**changes: object) -> AccessRecord:
    record = AccessRecord(
        "2026-12-03T16:14:59.123Z", "rid-1", "203.0.113.7", "GET", "App.Example.COM",
        "/cb?code=abc&state=xyz", 200, 10, 20, 1.5, "http://u:p@127.0.0.1:3000/?k=v", "r1",
    )  # fmt: skip
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def test_entry_from_record() -> None:
    entry = entry_from_record(
        _record(
            sni="app.example.com",
            proxy_unique_id="uid-9",
            client_port=51000,
            upstream_ms=0.8,
            user="alice",
            client_id="c_1",
            error="upstream_timeout",
        ),
        "node-a",
        3,
    )
    assert entry == ReqLogEntry(
        time="2026-12-03T16:14:59.123Z", node="node-a", worker=3, request_id="rid-1",
        client_ip="203.0.113.7", method="GET", host="app.example.com", path="/cb",
        status=200, bytes_in=10, bytes_out=20, duration_ms=1.5, client_port=51000,
        proxy_unique_id="uid-9", sni="app.example.com", upstream="http://127.0.0.1:3000/",
        upstream_ms=0.8, user="alice", client_id="c_1", error="upstream_timeout",
    )  # fmt: skip


def test_fields_leave_out_empty_values() -> None:
    fields = entry_from_record(_record(upstream=""), "n", 0).fields()
    assert set(fields) == {
        "time", "node", "worker", "request_id", "client_ip", "method", "host", "path",
        "status", "bytes_in", "bytes_out", "duration_ms",
    }  # fmt: skip


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"path": "/a?b=c", "upstream": ""},
        {"path": "/login;jsessionid=S3CR3T/x#frag"},
        {"path": "http://u:p@h/x", "method": "GET"},
        {"path": "*", "method": "OPTIONS"},
        {"path": "/" + "x" * 5000},
        {"host": "H" * 300 + ".Example.COM"},
        {"method": "VERYLONGMETHODNAMEHERE"},
        {"upstream": "http://admin:pw@10.0.0.1:8080/base?k=v"},
        {"upstream": "127.0.0.1:3000"},
        {"client_port": 51000, "upstream_ms": 0.25, "user": "u" * 200, "client_id": "c_1"},
        {"error": "e" * 300, "sni": "s" * 400, "proxy_unique_id": "p" * 300},
    ],
)
def test_record_flat_is_the_entrys_flat(changes: dict[str, object]) -> None:
    """The writer's fast path builds exactly the fields ``entry_from_record`` would."""
    record = _record(**changes)
    flat, host, path = record_flat(record, "node-a", "3")
    entry = entry_from_record(record, "node-a", 3)
    assert flat == entry.flat()
    assert (host, path) == (entry.host, entry.path)


@given(
    path=st.text(max_size=60),
    host=st.text(max_size=300),
    upstream=st.text(max_size=80),
    user=st.text(max_size=150),
)
def test_record_flat_matches_for_any_text(path: str, host: str, upstream: str, user: str) -> None:
    record = _record(path=path, host=host, upstream=upstream, user=user)
    assert record_flat(record, "n", "0")[0] == entry_from_record(record, "n", 0).flat()
