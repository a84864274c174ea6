"""The outgoing HTTP/1.1 client against real servers on 127.0.0.1: plain and TLS (trustme),
a pinned address with the URL's name for SNI and the certificate, and each limit tripping:
the deadline (silent and dripping servers), the body cap (declared and streamed), garbage
answers, refused connections. Every test runs under asyncio and uvloop, as the edge does."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
import trustme
import uvloop

from edge.oauth.outbound import Fetched, FetchError, fetch
from tests.helpers import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Runner = Callable[[Coroutine[Any, Any, None]], None]

SECRETS = ("s3cret-body", "t0ken-header", "c0de-query")
SECRET_REQUEST: dict[str, Any] = {
    "method": "POST",
    "headers": [("Authorization", "Bearer t0ken-header")],
    "body": b"client_secret=s3cret-body",
}


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    def runner(main: Coroutine[Any, Any, None]) -> None:
        if request.param == "uvloop":
            uvloop.run(main)
        else:
            asyncio.run(main)

    return runner


@contextlib.asynccontextmanager
async def serving(handler: Handler, context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A real server on a free loopback port for the body of the ``async with``."""
    port = free_port()
    server = await asyncio.start_server(handler, "127.0.0.1", port, ssl=context)
    try:
        yield port
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The request head and its Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def answering(response: bytes, seen: list[bytes] | None = None) -> Handler:
    """A server that reads one request and answers ``response`` (then closes)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        if seen is not None:
            seen.append(head + body)
        writer.write(response)
        await writer.drain()
        writer.close()

    return handle


def server_context(ca: trustme.CA, *names: str, sni: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    if sni is not None:

        def record(sock: Any, name: str | None, ctx: ssl.SSLContext) -> None:
            sni.append(name or "")

        context.sni_callback = record
    return context


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def failing(url: str, **kw: Any) -> FetchError:
    kw.setdefault("timeout", 5.0)
    kw.setdefault("max_bytes", 1 << 16)
    with pytest.raises(FetchError) as caught:
        await fetch(url, **kw)
    for secret in SECRETS:
        assert secret not in str(caught.value)
    return caught.value


def test_plain_get(run: Runner) -> None:
    seen: list[bytes] = []
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Twice: 1\r\nX-Twice: 2\r\n\r\nhello"

    async def main() -> None:
        async with serving(answering(answer, seen)) as port:
            got = await fetch(
                f"http://127.0.0.1:{port}/a/b?c=d",
                headers=[("Accept", "x/y")],
                timeout=5,
                max_bytes=5,
            )
        assert got == Fetched(200, {"content-length": "5", "x-twice": "2"}, b"hello")
        request = seen[0]
        assert request.startswith(b"GET /a/b?c=d HTTP/1.1\r\n")
        assert f"host: 127.0.0.1:{port}\r\n".encode() in request.lower()
        assert b"connection: close\r\n" in request.lower()
        assert b"accept: x/y\r\n" in request.lower()

    run(main())


def test_post_sends_the_body_with_its_length(run: Runner) -> None:
    seen: list[bytes] = []

    async def main() -> None:
        async with serving(answering(b"HTTP/1.1 204 No Content\r\n\r\n", seen)) as port:
            got = await fetch(
                f"http://127.0.0.1:{port}/token",
                method="POST",
                headers=[("Content-Type", "application/x-www-form-urlencoded")],
                body=b"a=1&b=2",
                timeout=5,
                max_bytes=10,
            )
        assert got.status == 204 and got.body == b""
        assert seen[0].endswith(b"\r\n\r\na=1&b=2")
        assert b"content-length: 7\r\n" in seen[0].lower()

    run(main())


def test_redirects_are_answers_not_followed(run: Runner) -> None:
    hits: list[bytes] = []

    async def main() -> None:
        async with serving(answering(b"HTTP/1.1 200 OK\r\n\r\n", hits)) as elsewhere:
            moved = (
                f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{elsewhere}/\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            async with serving(answering(moved)) as port:
                got = await fetch(f"http://127.0.0.1:{port}/", timeout=5, max_bytes=100)
        assert got.status == 302
        assert got.headers["location"] == f"http://127.0.0.1:{elsewhere}/"
        assert hits == []

    run(main())


def test_https_verified_against_the_given_ca(run: Runner, ca: trustme.CA, ca_file: str) -> None:
    context = server_context(ca, "localhost")
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def main() -> None:
        async with serving(answering(answer), context) as port:
            got = await fetch(f"https://localhost:{port}/", timeout=5, max_bytes=2, ca_file=ca_file)
            assert got.body == b"ok"
            # the system's CAs do not know this one: verification is on
            err = await failing(f"https://localhost:{port}/", **SECRET_REQUEST)
            assert err.kind == "tls"
            assert "certificate verify failed" in str(err) or "certificate" in str(err)

    run(main())


def test_connect_to_pins_the_address_and_keeps_the_name(
    run: Runner, ca: trustme.CA, ca_file: str
) -> None:
    sni: list[str] = []
    seen: list[bytes] = []
    context = server_context(ca, "client.example", sni=sni)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    async def main() -> None:
        async with serving(answering(answer, seen), context) as port:
            got = await fetch(
                f"https://client.example:{port}/meta.json",
                timeout=5,
                max_bytes=100,
                connect_to=("127.0.0.1", port),
                ca_file=ca_file,
            )
            assert got.body == b"{}"
            assert sni == ["client.example"]
            assert f"host: client.example:{port}\r\n".encode() in seen[0].lower()
            # the certificate is checked against the URL's host, not the address dialled
            err = await failing(
                f"https://other.example:{port}/",
                connect_to=("127.0.0.1", port),
                ca_file=ca_file,
            )
            assert err.kind == "tls"

    run(main())


def test_default_port_is_left_out_of_host(run: Runner) -> None:
    seen: list[bytes] = []

    async def main() -> None:
        async with serving(answering(b"HTTP/1.1 200 OK\r\n\r\n", seen)) as port:
            await fetch(
                "http://api.example/", timeout=5, max_bytes=10, connect_to=("127.0.0.1", port)
            )
        assert b"host: api.example\r\n" in seen[0].lower()

    run(main())


def test_deadline_covers_a_silent_server(run: Runner) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        async with serving(silent) as port:
            started = time.monotonic()
            err = await failing(f"http://127.0.0.1:{port}/?code=c0de-query", timeout=0.3)
            elapsed = time.monotonic() - started
        assert err.kind == "timeout"
        assert 0.25 < elapsed < 2
        assert f"127.0.0.1:{port}" in str(err)

    run(main())


def test_deadline_is_for_the_whole_call_not_each_read(run: Runner) -> None:
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)

    async def main() -> None:
        async with serving(drip) as port:
            started = time.monotonic()
            err = await failing(f"http://127.0.0.1:{port}/", timeout=0.5, **SECRET_REQUEST)
            elapsed = time.monotonic() - started
        assert err.kind == "timeout"
        assert 0.45 < elapsed < 2

    run(main())


def test_declared_length_above_the_cap_is_refused_before_the_body(run: Runner) -> None:
    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(30)  # the body never comes: waiting for it would time out

    async def main() -> None:
        async with serving(huge) as port:
            err = await failing(f"http://127.0.0.1:{port}/", timeout=5, max_bytes=1000)
        assert err.kind == "too_large"

    run(main())


def chunked(total: int, size: int = 100) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    while total > 0:
        n = min(size, total)
        out += b"%x\r\n" % n + b"y" * n + b"\r\n"
        total -= n
    return out + b"0\r\n\r\n"


def test_streamed_body_is_counted(run: Runner) -> None:
    async def main() -> None:
        async with serving(answering(chunked(1000))) as port:
            got = await fetch(f"http://127.0.0.1:{port}/", timeout=5, max_bytes=1000)
            assert got.body == b"y" * 1000
            err = await failing(f"http://127.0.0.1:{port}/", max_bytes=999)
            assert err.kind == "too_large"

    run(main())


def test_body_read_to_close_is_counted(run: Runner) -> None:
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"z" * 5000

    async def main() -> None:
        async with serving(answering(answer)) as port:
            got = await fetch(f"http://127.0.0.1:{port}/", timeout=5, max_bytes=5000)
            assert len(got.body) == 5000
            err = await failing(f"http://127.0.0.1:{port}/", max_bytes=4999)
            assert err.kind == "too_large"

    run(main())


def test_garbage_answer_is_a_protocol_error(run: Runner) -> None:
    async def main() -> None:
        async with serving(answering(b"SSH-2.0-OpenSSH_9.6\r\nnot http at all\r\n\r\n")) as port:
            err = await failing(f"http://127.0.0.1:{port}/", **SECRET_REQUEST)
        assert err.kind == "protocol"
        assert "OpenSSH" not in str(err)

    run(main())


def test_close_without_answer_is_a_protocol_error(run: Runner) -> None:
    async def main() -> None:
        async with serving(answering(b"")) as port:
            err = await failing(f"http://127.0.0.1:{port}/", **SECRET_REQUEST)
        assert err.kind == "protocol"

    run(main())


def test_truncated_body_is_a_protocol_error(run: Runner) -> None:
    async def main() -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"
        async with serving(answering(answer)) as port:
            err = await failing(f"http://127.0.0.1:{port}/")
        assert err.kind == "protocol"

    run(main())


def test_nothing_listening_is_a_connect_error(run: Runner) -> None:
    async def main() -> None:
        err = await failing(f"http://127.0.0.1:{free_port()}/", **SECRET_REQUEST)
        assert err.kind == "connect"

    run(main())


def test_tls_to_a_plain_server_is_a_tls_error(run: Runner, ca_file: str) -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with serving(plain) as port:
            err = await failing(f"https://127.0.0.1:{port}/", ca_file=ca_file, **SECRET_REQUEST)
        assert err.kind == "tls"

    run(main())


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "http:///path", "https://user:pw@example.com/", "http://h:99999/"],
)
def test_urls_it_cannot_fetch(url: str) -> None:
    with pytest.raises(ValueError):
        asyncio.run(fetch(url, timeout=1, max_bytes=1))
