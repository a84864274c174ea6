"""Interoperability with the official MCP Python SDK (the ``mcp`` package).

The SDK's own client, with its OAuth client provider, connects to the SDK's own server
(``MCPServer`` on streamable HTTP, served by uvicorn) through the edge, which protects it
as an RFC 9728 resource. Nothing of the protocol is done by the test: the client gets the
401, reads the protected resource metadata and the authorization server's metadata,
registers itself (RFC 7591), sends the browser to ``/authorize`` with PKCE and the
resource indicator, redeems the code, and retries with the bearer token; then the MCP
session starts, lists the tools and calls one. The server keeps its defaults (a stateful
session, responses as SSE streams, the standalone GET stream, DELETE at the end), all
through the edge. The test only plays the user's browser (the GitHub stand-in signs alice
in; a consent page, if shown, is approved).

The MCP endpoint is reached over HTTPS (a trustme certificate for ``mcp.localhost``): the
edge names its resources ``https://``, and the SDK refuses a resource whose origin is not
the one it connects to (RFC 8707 matching), so it must talk https to the edge as a real
deployment does. The authorization server stays on plain http on loopback, as
:func:`tests.oauth_helpers.oauth_stack` serves it.

``*.localhost`` names are loopback (RFC 6761) but this machine's resolver may not know
them: the client's transport connects every such name to 127.0.0.1, keeping the name in
the ``Host`` header and as the TLS server name, and refuses any other host.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import jwt
import pytest
import redis
import trustme
import uvicorn
from mcp.client.auth import OAuthClientProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from mcp_types import TextContent

from tests.helpers import EdgeProcess, free_port, proxy_doc, wait_for
from tests.oauth_helpers import Browser, OAuthStack, Page, oauth_stack, query_of, request

EdgeFactory = Callable[..., EdgeProcess]
HOST = "mcp.localhost"
FLOW_DEADLINE = 25.0  # seconds for the whole client run, sign-in included


# ---------------------------------------------------------------------------
# the upstream: the SDK's own MCP server
# ---------------------------------------------------------------------------


@dataclass
class McpUpstream:
    """``MCPServer`` on streamable HTTP at ``/mcp``, in uvicorn on a thread; its one tool,
    ``whoami``, answers the ``X-Auth-User-Name`` header the edge set on the request."""

    port: int
    seen: list[dict[str, str]] = field(default_factory=list)  # the tool calls' headers
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        app = MCPServer("edge-interop")

        @app.tool()
        def whoami(ctx: Context) -> str:
            """The signed-in user, as the edge names it to the upstream."""
            headers = {k.lower(): v for k, v in (ctx.headers or {}).items()}
            self.seen.append(headers)
            return headers.get("x-auth-user-name", "")

        # the SDK's DNS-rebinding check stays on; the edge keeps the client's Host header
        security = TransportSecuritySettings(
            allowed_hosts=[f"{HOST}:*", "127.0.0.1:*"],
            allowed_origins=[f"https://{HOST}:*"],
        )
        asgi = app.streamable_http_app(transport_security=security)
        config = uvicorn.Config(
            asgi, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="mcp-upstream", daemon=True)
        self.thread.start()
        wait_for(lambda: self.server is not None and self.server.started, timeout=10)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
            assert not self.thread.is_alive(), "the MCP upstream did not stop"


# ---------------------------------------------------------------------------
# the client side: loopback transport, token storage, the user's browser
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    method: str
    url: str
    status: int


class LoopbackTransport(httpx2.AsyncBaseTransport):
    """Connects ``*.localhost`` (and 127.0.0.1) to 127.0.0.1, the name kept as ``Host``
    and TLS server name; any other host is an error. Logs each request and its status."""

    def __init__(self, verify: ssl.SSLContext) -> None:
        self.inner = httpx2.AsyncHTTPTransport(verify=verify)
        self.log: list[Exchange] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        host = request.url.host
        assert host == "127.0.0.1" or host.endswith(".localhost"), f"off loopback: {request.url}"
        sent = httpx2.Request(
            request.method,
            request.url.copy_with(host="127.0.0.1"),
            headers=request.headers,  # Host is already the name
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": host},
        )
        response = await self.inner.handle_async_request(sent)
        self.log.append(Exchange(request.method, str(request.url), response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class MemoryStorage:
    """The SDK's ``TokenStorage``, in memory."""

    tokens: OAuthToken | None = None
    client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@dataclass
