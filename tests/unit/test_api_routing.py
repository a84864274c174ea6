"""The API router: matching, trailing slashes, 404 vs 405 + Allow, path parameters."""

from __future__ import annotations

from typing import Any

import pytest

from edge.api.app import build_router, default_groups
from edge.api.http import InvalidBody, MethodNotAllowed, NotFound, decode_json
from edge.api.people.auth import PatAuthenticator
from edge.api.redis_store import RedisHandle
from edge.api.request import Endpoint, Scoped
from edge.api.router import InvalidPath, Router, split_path
from edge.api.tokens.auth import TokenAuth
from edge.api.tokens.endpoints import PREFIX, RESERVED_NAMES, CreateToken, SetEmail
from edge.api.tokens.store import TokenStore
from edge.settings import RedisTarget


def tokens_router() -> Router[str]:
    r: Router[str] = Router()
    r.add("GET", "/api/v1/tokens/", "list")
    r.add("POST", "/api/v1/tokens/", "create")
    r.add("POST", "/api/v1/tokens/generate", "generate")
    r.add("GET", "/api/v1/tokens/info", "info")
    r.add("PUT", "/api/v1/tokens/email", "email")
    r.add("GET", "/api/v1/tokens/{name}", "get")
    r.add("DELETE", "/api/v1/tokens/{name}", "delete")
    r.add("GET", "/api/v1/tokens/{name}/reveal", "reveal")
    r.add("GET", "/health", "health")
    return r


@pytest.mark.parametrize(
    ("method", "path", "target", "params"),
    [
        ("GET", "/api/v1/tokens/", "list", {}),
        ("GET", "/api/v1/tokens", "list", {}),
        ("POST", "/api/v1/tokens", "create", {}),
        ("POST", "/api/v1/tokens/", "create", {}),
        ("POST", "/api/v1/tokens/generate", "generate", {}),
        ("POST", "/api/v1/tokens/generate/", "generate", {}),
        ("GET", "/api/v1/tokens/info", "info", {}),
        ("PUT", "/api/v1/tokens/email", "email", {}),
        ("GET", "/api/v1/tokens/ci", "get", {"name": "ci"}),
        ("GET", "/api/v1/tokens/ci/", "get", {"name": "ci"}),
        ("DELETE", "/api/v1/tokens/ci", "delete", {"name": "ci"}),
        ("GET", "/api/v1/tokens/ci/reveal", "reveal", {"name": "ci"}),
        ("GET", "/health", "health", {}),
        ("GET", "/health/", "health", {}),
        # GET routes answer HEAD too
        ("HEAD", "/health", "health", {}),
        ("HEAD", "/api/v1/tokens/ci", "get", {"name": "ci"}),
    ],
)
def test_matches(method: str, path: str, target: str, params: dict[str, str]) -> None:
    m = tokens_router().match(method, path)
    assert (m.target, m.params) == (target, params)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "*",
        "/api",
        "/api/v1",
        "/api/v2/tokens",
        "/api/v1/tokens/ci/reveal/more",
        "/api/v1/tokens/ci/other",
        "/api/v1//tokens",
        "/api/v1/tokens//",
        "/api/v1/tokens//reveal",
        "/API/v1/tokens",
        "/healthz",
        "/health//",
    ],
)
def test_unknown_paths_are_404(path: str) -> None:
    with pytest.raises(NotFound):
        tokens_router().match("GET", path)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/api/v1/tokens/", ["GET", "HEAD", "POST"]),
        ("PATCH", "/api/v1/tokens", ["GET", "HEAD", "POST"]),
        ("PUT", "/api/v1/tokens/ci", ["DELETE", "GET", "HEAD"]),
        ("POST", "/api/v1/tokens/ci/reveal", ["GET", "HEAD"]),
        ("POST", "/health", ["GET", "HEAD"]),
        ("get", "/health", ["GET", "HEAD"]),  # methods are case-sensitive (RFC 9110 §9.1)
        # the literal segment is the resource: its own methods, not those of {name}
        ("GET", "/api/v1/tokens/generate", ["POST"]),
        ("DELETE", "/api/v1/tokens/info", ["GET", "HEAD"]),
        ("GET", "/api/v1/tokens/email", ["PUT"]),
        ("HEAD", "/api/v1/tokens/email", ["PUT"]),
    ],
)
def test_known_path_with_other_method_is_405_with_allow(
    method: str, path: str, allow: list[str]
) -> None:
    with pytest.raises(MethodNotAllowed) as info:
        tokens_router().match(method, path)
    assert info.value.status == 405
    assert info.value.allow == allow
    assert info.value.headers() == [(b"allow", ", ".join(allow).encode())]


def test_literal_segment_beats_parameter_whatever_the_order_added() -> None:
    r: Router[str] = Router()
    r.add("GET", "/t/{name}", "param")
    r.add("GET", "/t/info", "literal")
    r.add("GET", "/{a}/x", "first-param")
    r.add("GET", "/t/{b}/x", "second-param")
    assert r.match("GET", "/t/info").target == "literal"
    assert r.match("GET", "/t/other").target == "param"
    # first difference decides: literal "t" beats {a}
    assert r.match("GET", "/t/y/x").target == "second-param"
    assert r.match("GET", "/u/x").target == "first-param"


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("ci%2Ebot", "ci.bot"),
        ("ci%2ebot", "ci.bot"),
        ("a%20b", "a b"),
        ("a%2Fb", "a/b"),  # an encoded slash stays inside the segment
        ("caf%C3%A9", "café"),
        ("%25", "%"),
        ("a+b", "a+b"),  # '+' is not a space in a path
        ("%F0%9F%94%91", "\U0001f511"),
    ],
)
def test_path_parameters_are_percent_decoded(raw: str, name: str) -> None:
    r = tokens_router()
    assert r.match("GET", f"/api/v1/tokens/{raw}").params == {"name": name}
    assert r.match("GET", f"/api/v1/tokens/{raw}/reveal").params == {"name": name}


