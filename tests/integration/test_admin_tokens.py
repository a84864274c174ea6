"""The token-protected admin API on API_PORT: bearer auth, admin tokens, error documents.

Real edge processes, a real redis-server and a real HTTP client (http.client) or raw
sockets where the client must misbehave.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edge.auth.secrets import ADMIN_TOKEN_PATTERN, new_admin_token
from tests.api_client import assert_error, call, sha256
from tests.helpers import EdgeProcess, RedisServer, http_request, wait_for

T = "/api/v1/tokens"
EdgeFactory = Callable[..., EdgeProcess]


@pytest.fixture
def api(edge_factory: EdgeFactory, admin: str, event_loop_name: str) -> Iterator[EdgeProcess]:
    """An edge with ``admin`` as ADMIN_TOKEN, under uvloop and under asyncio."""
    yield edge_factory(ADMIN_TOKEN=admin, LOG_LEVEL="DEBUG", EDGE_LOOP=event_loop_name)


def every_redis_byte(redis_db: RedisServer) -> list[bytes]:
    """Every key and every value (whatever its type) in the test redis."""
    client = redis_db.client()
    found: list[bytes] = []
    for key in client.scan_iter(count=1000):
        found.append(key)
        kind = client.type(key)
        if kind == b"string":
            found.append(client.get(key))
        else:
            found.append(client.dump(key) or b"")
    return found


# ---------------------------------------------------------------------------- auth


def test_every_failure_is_the_same_401_with_www_authenticate(api: EdgeProcess, admin: str) -> None:
    port = api.api_port
    attempts: list[dict[str, str]] = [
        {},
        {"Authorization": f"Bearer {new_admin_token()}"},  # well-formed, unknown
        {"Authorization": f"Bearer {admin}x"},
        {"Authorization": f"Bearer {admin[:-1]}"},
        {"Authorization": f"Basic {admin}"},
        {"Authorization": admin},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {admin} extra"},
        {"Authorization": f"Bearer {'a' * 300}"},
        {"Authorization": "Bearer t\u00e9st".encode().decode("latin-1")},
        {"Authorization": f"Bearer {sha256(admin)}"},  # the stored hash is not a credential
    ]
    messages = set()
    for headers in attempts:
        for method, path in (("GET", f"{T}/"), ("GET", f"{T}/info"), ("DELETE", f"{T}/x")):
            answer = call(port, method, path, headers=headers)
            assert_error(answer, 401, "unauthorized")
            assert answer.headers["www-authenticate"] == 'Bearer realm="edge"'
            assert answer.headers["cache-control"] == "no-store"
            messages.add(answer.error["message"])
    assert len(messages) == 1  # never says which check failed
    # two Authorization headers are refused even if one is right
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            f"GET {T}/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n"
            f"Authorization: Bearer {admin}\r\n\r\n".encode()
        )
        assert s.recv(65536).startswith(b"HTTP/1.1 401 ")
    # the scheme is case-insensitive; blanks around the token are fine
    for scheme in ("bearer", "BEARER", "BeArEr"):
        answer = call(port, "GET", f"{T}/info", headers={"Authorization": f"{scheme}  {admin} "})
        assert answer.status == 200, answer.raw
    # /health needs no token; unknown paths are 404 before any authentication
    assert call(port, "GET", "/health").status == 200
    assert call(port, "GET", "/health", token="wrong").status == 200
    assert_error(call(port, "GET", "/api/v1/nothing"), 404, "not_found")


def test_admin_token_is_bootstrapped_and_replaced(
    edge_factory: EdgeFactory, redis_db: RedisServer
) -> None:
    first, second = new_admin_token(), new_admin_token()
    r = redis_db.client()
    edge = edge_factory(ADMIN_TOKEN=first, EDGE_WORKERS=2)
    record = json.loads(r.get("token:admin"))
    assert record["name"] == "admin"
    assert record["hash"] == sha256(first)
    assert record["created_by"] == "ADMIN_TOKEN"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["created_at"])
    assert r.get(f"token:hash:{sha256(first)}") == b"admin"
    assert call(edge.api_port, "GET", f"{T}/info", first).doc["name"] == "admin"
    created = call(edge.api_port, "POST", T, first, {"name": "ci"})
    assert created.status == 201
    # each worker installs it, idempotently (one of them finds nothing to change)
    wait_for(lambda: edge.stderr().count('"admin token ready"') == 2)
    edge.stop()
    ready = [json.loads(x) for x in edge.stderr().splitlines() if '"admin token ready"' in x]
    assert sorted(r["changed"] for r in ready) in ([False, True], [True, True])

    # the same value again: nothing rewritten (creation time kept)
    edge = edge_factory(ADMIN_TOKEN=first)
    assert json.loads(r.get("token:admin")) == record
    edge.stop()

    # a new value replaces the old one, whose index entry goes away
    edge = edge_factory(ADMIN_TOKEN=second)
    replaced = json.loads(r.get("token:admin"))
    assert replaced["hash"] == sha256(second)
    assert r.get(f"token:hash:{sha256(second)}") == b"admin"
    assert r.get(f"token:hash:{sha256(first)}") is None
    pointing_to_admin = [k for k in r.scan_iter("token:hash:*") if r.get(k) == b"admin"]
    assert pointing_to_admin == [f"token:hash:{sha256(second)}".encode()]
    assert_error(call(edge.api_port, "GET", f"{T}/info", first), 401, "unauthorized")
    assert call(edge.api_port, "GET", f"{T}/info", second).doc["name"] == "admin"
    # other tokens live on
    listed = call(edge.api_port, "GET", T, second).doc["tokens"]
    assert {t["name"] for t in listed} == {"admin", "ci"}
    assert call(edge.api_port, "GET", f"{T}/info", created.doc["token"]).status == 200
    edge.stop()

    # without ADMIN_TOKEN the stored admin token is left alone
    edge = edge_factory()
    assert json.loads(r.get("token:admin")) == replaced
    assert call(edge.api_port, "GET", f"{T}/info", second).status == 200


# ---------------------------------------------------------------------------- tokens


def test_token_lifecycle(edge_factory: EdgeFactory, event_loop_name: str, admin: str) -> None:
    edge = edge_factory(ADMIN_TOKEN=admin, EDGE_LOOP=event_loop_name)
    port = edge.api_port

    # create (collection with and without the trailing slash)
    created = call(port, "POST", f"{T}/", admin, {"name": "ci", "cert_email": "ops@example.com"})
    assert created.status == 201, created.raw
    doc = created.doc
    assert set(doc) == {"name", "token", "cert_email", "created_at", "created_by"}
    assert (doc["name"], doc["cert_email"], doc["created_by"]) == ("ci", "ops@example.com", "admin")
    assert re.fullmatch(ADMIN_TOKEN_PATTERN, doc["token"])
    assert created.headers["location"] == f"{T}/ci"
    assert created.headers["cache-control"] == "no-store"
    ci = doc["token"]
    second = call(port, "POST", T, admin, {"name": "deploy.bot-2"})
    assert second.status == 201
    assert second.doc["cert_email"] is None
    assert second.doc["token"] != ci

    # duplicate name
    assert_error(call(port, "POST", T, admin, {"name": "ci"}), 409, "token_exists", "name")
    assert_error(call(port, "POST", T, admin, {"name": "admin"}), 409, "token_exists", "name")

    # list: no hashes, no token values, sorted
    for path in (T, f"{T}/"):
        listed = call(port, "GET", path, admin)
        assert listed.status == 200
        tokens = listed.doc["tokens"]
        assert [t["name"] for t in tokens] == ["admin", "ci", "deploy.bot-2"]
        for t in tokens:
            assert set(t) == {"name", "cert_email", "created_at", "created_by"}
    head = call(port, "HEAD", T, admin)
    assert (head.status, head.raw) == (200, b"")
    assert head.headers["content-length"] == listed.headers["content-length"]

    # get one (percent-encoded and trailing-slash paths are the same resource)
    for path in (f"{T}/ci", f"{T}/ci/", f"{T}/%63i"):
        got = call(port, "GET", path, admin)
        assert got.status == 200
        assert got.doc == {
            "name": "ci",
            "cert_email": "ops@example.com",
            "created_at": doc["created_at"],
            "created_by": "admin",
            "hash": sha256(ci),
        }
    assert call(port, "GET", f"{T}/deploy%2Ebot-2", admin).doc["name"] == "deploy.bot-2"
    for missing in ("nobody", "hash:x", "%2A", "UPPER", "a%2Fb", "-x"):
        assert_error(call(port, "GET", f"{T}/{missing}", admin), 404, "token_not_found")

    # generate: server-picked name, body optional
    generated = call(port, "POST", f"{T}/generate", admin)
    assert generated.status == 201, generated.raw
    assert re.fullmatch(r"token-[0-9a-f]{8}", generated.doc["name"])
    with_mail = call(port, "POST", f"{T}/generate/", admin, {"cert_email": "a@b.example"})
    assert with_mail.status == 201
    assert with_mail.doc["cert_email"] == "a@b.example"
    assert with_mail.doc["name"] != generated.doc["name"]
    gen = generated.doc["token"]

    # a non-admin token: info and email on itself, 403 elsewhere
    info = call(port, "GET", f"{T}/info", ci)
    assert info.status == 200
    assert info.doc["name"] == "ci" and info.doc["hash"] == sha256(ci)
    assert "token" not in info.doc
    changed = call(port, "PUT", f"{T}/email", ci, {"cert_email": "new@example.com"})
    assert changed.status == 200
    assert changed.doc["cert_email"] == "new@example.com"
    assert call(port, "GET", f"{T}/ci", admin).doc["cert_email"] == "new@example.com"
    cleared = call(port, "PUT", f"{T}/email/", gen, {"cert_email": None})
    assert cleared.status == 200 and cleared.doc["cert_email"] is None
    # only its own record changed
    assert call(port, "GET", f"{T}/ci", admin).doc["cert_email"] == "new@example.com"
    # bad bodies name the field and change nothing; no token is a 401
    for body, field in (
        ({"cert_email": "nope"}, "cert_email"),
        ({"cert_email": 5}, "cert_email"),
        ({"cert_email": "a@b.example", "x": 1}, "x"),
        ({}, "cert_email"),
    ):
        assert_error(call(port, "PUT", f"{T}/email", ci, body), 400, "invalid_body", field)
    for body, field in (({"cert_email": "nope"}, "cert_email"), ({"name": "x"}, "name")):
        assert_error(call(port, "POST", f"{T}/generate", admin, body), 400, "invalid_body", field)
    assert call(port, "GET", f"{T}/ci", admin).doc["cert_email"] == "new@example.com"
    for method, path in (("PUT", f"{T}/email"), ("POST", f"{T}/generate")):
        answer = call(port, method, path, None, {"cert_email": "a@b.example"})
        assert_error(answer, 401, "unauthorized")
    for method, path, body in (
        ("GET", T, None),
        ("POST", T, {"name": "sneaky"}),
        ("POST", f"{T}/generate", None),
        ("GET", f"{T}/deploy.bot-2", None),
        ("GET", f"{T}/ci", None),  # not even itself: that is what info is for
        ("DELETE", f"{T}/deploy.bot-2", None),
        ("GET", f"{T}/ci/reveal", None),
    ):
        assert_error(call(port, method, path, ci, body), 403, "forbidden")
    assert call(port, "GET", f"{T}/sneaky", admin).status == 404

    # the admin can see itself too
    assert call(port, "GET", f"{T}/info", admin).doc["created_by"] == "ADMIN_TOKEN"

    # reveal: never possible
    gone = call(port, "GET", f"{T}/ci/reveal", admin)
    assert_error(gone, 410, "not_recoverable")
    assert "create a new token" in gone.error["message"]
    assert_error(call(port, "GET", f"{T}/nobody/reveal", admin), 404, "token_not_found")

    # delete
    assert_error(call(port, "DELETE", f"{T}/admin", admin), 409, "admin_token_protected")
    deleted = call(port, "DELETE", f"{T}/ci", admin)
    assert deleted.status == 204 and deleted.raw == b""
    assert "content-length" not in deleted.headers
    assert_error(call(port, "DELETE", f"{T}/ci/", admin), 404, "token_not_found")
    assert_error(call(port, "GET", f"{T}/ci", admin), 404, "token_not_found")
    assert_error(call(port, "GET", f"{T}/info", ci), 401, "unauthorized")
    names = [t["name"] for t in call(port, "GET", T, admin).doc["tokens"]]
    assert "ci" not in names and "deploy.bot-2" in names

    # 404 / 405 shape
    assert_error(call(port, "GET", "/api/v1/tokens/ci/other", admin), 404, "not_found")
    for method, path, allow in (
        ("PATCH", T, "GET, HEAD, POST"),
        ("PUT", f"{T}/x", "DELETE, GET, HEAD"),
        ("GET", f"{T}/generate", "POST"),
        ("DELETE", f"{T}/info", "GET, HEAD"),
        ("POST", "/health", "GET, HEAD"),
    ):
        answer = call(port, method, path, admin)
        assert_error(answer, 405, "method_not_allowed")
        assert answer.headers["allow"] == allow


def test_deleting_removes_the_record_and_its_index(
    api: EdgeProcess, admin: str, redis_db: RedisServer
) -> None:
    r = redis_db.client()
    made = call(api.api_port, "POST", T, admin, {"name": "temp"}).doc
    assert json.loads(r.get("token:temp"))["hash"] == sha256(made["token"])
    assert r.get(f"token:hash:{sha256(made['token'])}") == b"temp"
    assert call(api.api_port, "DELETE", f"{T}/temp", admin).status == 204
    assert r.get("token:temp") is None
    assert r.get(f"token:hash:{sha256(made['token'])}") is None
    assert sorted(r.scan_iter("token:*")) == [
        b"token:admin",
        f"token:hash:{sha256(admin)}".encode(),
    ]


# ---------------------------------------------------------------------------- bad input


INVALID_CREATE: list[tuple[dict[str, Any], str]] = [
    ({"name": "Bad Name"}, "name"),
    ({"name": ""}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"name": "-leading"}, "name"),
    ({"name": "a:b"}, "name"),
    ({"name": "info"}, "name"),  # reserved: /tokens/info is another endpoint
    ({"name": "generate"}, "name"),
    ({"name": "email"}, "name"),
    ({"name": 7}, "name"),
    ({"name": None}, "name"),
    ({}, "name"),
    ({"name": "ok", "owner": "me"}, "owner"),
    ({"name": "ok", "cert_email": "not-an-email"}, "cert_email"),
    ({"name": "ok", "cert_email": ["a@b.c"]}, "cert_email"),
]


def test_invalid_create_bodies_are_400_naming_the_field(api: EdgeProcess, admin: str) -> None:
    for body, field in INVALID_CREATE:
        answer = call(api.api_port, "POST", T, admin, body)
        assert_error(answer, 400, "invalid_body", field)
    assert [t["name"] for t in call(api.api_port, "GET", T, admin).doc["tokens"]] == ["admin"]
    # the rules are said in words, not as a regex
    bad = call(api.api_port, "POST", T, admin, {"name": "Bad"}).error["message"]
    assert "1 to 64 characters" in bad and "regex" not in bad


def test_malformed_and_misdeclared_bodies(api: EdgeProcess, admin: str) -> None:
    port = api.api_port
    for raw in (b"{", b'{"name": "x",}', b"\xff\xfe", b'{"name": "x"} {}'):
        assert_error(call(port, "POST", T, admin, raw=raw), 400, "invalid_json")
    assert_error(call(port, "POST", T, admin, raw=b"[1]"), 400, "invalid_body")
    assert_error(call(port, "POST", T, admin, raw=b'"x"'), 400, "invalid_body")
    # a body is required to create, optional to generate
    assert_error(call(port, "POST", T, admin), 400, "invalid_body")
    assert_error(call(port, "PUT", f"{T}/email", admin), 400, "invalid_body")
    assert_error(
        call(port, "PUT", f"{T}/email", admin, {"cert_email": 1}), 400, "invalid_body", "cert_email"
    )
    # a body must be declared as JSON
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx", None):
        answer = call(port, "POST", T, admin, {"name": "typed"}, content_type=ctype)
        assert_error(answer, 415, "unsupported_media_type")
    for ctype in ("application/json; charset=utf-8", "Application/JSON", "application/x+json"):
        name = f"typed{len(ctype)}"
        assert call(port, "POST", T, admin, {"name": name}, content_type=ctype).status == 201
    assert call(port, "POST", f"{T}/generate", admin, raw=b"", content_type=None).status == 201
    # unauthenticated: 401 before the body or its type is looked at
    assert_error(
        call(port, "POST", T, None, raw=b"{", content_type="text/plain"), 401, "unauthorized"
    )


def test_oversized_bodies_are_413(api: EdgeProcess, admin: str) -> None:
    port = api.api_port
    limit = 1 << 20
    head = f"POST {T}/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n"
    head += "Content-Type: application/json\r\n"
    # declared too large: refused before a body byte is read (the client may be waiting for
    # 100 Continue and has sent nothing)
    for extra in ("", "Expect: 100-continue\r\n"):
        raw = http_request(
            port,
            f"{head}{extra}Content-Length: {limit + 1}\r\n\r\n".encode(),
            read_until_close=True,
        )
        status_line, _, rest = raw.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 413 "), raw[:200]
        assert b"\r\nconnection: close\r\n" in rest.lower()
        assert b"100 Continue" not in raw
        assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"]["code"] == "payload_too_large"
    # chunked: refused once the limit is crossed (by the last byte sent, so that nothing is
    # left unread when the edge closes: unread bytes would turn its FIN into a RST)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        piece = b"x" * 65536
        for _ in range(limit // len(piece)):
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        s.sendall(b"1\r\nx\r\n")
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
        answer = b"".join(chunks)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"connection: close" in answer.lower()
    # exactly at the limit is fine (the body is then invalid JSON, not too large)
    body = b" " * (limit - len(b'{"name":"big"}')) + b'{"name":"big"}'
    assert call(port, "POST", T, admin, raw=body).status == 201
    assert call(port, "GET", f"{T}/big", admin).status == 200


# ---------------------------------------------------------------------------- secrets


def test_token_values_are_never_stored_nor_logged(
    api: EdgeProcess, admin: str, redis_db: RedisServer
) -> None:
    port = api.api_port
    values = [admin]
    values.append(call(port, "POST", T, admin, {"name": "one"}).doc["token"])
    values.append(call(port, "POST", f"{T}/generate", admin).doc["token"])
    # use them, fail with them, send them where they do not belong
    for value in values:
        assert call(port, "GET", f"{T}/info", value).status == 200
        assert call(port, "GET", f"{T}/info", value + "x").status == 401
        # (in a query: the access log has paths only. A token put in the path itself would be
        # logged, as any path is.)
        assert call(port, "GET", f"{T}/one/x?token={value}", value).status == 404
        assert call(port, "POST", T, admin, {"name": "x", value: 1}).status == 400
        assert call(port, "POST", T, value[:-2], raw=value.encode()).status == 401
    assert call(port, "PUT", f"{T}/email", values[1], {"cert_email": "a@b.example"}).status == 200
    wait_for(lambda: len(api.access_log()) >= 18)
    api.stop()
    stored = every_redis_byte(redis_db)
    assert stored
    for value in values:
        secret_part = value.removeprefix("edge_").encode()
        assert not any(secret_part in blob for blob in stored)
        assert secret_part.decode() not in api.stdout()
        assert secret_part.decode() not in api.stderr()
        assert sha256(value).encode() in b"".join(stored)  # what is stored instead
    # the access log has the paths it should, and no queries
    assert any(r["path"] == f"{T}/info" for r in api.access_log())


@pytest.mark.edge_errors(r'"api handler failed".*CorruptRecord: token:broken')
def test_handler_failure_is_a_generic_500(
    api: EdgeProcess, admin: str, redis_db: RedisServer
) -> None:
    redis_db.client().set("token:broken", b'{"name": "broken", "secret_detail": "xyzzy"}')
    answer = call(api.api_port, "GET", f"{T}/broken", admin)
    assert_error(answer, 500, "internal_error")
    assert answer.error["message"] == "internal error"
    assert b"xyzzy" not in answer.raw and b"token:broken" not in answer.raw
    rid = answer.error["request_id"]
    wait_for(lambda: rid in api.stderr())
    logged = [json.loads(line) for line in api.stderr().splitlines() if rid in line]
    assert any(r["message"] == "api handler failed" and r["level"] == "error" for r in logged)
    # a corrupt record is skipped by the list, and never authenticates
    names = [t["name"] for t in call(api.api_port, "GET", T, admin).doc["tokens"]]
    assert names == ["admin"]


def test_redis_down_is_503(api: EdgeProcess, admin: str, redis_db: RedisServer) -> None:
    assert call(api.api_port, "GET", f"{T}/info", admin).status == 200
    redis_db.stop()
    for path in (f"{T}/info", T):
        answer = call(api.api_port, "GET", path, admin)
        assert_error(answer, 503, "redis_unavailable")
    assert call(api.api_port, "GET", "/health").status == 200  # degraded, still serving
    redis_db.start()
    # the restarted redis is empty: the edge stores the admin token again by itself
    wait_for(lambda: call(api.api_port, "GET", f"{T}/info", admin).status == 200, timeout=15)
    assert "admin token missing from redis; storing it again" in api.stderr()
    assert admin not in api.stderr() + api.stdout()


def test_admin_token_stored_once_redis_comes_up(
    edge_factory: EdgeFactory, admin: str, redis_db: RedisServer
) -> None:
    redis_db.stop()
    edge = edge_factory(ADMIN_TOKEN=admin, EDGE_WORKERS=2)
    assert_error(call(edge.api_port, "GET", f"{T}/info", admin), 503, "redis_unavailable")
    assert call(edge.api_port, "GET", "/health").status == 200
    redis_db.start()
    wait_for(lambda: call(edge.api_port, "GET", f"{T}/info", admin).status == 200, timeout=15)
    record = json.loads(redis_db.client().get("token:admin"))
    assert record["hash"] == sha256(admin) and record["created_by"] == "ADMIN_TOKEN"
    assert "admin token not stored yet; retrying" in edge.stderr()
    assert admin not in edge.stderr() + edge.stdout()
