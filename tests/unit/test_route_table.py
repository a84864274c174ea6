"""The plain-text route table of ``GET /api/v1/routes/formatted``."""

from __future__ import annotations

from typing import Any

from edge.api.config.route_table import format_routes
from edge.config.schema import RouteConfig


def _route(route_id: str, path: str, **extra: Any) -> RouteConfig:
    fields: dict[str, Any] = {"target_type": "port", "target_value": "9000", **extra}
    return RouteConfig(route_id=route_id, path_pattern=path, **fields)


def test_no_routes_is_the_heading_alone() -> None:
    assert format_routes([]) == "PRIORITY  ID  PATTERN  METHODS  TARGET  SCOPE  ENABLED\n"


def test_rows_in_the_given_order_aligned_under_their_headings() -> None:
    text = format_routes(
        [
            _route("b", "/api/long/prefix", priority=100, methods=("GET",)),
            _route("a-longer-id", "^/v[0-9]+/", is_regex=True, enabled=False),
        ]
    )
    heading, first, second = text.splitlines()
    assert text.endswith("\n")
    assert first.split() == ["100", "b", "/api/long/prefix", "GET", "port:9000", "global", "yes"]
    assert second.split() == ["50", "a-longer-id", "~^/v[0-9]+/", "*", "port:9000", "global", "no"]
    for name in ("ID", "PATTERN", "METHODS", "TARGET", "SCOPE", "ENABLED"):
        column = heading.index(name)
        assert first[column - 2 : column] == second[column - 2 : column] == "  "
        assert first[column] != " " and second[column] != " "


def test_whitespace_and_control_characters_stay_inside_their_cell() -> None:
    scoped = _route(
        "r", "^/a b\t\x00", is_regex=True, scope="proxy", proxy_hostnames=("a.test", "b.test")
    )
    row = format_routes([scoped]).splitlines()[1]
    assert row.split() == [
        "50", "r", "~^/a\\x20b\\x09\\x00", "*", "port:9000", "proxy:a.test,b.test", "yes"
    ]  # fmt: skip