def test_literal_segments_match_after_decoding() -> None:
    r = tokens_router()
    assert r.match("GET", "/api/v1/%74okens/info").target == "info"
    assert r.match("GET", "/api/v1/tokens/%69nfo").target == "info"


@pytest.mark.parametrize("raw", ["%FF", "%C3", "a%E2%82", "%ED%A0%80"])
def test_invalid_utf8_in_path_is_400(raw: str) -> None:
    with pytest.raises(InvalidPath) as info:
        tokens_router().match("GET", f"/api/v1/tokens/{raw}")
    assert info.value.status == 400
    assert info.value.code == "invalid_path"


def test_split_path() -> None:
    assert split_path("/") == []
    assert split_path("/a/b/") == ["a", "b"]
    assert split_path("/a//b") == ["a", "", "b"]
    assert split_path("/a%2Fb/c") == ["a/b", "c"]
    with pytest.raises(NotFound):
        split_path("a/b")  # not origin-form (e.g. an absolute URI or '*')


def test_bad_patterns_and_duplicates_are_refused() -> None:
    r: Router[str] = Router()
    r.add("GET", "/a/{x}", "one")
    with pytest.raises(ValueError, match="already routed"):
        r.add("GET", "/a/{x}/", "again")
    with pytest.raises(ValueError, match="clashes"):
        r.add("POST", "/a/{y}", "renamed")
    for bad in ("a/b", "/a/{x}/{x}", "/a/{1x}", "/a/b{x}", "/a//b"):
        with pytest.raises(ValueError):
            r.add("GET", bad, "bad")


def _access(endpoint: Endpoint[Any]) -> str:
    """Who may call ``endpoint``: public, admin, token (any valid one) or pat."""
    auth = endpoint.auth
    if auth is None:
        return "public"
    assert isinstance(auth, Scoped)
    inner = auth.auth
    if isinstance(inner, TokenAuth):
        return "admin" if inner.admin_only else "token"
    assert getattr(inner, "__self__", None).__class__ is PatAuthenticator
    return "pat"


def test_the_api_router_has_every_token_endpoint() -> None:
    # nothing connects: the groups are only built and registered
    groups = default_groups(TokenStore(RedisHandle(RedisTarget("redis://127.0.0.1:1"))))
    router = build_router(lambda ex: None, groups)
    expected = {
        ("GET", f"{PREFIX}/"): "admin",
        ("POST", f"{PREFIX}"): "admin",
        ("POST", f"{PREFIX}/generate"): "admin",
        ("GET", f"{PREFIX}/info"): "token",
        ("PUT", f"{PREFIX}/email"): "token",
        ("GET", f"{PREFIX}/x"): "admin",
        ("DELETE", f"{PREFIX}/x"): "admin",
        ("GET", f"{PREFIX}/x/reveal"): "admin",
        ("GET", "/health"): "public",
        ("GET", "/api/v1/proxy/targets/"): "token",
        ("GET", "/api/v1/users/"): "admin",
        ("GET", "/public-api/me"): "pat",
    }
    for (method, path), access in expected.items():
        assert _access(router.match(method, path).target) == access, (method, path)
    # a name that a literal route shadows could never be read or deleted: it is reserved
    get_token = router.match("GET", f"{PREFIX}/x").target
    shadowed = set()
    for name in ("generate", "info", "email", "reveal", "admin", "hash"):
        try:
            if router.match("GET", f"{PREFIX}/{name}").target is not get_token:
                shadowed.add(name)
        except MethodNotAllowed:
            shadowed.add(name)
    assert shadowed == RESERVED_NAMES


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        (b'{"name": 1}', "name", "invalid_body"),
        (b'{"name": "Bad"}', "name", "invalid_body"),
        (b'{"name": ""}', "name", "invalid_body"),
        (b'{"name": "' + b"a" * 65 + b'"}', "name", "invalid_body"),
        (b'{"name": "ok", "extra": true}', "extra", "invalid_body"),
        (b"{}", "name", "invalid_body"),
        (b'{"name": "ok", "cert_email": 5}', "cert_email", "invalid_body"),
        (b'{"name": "ok", "cert_email": "nope"}', "cert_email", "invalid_body"),
        (b"[]", None, "invalid_body"),
        (b'{"name": ', None, "invalid_json"),
        (b'{"name": "ok"} trailing', None, "invalid_json"),
    ],
)
def test_body_validation_names_the_field(body: bytes, field: str | None, code: str) -> None:
    with pytest.raises(InvalidBody) as info:
        decode_json(body, CreateToken)
    assert info.value.status == 400
    assert info.value.field == field
    assert info.value.code == code


def test_valid_bodies_decode() -> None:
    doc = decode_json(b'{"name": "ci.bot-1_x", "cert_email": "ops@example.com"}', CreateToken)
    assert (doc.name, doc.cert_email) == ("ci.bot-1_x", "ops@example.com")
    assert decode_json(b'{"cert_email": null}', SetEmail).cert_email is None
    with pytest.raises(InvalidBody) as info:
        decode_json(b"{}", SetEmail)  # cert_email may be null, but must be sent
    assert info.value.field == "cert_email"
    assert "missing required field" in info.value.public_message
