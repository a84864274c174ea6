"""``edge logs ...``: the request log in Redis (``/api/v1/logs``, see ``docs/logs.md``).

``edge logs [filters]`` lists the newest entries (``/search``), ``edge logs events`` the
connection events, ``edge logs stats`` the hourly counts and percentiles, ``edge logs
follow [filters]`` long-polls for new entries until Ctrl-C, and ``edge logs clear``
deletes the whole log (the admin token; asks first unless ``--yes``). Status codes are
coloured on a terminal (green 2xx, cyan 3xx, yellow 4xx, red 5xx; not with ``NO_COLOR``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from edge.client.base import Context, Sub, command
from edge.client.errors import ClientError
from edge.client.http import Api
from edge.client.output import Column, Printer, to_csv, to_yaml

__all__ = ["add_logs_parsers"]

PATH = "/api/v1/logs"
FOLLOW_WAIT = 25  # seconds each follow call waits at most (the API's own bound)
RESUME_PAUSE = 2.0  # seconds between follow calls while the edge cannot answer
_RED, _YELLOW, _GREEN, _CYAN, _RESET = "\x1b[31m", "\x1b[33m", "\x1b[32m", "\x1b[36m", "\x1b[0m"
_BY_CLASS = {"2": _GREEN, "3": _CYAN, "4": _YELLOW, "5": _RED}
# option (argparse dest) -> query parameter of the API
FILTER_OPTIONS = {
    "host": "host",
    "ip": "ip",
    "status": "status",
    "user": "user",
    "client": "client",
    "method": "method",
    "path": "path",
    "min_ms": "min_ms",
}
FLAGS = {
    "hours": "--hours",
    "limit": "--limit",
    "host": "--host",
    "ip": "--ip",
    "status": "--status",
    "user": "--user",
    "client": "--client",
    "method": "--method",
    "path": "--path",
    "min_ms": "--min-ms",
    "wait": "--wait",
}


def _what(entry: Mapping[str, Any]) -> Any:
    return entry.get("event") or entry.get("method")


ENTRY_COLUMNS = (
    Column("TIME", "time", relative=False),
    Column("STATUS", "status", status=True),
    Column("METHOD", _what),
    Column("HOST", "host"),
    Column("PATH", "path"),
    Column("MS", "duration_ms"),
    Column("CLIENT_IP", "client_ip"),
    Column("USER", "user"),
)
EVENT_COLUMNS = (
    Column("TIME", "time", relative=False),
    Column("EVENT", "event"),
    Column("CLIENT_IP", "client_ip"),
    Column("PORT", "client_port"),
    Column("SNI", "sni"),
    Column("ERROR", "error"),
)
STATS_COLUMNS = (
    Column("HOUR", "start", relative=False),
    Column("REQUESTS", "requests"),
    Column("ERRORS", "errors"),
    Column("UNIQUE_IPS", "unique_ips"),
    Column("P50_MS", "p50_ms"),
    Column("P95_MS", "p95_ms"),
    Column("P99_MS", "p99_ms"),
)


def status_color(text: str) -> str | None:
    """The colour of an HTTP status code (None: not one)."""
    word = text.strip()
    if len(word) == 3 and word.isdigit():
        return _BY_CLASS.get(word[0])
    return None


class LogPrinter(Printer):
    """The printer of the logs commands: status codes coloured by class."""

    def _paint(self, text: str, padded: str) -> str:
        color = status_color(text) if self.color else None
        if color is None:
            return super()._paint(text, padded)
        return f"{color}{padded}{_RESET}"


def _printer(ctx: Context) -> LogPrinter:
    out = LogPrinter(ctx.option("format", "table"), env=ctx.env)
    ctx._out = out
    return out


def _filters(ctx: Context) -> dict[str, str]:
    query: dict[str, str] = {}
    for option, name in FILTER_OPTIONS.items():
        value = ctx.option(option)
        if value is not None:
            query[name] = str(value)
    if ctx.option("errors"):
        query["errors"] = "true"
    if ctx.option("slow"):
        query["slow"] = "true"
    return query


def _window(ctx: Context, query: dict[str, str]) -> dict[str, str]:
    for name in ("hours", "limit"):
        value = ctx.option(name)
        if value is not None:
            query[name] = f"{value:g}" if isinstance(value, float) else str(value)
    return query


def _listed(ctx: Context, doc: Any, columns: Sequence[Column]) -> int:
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise ClientError("unexpected answer from the API: expected a list of entries")
    _printer(ctx).records(doc["entries"], columns)
    if doc.get("partial"):
        print(
            "edge: the search stopped after examining its bound of entries: narrow it "
            "(--host, --ip, --status...) or shorten --hours",
            file=sys.stderr,
        )
    elif doc.get("next_cursor"):
        print("edge: more entries match: raise --limit (at most 1000)", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- commands


def logs_list(ctx: Context) -> int:
    query = _window(ctx, _filters(ctx))
    return _listed(
        ctx, ctx.api.call("GET", f"{PATH}/search", query=query, flags=FLAGS), ENTRY_COLUMNS
    )


def logs_events(ctx: Context) -> int:
    query = _window(ctx, {})
    doc = ctx.api.call("GET", f"{PATH}/events", query=query, flags=FLAGS)
    return _listed(ctx, doc, EVENT_COLUMNS)


def logs_stats(ctx: Context) -> int:
    query: dict[str, str] = {}
    if ctx.option("hours") is not None:
        query["hours"] = str(ctx.option("hours"))
    if ctx.option("host") is not None:
        query["host"] = ctx.option("host")
    doc = ctx.api.call("GET", f"{PATH}/stats", query=query, flags=FLAGS)
    if not isinstance(doc, dict) or not isinstance(doc.get("hours"), list):
        raise ClientError("unexpected answer from the API: expected a list of hours")
    _printer(ctx).records(doc["hours"], STATS_COLUMNS)
    return 0


class _FollowOutput:
    """Entries printed as they come: table lines under one header, JSON lines, YAML
    documents, or CSV rows under one header (the columns of the first entries)."""

    def __init__(self, printer: LogPrinter) -> None:
        self.printer = printer
        self.started = False
        self.csv_columns: list[str] = []

    def _cells(self, entry: Mapping[str, Any]) -> list[str]:
        cells = []
        for column in ENTRY_COLUMNS:
            value = column.value(entry)
            cells.append("-" if value is None or value == "" else str(value))
        return cells

    def write(self, entries: Sequence[Mapping[str, Any]]) -> None:
        stream = self.printer.stream
        fmt = self.printer.format
        for entry in entries:
            if fmt == "json":
                stream.write(json.dumps(entry, ensure_ascii=False) + "\n")
            elif fmt == "yaml":
                stream.write("---\n" + to_yaml(entry))
            elif fmt == "csv":
                if not self.csv_columns:
                    self.csv_columns = [c.header.lower() for c in ENTRY_COLUMNS]
                    stream.write(to_csv([{c: c for c in self.csv_columns}]).split("\n", 1)[0])
                    stream.write("\n")
                row = dict(zip(self.csv_columns, self._cells(entry), strict=True))
                stream.write(to_csv([row]).split("\n", 1)[1])
            else:
                if not self.started:
                    stream.write(self._line([c.header for c in ENTRY_COLUMNS], paint=False))
                    self.started = True
                stream.write(self._line(self._cells(entry), paint=True))
        stream.flush()

    def _line(self, cells: list[str], *, paint: bool) -> str:
        widths = (24, 6, 7, 24, 32, 9, 16, 0)
        out = []
        for i, (text, width) in enumerate(zip(cells, widths, strict=True)):
            padded = text.ljust(width) if width else text
            out.append(self.printer._paint(text, padded) if paint and i == 1 else padded)
        return "  ".join(out).rstrip() + "\n"


def logs_follow(ctx: Context) -> int:
    settings = ctx.settings
    timeout = float(ctx.option("timeout", 10.0))
    # each call may wait FOLLOW_WAIT seconds for an entry: the client waits longer
    api = Api(settings.api_url, settings.token, timeout=FOLLOW_WAIT + timeout, debug=ctx.debug)
    out = _FollowOutput(_printer(ctx))
    query = _filters(ctx)
    if ctx.option("limit") is not None:
        query["limit"] = str(ctx.option("limit"))
    after = "$"
    wait = str(FOLLOW_WAIT)
    failing = False
    try:
        while True:
            try:
                doc = api.call(
                    "GET",
                    f"{PATH}/follow",
                    # the first call answers at once with the stream's newest id: from
                    # then on the follow goes on from an id, so an entry logged while a
                    # later call failed (the edge restarting) is not missed
                    query={**query, "after": after, "wait": "0" if after == "$" else wait},
                    flags=FLAGS,
                )
            except ClientError as exc:
                if not exc.transient:
                    raise
                # the edge restarting, its Redis away: go on from the same place (what
                # was logged meanwhile comes next, as far as the stream still holds it)
                if not failing:
                    print(f"edge: {exc.message}; following again every {RESUME_PAUSE:g}s",
                          file=sys.stderr)  # fmt: skip
                failing = True
                time.sleep(RESUME_PAUSE)
                continue
            if failing:
                print("edge: following again", file=sys.stderr)
                failing = False
            if not isinstance(doc, dict) or not isinstance(doc.get("next"), str):
                raise ClientError("unexpected answer from the API: expected entries and next")
            out.write(doc.get("entries") or [])
            after = doc["next"]
    except KeyboardInterrupt:
        return 0  # Ctrl-C ends a follow: nothing went wrong


def logs_clear(ctx: Context) -> int:
    if not ctx.option("yes"):
        if not sys.stdin.isatty():
            raise ClientError("edge logs clear deletes the whole request log: add --yes", 2)
        answer = input("Delete every entry of the request log (every node's)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("edge: nothing deleted", file=sys.stderr)
            return 1
    deleted = 0
    for _ in range(10_000):  # 50,000 keys a call: far beyond any retention's worth
        doc = ctx.api.call("DELETE", PATH)
        if not isinstance(doc, dict) or not isinstance(doc.get("deleted"), int):
            raise ClientError("unexpected answer from the API: expected a count of keys")
        deleted += doc["deleted"]
        if doc.get("complete"):
            break
    ctx.out.message(f"deleted the request log ({deleted} keys)")
    return 0


# ---------------------------------------------------------------------------- parsers


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _add_filters(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument("--host", default=default, help="only this host name")
    parser.add_argument("--ip", default=default, help="only this client IP")
    parser.add_argument("--status", default=default, help="a status (404) or a class (4xx)")
    parser.add_argument(
        "--errors", action="store_true", default=default, help="only 4xx and 5xx answers"
    )
    parser.add_argument(
        "--slow", action="store_true", default=default, help="only those over LOG_SLOW_MS"
    )
    parser.add_argument(
        "--user", default=default, help="only this user (token:NAME for an API token)"
    )
    parser.add_argument("--client", default=default, help="only this OAuth client id")
    parser.add_argument("--method", default=default, help="only this method (GET, POST...)")
    parser.add_argument("--path", default=default, help="only paths starting with this")
    parser.add_argument(
        "--min-ms", dest="min_ms", type=float, default=default, help="only as slow as this (ms)"
    )
    parser.add_argument(
        "--limit", type=int, default=default, help="entries at most (default 100, at most 1000)"
    )


def add_logs_parsers(sub: Sub, common: argparse.ArgumentParser) -> None:
    from edge.cli_help import examples

    description = "the request log in Redis (/api/v1/logs): newest first, every node's"
    logs = sub.add_parser(
        "logs",
        help="query the request log (/api/v1/logs)",
        description=description,
        parents=[common],
        epilog=examples("logs"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    logs.set_defaults(handler=logs_list)
    logs.add_argument(
        "--hours", type=_positive, help="how far back (default 1, at most LOG_RETENTION_HOURS)"
    )
    _add_filters(logs)
    commands = logs.add_subparsers(dest="logs_command", required=False, metavar="COMMAND")
    s = argparse.SUPPRESS  # a value given before the command is kept
    events = command(
        commands, "events", "list connection events (TLS or PROXY failures)", logs_events, common
    )
    events.add_argument("--hours", type=_positive, default=s, help="how far back (default 1)")
    events.add_argument("--limit", type=int, default=s, help="entries at most (default 100)")
    stats = command(
        commands,
        "stats",
        "requests, errors, unique IPs and p50/p95/p99 per hour",
        logs_stats,
        common,
    )
    stats.add_argument("--hours", type=int, default=s, help="hours back, newest first (default 24)")
    stats.add_argument("--host", default=s, help="unique IPs of this host only")
    follow = command(
        commands, "follow", "print new entries as they come, until Ctrl-C", logs_follow, common
    )
    _add_filters(follow, s)
    clear = command(
        commands, "clear", "delete the whole request log (admin token)", logs_clear, common
    )
    clear.add_argument("--yes", action="store_true", help="do not ask first")
