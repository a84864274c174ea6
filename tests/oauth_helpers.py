"""Test clients of the OAuth server: a browser that follows redirects, and an OAuth client.

:class:`Browser` is a small HTTP client with a cookie jar that follows redirects across the
edge (the issuer on ``auth.localhost``, every ``*.localhost`` name on loopback) and the
GitHub stand-in, until it reaches the client's redirect URI, whose URL it returns (the
code is in it) without fetching it, as a native app would catch it.
:class:`OAuthClient` is the client side of the protocol: PKCE, the token endpoint,
refresh, revocation, registration.
"""

from __future__ import annotations

import base64
import hashlib
import html
import http.client
import json
import re
import secrets
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.github_standin import GitHubStandin, github_standin
from tests.helpers import EdgeProcess, free_port, wait_for

AUTH_HOST = "auth.localhost"


@dataclass
class Page:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def hidden(self, name: str) -> str:
        """The value of a hidden form input (the consent page's request id, CSRF token)."""
        match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', self.text)
        assert match is not None, f"no input {name!r} in:\n{self.text[:2000]}"
        return html.unescape(match.group(1))


def _connect(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    assert host == "127.0.0.1" or host == "localhost" or host.endswith(".localhost"), url
    assert parts.scheme == "http", url
    conn = http.client.HTTPConnection("127.0.0.1", parts.port or 80, timeout=10)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return conn, target


def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Page:
    """One request to a loopback URL (``*.localhost`` is loopback, RFC 6761)."""
    conn, target = _connect(url)
    try:
        parts = urllib.parse.urlsplit(url)
        sent = {"Host": parts.netloc, **(headers or {})}
        conn.request(method, target, body=body, headers=sent)
        resp = conn.getresponse()
        return Page(resp.status, resp.getheaders(), resp.read(), url)
    finally:
        conn.close()


def request_via(
    port: int,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Page:
    """``request`` sent to another node: the connection to ``port`` on 127.0.0.1, the
    ``Host`` still the URL's (as a load balancer in front of the nodes would pass it)."""
    parts = urllib.parse.urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, body=body, headers={"Host": parts.netloc, **(headers or {})})
        resp = conn.getresponse()
        return Page(resp.status, resp.getheaders(), resp.read(), url)
    finally:
        conn.close()


def post_form(
    url: str,
    fields: Sequence[tuple[str, str]] | dict[str, str],
    *,
    headers: dict[str, str] | None = None,
) -> Page:
    body = urllib.parse.urlencode(fields).encode("ascii")
    sent = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    return request("POST", url, headers=sent, body=body)


def post_json(url: str, document: Any, *, headers: dict[str, str] | None = None) -> Page:
    sent = {"Content-Type": "application/json", **(headers or {})}
    return request("POST", url, headers=sent, body=json.dumps(document).encode())


@dataclass
class Browser:
    """A browser: a cookie jar per host, redirects followed."""

    cookies: dict[str, dict[str, str]] = field(default_factory=dict)
    visited: list[str] = field(default_factory=list)

    def fetch(self, method: str, url: str, body: bytes | None = None, ctype: str = "") -> Page:
        host = urllib.parse.urlsplit(url).hostname or ""
        headers = {"User-Agent": "edge-test-browser", "Accept": "text/html"}
        jar = self.cookies.get(host, {})
        if jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        if ctype:
            headers["Content-Type"] = ctype
        self.visited.append(url)
        page = request(method, url, headers=headers, body=body)
        for name, value in page.headers:
            if name.lower() == "set-cookie":
                cookie_name, _, rest = value.partition("=")
                cookie_value = rest.split(";", 1)[0]
                attributes = rest.lower()
                if "max-age=0" in attributes or not cookie_value:
                    self.cookies.setdefault(host, {}).pop(cookie_name, None)
                else:
                    self.cookies.setdefault(host, {})[cookie_name] = cookie_value
        return page

    def follow(
        self,
        url: str,
        stop_at: str,
        *,
        method: str = "GET",
        form: dict[str, str] | None = None,
        limit: int = 10,
    ) -> Page | str:
        """Follow redirects from ``url``; the URL once it starts with ``stop_at`` (the
        client's redirect URI), else the first page that is not a redirect."""
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        ctype = "application/x-www-form-urlencoded" if form is not None else ""
        for _ in range(limit):
            if url.startswith(stop_at):
                return url
            page = self.fetch(method, url, body, ctype)
            if page.status not in (301, 302, 303, 307, 308):
                return page
            location = page.header("location")
            assert location, "redirect without Location"
            url = urllib.parse.urljoin(url, location)
            method, body, ctype = "GET", None, ""
        raise AssertionError(f"more than {limit} redirects: {self.visited[-limit:]}")


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def query_of(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


@dataclass
class OAuthClient:
    """An OAuth client of the edge's server (public unless it has a secret)."""

    issuer: str
    client_id: str
    redirect_uri: str
    secret: str | None = None
    method: str = "none"  # none | client_secret_basic | client_secret_post

    def auth(self, fields: list[tuple[str, str]]) -> dict[str, str]:
        if self.method == "client_secret_basic":
            assert self.secret is not None
            pair = (
                f"{urllib.parse.quote_plus(self.client_id)}:{urllib.parse.quote_plus(self.secret)}"
            )
            return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        fields.append(("client_id", self.client_id))
        if self.method == "client_secret_post":
            assert self.secret is not None
            fields.append(("client_secret", self.secret))
        return {}

    def authorize_url(
        self,
        challenge: str,
        *,
        state: str = "st-1",
        scope: str | None = "mcp:read",
        resources: Sequence[str] = (),
        extra: Sequence[tuple[str, str]] = (),
    ) -> str:
        params = [
            ("response_type", "code"),
            ("client_id", self.client_id),
            ("redirect_uri", self.redirect_uri),
            ("state", state),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ]
        if scope is not None:
            params.append(("scope", scope))
        params += [("resource", r) for r in resources]
        params += list(extra)
        return f"{self.issuer}/authorize?{urllib.parse.urlencode(params)}"

    def token(
        self,
        code: str,
        verifier: str,
        *,
        resources: Sequence[str] = (),
        redirect_uri: str | None = None,
    ) -> Page:
        fields = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri or self.redirect_uri),
            ("code_verifier", verifier),
        ]
        fields += [("resource", r) for r in resources]
        headers = self.auth(fields)
        return post_form(f"{self.issuer}/token", fields, headers=headers)

    def refresh(self, refresh_token: str, *, scope: str | None = None) -> Page:
        fields = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)]
        if scope is not None:
            fields.append(("scope", scope))
        headers = self.auth(fields)
        return post_form(f"{self.issuer}/token", fields, headers=headers)

    def revoke(self, token: str, hint: str | None = None) -> Page:
        fields = [("token", token)]
        if hint:
            fields.append(("token_type_hint", hint))
        headers = self.auth(fields)
        return post_form(f"{self.issuer}/revoke", fields, headers=headers)

    def introspect(self, token: str) -> Page:
        fields = [("token", token)]
        headers = self.auth(fields)
        return post_form(f"{self.issuer}/introspect", fields, headers=headers)


