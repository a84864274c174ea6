"""Logging: one access-log line per request on stdout, the rest on stderr.

Two formats (``LOG_FORMAT``): ``json``, one JSON object a line, for machines (the default
when stdout is not a terminal: systemd's journal, docker, a file), and ``console``, one
readable line, for a person at a terminal (the default when stdout is one), coloured when
the stream is a terminal and ``NO_COLOR`` is not set (https://no-color.org).

Access lines are buffered and written at most every 50 ms (or at 64 KiB) so the hot path
does not pay a syscall per request; ``flush()`` runs at shutdown. Requests for
``ACCESS_LOG_SKIP_PATHS`` (``/health``) from loopback or a trusted PROXY peer, the health
checks of a load balancer or of docker, are not written.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from edge.settings import Settings

_encode = msgspec.json.Encoder().encode
FLUSH_INTERVAL = 0.05
FLUSH_BYTES = 65536


class AccessRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """One access-log line (a Struct encodes about twice as fast as a dict)."""

    time: str
    request_id: str
    client: str
    method: str
    host: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    duration_ms: float
    upstream: str
    route: str
    aborted: bool = False  # present only when true
    sni: str | None = None  # TLS server name, on TLS connections that sent one
    proxy_unique_id: str | None = None  # the PROXY v2 unique-id TLV, when HAProxy sends it
    client_port: int = 0
    upstream_ms: float | None = None  # request sent upstream -> its answer's head
    user: str = ""  # a username, or token:{name} for an API token
    client_id: str = ""  # the OAuth client the request's token was issued to
    error: str = ""  # the edge's error code, when it answered with one
    auth: str = ""  # a protected proxy's access check: allowed, 401, 403, error
    upstream_phase: str = ""  # the upstream failed us: at "connect" or at "response"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _json_line(record: AccessRecord | dict[str, Any]) -> bytes:
    return _encode(record) + b"\n"


class AccessLog:
    """The access log: the first ``ExchangeObserver`` (edge/observe/observer.py).

    ``render`` turns a record into its line (JSON by default, :func:`console_access_line`
    for a terminal). A record whose path (less its query) is one of ``skip_paths`` and
    whose client address is loopback or in ``skip_from`` is not written.
    """

    __slots__ = ("_buffer", "_fd", "_handle", "_loop", "_render", "_size", "_skip", "_skip_from")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        fd: int = 1,
        render: Callable[[AccessRecord | dict[str, Any]], bytes] = _json_line,
        skip_paths: Sequence[str] = (),
        skip_from: Sequence[Network] = (),
    ) -> None:
        self._fd = fd
        self._loop = loop
        self._render = render
        self._skip = frozenset(skip_paths)
        self._skip_from = tuple(skip_from)
        self._buffer: list[bytes] = []
        self._size = 0
        self._handle: asyncio.TimerHandle | None = None

    def skipped(self, record: AccessRecord | dict[str, Any]) -> bool:
        """Whether ``record`` is left out (the request log leaves out the same ones)."""
        return bool(self._skip) and self._skipped(record)

    def _skipped(self, record: AccessRecord | dict[str, Any]) -> bool:
        if isinstance(record, dict):
            path, client = str(record.get("path", "")), str(record.get("client", ""))
        else:
            path, client = record.path, record.client
        if path.partition("?")[0] not in self._skip:
            return False
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback or any(address in net for net in self._skip_from)

    def write(self, record: AccessRecord | dict[str, Any]) -> None:
        if self._skip and self._skipped(record):
            return
        line = self._render(record)
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES or self._loop is None:
            self.flush()
        elif self._handle is None:
            self._handle = self._loop.call_later(FLUSH_INTERVAL, self.flush)

    # the observer's entry point is write itself: no extra call on the request path
    exchange_done = write

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except BlockingIOError:
            pass  # stdout is non-blocking and full: drop rather than stall the loop
        except OSError:
            pass


# ------------------------------------------------------------------ format choice


def want_colour(fd: int, environ: Mapping[str, str] = os.environ) -> bool:
    """Colour on ``fd``: only a terminal, and not when ``NO_COLOR`` is set to anything
    but the empty string (no-color.org) or ``TERM=dumb``."""
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    try:
        return os.isatty(fd)
    except OSError:
        return False


def log_format(setting: str | None, fd: int = 1) -> str:
    """``LOG_FORMAT``, or when unset: ``console`` when ``fd`` (stdout) is a terminal, else
    ``json``. Workers inherit the supervisor's stdout, so every process decides alike."""
    if setting is not None:
        return setting
    try:
        return "console" if os.isatty(fd) else "json"
    except OSError:
        return "json"


