"""systemd's service notifications (``Type=notify``) and watchdog, without libsystemd.

The protocol is one datagram of ``NAME=value`` lines to the unix socket named in
``$NOTIFY_SOCKET`` (``@name``: the abstract namespace), see sd_notify(3). The supervisor
sends ``READY=1`` once every worker listens, and, when the unit sets ``WatchdogSec=``
(``$WATCHDOG_USEC``), ``WATCHDOG=1`` at half that interval for as long as every worker
that listens is alive: each worker reports over a pipe the supervisor hands it (fd number
in ``$_EDGE_REPORT_FD``) once when it listens, then every heartbeat (``$_EDGE_HEARTBEAT``
seconds) from its event loop. A worker whose loop is stuck stops reporting; once it has
been silent for the whole watchdog interval the supervisor stops the pings and systemd
restarts the service (``Restart=on-failure``). A worker that is starting, or waiting for
its restart, has not reported yet and does not stop the pings: the supervisor's own
restart, with its backoff, deals with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import time
from collections.abc import Iterable, MutableMapping

log = logging.getLogger("edge.systemd")

__all__ = ["REPORT_FD", "SystemdLink", "WorkerReporter", "notify"]

REPORT_FD = "_EDGE_REPORT_FD"  # internal: set by the supervisor for its workers only
HEARTBEAT = "_EDGE_HEARTBEAT"
HEARTBEAT_CAP = 1.0  # seconds between a worker's reports, at most


def notify(address: str, *lines: str) -> bool:
    """Send ``lines`` as one notification to ``address``; False if it could not be sent."""
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), target)
    except OSError as exc:
        log.warning(
            "cannot notify systemd", extra={"fields": {"socket": address, "error": str(exc)}}
        )
        return False
    return True


class SystemdLink:
    """The supervisor's side: readiness, watchdog and stop notifications, and the pipe
    its workers report on. Without ``$NOTIFY_SOCKET`` it only tracks the reports."""

    def __init__(self, address: str | None, watchdog: float | None) -> None:
        self.address = address
        self.watchdog = watchdog  # seconds (WatchdogSec=), None: no watchdog
        self.ready_sent = False
        self._read_fd, self.report_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._partial = b""
        self._seen: dict[int, float] = {}  # worker id -> last report (monotonic)
        self._next_ping = 0.0

    @classmethod
    def from_env(cls, env: MutableMapping[str, str]) -> SystemdLink:
        """Take the notification variables out of ``env`` (the workers' environment: they
        are the supervisor's alone) and give the workers the report pipe instead."""
        address = env.pop("NOTIFY_SOCKET", None) or None
        usec = env.pop("WATCHDOG_USEC", None)
        pid = env.pop("WATCHDOG_PID", None)
        watchdog = None
        if usec and (not pid or pid == str(os.getpid())):
            with contextlib.suppress(ValueError):
                watchdog = int(usec) / 1e6 if int(usec) > 0 else None
        link = cls(address, watchdog)
        env[REPORT_FD] = str(link.report_fd)
        beat = HEARTBEAT_CAP if watchdog is None else min(HEARTBEAT_CAP, watchdog / 4)
        env[HEARTBEAT] = f"{beat:.3f}"
        return link

    def send(self, *lines: str) -> None:
        if self.address is not None:
            notify(self.address, *lines)

    def spawned(self, worker_id: int) -> None:
        """A new process for ``worker_id``: it counts once it reports."""
        self._seen.pop(worker_id, None)

    def pause(self, seconds: float, worker_ids: Iterable[int]) -> None:
        """Sleep up to ``seconds`` while reading reports; send READY=1 once each of
        ``worker_ids`` has reported, and the watchdog ping when it is due."""
        ready, _, _ = select.select([self._read_fd], [], [], seconds)
        if ready:
            self._read_reports()
        ids = set(worker_ids)
        if not self.ready_sent and ids and ids <= self._seen.keys():
            self.ready_sent = True
            log.info("every worker listens", extra={"fields": {"workers": len(ids)}})
            self.send("READY=1", f"STATUS=serving with {len(ids)} workers")
        self._ping()

    def _read_reports(self) -> None:
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._read_fd, 65536):
                data += chunk
        *lines, self._partial = (self._partial + data).split(b"\n")
        now = time.monotonic()
        for line in lines:
            with contextlib.suppress(ValueError):
                self._seen[int(line)] = now

    def _ping(self) -> None:
        if self.watchdog is None or not self.ready_sent:
            return
        now = time.monotonic()
        if now < self._next_ping:
            return
        silent = [wid for wid, last in self._seen.items() if now - last > self.watchdog]
        if silent:
            if self._next_ping:  # said once per silence, not at every pause
                log.error(
                    "worker not responding; watchdog pings stopped",
                    extra={"fields": {"workers": sorted(silent)}},
                )
                self._next_ping = 0.0
            return
        self.send("WATCHDOG=1")
        self._next_ping = now + self.watchdog / 2

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=draining")

    def close(self) -> None:
        for fd in (self._read_fd, self.report_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class WorkerReporter:
    """A worker's side: once it listens, a report now and one every heartbeat."""

    def __init__(self, loop: asyncio.AbstractEventLoop, worker_id: int, fd: int, every: float):
        self.loop = loop
        self.line = f"{worker_id}\n".encode()
        self.fd = fd
        self.every = every
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def start(cls, loop: asyncio.AbstractEventLoop, worker_id: int) -> WorkerReporter | None:
        """Report that the worker listens, if a supervisor asked (``$_EDGE_REPORT_FD``)."""
        raw = os.environ.get(REPORT_FD)
        if not raw:
            return None
        try:
            fd, every = int(raw), float(os.environ.get(HEARTBEAT, HEARTBEAT_CAP))
            os.set_blocking(fd, False)
        except (ValueError, OSError):
            return None
        reporter = cls(loop, worker_id, fd, max(0.01, every))
        reporter._report()
        return reporter

    def _report(self) -> None:
        # a full pipe (a supervisor that stopped reading) drops the report: never block
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.fd, self.line)
        self._handle = self.loop.call_later(self.every, self._report)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
