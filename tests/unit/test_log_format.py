"""LOG_FORMAT: JSON for machines, a coloured one-line console format for terminals; the
choice follows stdout being a terminal (a real pty here), colour follows NO_COLOR."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from collections.abc import Iterator

import pytest

from edge.observe.accesslog import (
    AccessLog,
    AccessRecord,
    _ConsoleFormatter,
    _JsonFormatter,
    console_access_line,
    log_format,
    want_colour,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def pty_fd() -> Iterator[int]:
    """The terminal end of a real pseudo-terminal."""
    master, slave = os.openpty()
    yield slave
    os.close(slave)
    os.close(master)


@pytest.fixture
def pipe_fd() -> Iterator[int]:
    read, write = os.pipe()
    yield write
    os.close(read)
    os.close(write)


def record(**fields: object) -> AccessRecord:
    values: dict[str, object] = {
        "time": "2025-01-02T03:04:05.678Z",
        "request_id": "abcd-1",
        "client": "127.0.0.1",
        "method": "GET",
        "host": "app.test",
        "path": "/api/x?y=1",
        "status": 200,
        "bytes_in": 12,
        "bytes_out": 345,
        "duration_ms": 1.25,
        "upstream": "http://127.0.0.1:9999",
        "route": "api",
    }
    values.update(fields)
    return AccessRecord(**values)  # type: ignore[arg-type]


def test_default_is_console_on_a_terminal_and_json_elsewhere(pty_fd: int, pipe_fd: int) -> None:
    assert log_format(None, pty_fd) == "console"
    assert log_format(None, pipe_fd) == "json"
    # an explicit setting wins either way
    assert log_format("json", pty_fd) == "json"
    assert log_format("console", pipe_fd) == "console"


def test_colour_only_on_a_terminal_without_no_color(pty_fd: int, pipe_fd: int) -> None:
    assert want_colour(pty_fd, {}) is True
    assert want_colour(pipe_fd, {}) is False
    assert want_colour(pty_fd, {"NO_COLOR": "1"}) is False
    assert want_colour(pty_fd, {"NO_COLOR": ""}) is True  # no-color.org: empty is unset
    assert want_colour(pty_fd, {"TERM": "dumb"}) is False


def test_console_access_line() -> None:
    plain = console_access_line(record()).decode()
    assert plain == (
        "2025-01-02T03:04:05.678Z 200 GET app.test/api/x?y=1 1.25ms 12B/345B 127.0.0.1 "
        "-> http://127.0.0.1:9999 route=api id=abcd-1\n"
    )
    painted = console_access_line(record(status=502), colour=True).decode()
    assert "\x1b[31m502\x1b[0m" in painted  # 5xx in red
    assert ANSI.sub("", painted) == plain.replace(" 200 ", " 502 ")
    # odd values are quoted, so they cannot pass for another field or line
    odd = console_access_line(record(path="/a b\nc", aborted=True, sni="x.test")).decode()
    assert odd.count("\n") == 1
    assert '"app.test/a b\\nc"' in odd
    assert " aborted " in odd and "sni=x.test" in odd
    # the same from a dict record
    as_dict = {k: v for k, v in json.loads(AccessLog_json(record())).items()}
    assert console_access_line(as_dict).decode() == plain


def AccessLog_json(rec: AccessRecord) -> bytes:
    read, write = os.pipe()
    try:
        AccessLog(None, write).write(rec)
        return os.read(read, 65536)
    finally:
        os.close(read)
        os.close(write)


def log_record(exc: bool = False) -> logging.LogRecord:
    rec = logging.LogRecord("edge.worker", logging.WARNING, __file__, 1, "cannot listen", (), None)
    rec.fields = {"address": "127.0.0.1:80", "error": "Permission denied"}
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            rec.exc_info = sys.exc_info()
    return rec


def test_console_process_log_line() -> None:
    rec = log_record()
    line = _ConsoleFormatter(worker=3, colour=False).format(rec)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WRN cannot listen address=127\.0\.0\.1:80 "
        r'error="Permission denied" logger=edge\.worker worker=3',
        line,
    ), line
    painted = _ConsoleFormatter(worker=3, colour=True).format(rec)
    assert "\x1b[33mWRN\x1b[0m" in painted
    assert ANSI.sub("", painted) == line
    # a traceback follows, indented, after the one line
    with_trace = _ConsoleFormatter(None, False).format(log_record(exc=True))
    first, *rest = with_trace.splitlines()
    assert first.endswith("logger=edge.worker")
    assert rest and all(row.startswith("    ") for row in rest) and "ValueError: boom" in rest[-1]
    # JSON is unchanged
    entry = json.loads(_JsonFormatter(3).format(log_record()))
    assert entry["level"] == "warning" and entry["address"] == "127.0.0.1:80"


TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)


def test_skip_paths_only_from_loopback_or_trusted_peers() -> None:
    log = AccessLog(None, 1, skip_paths=("/health",), skip_from=TRUSTED)
    assert log._skipped(record(path="/health"))
    assert log._skipped(record(path="/health?verbose=1", client="::1"))
    assert log._skipped(record(path="/health", client="::ffff:127.0.0.1"))
    assert log._skipped(record(path="/health", client="10.1.2.3"))  # a trusted PROXY peer
    assert not log._skipped(record(path="/health", client="203.0.113.7"))
    assert not log._skipped(record(path="/healthz"))
    assert not log._skipped(record(path="/health/x"))
    assert not log._skipped(record(path="/health", client=""))
    assert log._skipped({"path": "/health", "client": "127.0.0.1"})
