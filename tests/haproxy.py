"""A private HAProxy (``haproxy -f cfg -db``, in the foreground) on free loopback ports.

Each :class:`Listen` becomes one ``listen`` section in TCP mode: ``bind 127.0.0.1:<port>``
forwarding every connection to one server with ``send-proxy`` or ``send-proxy-v2``, which
is how production puts HAProxy in front of the edge's PROXY listeners.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest

from tests.helpers import free_port, require_tool, stop_process


def required_tool(name: str) -> str:
    """Like ``require_tool``, but a missing tool always fails the test, never skips it."""
    try:
        return require_tool(name)
    except pytest.skip.Exception as exc:
        pytest.fail(f"{name} is required for this test but is not installed ({exc})")


@dataclasses.dataclass(frozen=True)
class Listen:
    """``listen <name>``: ``bind 127.0.0.1:<port>`` -> ``server <server>`` ``<send_proxy>``."""

    name: str
    server_port: int
    send_proxy: str = "send-proxy"  # or "send-proxy-v2"
    server_host: str = "127.0.0.1"
    server_options: str = ""  # more keywords on the server line
    section_lines: tuple[str, ...] = ()  # more lines in the listen section
    port: int = dataclasses.field(default_factory=free_port)


class HAProxy:
    def __init__(self, workdir: Path, listens: Sequence[Listen], maxconn: int = 2000) -> None:
        names = [listen.name for listen in listens]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate listen names: {names}")
        self.workdir = workdir
        self.listens = {listen.name: listen for listen in listens}
        self.maxconn = maxconn
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def port(self, name: str) -> int:
        return self.listens[name].port

    def config(self) -> str:
        lines = [
            "global",
            f"    maxconn {self.maxconn}",
            "",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 30s",
            "    timeout server 30s",
        ]
        for listen in self.listens.values():
            server = f"server edge {listen.server_host}:{listen.server_port} {listen.send_proxy}"
            if listen.server_options:
                server += f" {listen.server_options}"
            lines += [
                "",
                f"listen {listen.name}",
                f"    bind 127.0.0.1:{listen.port}",
                *(f"    {line}" for line in listen.section_lines),
                f"    {server}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> HAProxy:
        binary = required_tool("haproxy")
        self.config_path.write_text(self.config())
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-f", str(self.config_path), "-db"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
            )
        try:
            self._wait_listening(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = {listen.port for listen in self.listens.values()}
        while waiting:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"haproxy exited with status {self.proc.returncode}:\n{self.log()}\n"
                    f"config:\n{self.config()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy ports {sorted(waiting)} not listening:\n{self.log()}")
            for port in list(waiting):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.5),
                ):
                    waiting.discard(port)
            if waiting:
                time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, timeout)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def running_haproxy(workdir: Path, listens: Sequence[Listen]) -> Iterator[HAProxy]:
    with HAProxy(workdir, listens) as proxy:
        yield proxy
