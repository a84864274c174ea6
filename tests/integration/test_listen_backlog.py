"""Every listener (HTTP, HTTPS, both PROXY listeners, API) listens with LISTEN_BACKLOG.

The kernel reports a listening socket's accept-queue limit as its Send-Q (``ss -ltn``),
capped at ``net.core.somaxconn``: that is the backlog the edge really got, whatever the
code asked for along the way (an event loop's ``create_server`` calls ``listen()`` again).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.haproxy import required_tool
from tests.helpers import EdgeProcess, free_port

LISTENERS = (
    "HTTP_PORT",
    "HTTPS_PORT",
    "PROXY_PROTOCOL_PORT",
    "PROXY_PROTOCOL_TLS_PORT",
    "API_PORT",
)


def somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def kernel_backlog(port: int) -> int:
    """Send-Q of the one socket listening on ``port`` (the accept-queue limit)."""
    out = subprocess.run(
        [required_tool("ss"), "-ltnH", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    assert len(rows) == 1, out  # one worker: one socket per port
    state, _recv_q, send_q = rows[0][:3]
    assert state == "LISTEN", out
    return int(send_q)


@pytest.mark.parametrize(("setting", "expected"), [("777", 777), (None, 4096)])
def test_every_listener_uses_the_listen_backlog(
    edge_factory: Callable[..., EdgeProcess],
    event_loop_name: str,
    setting: str | None,
    expected: int,
) -> None:
    env: dict[str, object] = {
        name: free_port() for name in LISTENERS if name not in ("HTTP_PORT", "API_PORT")
    }
    if setting is not None:
        env["LISTEN_BACKLOG"] = setting
    edge = edge_factory(EDGE_LOOP=event_loop_name, **env)
    ports = {name: int(edge.env[name]) for name in LISTENERS}
    want = min(expected, somaxconn())
    got = {name: kernel_backlog(port) for name, port in ports.items()}
    assert got == dict.fromkeys(LISTENERS, want)
