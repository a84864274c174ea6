"""Find the Redis of the edge running on this machine, for ``edge cert`` and ``edge check``
run without ``--env-file``.

An edge's workers (``python -m edge worker``) carry in their environment the settings the
supervisor resolved, ``REDIS_URL`` included (the embedded socket when it runs its own):
read from ``/proc/PID/environ``, which only their user (or root) may read. The supervisor's
command line names the ``--env-file`` it was started with, which is what to pass when the
environment cannot be read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LocateError", "RunningEdge", "running_edge_environ", "running_edges"]

PROC = Path("/proc")


@dataclass(frozen=True)
class RunningEdge:
    """A running ``edge serve`` (or ``reverse-proxy``) supervisor and what it uses."""

    pid: int
    command: str  # "serve" or "reverse-proxy"
    env_file: str | None  # absolute
    environ: dict[str, str] | None = field(repr=False)  # None: not readable by this user

    def describe(self) -> str:
        how = f"--env-file {self.env_file}" if self.env_file else "no --env-file"
        return f"pid {self.pid} (edge {self.command}, {how})"


def _args(pid: str) -> list[str]:
    try:
        raw = (PROC / pid / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _edge_command(args: list[str]) -> tuple[str, list[str]] | None:
    """(command, the arguments after it) when ``args`` runs ``edge COMMAND ...``."""
    for i, word in enumerate(args[:-1]):
        if (word == "edge" and i > 0 and args[i - 1] == "-m") or (
            i == 0 and os.path.basename(word) == "edge"
        ):
            return args[i + 1], args[i + 2 :]
        if i > 0 and os.path.basename(word) == "edge":
            return args[i + 1], args[i + 2 :]
    return None


def _parent(pid: str) -> str | None:
    try:
        stat = (PROC / pid / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[1] if len(fields) > 1 else None


def _environ(pid: str) -> dict[str, str] | None:
    try:
        raw = (PROC / pid / "environ").read_bytes()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            env[name] = value
    return env


def _env_file(pid: str, rest: list[str]) -> str | None:
    for i, word in enumerate(rest):
        value = None
        if word == "--env-file" and i + 1 < len(rest):
            value = rest[i + 1]
        elif word.startswith("--env-file="):
            value = word.partition("=")[2]
        if value is not None:
            if os.path.isabs(value):
                return value
            try:
                cwd = os.readlink(PROC / pid / "cwd")
            except OSError:
                return value
            return os.path.normpath(os.path.join(cwd, value))
    return None


def running_edges() -> list[RunningEdge]:
    """The edges running on this machine, by supervisor pid (any user's)."""
    supervisors: dict[str, tuple[str, list[str]]] = {}
    workers: dict[str, str] = {}  # supervisor pid -> one of its workers
    if not PROC.is_dir():
        return []
    for entry in PROC.iterdir():
        pid = entry.name
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        found = _edge_command(_args(pid))
        if found is None:
            continue
        command, rest = found
        if command in ("serve", "reverse-proxy"):
            supervisors[pid] = (command, rest)
        elif command == "worker":
            parent = _parent(pid)
            if parent is not None:
                workers.setdefault(parent, pid)
    edges = []
    for pid, (command, rest) in sorted(supervisors.items(), key=lambda item: int(item[0])):
        worker = workers.get(pid)
        environ = _environ(worker) if worker is not None else None
        edges.append(RunningEdge(int(pid), command, _env_file(pid, rest), environ))
    return edges


class LocateError(Exception):
    """No single running edge whose Redis this user can use; the message says what to pass."""


def running_edge_environ() -> tuple[dict[str, str], RunningEdge]:
    """The environment of the one running edge this user can read, and that edge."""
    edges = running_edges()
    readable = [e for e in edges if e.environ is not None and e.environ.get("REDIS_URL")]
    if len(readable) == 1:
        edge = readable[0]
        assert edge.environ is not None
        return edge.environ, edge
    if not edges:
        raise LocateError("no edge is running on this machine")
    listed = "; ".join(e.describe() for e in (readable or edges))
    if len(readable) > 1:
        raise LocateError(f"several edges are running: {listed}; pass the --env-file of one")
    hint = next((e.env_file for e in edges if e.env_file), None)
    run_as = f"with --env-file {hint}" if hint else "with the edge's settings"
    raise LocateError(
        f"an edge is running as another user: {listed}; run this as that user (or root) {run_as}"
    )