class User:
    """The person at the browser: opens the authorization URL the client hands over,
    signs in through the GitHub stand-in, approves the consent page if one is shown, and
    gives the client the URL its redirect URI was called with."""

    issuer: str
    redirect_uri: str
    browser: Browser = field(default_factory=Browser)
    authorization_urls: list[str] = field(default_factory=list)
    landed: list[str] = field(default_factory=list)  # the redirect URIs with their query

    async def open(self, authorization_url: str) -> None:  # the SDK's redirect_handler
        self.authorization_urls.append(authorization_url)

    async def callback(self) -> AuthorizationCodeResult:  # the SDK's callback_handler
        assert self.authorization_urls, "the callback came before any authorization URL"
        landed = await anyio.to_thread.run_sync(self._sign_in, self.authorization_urls[-1])
        self.landed.append(landed)
        query = query_of(landed)
        assert "code" in query, landed
        return AuthorizationCodeResult(
            code=query["code"], state=query.get("state"), iss=query.get("iss")
        )

    def _sign_in(self, url: str) -> str:
        got = self.browser.follow(url, self.redirect_uri)
        if isinstance(got, Page) and got.status == 200 and "csrf_token" in got.text:
            form = {
                "request_id": got.hidden("request_id"),
                "csrf_token": got.hidden("csrf_token"),
                "decision": "approve",
            }
            got = self.browser.follow(
                f"{self.issuer}/consent", self.redirect_uri, method="POST", form=form
            )
        assert isinstance(got, str), (got.status, got.text[:500])
        return got


# ---------------------------------------------------------------------------
# the site
# ---------------------------------------------------------------------------


@dataclass
class Site:
    stack: OAuthStack
    upstream: McpUpstream
    https_port: int
    client_tls: ssl.SSLContext

    @property
    def mcp_url(self) -> str:
        return f"https://{HOST}:{self.https_port}/mcp"

    @property
    def resource(self) -> str:  # what the edge advertises and a token's aud must be
        return self.mcp_url


