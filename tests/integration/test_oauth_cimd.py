"""Client ID Metadata Documents fetched from real TLS servers on 127.0.0.1 (trustme): the
document's rules, the SSRF guard (refused before any connection), the limits (redirects,
size, time), caching by the answer's headers, the negative cache, shared fetches."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
import trustme
import uvloop

from edge.oauth.cimd import (
    CimdError,
    CimdFetcher,
    cache_lifetime,
    check_client_id_url,
    public_address,
)
from edge.oauth.clients import ClientRegistry
from edge.oauth.errors import InvalidClient, ServerError
from edge.settings import RedisTarget
from edge.store.client import redis_client
from tests.helpers import RedisServer, free_port

MAX_BYTES = 16 * 1024
Answer = Callable[[str], bytes]


def http(status: int, body: bytes = b"", headers: tuple[str, ...] = ()) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def json_answer(document: Any, *headers: str) -> bytes:
    body = json.dumps(document).encode()
    return http(200, body, ("Content-Type: application/json", *headers))


class DocServer:
    """A TLS server on 127.0.0.1 answering each request with ``answer(path)``, after
    ``delay`` seconds; it records every request head it read."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[bytes] = []
        self.delay = 0.0
        self.answer: Answer = lambda path: http(404)

    def url(self, path: str = "/client.json", host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"

    def document(self, path: str = "/client.json", **extra: Any) -> dict[str, Any]:
        return {
            "client_id": self.url(path),
            "client_name": "Example MCP client",
            "redirect_uris": ["http://127.0.0.1/callback", "https://app.example.com/cb"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            **extra,
        }

    def serve(self, document: Any, *headers: str) -> None:
        self.answer = lambda path: json_answer(document, *headers)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if self.delay:
                await asyncio.sleep(self.delay)
            writer.write(self.answer(head.split(b" ")[1].decode()))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def server(ca: trustme.CA) -> AsyncIterator[DocServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost", "::1").configure_cert(context)
    doc = DocServer(free_port())
    listener = await asyncio.start_server(doc.handle, "127.0.0.1", doc.port, ssl=context)
    yield doc
    listener.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fetcher(ca_file: str, clock: Clock) -> CimdFetcher:
    return CimdFetcher(allow_private=True, ca_file=ca_file, clock=clock)


async def refused(fetcher: CimdFetcher, url: str) -> CimdError:
    with pytest.raises(CimdError) as caught:
        await fetcher.get(url)
    error = caught.value
    assert isinstance(error, InvalidClient) and error.status == 401
    assert error.code == "invalid_client"
    return error


# ---------------------------------------------------------------------- the document
async def test_valid_document(server: DocServer, fetcher: CimdFetcher) -> None:
    server.serve(server.document(logo_uri="https://app.example.com/logo.png", scope="mcp:read"))
    record = await fetcher.get(server.url())
    assert record.client_id == server.url()
    assert record.source == "cimd"
    assert record.token_endpoint_auth_method == "none" and not record.confidential
    assert record.client_name == "Example MCP client"
    assert record.redirect_uris == ("http://127.0.0.1/callback", "https://app.example.com/cb")
    assert record.grant_types == ("authorization_code", "refresh_token")
    assert record.logo_uri == "https://app.example.com/logo.png"
    assert record.scope == "mcp:read"
    assert record.client_secret_hash is None and record.registration_access_token_hash is None
    [head] = server.requests
    assert head.startswith(b"GET /client.json HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}".encode() in head.lower()
    assert b"accept: application/json" in head.lower()


async def test_defaults_to_a_public_client(server: DocServer, fetcher: CimdFetcher) -> None:
    server.serve({"client_id": server.url(), "redirect_uris": ["http://localhost/cb"]})
    record = await fetcher.get(server.url())
    assert record.token_endpoint_auth_method == "none"
    assert record.grant_types == ("authorization_code",)  # RFC 7591's default


async def test_registry_reads_https_client_ids_through_cimd(
    server: DocServer, fetcher: CimdFetcher, redis_db: RedisServer
) -> None:
    server.serve(server.document())
    redis: aioredis.Redis = redis_client(RedisTarget(redis_db.url))
    try:
        registry = ClientRegistry(
            redis, scopes_supported=("mcp:read",), client_lifetime=0, cimd=fetcher
        )
        record = await registry.get(server.url())
        assert record is not None and record.source == "cimd"
        assert await redis.dbsize() == 0  # never stored
        without = ClientRegistry(redis, scopes_supported=(), client_lifetime=0, cimd=None)
        assert await without.get(server.url()) is None
    finally:
        await redis.aclose()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"client_id": "https://other.example/client.json"}, "does not equal"),
        ({"client_id": None}, "does not equal"),
        ({"redirect_uris": None}, "redirect_uris"),
        ({"redirect_uris": []}, "redirect_uris"),
        ({"redirect_uris": ["http://app.example.com/cb"]}, "loopback"),
        ({"redirect_uris": ["com.example.app:/cb"]}, "private-use"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "must be one of: none"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "private_key_jwt is not supported"),
        ({"client_secret": "abc"}, "client secret"),
        ({"grant_types": ["implicit"]}, "grant_types"),
        ({"client_name": "x" * 201}, "client_name"),
    ],
)
async def test_document_refused(
    server: DocServer, fetcher: CimdFetcher, change: dict[str, Any], says: str
) -> None:
    document = {k: v for k, v in {**server.document(), **change}.items() if v is not None}
    server.serve(document)
    error = await refused(fetcher, server.url())
    assert error.public_message.startswith("client metadata document refused: ")
    assert says in error.public_message


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (http(200, b"not json"), "not JSON"),
        (http(200, b"[1, 2]"), "not a JSON object"),
        (http(404), "HTTP 404"),
        (http(500), "HTTP 500"),
    ],
)
async def test_answer_refused(
    server: DocServer, fetcher: CimdFetcher, answer: bytes, says: str
) -> None:
    server.answer = lambda path: answer
    assert says in (await refused(fetcher, server.url())).public_message


