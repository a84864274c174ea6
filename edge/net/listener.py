"""Listening sockets shared by every worker process through SO_REUSEPORT."""

from __future__ import annotations

import socket

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
