"""A blocking Redis reader for one-shot commands (``edge cert list``, ``edge check``).

Importing redis-py costs about 0.1 s whatever part of it is used: its package imports the
asyncio client, asyncio itself and the cluster and sentinel code. A command that sends a
few read commands and exits would spend a third of its run on that. :func:`open_reader`
therefore speaks RESP2 itself over a plain socket for ``unix://`` and ``redis://`` URLs
(the embedded Redis's socket, a Redis on the network); any other URL (``rediss://``, URL
options) goes through redis-py's own blocking client, so every URL the edge accepts works.

Every failure is :class:`OneShotError` (its text names no password: the caller adds the
redacted URL).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from edge.settings import RedisTarget

__all__ = ["FETCH_BATCH", "SCAN_COUNT", "OneShotError", "Reader", "open_reader"]

SCAN_COUNT = 1000
FETCH_BATCH = 1000
CONNECT_TIMEOUT = 2.0  # as the edge's own clients (edge.store.client)
READ_TIMEOUT = 30.0


class OneShotError(Exception):
    """Redis could not be reached, refused a command or answered something unexpected."""


class Reader(Protocol):
    def scan(self, pattern: str) -> list[str]:
        """Every key matching ``pattern``, sorted, each once."""

    def mget(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """The values of ``keys`` (None: absent, or another type), in batches."""

    def types(self, keys: Sequence[str]) -> dict[str, str]:
        """The Redis type of each key (``none`` when absent)."""

    def close(self) -> None: ...


def _encode(args: Sequence[str | bytes]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _Resp:
    """RESP2 over a connected socket: commands out, replies in, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def call(self, *args: str | bytes) -> Any:
        return self.pipeline([args])[0]

    def pipeline(self, commands: Sequence[Sequence[str | bytes]]) -> list[Any]:
        """Send every command at once, then read one reply each (an error reply raises)."""
        try:
            self.sock.sendall(b"".join(_encode(c) for c in commands))
            replies = [self._reply() for _ in commands]
        except OSError as exc:
            raise OneShotError(str(exc) or type(exc).__name__) from None
        for reply in replies:
            if isinstance(reply, OneShotError):
                raise reply
        return replies

    def _line(self) -> bytes:
        line = self.file.readline(1 << 20)
        if not line.endswith(b"\r\n"):
            raise OneShotError("connection closed by the server")
        return line[:-2]

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":  # read whole, raised once the other replies are read too
            return OneShotError(_text(rest))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)
            if len(data) != size + 2:
                raise OneShotError("connection closed by the server")
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise OneShotError(f"unexpected answer from the server: {line[:20]!r}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class _RespReader:
    def __init__(self, resp: _Resp) -> None:
        self.resp = resp

    def scan(self, pattern: str) -> list[str]:
        keys: set[str] = set()
        cursor = b"0"
        while True:
            cursor, batch = self.resp.call("SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
            keys.update(_text(k) for k in batch)
            if cursor == b"0":
                return sorted(keys)

    def mget(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        ordered = list(keys)
        found: dict[str, bytes | None] = {}
        for start in range(0, len(ordered), FETCH_BATCH):
            batch = ordered[start : start + FETCH_BATCH]
            found.update(zip(batch, self.resp.call("MGET", *batch), strict=True))
        return found

    def types(self, keys: Sequence[str]) -> dict[str, str]:
        kinds = self.resp.pipeline([("TYPE", k) for k in keys]) if keys else []
        return {k: _text(kind) for k, kind in zip(keys, kinds, strict=True)}

    def close(self) -> None:
        self.resp.close()


class _RedisPyReader:
    """redis-py's blocking client, for the URLs this module does not speak itself."""

    def __init__(self, target: RedisTarget) -> None:
        import redis

        self.errors = (redis.RedisError, OSError)
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": READ_TIMEOUT,
            **target.client_kwargs(),
        }
        try:
            self.client = redis.Redis.from_url(target.url, **options)
            self.client.ping()
        except self.errors as exc:
            raise OneShotError(str(exc) or type(exc).__name__) from None

    def _run(self, work: Any) -> Any:
        try:
            return work()
        except self.errors as exc:
            raise OneShotError(str(exc) or type(exc).__name__) from None

    def scan(self, pattern: str) -> list[str]:
        found = self._run(lambda: list(self.client.scan_iter(match=pattern, count=SCAN_COUNT)))
        return sorted({_text(k) for k in found})

    def mget(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        ordered = list(keys)
        found: dict[str, bytes | None] = {}
        for start in range(0, len(ordered), FETCH_BATCH):
            batch = ordered[start : start + FETCH_BATCH]
            found.update(zip(batch, self._run(lambda b=batch: self.client.mget(b)), strict=True))
        return found

    def types(self, keys: Sequence[str]) -> dict[str, str]:
        def work() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.type(key)
            return list(pipe.execute())

        kinds = self._run(work) if keys else []
        return {k: _text(kind) for k, kind in zip(keys, kinds, strict=True)}

    def close(self) -> None:
        self.client.close()


def _address(url: str) -> tuple[str | tuple[str, int], str | None, str | None, int] | None:
    """Where a ``unix://``/``redis://`` URL points, its user, password and database (None:
    a URL for redis-py: TLS, or options this module does not implement)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    if set(query) - {"db", "username", "password"} or parts.fragment:
        return None
    # as redis-py: the URL's user and password before its query's
    user = unquote(parts.username) if parts.username else query.get("username", [None])[-1]
    password = unquote(parts.password) if parts.password else query.get("password", [None])[-1]
    db_text = query.get("db", ["0"])[-1]
    if parts.scheme == "unix":
        if not parts.path:
            return None
        where: str | tuple[str, int] = unquote(parts.path)
    elif parts.scheme == "redis":
        path = parts.path.lstrip("/")
        if path and "db" not in query:
            db_text = path
        try:
            where = (parts.hostname or "localhost", parts.port or 6379)
        except ValueError:
            return None
    else:
        return None
    if not db_text.isdigit():
        return None
    return where, user, password, int(db_text)


def open_reader(target: RedisTarget) -> Reader:
    """A connected reader for ``target`` (logged in, its database selected);
    :class:`OneShotError` when Redis cannot be reached or refuses the login."""
    address = _address(target.url)
    if address is None:
        return _RedisPyReader(target)
    where, user, password, db = address
    # as redis-py: credentials in the URL win over REDIS_USERNAME/REDIS_PASSWORD
    password = password if password is not None else target.password
    user = user if user is not None else target.username
    try:
        if isinstance(where, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT)
            try:
                sock.connect(where)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(where, timeout=CONNECT_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        raise OneShotError(f"cannot connect: {exc.strerror or exc}") from None
    sock.settimeout(READ_TIMEOUT)
    resp = _Resp(sock)
    try:
        hello: list[tuple[str, ...]] = []
        if password is not None:
            hello.append(("AUTH", user, password) if user is not None else ("AUTH", password))
        if db:
            hello.append(("SELECT", str(db)))
        resp.pipeline([*hello, ("PING",)])
    except BaseException:
        resp.close()
        raise
    return _RespReader(resp)
