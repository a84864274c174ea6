"""The query parameters of the logs endpoints, each checked: a malformed one is a 400
``invalid_query`` naming it, never a guess."""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass

from edge.api.http import invalid_query, query_pairs
from edge.http1.exchange import Exchange
from edge.observe.reqlog_query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_WAIT,
    STREAM_ID,
    Cursor,
    Filters,
    InvalidCursor,
)

__all__ = [
    "FILTERS",
    "LIST_PARAMS",
    "MAX_VALUE",
    "SEARCH_PARAMS",
    "ListParams",
    "cursor_of",
    "filters_of",
    "follow_after",
    "hours_of",
    "limit_of",
    "one_each",
    "wait_of",
]

MAX_VALUE = 256  # characters of an ip, host, user or client filter
MAX_PATH = 1024  # characters of a path prefix (the log keeps at most that many)
# the search filters (every list takes them, but the one its path names)
FILTERS = ("host", "ip", "status", "method", "path", "user", "client", "min_ms")
LIST_PARAMS = ("hours", "limit", "cursor", *FILTERS)
# /search (and follow) also take the flags the named lists /errors and /slow stand for
SEARCH_PARAMS = (*LIST_PARAMS, "errors", "slow")
_STATUS = re.compile(r"\A(?:[1-5][0-9][0-9]|[1-5][xX][xX])\Z")
_METHOD = re.compile(r"\A[A-Za-z]{1,16}\Z")


def one_each(ex: Exchange, allowed: Collection[str]) -> dict[str, str]:
    """The query's parameters by name: each at most once, none but ``allowed``."""
    found: dict[str, str] = {}
    for name, value in query_pairs(ex):
        if name not in allowed:
            raise invalid_query(
                name, f"unknown query parameter (accepted: {', '.join(sorted(allowed))})"
            )
        if name in found:
            raise invalid_query(name, f"{name} may be given once")
        found[name] = value
    return found


def _number(params: dict[str, str], name: str) -> float | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise invalid_query(name, f"{name} must be a number")
    return value


def hours_of(params: dict[str, str], default: float, most: int, *, whole: bool = False) -> float:
    """``hours``: more than 0 and at most ``most`` (the retention); ``whole``: an integer."""
    value = _number(params, "hours")
    if value is None:
        return min(default, most)
    kind = "a whole number of hours" if whole else "a number of hours"
    if value <= 0 or value > most or (whole and value != int(value)):
        raise invalid_query("hours", f"hours must be {kind} more than 0 and at most {most}")
    return value


def limit_of(params: dict[str, str]) -> int:
    """``limit``: 1 to ``MAX_LIMIT`` entries (default ``DEFAULT_LIMIT``)."""
    text = params.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise invalid_query("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


def wait_of(params: dict[str, str]) -> float:
    """``wait``: seconds a follow may wait, 0 to ``MAX_WAIT`` (default ``MAX_WAIT``)."""
    value = _number(params, "wait")
    if value is None:
        return MAX_WAIT
    if not 0 <= value <= MAX_WAIT:
        raise invalid_query("wait", f"wait must be a number of seconds from 0 to {MAX_WAIT:g}")
    return value


def follow_after(params: dict[str, str]) -> str:
    """``after``: a stream id (``1764778499123-0``) or ``$`` (default: from now)."""
    text = params.get("after", "$")
    if text != "$" and not STREAM_ID.fullmatch(text):
        raise invalid_query("after", "after must be a stream id (as 'next' gives) or $")
    return text


def cursor_of(params: dict[str, str]) -> Cursor | None:
    text = params.get("cursor")
    if text is None:
        return None
    try:
        return Cursor.decode(text)
    except InvalidCursor:
        raise invalid_query("cursor", "cursor must be a next_cursor of this list") from None


def _text(params: dict[str, str], name: str, most: int = MAX_VALUE) -> str | None:
    text = params.get(name)
    if text is None:
        return None
    if not text or len(text) > most or not text.isprintable():
        raise invalid_query(name, f"{name} must be 1 to {most} printable characters")
    return text


def _flag(params: dict[str, str], name: str) -> bool:
    text = params.get(name)
    if text is None:
        return False
    if text.lower() not in ("true", "false", "1", "0"):
        raise invalid_query(name, f"{name} must be true or false")
    return text.lower() in ("true", "1")


def filters_of(
    params: dict[str, str],
    fixed: dict[str, str] | None = None,
    *,
    errors: bool = False,
    slow: bool = False,
) -> Filters:
    """The search filters of the query, plus ``fixed`` ones (the list's path: ``ip``,
    ``host``...) and flags (``errors``, ``slow``: the list's, or the query's)."""
    status: int | None = None
    status_class: int | None = None
    text = params.get("status")
    if text is not None:
        if not _STATUS.fullmatch(text):
            raise invalid_query("status", "status must be a code (404) or a class (4xx)")
        if text[1:].lower() == "xx":
            status_class = int(text[0])
        else:
            status = int(text)
    method = _text(params, "method")
    if method is not None and not _METHOD.fullmatch(method):
        raise invalid_query("method", "method must be an HTTP method (GET, POST...)")
    path = _text(params, "path", MAX_PATH)
    if path is not None and not path.startswith("/"):
        raise invalid_query("path", "path must start with /")
    min_ms = _number(params, "min_ms")
    if min_ms is not None and min_ms < 0:
        raise invalid_query("min_ms", "min_ms must be a number of milliseconds, 0 or more")
    values = {name: _text(params, name) for name in ("host", "ip", "user", "client")}
    values.update(fixed or {})
    return Filters(
        host=values["host"],
        ip=values["ip"],
        user=values["user"],
        client=values["client"],
        status=status,
        status_class=status_class,
        method=None if method is None else method.upper(),
        path=path,
        min_ms=min_ms,
        errors=errors or _flag(params, "errors"),
        slow=slow or _flag(params, "slow"),
    )


@dataclass(frozen=True, slots=True)
class ListParams:
    """A list's parameters: filters, window, size and where to go on from."""

    filters: Filters
    hours: float
    limit: int
    cursor: Cursor | None