def https_get(site: Site, path: str) -> tuple[int, bytes]:
    """GET ``path`` from the edge over TLS with ``HOST`` as server name, verified."""
    raw = socket.create_connection(("127.0.0.1", site.https_port), timeout=5)
    conn = http.client.HTTPConnection("127.0.0.1", site.https_port, timeout=5)
    try:
        conn.sock = site.client_tls.wrap_socket(raw, server_hostname=HOST)
        conn.request("GET", path, headers={"Host": f"{HOST}:{site.https_port}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
        raw.close()


def metadata_served(site: Site) -> bool:
    """The edge has the certificate and the proxy: the metadata names the resource."""
    try:
        status, body = https_get(site, "/.well-known/oauth-protected-resource/mcp")
    except (OSError, ssl.SSLError):
        return False
    return status == 200 and json.loads(body).get("resource") == site.resource


@pytest.fixture
def site(edge_factory: EdgeFactory, rdb: redis.Redis, ca: trustme.CA) -> Iterator[Site]:
    leaf = ca.issue_cert(HOST, common_name=HOST)
    chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    upstream = McpUpstream(free_port())
    upstream.start()
    https_port = free_port()
    try:
        with oauth_stack(edge_factory, HTTPS_PORT=str(https_port)) as stack:
            record = {
                "cert_name": "mcp",
                "domains": [HOST],
                "fullchain_pem": chain,
                "private_key_pem": leaf.private_key_pem.bytes().decode(),
            }
            rdb.set("cert:mcp", json.dumps(record))
            doc = proxy_doc(HOST, upstream.url, auth_enabled=True, resource_endpoint="/mcp")
            rdb.set(f"proxy:{HOST}", doc)
            s = Site(stack, upstream, https_port, client_tls)
            wait_for(lambda: metadata_served(s), timeout=10)
            yield s
    finally:
        upstream.stop()


# ---------------------------------------------------------------------------
# the test
# ---------------------------------------------------------------------------


def subsequence(wanted: list[tuple[str, str, int]], log: list[Exchange]) -> bool:
    """Whether ``wanted`` (method, URL without query, status) occur in ``log`` in order."""
    it = iter((e.method, e.url.split("?", 1)[0], e.status) for e in log)
    return all(any(step == got for got in it) for step in wanted)


async def test_the_sdk_client_signs_in_through_the_edge_and_calls_a_tool(site: Site) -> None:
    issuer = site.stack.issuer
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"  # caught, never fetched
    user = User(issuer, redirect_uri)
    storage = MemoryStorage()
    provider = OAuthClientProvider(
        server_url=site.mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name="mcp sdk interop",
            redirect_uris=[redirect_uri],  # type: ignore[list-item]  # pydantic parses it
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        ),
        storage=storage,
        redirect_handler=user.open,
        callback_handler=user.callback,
    )
    transport = LoopbackTransport(site.client_tls)
    with anyio.fail_after(FLOW_DEADLINE):
        async with (
            httpx2.AsyncClient(
                auth=provider, transport=transport, timeout=httpx2.Timeout(10.0)
            ) as http,
            streamable_http_client(site.mcp_url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            init = await session.initialize()
            tools = await session.list_tools()
            result = await session.call_tool("whoami", {})

    # the MCP session, behind the edge
    assert init.server_info.name == "edge-interop"
    assert [t.name for t in tools.tools] == ["whoami"]
    assert not result.is_error, result
    texts = [c.text for c in result.content if isinstance(c, TextContent)]
    assert texts == ["alice"], result

    # the client did every protocol step itself, in order
    auth_base = urllib.parse.urlsplit(issuer)
    asm = f"{auth_base.scheme}://{auth_base.netloc}/.well-known/oauth-authorization-server"
    prm = f"https://{HOST}:{site.https_port}/.well-known/oauth-protected-resource/mcp"
    steps = [
        ("POST", site.mcp_url, 401),
        ("GET", prm, 200),
        ("GET", asm, 200),
        ("POST", f"{issuer}/register", 201),
        ("POST", f"{issuer}/token", 200),
        ("POST", site.mcp_url, 200),
    ]
    assert subsequence(steps, transport.log), "\n".join(map(str, transport.log))
    assert len(user.authorization_urls) == 1
    authorize = urllib.parse.urlsplit(user.authorization_urls[0])
    assert f"{authorize.scheme}://{authorize.netloc}{authorize.path}" == f"{issuer}/authorize"
    params = query_of(user.authorization_urls[0])
    assert params["resource"] == site.resource
    assert params["code_challenge_method"] == "S256"
    assert storage.client_info is not None and params["client_id"] == storage.client_info.client_id
    assert query_of(user.landed[0])["iss"] == issuer  # RFC 9207, which the SDK checks

    # the token the SDK stored: signed by the edge, for the advertised resource
    assert storage.tokens is not None
    token = storage.tokens.access_token
    jwks = jwt.PyJWKSet.from_dict(request("GET", f"{issuer}/jwks").json())
    kid = jwt.get_unverified_header(token)["kid"]
    claims: dict[str, Any] = jwt.decode(
        token,
        next(k for k in jwks.keys if k.key_id == kid),
        algorithms=["RS256", "ES256", "EdDSA", "PS256"],
        audience=site.resource,
        issuer=issuer,
    )
    assert claims["aud"] in (site.resource, [site.resource])
    assert claims["client_id"] == storage.client_info.client_id

    # what the upstream saw: the edge's identity headers and the same bearer token
    assert site.upstream.seen, "the tool never ran"
    seen = site.upstream.seen[-1]
    assert seen["x-auth-user-name"] == "alice"
    assert seen["x-auth-user-id"] == "github:1000"
    assert seen["x-auth-client-id"] == storage.client_info.client_id
    assert seen["authorization"] == f"Bearer {token}"