# ---------------------------------------------------------------------- limits
async def test_redirect_not_followed(server: DocServer, fetcher: CimdFetcher) -> None:
    elsewhere = server.url("/elsewhere.json")
    server.answer = lambda path: (
        http(302, headers=(f"Location: {elsewhere}",))
        if path == "/client.json"
        else json_answer(server.document("/client.json"))
    )
    error = await refused(fetcher, server.url())
    assert "redirects are not followed (HTTP 302)" in error.public_message
    assert len(server.requests) == 1  # the Location was never asked for


async def test_oversized_document_refused(server: DocServer, fetcher: CimdFetcher) -> None:
    padded = server.document(software_id="x" * 100)
    body = json.dumps(padded).encode()
    padded["software_version"] = ""
    fitting = json.dumps(padded).encode()
    fitting = fitting[:-1] + b" " * (MAX_BYTES - len(fitting)) + b"}"
    assert len(fitting) == MAX_BYTES
    server.answer = lambda path: http(200, fitting)
    assert (await fetcher.get(server.url())).client_id == server.url()

    body = fitting[:-1] + b" }"  # one byte over
    server.answer = lambda path: http(200, body)
    error = await refused(fetcher, server.url("/big.json"))
    assert f"larger than {MAX_BYTES} bytes" in error.public_message


async def test_slow_server_times_out(server: DocServer, ca_file: str) -> None:
    fetcher = CimdFetcher(allow_private=True, ca_file=ca_file, timeout=0.5)
    server.serve(server.document())
    server.delay = 5.0
    started = time.monotonic()
    error = await refused(fetcher, server.url())
    assert time.monotonic() - started < 2.0
    assert "no answer within 0.5 s" in error.public_message


async def test_untrusted_certificate_refused(server: DocServer) -> None:
    fetcher = CimdFetcher(allow_private=True)  # the system's CAs: trustme's is not among them
    server.serve(server.document())
    assert "TLS failed" in (await refused(fetcher, server.url())).public_message


