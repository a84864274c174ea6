"""A private PostgreSQL for tests: ``initdb`` into a temporary directory, then ``postgres``
in the foreground on a free loopback port, trust authentication, one database.

It never touches a PostgreSQL of the machine (5432): its own port, its own socket directory.
A missing PostgreSQL fails the test, never skips it: the tunnel tests are about a real peer.

``initdb`` and ``postgres`` refuse to run as root. As root they run as the ``postgres``
system user (created by Debian's ``postgresql`` package; ``nobody`` otherwise), with the
cluster in a directory of its own under the system temporary directory: pytest's temporary
tree is ``0700`` to root, so that user could not reach a cluster there.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port

INSTALL_HINT = "apt-get install postgresql (Debian/Ubuntu; .ci/run installs it)"
# where Debian and Ubuntu keep each major version's server binaries, off PATH
DEBIAN_INITDB = "/usr/lib/postgresql/*/bin/initdb"


def _version_key(path: str) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin/initdb`` -> ``(15,)``: the newest install wins."""
    return tuple(int(part) for part in re.findall(r"\d+", path))


def postgres_bindir() -> Path:
    """The directory with ``initdb``, ``postgres`` and ``psql`` of one PostgreSQL install.

    Debian keeps the server binaries in ``/usr/lib/postgresql/<major>/bin``, off PATH (only
    ``psql`` and friends are on PATH, as wrappers); other systems put ``initdb`` on PATH.
    """
    found = shutil.which("initdb")
    if found is not None:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob(DEBIAN_INITDB), key=_version_key)
    if candidates:
        return Path(candidates[-1]).parent
    pytest.fail(f"PostgreSQL is required for this test but initdb was not found: {INSTALL_HINT}")


def _tool(bindir: Path, name: str) -> str:
    path = bindir / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} is required but missing from {bindir}: {INSTALL_HINT}")
    return found


class PostgresServer:
    """A PostgreSQL cluster of the test's own on 127.0.0.1:``port``.

    Superuser ``user`` (``postgres``) and database ``database`` (``edge_test``) need no
    password from 127.0.0.1. Its log is ``workdir/postgres.log``. :meth:`stop` and
    :meth:`start` again keep the data; :meth:`remove` deletes the cluster.
    """

    user = "postgres"
    database = "edge_test"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.bindir = postgres_bindir()
        self.psql_path = _tool(self.bindir, "psql")
        self.log_path = workdir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_as = self._unprivileged_user() if os.geteuid() == 0 else None
        self._base: Path | None = None

    @staticmethod
    def _unprivileged_user() -> pwd.struct_passwd:
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        pytest.fail("running as root, and neither a postgres nor a nobody user to run initdb")

    @property
    def data_dir(self) -> Path:
        assert self._base is not None, "not initialised"
        return self._base / "data"

    @property
    def socket_dir(self) -> Path:
        assert self._base is not None, "not initialised"
        return self._base / "sockets"

    @property
    def dsn(self) -> str:
        """A libpq connection string (``psql "$dsn"``)."""
        return self.dsn_for(self.port)

    def dsn_for(self, port: int, host: str = "127.0.0.1") -> str:
        """The same user and database at another address: a tunnel's local end."""
        return f"postgresql://{self.user}@{host}:{port}/{self.database}?connect_timeout=10"

    def _as_owner(self) -> dict[str, Any]:
        """Popen arguments that run a child as the cluster's owner."""
        if self._run_as is None:
            return {}
        return {
            "user": self._run_as.pw_uid,
            "group": self._run_as.pw_gid,
            "extra_groups": [],
            "env": {**os.environ, "HOME": self._run_as.pw_dir, "USER": self._run_as.pw_name},
        }

    def _initdb(self) -> None:
        self._base = Path(tempfile.mkdtemp(prefix="edge-test-pg-"))
        self.socket_dir.mkdir()
        if self._run_as is not None:
            for path in (self._base, self.socket_dir):
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        result = subprocess.run(
            [_tool(self.bindir, "initdb"), "-D", str(self.data_dir), "-U", self.user,
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
            cwd=self._base, stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
            **self._as_owner(),
        )  # fmt: skip
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(f"initdb failed (exit {result.returncode}):\n{output}")

    def start(self, timeout: float = 30.0) -> PostgresServer:
        fresh = self._base is None
        if fresh:
            self._initdb()
        with self.log_path.open("ab") as log:
            # -c listen_addresses: loopback only, whatever postgresql.conf says;
            # fsync off: a test cluster is thrown away, never recovered
            self.proc = subprocess.Popen(
                [_tool(self.bindir, "postgres"), "-D", str(self.data_dir),
                 "-p", str(self.port), "-k", str(self.socket_dir),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                cwd=self._base, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                **self._as_owner(),
            )  # fmt: skip
        try:
            self._wait_ready(timeout)
            if fresh:
                self.psql(f"CREATE DATABASE {self.database}", database="postgres")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with status {self.proc.returncode}:\n{self.log()}"
                )
            try:
                self.psql("select 1", database="postgres", timeout=10)
                return
            except subprocess.CalledProcessError:
                pass  # not accepting connections yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres on port {self.port} not ready:\n{self.log()}")
            time.sleep(0.05)

    def psql(
        self, sql: str, *, port: int | None = None, database: str | None = None, timeout: float = 30
    ) -> str:
        """Run ``sql`` with psql (``-At``: unaligned, tuples only) and return its output.

        ``port`` connects elsewhere (a tunnel's local end) as the same user; ``database``
        another database. A failure raises :class:`subprocess.CalledProcessError` with
        psql's stderr.
        """
        dsn = self.dsn_for(port or self.port)
        if database is not None:
            dsn = dsn.replace(f"/{self.database}?", f"/{database}?")
        result = subprocess.run(
            [self.psql_path, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, dsn],
            capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, result.args, result.stdout, result.stderr
            )
        return result.stdout.decode()

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT: clients are disconnected), SIGKILL after ``timeout`` s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def remove(self) -> None:
        """Stop it and delete the cluster's directory."""
        self.stop()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
