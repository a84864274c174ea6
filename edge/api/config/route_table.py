"""``GET /api/v1/routes/formatted``: the routes as a plain-text table for people to read.

One row per route, in the order given (the API passes evaluation order), columns aligned
with two spaces. A regex pattern is marked with a leading ``~`` (as nginx's ``location ~``);
whitespace and control characters in a cell are written as ``\\xNN`` so a row stays one
line of separate columns (inside a regex, ``\\x20`` still means a space).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from edge.config.schema import RouteConfig

__all__ = ["format_routes"]


def _pattern(route: RouteConfig) -> str:
    return f"~{route.path_pattern}" if route.is_regex else route.path_pattern


def _methods(route: RouteConfig) -> str:
    return ",".join(route.methods) if route.methods else "*"


def _target(route: RouteConfig) -> str:
    return f"{route.target_type}:{route.target_value}"


def _scope(route: RouteConfig) -> str:
    if route.scope == "proxy":
        return "proxy:" + ",".join(route.proxy_hostnames)
    return "global"


COLUMNS: tuple[tuple[str, Callable[[RouteConfig], str]], ...] = (
    ("PRIORITY", lambda r: str(r.priority)),
    ("ID", lambda r: r.route_id),
    ("PATTERN", _pattern),
    ("METHODS", _methods),
    ("TARGET", _target),
    ("SCOPE", _scope),
    ("ENABLED", lambda r: "yes" if r.enabled else "no"),
)


def _cell(text: str) -> str:
    if all(c.isprintable() and not c.isspace() for c in text):
        return text
    return "".join(
        c
        if c.isprintable() and not c.isspace()
        else f"\\x{ord(c):02x}"
        if ord(c) < 0x100
        else f"\\u{ord(c):04x}"
        for c in text
    )


def format_routes(routes: Iterable[RouteConfig]) -> str:
    """The table (a heading row, then one row per route), each line ending in ``\\n``."""
    rows = [[name for name, _ in COLUMNS]]
    rows += [[_cell(value(route)) for _, value in COLUMNS] for route in routes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines) + "\n"