# ---------------------------------------------------------------------- the SSRF guard
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
async def test_loopback_refused_before_connecting(
    server: DocServer, ca_file: str, host: str
) -> None:
    fetcher = CimdFetcher(ca_file=ca_file)  # allow_private=False, as in production
    url = server.url(host=host)
    server.serve(server.document() | {"client_id": url})
    error = await refused(fetcher, url)
    assert "non-public address" in error.public_message
    assert "127.0.0.1" not in error.public_message and "::1" not in error.public_message
    await asyncio.sleep(0.1)
    assert server.requests == []


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.1.2.3",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2001:db8::1",
        "64:ff9b::a00:1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://app.example.com/client.json", "https"),
        ("HTTPS://app.example.com/client.json", "https"),
        ("https://app.example.com", "path"),
        ("https://app.example.com/", "path"),
        ("https://app.example.com/client.json#x", "fragment"),
        ("https://u:p@app.example.com/client.json", "user information"),
        ("https://u@app.example.com/client.json", "user information"),
        ("https://app.example.com/a/../client.json", "segments"),
        ("https://app.example.com/./client.json", "segments"),
        ("https://app.example.com/a/%2E%2E/client.json", "segments"),
        ("https://app.example.com:0x50/client.json", "port"),
        ("https:///client.json", "host"),
        ("https://app.example.com/c lient.json", "ASCII"),
        ("https://app.example.com/" + "x" * 2000, "longer"),
    ],
)
async def test_client_id_url_rules(url: str, says: str) -> None:
    fetcher = CimdFetcher()
    error = await refused(fetcher, url)
    assert says in error.public_message
    assert fetcher.fetches == 0


def test_client_id_url_accepted() -> None:
    assert check_client_id_url("https://app.example.com/oauth/client.json?v=1") == (
        "app.example.com",
        443,
    )
    assert check_client_id_url("https://[::1]:8443/c") == ("::1", 8443)


async def test_unresolvable_host() -> None:
    fetcher = CimdFetcher(timeout=3.0)
    error = await refused(fetcher, "https://does-not-exist.invalid/client.json")
    assert "does not resolve" in error.public_message


# ---------------------------------------------------------------------- caching
async def test_cached_for_max_age(server: DocServer, fetcher: CimdFetcher, clock: Clock) -> None:
    server.serve(server.document(), "Cache-Control: public, max-age=60")
    first = await fetcher.get(server.url())
    assert await fetcher.get(server.url()) == first
    assert len(server.requests) == 1
    clock.now += 59
    await fetcher.get(server.url())
    assert len(server.requests) == 1
    clock.now += 2
    await fetcher.get(server.url())
    assert len(server.requests) == 2


async def test_default_lifetime(server: DocServer, fetcher: CimdFetcher, clock: Clock) -> None:
    server.serve(server.document())  # no caching headers: five minutes
    await fetcher.get(server.url())
    clock.now += 299
    await fetcher.get(server.url())
    assert len(server.requests) == 1
    clock.now += 2
    await fetcher.get(server.url())
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "header", ["Cache-Control: max-age=0", "Cache-Control: no-store", "Cache-Control: no-cache"]
)
async def test_not_cached(server: DocServer, fetcher: CimdFetcher, header: str) -> None:
    server.serve(server.document(), header)
    for _ in range(3):
        await fetcher.get(server.url())
    assert len(server.requests) == 3


async def test_cache_lifetime_capped(server: DocServer, fetcher: CimdFetcher, clock: Clock) -> None:
    server.serve(server.document(), "Cache-Control: max-age=31536000")
    await fetcher.get(server.url())
    clock.now += 86399
    await fetcher.get(server.url())
    assert len(server.requests) == 1
    clock.now += 2
    await fetcher.get(server.url())
    assert len(server.requests) == 2


async def test_failures_cached_briefly(
    server: DocServer, fetcher: CimdFetcher, clock: Clock
) -> None:
    server.answer = lambda path: http(404)
    for _ in range(5):
        error = await refused(fetcher, server.url())
        assert "HTTP 404" in error.public_message
    assert len(server.requests) == 1
    server.serve(server.document())
    clock.now += 29
    await refused(fetcher, server.url())
    clock.now += 2
    assert (await fetcher.get(server.url())).client_id == server.url()
    assert len(server.requests) == 2


async def test_cache_bounded_lru(server: DocServer, ca_file: str, clock: Clock) -> None:
    fetcher = CimdFetcher(allow_private=True, ca_file=ca_file, clock=clock, cache_size=2)
    server.answer = lambda path: json_answer(server.document(path))
    a, b, c = (server.url(f"/{name}.json") for name in "abc")
    await fetcher.get(a)
    await fetcher.get(b)
    await fetcher.get(a)  # a is now the most recently used
    await fetcher.get(c)  # b goes
    assert len(server.requests) == 3
    await fetcher.get(a)
    await fetcher.get(c)
    assert len(server.requests) == 3
    await fetcher.get(b)
    assert len(server.requests) == 4
    assert fetcher.health()["cached"] == 2


