"""``edge serve``: start the embedded Redis if needed, run N worker processes, drain them.

Workers are separate interpreters (``python -m edge worker``) that each bind the ports with
SO_REUSEPORT. A worker that dies unexpectedly is restarted (with backoff). SIGTERM, or a
first SIGINT, forwards SIGTERM so every worker drains; a second SIGINT kills at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import FrameType

from edge.admin_token import FILE_ENV, AdminTokenError, ensure_token, show_once
from edge.embedded_redis import EmbeddedRedis, die_with, seed
from edge.net.listener import EXIT_LISTEN_FAILED, PortGuard, PortsInUse
from edge.observe import metrics_files
from edge.sdnotify import SystemdLink
from edge.settings import Settings

log = logging.getLogger("edge.supervisor")

RESTART_BACKOFF_CAP = 10.0
EXIT_GRACE = 5.0  # beyond DRAIN_TIMEOUT before a worker is killed


class Supervisor:
    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        self.settings = settings
        self.env = env
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.failed = False  # a worker cannot listen: stop everything, exit non-zero
        self.interrupts = 0
        self.embedded: EmbeddedRedis | None = None
        self._restarts: dict[int, tuple[int, float]] = {}
        # systemd's READY=1/WATCHDOG=1, fed by the workers' reports (edge/sdnotify.py)
        self.systemd = SystemdLink.from_env(env)
        self.ports = PortGuard()
        # the node's metrics: every worker's files, fresh for each start of the node
        self.metrics_dir: str | None = None

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                for proc in self.workers.values():
                    proc.kill()
                if self.embedded is not None:
                    self.embedded.stop()
                os._exit(130)
        self.stopping = True

    def _hangup(self, _signum: int, _frame: FrameType | None) -> None:
        """Reload (``systemctl reload``): every worker reads all of its configuration from
        Redis again now. Changes apply live anyway; this catches up at once with edits made
        while keyspace notifications were off. Settings of the environment need a restart."""
        log.info(
            "reload: every worker resyncs its configuration from redis "
            "(settings of the environment need a restart)",
            extra={"fields": {"workers": len(self.workers)}},
        )
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)

    def spawn(self, worker_id: int) -> None:
        cmd = [sys.executable, "-m", "edge", "worker", "--id", str(worker_id)]
        # the parent-death signal is set before exec, not once the worker has imported
        # everything: a supervisor killed meanwhile would leave it orphaned
        self.systemd.spawned(worker_id)
        self.workers[worker_id] = subprocess.Popen(
            cmd,
            env=self.env,
            preexec_fn=_worker_setup(os.getpid()),
            pass_fds=(self.systemd.report_fd,),
        )

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        signal.signal(signal.SIGHUP, self._hangup)
        try:
            if not self._claim_ports():
                return 1
            if self.settings.redis_url is None:
                self.embedded = EmbeddedRedis(self.settings.state_dir)
                self.env["REDIS_URL"] = self.embedded.start()
            url = self.env["REDIS_URL"]
            if self.settings.seed_file:
                written = seed(
                    self.settings.redis_target(url),
                    self.settings.seed_file,
                    replace=self.settings.seed_replace,
                )
                log.info(
                    "seeded",
                    extra={"fields": {"file": self.settings.seed_file, "written": written}},
                )
            self.env.pop(FILE_ENV, None)  # only ever the one this supervisor chose
            if self.embedded is not None and self.settings.admin_token is None:
                if not self._admin_token_file():
                    return 1
            self.metrics_dir = tempfile.mkdtemp(prefix="edge-metrics-")
            self.env[metrics_files.ENV] = self.metrics_dir
            for i in range(self.settings.workers):
                self.spawn(i)
            log.info(
                "edge started",
                extra={"fields": {"workers": self.settings.workers, "pid": os.getpid()}},
            )
            self._watch()
            return self._shutdown()
        finally:
            for proc in self.workers.values():
                if proc.poll() is None:
                    proc.kill()
            if self.embedded is not None:
                self.embedded.stop()
            self.systemd.close()
            self.ports.release()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _admin_token_file(self) -> bool:
        """Embedded, without ADMIN_TOKEN: the state directory's admin token (created, and
        shown once on the terminal, on the first start) is the one the workers store."""
        try:
            path, created = ensure_token(self.settings.state_dir)
        except AdminTokenError as exc:
            log.critical("no admin token", extra={"fields": {"error": str(exc)}})
            return False
        path = path.resolve()
        self.env[FILE_ENV] = str(path)
        if created is None:
            log.info("admin token from the state directory", extra={"fields": {"file": str(path)}})
            return True
        shown = show_once(created, path)  # the terminal only, never a log
        fields: dict[str, object] = {"file": str(path), "shown_on_terminal": shown}
        log.info("admin token created", extra={"fields": fields})
        return True

    def _claim_ports(self) -> bool:
        """Refuse (False, logged) ports that another edge or program holds, before anything
        starts: see :class:`~edge.net.listener.PortGuard`."""
        s = self.settings
        listeners = [
            ("HTTP_PORT", s.server_host, s.http_port),
            ("HTTPS_PORT", s.server_host, s.https_port),
            ("PROXY_PROTOCOL_PORT", s.server_host, s.proxy_protocol_port),
            ("PROXY_PROTOCOL_TLS_PORT", s.server_host, s.proxy_protocol_tls_port),
            ("API_PORT", s.api_host, s.api_port),
        ]
        try:
            self.ports.claim(listeners, share=s.share_ports)
        except PortsInUse as exc:
            fields = {"address": exc.address, "setting": exc.setting, "error": exc.error}
            if exc.hint:
                fields["hint"] = exc.hint
            log.critical("cannot listen", extra={"fields": fields})
            return False
        return True

    def _watch(self) -> None:
        while not self.stopping:
            self.systemd.pause(0.1, self.workers)
            for wid, proc in list(self.workers.items()):
                code = proc.poll()
                if code is None or self.stopping:
                    continue
                self._forget(proc.pid)
                if code == EXIT_LISTEN_FAILED:
                    log.critical(
                        "worker cannot listen; stopping (see the worker's error above)",
                        extra={"fields": {"worker": wid}},
                    )
                    self.failed = self.stopping = True
                    break
                count, since = self._restarts.get(wid, (0, 0.0))
                now = time.monotonic()
                if now - since > 60:
                    count = 0
                delay = min(RESTART_BACKOFF_CAP, 0.5 * (2**count))
                log.error(
                    "worker exited; restarting",
                    extra={"fields": {"worker": wid, "status": code, "restart_in": delay}},
                )
                self._restarts[wid] = (count + 1, now)
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and not self.stopping:
                    self.systemd.pause(0.05, self.workers)
                if not self.stopping:
                    self.spawn(wid)

    def _forget(self, pid: int) -> None:
        """A worker exited: its gauges (open connections, queue lengths) leave the node's
        metrics; its counters stay, so the node's never go back."""
        if self.metrics_dir is not None:
            with contextlib.suppress(OSError):
                metrics_files.forget_process(self.metrics_dir, pid)

    def _shutdown(self) -> int:
        log.info("stopping: draining workers")
        self.systemd.stopping()
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout + EXIT_GRACE
        status = 1 if self.failed else 0
        for wid, proc in self.workers.items():
            try:
                code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker did not drain in time; killed", extra={"fields": {"worker": wid}})
                proc.kill()
                proc.wait()
                status = 1
                continue
            if code not in (0, -signal.SIGTERM):
                status = 1
        log.info("stopped")
        return status


def _worker_setup(parent: int) -> Callable[[], None]:
    """A worker's ``preexec_fn``: it dies with ``parent``, and ignores SIGHUP (a reload)
    until its loop handles it: a reload while it starts must not end it."""
    dies = die_with(parent)

    def setup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        dies()

    return setup
