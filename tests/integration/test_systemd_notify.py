"""``Type=notify``: READY=1 once every worker listens, WATCHDOG=1 at half WATCHDOG_USEC
while every worker's loop runs, STOPPING=1 on SIGTERM; SIGHUP (a reload) does not stop the edge.
A real unix datagram socket stands in for systemd's."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import EdgeProcess, child_pids, wait_for

WORKERS = 2


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # a short path: sun_path holds 108 bytes, pytest's tmp_path may be longer
    directory = tempfile.mkdtemp(prefix="sd-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def receive(sock: socket.socket, timeout: float) -> list[str] | None:
    """The next notification's lines, or None after ``timeout`` seconds of silence."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096).decode().split("\n")
    except TimeoutError:
        return None


def serving_lines(edge: EdgeProcess) -> int:
    return edge.stderr().count('"message":"worker serving"')


def worker_pids(edge: EdgeProcess) -> set[int]:
    assert edge.proc is not None
    return child_pids(edge.proc.pid, lambda argv: b"worker" in argv)


def test_ready_after_every_worker_listens_then_watchdog_pings(
    edge_factory: Callable[..., EdgeProcess], notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    edge = edge_factory(
        wait=False, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000", EDGE_WORKERS=str(WORKERS)
    )
    edge.expect_errors("worker not responding")
    ready = receive(sock, 20)
    assert ready is not None and "READY=1" in ready, ready
    # every worker had logged that it serves before the supervisor said ready
    assert serving_lines(edge) == WORKERS, edge.stderr()
    assert edge.health()["status"] in ("ok", "degraded")
    # pings at half the interval: about two a second (those sent while the checks above
    # ran, queued in the socket, are not counted)
    while receive(sock, 0.01) is not None:
        pass
    started = time.monotonic()
    pings = 0
    while time.monotonic() - started < 2.0:
        if receive(sock, 1.0) == ["WATCHDOG=1"]:
            pings += 1
    assert 3 <= pings <= 5, pings

    # a worker whose loop is stuck (stopped): the pings stop, and start again after
    pids = wait_for(lambda: worker_pids(edge) if len(worker_pids(edge)) == WORKERS else None)
    stuck = min(pids)
    os.kill(stuck, signal.SIGSTOP)
    try:
        # silent for the whole interval (1 s) after its last report (0.25 s before)
        time.sleep(1.5)
        while receive(sock, 0.01) is not None:
            pass  # the pings sent before
        assert receive(sock, 1.5) is None  # three pings were due in that time
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert receive(sock, 3.0) == ["WATCHDOG=1"]
    assert "worker not responding; watchdog pings stopped" in edge.stderr()

    # SIGHUP (a reload): logged, the workers resync; none stops
    edge.signal(signal.SIGHUP)
    wait_for(lambda: "reload: every worker resyncs" in edge.stderr())
    assert edge.proc is not None and edge.proc.poll() is None
    assert worker_pids(edge) == pids

    edge.signal(signal.SIGTERM)
    lines: list[str] = []
    while (msg := receive(sock, 5.0)) is not None and "STOPPING=1" not in msg:
        lines += msg
    assert msg is not None and "STOPPING=1" in msg, lines
    assert edge.proc.wait(timeout=20) == 0


def test_no_notify_socket_no_notifications(edge_factory: Callable[..., EdgeProcess]) -> None:
    # the variables never reach the workers, whatever the supervisor got
    edge = edge_factory(EDGE_WORKERS="1")
    assert edge.health()["status"] in ("ok", "degraded")
    pid = min(worker_pids(edge))
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not any(v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_")) for v in environ)