def register(issuer: str, metadata: dict[str, Any]) -> dict[str, Any]:
    page = post_json(f"{issuer}/register", metadata)
    assert page.status == 201, (page.status, page.text)
    return page.json()  # type: ignore[no-any-return]


def register_client(
    issuer: str, *, method: str = "none", redirect_uri: str | None = None, **extra: Any
) -> OAuthClient:
    redirect_uri = redirect_uri or f"http://127.0.0.1:{free_port()}/callback"
    doc = register(
        issuer,
        {
            "redirect_uris": [redirect_uri],
            "token_endpoint_auth_method": method,
            "client_name": "Test client",
            "grant_types": ["authorization_code", "refresh_token"],
            **extra,
        },
    )
    return OAuthClient(issuer, doc["client_id"], redirect_uri, doc.get("client_secret"), method)


@dataclass
class OAuthStack:
    """An edge serving the OAuth server on ``auth.localhost``, with a GitHub stand-in."""

    edge: EdgeProcess
    github: GitHubStandin
    issuer: str
    settings: dict[str, str] = field(default_factory=dict)  # the edge's environment
    factory: Callable[..., EdgeProcess] | None = None

    def node(self, **env: Any) -> EdgeProcess:
        """Another node of the cluster: an edge on the same Redis with the same OAuth
        settings (same issuer, naming the first node's port) on HTTP and API ports of its
        own; ``env`` changes or adds settings."""
        assert self.factory is not None
        settings = {**self.settings, "HTTP_PORT": str(free_port()), **env}
        edge = self.factory(**settings)
        edge.http_port = int(settings["HTTP_PORT"])
        return edge

    def login(
        self,
        browser: Browser,
        client: OAuthClient,
        *,
        scope: str | None = "mcp:read",
        resources: Sequence[str] = (),
        approve: bool = True,
        extra: Sequence[tuple[str, str]] = (),
    ) -> tuple[str, str]:
        """Run the browser flow to the client's redirect; (redirect URL, PKCE verifier)."""
        verifier, challenge = pkce_pair()
        url = client.authorize_url(challenge, scope=scope, resources=resources, extra=extra)
        got = browser.follow(url, client.redirect_uri)
        if isinstance(got, Page) and got.status == 200 and "csrf_token" in got.text:
            form = {
                "request_id": got.hidden("request_id"),
                "csrf_token": got.hidden("csrf_token"),
                "decision": "approve" if approve else "deny",
            }
            got = browser.follow(
                f"{self.issuer}/consent", client.redirect_uri, method="POST", form=form
            )
        assert isinstance(got, str), (got.status, got.text[:500]) if isinstance(got, Page) else got
        return got, verifier

    def tokens(self, browser: Browser, client: OAuthClient, **kw: Any) -> dict[str, Any]:
        """Browser flow, then the code redeemed: the token response."""
        url, verifier = self.login(browser, client, **kw)
        code = query_of(url)["code"]
        page = client.token(code, verifier, resources=kw.get("resources", ()))
        assert page.status == 200, page.text
        return page.json()  # type: ignore[no-any-return]