def access_log_for(settings: Settings, loop: asyncio.AbstractEventLoop, fd: int = 1) -> AccessLog:
    """The access log a worker writes on ``fd`` (stdout), as the settings ask."""
    render: Callable[[AccessRecord | dict[str, Any]], bytes] = _json_line
    if log_format(settings.log_format, fd) == "console":
        colour = want_colour(fd)

        def render(record: AccessRecord | dict[str, Any]) -> bytes:
            return console_access_line(record, colour)

    return AccessLog(
        loop,
        fd,
        render,
        skip_paths=settings.access_log_skip_paths,
        skip_from=settings.proxy_trusted_cidrs,
    )


# ------------------------------------------------------------------ console format

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_STATUS_COLOURS = {2: "\x1b[32m", 3: "\x1b[36m", 4: "\x1b[33m", 5: "\x1b[31m"}
_LEVELS = {
    "DEBUG": ("DBG", "\x1b[35m"),
    "INFO": ("INF", "\x1b[32m"),
    "WARNING": ("WRN", "\x1b[33m"),
    "ERROR": ("ERR", "\x1b[31m"),
    "CRITICAL": ("CRT", "\x1b[1;31m"),
}
# printed as they are; anything else (a space, a quote, a control character) is quoted
_BARE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:/@+,*[]?=&%~!$;()"
)


def _value(value: object) -> str:
    """A field's value as text: bare when it is one plain word, else quoted as JSON (so a
    space, a quote or a newline in it can never pass for another field or line)."""
    text = value if isinstance(value, str) else None
    if text is None:
        if isinstance(value, bool | int | float) or value is None:
            return _encode(value).decode()
        text = str(value)
    if text and all(c in _BARE for c in text):
        return text
    return _encode(text).decode()


def _paint(text: str, code: str, colour: bool) -> str:
    return f"{code}{text}{_RESET}" if colour else text


def console_access_line(record: AccessRecord | dict[str, Any], colour: bool = False) -> bytes:
    """``<time> <status> <method> <host><path> <ms>ms <in>B/<out>B <client> -> <upstream>
    route=<id> id=<request id>``, plus ``aborted``, ``sni``, ``proxy_unique_id`` when set."""
    fields: dict[str, Any] = record if isinstance(record, dict) else msgspec.structs.asdict(record)
    status = int(fields.get("status", 0))
    shown_status = _paint(str(status), _STATUS_COLOURS.get(status // 100, ""), colour)
    target = f"{fields.get('host', '')}{fields.get('path', '')}"
    parts = [
        _paint(str(fields.get("time", "")), _DIM, colour),
        shown_status,
        _value(fields.get("method", "")),
        _value(target),
        f"{fields.get('duration_ms', 0)}ms",
        f"{fields.get('bytes_in', 0)}B/{fields.get('bytes_out', 0)}B",
        _value(fields.get("client", "")),
    ]
    if fields.get("upstream"):
        parts.append(f"-> {_value(fields['upstream'])}")
    if fields.get("route"):
        parts.append(f"route={_value(fields['route'])}")
    if fields.get("aborted"):
        parts.append(_paint("aborted", _STATUS_COLOURS[4], colour))
    for name in ("sni", "proxy_unique_id"):
        if fields.get(name) is not None:
            parts.append(f"{name}={_value(fields[name])}")
    parts.append(_paint(f"id={fields.get('request_id', '')}", _DIM, colour))
    return (" ".join(parts) + "\n").encode("utf-8", "backslashreplace")


class _ConsoleFormatter(logging.Formatter):
    """``<time> <LVL> <message> key=value ... logger=<name> worker=<n>``: one line (an
    exception's traceback follows it, indented)."""

    def __init__(self, worker: int | None, colour: bool) -> None:
        super().__init__()
        self.worker = worker
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        colour = self.colour
        stamp = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z"
        )
        short, code = _LEVELS.get(record.levelname, (record.levelname[:3], ""))
        message = record.getMessage().replace("\n", "\\n")
        parts = [_paint(stamp, _DIM, colour), _paint(short, code, colour), message]
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            for key, value in extra.items():
                parts.append(f"{_paint(str(key), _BOLD, colour)}={_value(value)}")
        trailer = f"logger={record.name}"
        if self.worker is not None:
            trailer += f" worker={self.worker}"
        parts.append(_paint(trailer, _DIM, colour))
        line = " ".join(parts)
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "\n" + "\n".join("    " + row for row in trace.splitlines())
        return line


class _JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry).decode()


def setup_logging(level: str, worker: int | None = None, fmt: str | None = None) -> None:
    """One line per message on stderr, in ``fmt`` (``LOG_FORMAT``; unset: console when
    stdout is a terminal, else JSON). ``fields`` passed in ``extra`` become top-level keys
    (JSON) or ``key=value`` pairs (console)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format(fmt) == "console":
        handler.setFormatter(_ConsoleFormatter(worker, want_colour(sys.stderr.fileno())))
    else:
        handler.setFormatter(_JsonFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
