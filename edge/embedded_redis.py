"""The embedded default: a private redis-server child with its socket and data in the
state directory, started and stopped with the edge."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from edge.config.seed import SeedError, seed  # re-exported: the supervisor seeds

log = logging.getLogger("edge.redis")

START_TIMEOUT = 10.0


class EmbeddedRedisError(RuntimeError):
    pass


def die_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when ``parent`` exits (Linux).

    Set between fork and exec (it survives exec), and checked once more, so a parent that
    dies while the child is still starting cannot leave it orphaned.
    """

    def setup() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return setup


def socket_path(state_dir: str) -> Path:
    return Path(state_dir) / "redis.sock"


def socket_url(state_dir: str) -> str:
    return f"unix://{socket_path(state_dir).resolve()}"


class EmbeddedRedis:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = Path(state_dir)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return socket_url(str(self.state_dir))

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError(
                "REDIS_URL is not set and redis-server is not on PATH "
                "(install redis-server or set REDIS_URL)"
            )
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            probe = self.state_dir / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise EmbeddedRedisError(
                f"EDGE_STATE_DIR={self.state_dir}: not writable ({exc.strerror})"
            ) from None
        sock = socket_path(str(self.state_dir)).resolve()
        if self._answers(sock):
            raise EmbeddedRedisError(
                f"an embedded redis is already running on {sock} (another edge on this state dir?)"
            )
        args = [
            binary,
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--dir", str(self.state_dir.resolve()),
            "--appendonly", "yes",
            "--appendfilename", "edge.aof",
            "--save", "",
            "--notify-keyspace-events", "Kg$xlshzt",  # edge.config.watcher.REQUIRED_FLAGS
            "--logfile", str((self.state_dir / "redis.log").resolve()),
            "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with(os.getpid()),
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with status {self.process.returncode}; "
                    f"see {self.state_dir / 'redis.log'}"
                )
            if self._answers(sock):
                log.info("embedded redis started", extra={"fields": {"socket": str(sock)}})
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError("redis-server did not start within 10 s")

    @staticmethod
    def _answers(sock: Path) -> bool:
        if not sock.exists():
            return False
        import redis  # only an embedded Redis needs it in the supervisor

        try:
            client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("embedded redis stopped")


__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "SeedError", "seed", "socket_url"]