@contextmanager
def oauth_stack(
    edge_factory: Callable[..., EdgeProcess],
    *,
    users: Sequence[str] = ("alice",),
    allowed: str = "alice",
    **env: Any,
) -> Iterator[OAuthStack]:
    """An edge with the OAuth server and GitHub stand-in users (the first signed in)."""
    port = free_port()
    issuer = f"http://{AUTH_HOST}:{port}"
    with github_standin(callback_url=f"{issuer}/callback") as github:
        for index, login in enumerate(users):
            github.add_user(login, 1000 + index, sign_in=index == 0)
        settings = {
            "HTTP_PORT": str(port),
            "AUTH_HOSTNAME": AUTH_HOST,
            "OAUTH_ISSUER": issuer,
            "OAUTH_ALLOWED_GITHUB_USERS": allowed,
            **github.settings(),
            **env,
        }
        edge = edge_factory(**settings)
        edge.http_port = port
        yield OAuthStack(edge, github, issuer, settings, edge_factory)


def wait_resource_known(client: OAuthClient, resource: str, timeout: float = 5.0) -> None:
    """Until the proxy serving ``resource`` is in the edge's config: before, ``/authorize``
    answers ``invalid_target`` for it."""
    _, challenge = pkce_pair()
    url = client.authorize_url(challenge, resources=[resource])
    wait_for(
        lambda: "invalid_target" not in (request("GET", url).header("location") or ""),
        timeout=timeout,
    )
