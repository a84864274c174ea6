"""Listening sockets shared by every worker process through SO_REUSEPORT, and the guard
that keeps a second edge from joining them unasked."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator

log = logging.getLogger("edge.net")

ACCEPTS_PER_WAKEUP = 64  # connections taken per readable event of a listening socket

# a worker exits with this status when it cannot bind its listeners (port taken, no
# permission): restarting it cannot help, so the supervisor stops instead
EXIT_LISTEN_FAILED = 3


def reuseport_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A bound, listening TCP socket; every worker binds its own and the kernel balances.

    ``backlog`` (LISTEN_BACKLOG) is the accept queue's length, which the kernel caps at
    ``net.core.somaxconn``. Whoever calls ``listen()`` on the socket again (the event
    loop's ``create_server`` does, with 100 unless told otherwise) must pass it too.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host == "localhost":
        host = "127.0.0.1"
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class PortsInUse(RuntimeError):
    """A listener this edge should open cannot be: the setting, the address, why (the
    system's words), and what to do about it."""

    def __init__(self, setting: str, address: str, error: str, hint: str = "") -> None:
        self.setting, self.address, self.error, self.hint = setting, address, error, hint
        super().__init__(f"{setting} {address}: {error}" + (f"; {hint}" if hint else ""))


class PortGuard:
    """What stops a second edge from joining the ports of a running one through SO_REUSEPORT.

    Checked by the supervisor once, before any worker binds:

    * every listener's address is bound once *without* SO_REUSEPORT (then closed again): if
      that fails with EADDRINUSE, someone listens there already (an edge, or any program);
    * an edge that does not share its ports (``SHARE_PORTS`` false, the default) holds, for
      its lifetime, one lock per port: a Linux abstract Unix socket named
      ``edge-port-lock:<port>``. Abstract names live in the network namespace, like the
      ports, and are visible across users, so an edge of another user sees them too.

    Without ``SHARE_PORTS`` a held port refuses the start. With it, the ports may be held
    only by edges that share too: a lock held means the edge on that port did not opt in,
    and the start is refused as well. Workers then bind with SO_REUSEPORT as always (the
    kernel adds a further condition: the same effective user).
    """

    def __init__(self) -> None:
        self.locks: list[socket.socket] = []
        self.ports: set[int] = set()

    def claim(self, listeners: list[tuple[str, str, int]], share: bool) -> None:
        """Check the ``(setting, host, port)`` listeners; :class:`PortsInUse` (naming the
        setting) if one cannot be opened. Port 0 (ephemeral or off) is not checked."""
        try:
            for name, host, port in listeners:
                if port == 0 or port in self.ports:
                    continue
                self.ports.add(port)
                # a non-sharing edge takes the lock; a sharing one only looks at it
                held_by_edge = self._locked(port) if share else not self._lock(port)
                address = f"{host}:{port}"
                if held_by_edge and not share:
                    raise PortsInUse(
                        name,
                        address,
                        "another edge is listening on this port",
                        "stop it first, or set SHARE_PORTS=true on both edges to run them "
                        "side by side on purpose (a zero-downtime upgrade)",
                    )
                if held_by_edge:
                    raise PortsInUse(
                        name,
                        address,
                        "the edge listening on this port was not started with SHARE_PORTS=true",
                        "only edges that all set it share their ports",
                    )
                error = _probe(host, port)
                if error is None:
                    continue
                if error.errno == errno.EADDRINUSE and share:
                    continue  # another sharing edge (the workers' bind tells if it is not)
                hint = ""
                if error.errno == errno.EADDRINUSE:
                    hint = (
                        "another program, or an edge with SHARE_PORTS=true, listens there: "
                        "choose another port, or set SHARE_PORTS=true on both edges to share it"
                    )
                elif error.errno == errno.EACCES and port < 1024:
                    hint = "ports below 1024 need root or CAP_NET_BIND_SERVICE"
                raise PortsInUse(name, address, error.strerror or str(error), hint)
        except BaseException:
            self.release()
            raise

    def _lock(self, port: int) -> bool:
        """Take the port's lock; False if another process holds it."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(_lock_name(port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        self.locks.append(sock)
        return True

    @staticmethod
    def _locked(port: int) -> bool:
        """Whether another process holds the port's lock (checked, never kept)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(_lock_name(port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
                raise
        return False

    def release(self) -> None:
        for sock in self.locks:
            sock.close()
        self.locks.clear()
        self.ports.clear()


def _lock_name(port: int) -> bytes:
    return f"\0edge-port-lock:{port}".encode()


def _probe(host: str, port: int) -> OSError | None:
    """Bind ``host:port`` as a worker would, less SO_REUSEPORT; the error, if any."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host == "localhost":
        host = "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def accept_ready(sock: socket.socket) -> Iterator[tuple[socket.socket, tuple[str, int]]]:
    """The connections waiting on the non-blocking listening socket ``sock`` (at most
    ``ACCEPTS_PER_WAKEUP``), each non-blocking with TCP_NODELAY, for listeners that accept
    by hand (``add_reader``) rather than through the loop's ``create_server``. An accept
    error (EMFILE and friends) is logged and ends the batch: the next wakeup retries."""
    for _ in range(ACCEPTS_PER_WAKEUP):
        try:
            conn, addr = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("accept failed", extra={"fields": {"error": exc.strerror}})
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield conn, (addr[0], addr[1])
