"""The request log's reading parts without Redis: cursors, filters, percentiles, who may
call each logs endpoint, the command line's parsing and colours."""

from __future__ import annotations

from typing import Any

import pytest

from edge.api.app import build_router, default_groups
from edge.api.redis_store import RedisHandle
from edge.api.request import Endpoint, Scoped
from edge.api.tokens.auth import TokenAuth
from edge.api.tokens.store import TokenStore
from edge.cli import _parser
from edge.client.logs import status_color
from edge.observe.reqlog import bucket_upper_ms, duration_bucket
from edge.observe.reqlog_query import Cursor, Filters, InvalidCursor, percentile_ms
from edge.settings import RedisTarget


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    for cursor in (
        Cursor(score=1764778499.123, ties=0),
        Cursor(score=1764778499.123, ties=17),
        Cursor(stream_id="1764778499123-5"),
    ):
        assert Cursor.decode(cursor.encode()) == cursor
    for text in ("", "x", "bm90IGEgY3Vyc29y", "eHxub3QtYW4taWQ", "enxuYW58MQ", "a" * 3000):
        with pytest.raises(InvalidCursor):
            Cursor.decode(text)


def test_filters_match_the_stored_fields() -> None:
    entry = {
        "client_ip": "203.0.113.7", "host": "app.example.com", "method": "POST",
        "path": "/api/orders/9", "status": "503", "duration_ms": "1500.0",
        "user": "alice", "client_id": "c_web",
    }  # fmt: skip
    assert Filters().matches(entry)
    assert Filters(host="APP.example.com", method="post", path="/api/").matches(entry)
    assert Filters(status=503, status_class=5, errors=True, min_ms=1500).matches(entry)
    assert Filters(ip="203.0.113.7", user="alice", client="c_web").matches(entry)
    for wrong in (
        Filters(host="b.example.com"), Filters(method="GET"), Filters(path="/apix"),
        Filters(status=500), Filters(status_class=4), Filters(min_ms=1500.5),
        Filters(ip="203.0.113.8"), Filters(user="bob"), Filters(client="c_other"),
        Filters(events=True),
    ):  # fmt: skip
        assert not wrong.matches(entry), wrong
    assert not Filters(errors=True).matches({**entry, "status": "302"})
    assert Filters(events=True).matches({"event": "tls_handshake_failed", "status": "0"})


def test_the_indexes_a_search_may_walk() -> None:
    assert Filters(method="GET", path="/x", min_ms=5).indexes() == []  # the stream
    assert Filters(ip="::1", host="A.test", status=404).indexes() == [
        "idx:req:ip:::1",
        "idx:req:host:a.test",
        "idx:req:status:404",
    ]
    assert Filters(status_class=2).indexes() == []
    assert Filters(status_class=5, slow=True).indexes() == ["idx:req:errors", "idx:req:slow"]


def test_percentiles_are_bucket_upper_bounds() -> None:
    assert percentile_ms({}, 0.5) is None
    assert percentile_ms({3: 0}, 0.5) is None
    buckets = {duration_bucket(1.0): 50, duration_bucket(10.0): 45, duration_bucket(100.0): 5}
    assert percentile_ms(buckets, 0.50) == round(bucket_upper_ms(duration_bucket(1.0)), 3)
    assert percentile_ms(buckets, 0.51) == round(bucket_upper_ms(duration_bucket(10.0)), 3)
    assert percentile_ms(buckets, 0.95) == round(bucket_upper_ms(duration_bucket(10.0)), 3)
    assert percentile_ms(buckets, 0.99) == round(bucket_upper_ms(duration_bucket(100.0)), 3)
    one = percentile_ms({duration_bucket(7.0): 1}, 0.99)
    assert one is not None and 7.0 <= one <= 7.0 * 2**0.25


def _access(endpoint: Endpoint[Any]) -> str:
    assert isinstance(endpoint.auth, Scoped)
    inner = endpoint.auth.auth
    assert isinstance(inner, TokenAuth)
    return "admin" if inner.admin_only else "token"


def test_any_token_reads_the_log_only_the_admin_clears_it() -> None:
    # nothing connects: the groups are only built and registered
    groups = default_groups(TokenStore(RedisHandle(RedisTarget("redis://127.0.0.1:1"))))
    router = build_router(lambda ex: None, groups)
    reads = [
        "/ip/203.0.113.7", "/ip/2001:db8::1", "/host/app.example.com", "/client/c_web",
        "/user/token:ci", "/errors", "/slow", "/events", "/search", "/stats", "/follow",
    ]  # fmt: skip
    for path in reads:
        assert _access(router.match("GET", f"/api/v1/logs{path}").target) == "token", path
    assert _access(router.match("DELETE", "/api/v1/logs").target) == "admin"
    assert _access(router.match("DELETE", "/api/v1/logs/").target) == "admin"


def test_status_colours_by_class() -> None:
    assert status_color("200") == "\x1b[32m"
    assert status_color("301") == "\x1b[36m"
    assert status_color("404") == "\x1b[33m"
    assert status_color("503") == "\x1b[31m"
    assert status_color("0") is None and status_color("-") is None


def test_the_logs_command_line() -> None:
    args = _parser().parse_args(["logs", "--host", "a.test", "--errors", "--limit", "5"])
    assert (args.host, args.errors, args.limit, args.handler.__name__) == (
        "a.test",
        True,
        5,
        "logs_list",
    )
    follow = _parser().parse_args(["logs", "--ip", "::1", "follow", "--status", "5xx"])
    assert (follow.ip, follow.status, follow.handler.__name__) == ("::1", "5xx", "logs_follow")
    stats = _parser().parse_args(["logs", "stats", "--hours", "48"])
    assert (stats.hours, stats.handler.__name__) == (48, "logs_stats")
    clear = _parser().parse_args(["logs", "clear", "--yes"])
    assert clear.yes and clear.handler.__name__ == "logs_clear"
    with pytest.raises(SystemExit):
        _parser().parse_args(["logs", "--hours", "0"])
