"""The README's quick start, end to end, as a user who is not root, from a fresh clone.

``./quickstart`` in a ``git clone`` of this repository (its committed state: HEAD), run as
``nobody`` when the tests run as root (through ``setpriv``; the user is created if the
system has none) or as the current user otherwise: it makes its own .venv (the runtime
dependencies, from the package index), starts the edge, shows the admin token once on the
terminal; then ``curl``, ``edge proxy create`` with that token, ``edge redis-cli``, and a
second edge on the same ports refused. The ports of config/edge.env are replaced by free
ones through the environment (which wins over the env file), so that runs do not collide.
Nothing is skipped: a missing tool or user fails the test.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, PtyCapture, Upstream, free_port, wait_for

TOKEN = re.compile(r"edge_[1-9A-HJ-NP-Za-km-z]{44}")
USER = "nobody"


def run_as() -> list[str]:
    """The command prefix that runs as a user who is not root (nothing if not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
        )
    user = pwd.getpwnam(USER)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is needed to run the quick start as a non-root user")
    return [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]


@pytest.fixture
def clone() -> Iterator[Path]:
    git = shutil.which("git")
    if git is None:
        pytest.fail("git is needed to test the quick start from a fresh clone")
    base = Path(tempfile.mkdtemp(prefix="edge-qs-", dir="/tmp"))
    base.chmod(0o755)
    target = base / "edge"
    subprocess.run([git, "clone", "--quiet", str(ROOT), str(target)], check=True)
    (base / "home").mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam(USER) if _has_user() else None
        if user is None:
            run_as()  # creates it
            user = pwd.getpwnam(USER)
        for path in (target, base / "home"):
            subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(path)], check=True)
    yield target
    shutil.rmtree(base, ignore_errors=True)


def _has_user() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return True


class Terminal:
    """A process whose stdin, stdout and stderr are a pseudo-terminal; what it wrote."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.pty = capture = PtyCapture()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=str(cwd),
            stdin=capture.follower, stdout=capture.follower, stderr=capture.follower,
            start_new_session=True,
        )  # fmt: skip
        capture.start()

    @property
    def text(self) -> bytes:
        return self.pty.data


@pytest.mark.timeout(600)  # the first pip install of a fresh .venv
def test_quick_start_as_a_user_who_is_not_root(clone: Path) -> None:
    prefix = run_as()
    home = clone.parent / "home"
    ports = {name: str(free_port()) for name in ("HTTP_PORT", "HTTPS_PORT", "API_PORT")}
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        **ports,
    }
    serve = Terminal([*prefix, "./quickstart"], env, clone)
    try:
        api = f"http://127.0.0.1:{ports['API_PORT']}"

        def up() -> bool:
            if serve.proc.poll() is not None:
                raise AssertionError(f"quickstart exited:\n{serve.text.decode(errors='replace')}")
            return TOKEN.search(serve.text.decode(errors="replace")) is not None and (
                subprocess.run(["curl", "-fsS", f"{api}/health"], capture_output=True).returncode
                == 0
            )

        wait_for(up, timeout=300, interval=0.5)  # the first pip install takes a while
        tokens = TOKEN.findall(serve.text.decode(errors="replace"))
        assert len(set(tokens)) == 1
        token = tokens[0]
        token_file = clone / ".edge-state" / "admin-token"
        if prefix:
            assert token_file.stat().st_uid == pwd.getpwnam(USER).pw_uid
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"

        def edge(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*prefix, ".venv/bin/edge", *args],
                env={**env, "API_URL": api},
                cwd=str(clone),
                capture_output=True,
                text=True,
                timeout=60,
            )

        upstream = Upstream()
        try:
            created = edge(
                "proxy", "create", "app.test", "--target", upstream.url, "--token", token
            )
            assert created.returncode == 0, created.stderr
            http = f"http://127.0.0.1:{ports['HTTP_PORT']}/hello"

            def served() -> bool:
                done = subprocess.run(
                    ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                     "Host: app.test", http],
                    capture_output=True, text=True,
                )  # fmt: skip
                return done.stdout == "200"

            wait_for(served, timeout=10)
        finally:
            upstream.close()
        # the admin API is not reachable through the public listener
        done = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H",
             f"Authorization: Bearer {token}",
             f"http://127.0.0.1:{ports['HTTP_PORT']}/api/v1/tokens/info"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.stdout != "200"

        got = edge("redis-cli", "--env-file", "config/edge.env", "GET", "proxy:app.test")
        assert got.returncode == 0 and upstream.url in got.stdout, got.stderr

        second = edge("serve", "--env-file", "config/edge.env")
        assert second.returncode != 0
        assert "another edge is listening on this port" in second.stderr
        assert "SHARE_PORTS=true" in second.stderr
        assert (
            subprocess.run(["curl", "-fsS", f"{api}/health"], capture_output=True).returncode == 0
        )
    finally:
        if serve.proc.poll() is None:
            os.killpg(serve.proc.pid, signal.SIGTERM)
            try:
                serve.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(serve.proc.pid, signal.SIGKILL)
                serve.proc.wait()
    assert serve.proc.returncode == 0, serve.text.decode(errors="replace")[-3000:]