def test_cache_lifetime_headers() -> None:
    def ttl(**headers: str) -> float:
        named = {k.replace("_", "-"): v for k, v in headers.items()}
        return cache_lifetime(named, now=1_700_000_000, default_ttl=300, max_ttl=86400)

    assert ttl() == 300
    assert ttl(cache_control="max-age=120") == 120
    assert ttl(cache_control='private, max-age="120"') == 120
    assert ttl(cache_control="max-age=120", age="100") == 20
    assert ttl(cache_control="max-age=120", age="500") == 0
    assert ttl(cache_control="max-age=99999999") == 86400
    assert ttl(cache_control="max-age=abc") == 0
    assert ttl(cache_control="max-age=-5") == 0
    assert ttl(cache_control="no-store, max-age=60") == 0
    assert ttl(cache_control="max-age=60", expires="Thu, 01 Jan 1970 00:00:00 GMT") == 60
    date = "Tue, 14 Nov 2023 22:13:20 GMT"  # 1_700_000_000
    assert ttl(expires="Tue, 14 Nov 2023 22:23:20 GMT", date=date) == 600
    assert ttl(expires="Tue, 14 Nov 2023 22:23:20 GMT") == 600  # no Date: now
    assert ttl(expires="Tue, 14 Nov 2023 22:03:20 GMT", date=date) == 0
    assert ttl(expires="0") == 0
    assert ttl(cache_control="public") == 300


# ---------------------------------------------------------------------- sharing
async def test_concurrent_gets_share_one_fetch(server: DocServer, fetcher: CimdFetcher) -> None:
    server.serve(server.document(), "Cache-Control: no-store")
    server.delay = 0.3
    records = await asyncio.gather(*(fetcher.get(server.url()) for _ in range(20)))
    assert len(server.requests) == 1
    assert all(r == records[0] for r in records)
    assert fetcher.health()["pending"] == 0


async def test_concurrent_failures_share_one_fetch(server: DocServer, fetcher: CimdFetcher) -> None:
    server.answer = lambda path: http(302, headers=("Location: https://x.example/",))
    server.delay = 0.3
    results = await asyncio.gather(
        *(fetcher.get(server.url()) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, CimdError) for r in results)
    assert len(server.requests) == 1


async def test_cancelled_waiter_does_not_cancel_the_fetch(
    server: DocServer, fetcher: CimdFetcher
) -> None:
    server.serve(server.document())
    server.delay = 0.3
    first = asyncio.create_task(fetcher.get(server.url()))
    second = asyncio.create_task(fetcher.get(server.url()))
    await asyncio.sleep(0.1)
    first.cancel()
    record = await second
    assert record.client_id == server.url()
    assert first.cancelled()
    assert len(server.requests) == 1


async def test_pending_fetches_bounded(server: DocServer, ca_file: str) -> None:
    fetcher = CimdFetcher(allow_private=True, ca_file=ca_file, max_pending=2)
    server.answer = lambda path: json_answer(server.document(path))
    server.delay = 0.3
    slow = [asyncio.create_task(fetcher.get(server.url(f"/{n}.json"))) for n in "ab"]
    await asyncio.sleep(0.05)
    with pytest.raises(ServerError) as caught:
        await fetcher.get(server.url("/c.json"))
    assert caught.value.status == 503
    # the same URL as a pending fetch joins it
    joined = await fetcher.get(server.url("/a.json"))
    assert joined == await slow[0]
    await slow[1]
    assert (await fetcher.get(server.url("/c.json"))).client_id.endswith("/c.json")


async def test_fetch_runs_off_the_callers_path(server: DocServer, fetcher: CimdFetcher) -> None:
    """While a fetch waits on a slow server, the loop keeps running other work."""
    server.serve(server.document())
    server.delay = 0.5
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await fetcher.get(server.url())
    task.cancel()
    assert ticks >= 20


def test_under_uvloop(ca_file: str, ca: trustme.CA) -> None:
    """The edge's workers run uvloop: resolution, the guard and the fetch work there too."""

    async def main() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        doc = DocServer(free_port())
        listener = await asyncio.start_server(doc.handle, "127.0.0.1", doc.port, ssl=context)
        try:
            doc.serve(doc.document())
            record = await CimdFetcher(allow_private=True, ca_file=ca_file).get(doc.url())
            assert record.client_id == doc.url()
            url = doc.url(host="localhost")
            with pytest.raises(CimdError):
                await CimdFetcher(ca_file=ca_file).get(url)
            assert len(doc.requests) == 1
        finally:
            listener.close()

    uvloop.run(main())
