"""Users, projects, members and personal access tokens (PATs) on a real edge and real Redis.

The admin endpoints (``/api/v1/users``, ``/api/v1/projects``, members) answer like the rest
of the admin API; the PAT endpoints and ``/public-api/me`` answer in the
``{"data": ..., "errors": ...}`` envelope.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from argon2 import PasswordHasher

from edge.auth.pat import PAT_REGEX
from edge.auth.secrets import BASE58_ALPHABET
from tests.api_client import Answer, call
from tests.api_client import assert_error as assert_admin_error
from tests.api_client import forge_pat as forge
from tests.helpers import EdgeProcess, Monitor, RedisServer, Upstream, proxy_doc, wait_for

USERS = "/api/v1/users"
PROJECTS = "/api/v1/projects"
ME = "/public-api/me"
EdgeFactory = Callable[..., EdgeProcess]
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
PAT_FIELDS = {
    "id",
    "user_id",
    "project_id",
    "name",
    "token_prefix",
    "status",
    "expires_at",
    "last_used_at",
    "created_at",
    "revoked_at",
}


def assert_envelope_error(
    answer: Answer, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    """The envelope: no data, one error with code, message and field."""
    assert answer.status == status, (answer.status, answer.raw)
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    doc = answer.doc
    assert set(doc) == {"data", "errors"}, doc
    assert doc["data"] is None
    [error] = doc["errors"]
    assert set(error) == {"code", "message", "field", "request_id"}, error
    assert error["request_id"] == answer.headers["x-request-id"]
    assert error["code"] == code, error
    assert error["field"] == field, error
    assert isinstance(error["message"], str) and error["message"]
    if status == 401:
        assert answer.headers["www-authenticate"] == 'Bearer realm="edge"'
    return error  # type: ignore[no-any-return]


def mistype(token: str, position: int) -> str:
    """``token`` with the base58 character at ``position`` replaced by another one."""
    old = token[position]
    new = BASE58_ALPHABET[(BASE58_ALPHABET.index(old) + 1) % 58]
    return token[:position] + new + token[position + 1 :]


def every_redis_byte(redis_db: RedisServer) -> list[bytes]:
    client = redis_db.client()
    found: list[bytes] = []
    for key in client.scan_iter(count=1000):
        found.append(key)
        if client.type(key) == b"string":
            found.append(client.get(key) or b"")
        else:
            found.append(client.dump(key) or b"")
    return found


def in_future(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


class Api:
    """An edge with an admin token, and shortcuts for the people endpoints."""

    def __init__(self, edge: EdgeProcess, admin: str) -> None:
        self.edge = edge
        self.admin = admin
        self.port = edge.api_port
        self._n = 0

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> Answer:
        return call(self.port, method, path, self.admin, body, **kw)

    def user(self, name: str = "Ann") -> str:
        self._n += 1
        answer = self("POST", USERS, {"name": name, "email": f"user{self._n}@example.com"})
        assert answer.status == 201, answer.raw
        return str(answer.doc["id"])

    def project(self, name: str | None = None) -> str:
        self._n += 1
        answer = self("POST", PROJECTS, {"name": name or f"project-{self._n}"})
        assert answer.status == 201, answer.raw
        return str(answer.doc["id"])

    def member(self, pid: str, uid: str, role: str = "owner", accepted: bool = True) -> Answer:
        answer = self(
            "PUT", f"{PROJECTS}/{pid}/members/{uid}", {"role": role, "accepted": accepted}
        )
        assert answer.status in (200, 201), answer.raw
        return answer

    def team(self, role: str = "owner") -> tuple[str, str]:
        """A new project with a new user as an accepted member: (pid, uid)."""
        pid, uid = self.project(), self.user()
        self.member(pid, uid, role)
        return pid, uid

    def create_pat(self, pid: str, uid: str, name: str = "laptop", **fields: Any) -> Answer:
        return self("POST", f"{PROJECTS}/{pid}/tokens", {"user_id": uid, "name": name, **fields})

    def pat(self, pid: str, uid: str, name: str = "laptop", **fields: Any) -> dict[str, Any]:
        answer = self.create_pat(pid, uid, name, **fields)
        assert answer.status == 201, answer.raw
        return answer.data  # type: ignore[no-any-return]

    def pats(self, pid: str, uid: str) -> list[dict[str, Any]]:
        answer = self("GET", f"{PROJECTS}/{pid}/tokens?user_id={uid}")
        assert answer.status == 200, answer.raw
        return answer.data  # type: ignore[no-any-return]

    def revoke(self, pid: str, tid: str, uid: str) -> Answer:
        return self("DELETE", f"{PROJECTS}/{pid}/tokens/{tid}?user_id={uid}")

    def me(self, token: str, **kw: Any) -> Answer:
        return call(self.port, "GET", ME, token, **kw)


@pytest.fixture
def api(edge_factory: EdgeFactory, admin: str) -> Iterator[Api]:
    edge = edge_factory(ADMIN_TOKEN=admin, LOG_LEVEL="DEBUG", PAT_LAST_USED_FLUSH_INTERVAL="0.5")
    yield Api(edge, admin)


# ---------------------------------------------------------------------------- admin API


def test_users(api: Api, redis_db: RedisServer) -> None:
    created = api("POST", f"{USERS}/", {"name": "Ann Lee", "email": "Ann@Example.com"})
    assert created.status == 201, created.raw
    user = created.doc
    assert set(user) == {"id", "name", "email", "created_at"}
    assert re.fullmatch(r"u_[1-9A-HJ-NP-Za-km-z]{12}", user["id"])
    assert (user["name"], user["email"]) == ("Ann Lee", "Ann@Example.com")
    assert ISO.fullmatch(user["created_at"])
    assert created.headers["location"] == f"{USERS}/{user['id']}"
    r = redis_db.client()
    assert json.loads(r.get(f"user:{user['id']}")) == user
    assert r.get("user:email:ann@example.com") == user["id"].encode()

    # the e-mail address is unique, whatever its case
    assert_admin_error(
        api("POST", USERS, {"name": "Other", "email": "ann@EXAMPLE.com"}),
        409,
        "email_taken",
        "email",
    )
    other = api("POST", USERS, {"name": "Bob", "email": "bob@example.com"}).doc

    listed = api("GET", USERS).doc["users"]
    assert sorted(u["id"] for u in listed) == sorted([user["id"], other["id"]])
    got = api("GET", f"{USERS}/{user['id']}")
    assert got.doc == {**user, "projects": []}

    # strict bodies, the field named
    bad: list[tuple[Any, str | None, str]] = [
        ({"name": "x"}, "email", "invalid_body"),
        ({"email": "c@example.com"}, "name", "invalid_body"),
        ({"name": "x", "email": "not-an-email"}, "email", "invalid_body"),
        ({"name": "", "email": "c@example.com"}, "name", "invalid_body"),
        ({"name": "   ", "email": "c@example.com"}, "name", "invalid_body"),
        ({"name": "a\nb", "email": "c@example.com"}, "name", "invalid_body"),
        ({"name": "x" * 101, "email": "c@example.com"}, "name", "invalid_body"),
        ({"name": 5, "email": "c@example.com"}, "name", "invalid_body"),
        ({"name": "x", "email": "c@example.com", "role": "admin"}, "role", "invalid_body"),
        ([], None, "invalid_body"),
    ]
    for body, field, code in bad:
        assert_admin_error(api("POST", USERS, body), 400, code, field)
    assert_admin_error(api("POST", USERS, raw=b"{nope"), 400, "invalid_json")
    assert_admin_error(api("POST", USERS, raw=b""), 400, "invalid_body")

    # unknown ids are 404 (a malformed one without asking Redis)
    for uid in ("u_111111111111", "nope", "user:ids", "*"):
        assert_admin_error(api("GET", f"{USERS}/{uid}"), 404, "user_not_found")
    assert len(api("GET", USERS).doc["users"]) == 2


def test_projects_and_members(api: Api, redis_db: RedisServer) -> None:
    created = api("POST", PROJECTS, {"name": "shop"})
    assert created.status == 201, created.raw
    project = created.doc
    pid = project["id"]
    assert set(project) == {"id", "name", "created_at"}
    assert re.fullmatch(r"p_[1-9A-HJ-NP-Za-km-z]{12}", pid)
    assert created.headers["location"] == f"{PROJECTS}/{pid}"
    assert_admin_error(api("POST", PROJECTS, {"name": "shop"}), 409, "project_exists", "name")
    for body, field in (
        ({"name": "Shop"}, "name"),
        ({"name": "a b"}, "name"),
        ({"name": ""}, "name"),
        ({}, "name"),
        ({"name": "ok", "owner": "x"}, "owner"),
    ):
        assert_admin_error(api("POST", PROJECTS, body), 400, "invalid_body", field)
    assert [p["id"] for p in api("GET", f"{PROJECTS}/").doc["projects"]] == [pid]

    uid = api.user()
    member = f"{PROJECTS}/{pid}/members/{uid}"
    put = api("PUT", member, {"role": "viewer"})
    assert put.status == 201, put.raw
    assert put.doc["role"] == "viewer" and put.doc["accepted"] is False  # an invitation
    again = api("PUT", member, {"role": "maintainer", "accepted": True})
    assert again.status == 200
    assert (again.doc["role"], again.doc["accepted"]) == ("maintainer", True)
    assert again.doc["created_at"] == put.doc["created_at"]
    r = redis_db.client()
    stored = json.loads(r.get(f"project:{pid}:member:{uid}"))
    assert (stored["role"], stored["accepted"]) == ("maintainer", True)
    assert r.smembers(f"user:{uid}:projects") == {pid.encode()}
    assert r.smembers(f"project:{pid}:members") == {uid.encode()}
    assert [m["user_id"] for m in api("GET", f"{PROJECTS}/{pid}").doc["members"]] == [uid]
    assert [m["project_id"] for m in api("GET", f"{USERS}/{uid}").doc["projects"]] == [pid]

    for body, field in (
        ({"role": "admin", "accepted": True}, "role"),
        ({"accepted": True}, "role"),
        ({"role": "owner", "accepted": "yes"}, "accepted"),
        ({"role": "owner", "extra": 1}, "extra"),
    ):
        assert_admin_error(api("PUT", member, body), 400, "invalid_body", field)
    ghost_user, ghost_project = "u_111111111111", "p_111111111111"
    body = {"role": "owner", "accepted": True}
    assert_admin_error(
        api("PUT", f"{PROJECTS}/{pid}/members/{ghost_user}", body), 404, "user_not_found"
    )
    assert_admin_error(
        api("PUT", f"{PROJECTS}/{ghost_project}/members/{uid}", body), 404, "project_not_found"
    )
    assert_admin_error(api("PUT", f"{PROJECTS}/bad/members/{uid}", body), 404, "project_not_found")
    assert_admin_error(api("GET", f"{PROJECTS}/{ghost_project}"), 404, "project_not_found")

    deleted = api("DELETE", member)
    assert deleted.status == 204 and deleted.raw == b""
    assert r.get(f"project:{pid}:member:{uid}") is None
    assert r.smembers(f"user:{uid}:projects") == set()
    assert r.smembers(f"project:{pid}:members") == set()
    assert_admin_error(api("DELETE", member), 404, "member_not_found")
    assert_admin_error(
        api("DELETE", f"{PROJECTS}/{pid}/members/{ghost_user}"), 404, "user_not_found"
    )
    assert_admin_error(
        api("DELETE", f"{PROJECTS}/{ghost_project}/members/{uid}"), 404, "project_not_found"
    )


def test_a_project_keeps_an_accepted_owner(api: Api, redis_db: RedisServer) -> None:
    r = redis_db.client()
    pid, first = api.team("owner")
    member = f"{PROJECTS}/{pid}/members/{{}}"
    stored = r.get(f"project:{pid}:member:{first}")
    # the only owner can be neither demoted, nor left unaccepted, nor removed
    for method, body in (
        ("PUT", {"role": "maintainer", "accepted": True}),
        ("PUT", {"role": "owner", "accepted": False}),
        ("DELETE", None),
    ):
        answer = api(method, member.format(first), body)
        assert_admin_error(answer, 409, "last_owner")
        assert r.get(f"project:{pid}:member:{first}") == stored
    # an invited (not accepted) owner does not count
    second = api.user("Bob")
    api.member(pid, second, "owner", accepted=False)
    assert_admin_error(api("DELETE", member.format(first)), 409, "last_owner")
    # once the second owner has accepted, the first can step down, then leave
    api.member(pid, second, "owner")
    assert api.member(pid, first, "viewer").doc["role"] == "viewer"
    assert_admin_error(api("DELETE", member.format(second)), 409, "last_owner")
    assert api("DELETE", member.format(first)).status == 204
    # a project that never had an owner takes other members freely
    empty = api.project()
    viewer = api.user("Cy")
    assert api.member(empty, viewer, "viewer").status == 201
    assert api("DELETE", member.replace(pid, empty).format(viewer)).status == 204


def test_two_owners_demoting_each_other_at_once_leave_one(api: Api, redis_db: RedisServer) -> None:
    r = redis_db.client()

    def step_down(path: str) -> Answer:
        return api("PUT", path, {"role": "viewer", "accepted": True})

    for _ in range(10):
        pid, a = api.team("owner")
        b = api.user("Bob")
        api.member(pid, b, "owner")
        paths = [f"{PROJECTS}/{pid}/members/{uid}" for uid in (a, b)]
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(step_down, paths))
        assert sorted(x.status for x in answers) == [200, 409], [x.raw for x in answers]
        roles = [json.loads(r.get(f"project:{pid}:member:{u}"))["role"] for u in (a, b)]
        assert sorted(roles) == ["owner", "viewer"]


def test_people_endpoints_need_the_admin_token(api: Api) -> None:
    pid, uid = api.team()
    token = api.pat(pid, uid)["token"]
    other = api("POST", "/api/v1/tokens", {"name": "ci"}).doc["token"]
    admin_paths = [
        ("GET", USERS),
        ("POST", USERS),
        ("GET", f"{USERS}/{uid}"),
        ("GET", PROJECTS),
        ("POST", PROJECTS),
        ("GET", f"{PROJECTS}/{pid}"),
        ("PUT", f"{PROJECTS}/{pid}/members/{uid}"),
        ("DELETE", f"{PROJECTS}/{pid}/members/{uid}"),
    ]
    for method, path in admin_paths:
        assert_admin_error(call(api.port, method, path), 401, "unauthorized")
        assert_admin_error(call(api.port, method, path, token), 401, "unauthorized")  # a PAT
        assert_admin_error(call(api.port, method, path, other), 403, "forbidden")
    # nor does a PAT open any other admin endpoint, as a bearer token or bare
    for path in ("/api/v1/proxy/targets/", "/api/v1/tokens/info", "/api/v1/routes/"):
        assert_admin_error(call(api.port, "GET", path, token), 401, "unauthorized")
        assert_admin_error(call(api.port, "GET", path, authorization=token), 401, "unauthorized")
        assert call(api.port, "GET", path, other).status == 200  # the same path, a real token
    # the PAT endpoints: the same checks, in the envelope
    pat_paths = [
        ("GET", f"{PROJECTS}/{pid}/tokens?user_id={uid}"),
        ("POST", f"{PROJECTS}/{pid}/tokens"),
        ("DELETE", f"{PROJECTS}/{pid}/tokens/t_111111111111?user_id={uid}"),
    ]
    for method, path in pat_paths:
        assert_envelope_error(call(api.port, method, path), 401, "unauthorized")
        assert_envelope_error(call(api.port, method, path, token), 401, "unauthorized")
        assert_envelope_error(call(api.port, method, path, other), 403, "forbidden")
    # /public-api/me takes a PAT and nothing else
    assert_envelope_error(call(api.port, "GET", ME, api.admin), 401, "unauthorized")
    assert_envelope_error(call(api.port, "GET", ME, other), 401, "unauthorized")
    assert api.me(token).status == 200


# ---------------------------------------------------------------------------- PATs


def test_pat_lifecycle(api: Api, redis_db: RedisServer) -> None:
    pid, uid = api.team("maintainer")
    created = api.create_pat(pid, uid, "ci laptop")
    assert created.status == 201, created.raw
    assert created.headers["cache-control"] == "no-store"
    doc = created.doc
    assert set(doc) == {"data", "errors"} and doc["errors"] is None
    pat = doc["data"]
    assert set(pat) == PAT_FIELDS | {"token"}
    token = pat["token"]
    assert PAT_REGEX.fullmatch(token)
    assert re.fullmatch(r"t_[1-9A-HJ-NP-Za-km-z]{12}", pat["id"])
    assert (pat["user_id"], pat["project_id"], pat["name"]) == (uid, pid, "ci laptop")
    assert pat["token_prefix"] == token[5:13]
    assert (pat["status"], pat["expires_at"], pat["last_used_at"], pat["revoked_at"]) == (
        "active",
        None,
        None,
        None,
    )
    assert ISO.fullmatch(pat["created_at"])

    # Redis: the Argon2id PHC hash and the prefix, never the token
    r = redis_db.client()
    stored = json.loads(r.get(f"pat:{pat['id']}"))
    assert set(stored) == PAT_FIELDS - {"status"} | {"token_hash"}
    assert stored["token_hash"].startswith("$argon2id$v=19$")
    assert PasswordHasher().verify(stored["token_hash"], token)
    assert stored["token_prefix"] == pat["token_prefix"]
    assert r.smembers(f"pat:prefix:{pat['token_prefix']}") == {pat["id"].encode()}
    assert r.smembers(f"pat:owner:{pid}:{uid}") == {pat["id"].encode()}

    # use it: bare or as a bearer token
    for answer in (
        api.me(token),
        call(api.port, "GET", ME, authorization=token),
        call(api.port, "GET", ME, authorization=f"bearer  {token} "),
        call(api.port, "HEAD", ME, token),
    ):
        assert answer.status == 200, answer.raw
    me = api.me(token).data
    user = api("GET", f"{USERS}/{uid}").doc
    project = api("GET", f"{PROJECTS}/{pid}").doc
    assert me == {
        "user": {k: user[k] for k in ("id", "name", "email", "created_at")},
        "project": {k: project[k] for k in ("id", "name", "created_at")},
        "role": "maintainer",
        "token": {"id": pat["id"], "name": "ci laptop", "expires_at": None},
    }
    # a role change applies to the next request
    api.member(pid, uid, "viewer")
    assert api.me(token).data["role"] == "viewer"

    # the listing: never the token nor its hash
    [listed] = api.pats(pid, uid)
    assert set(listed) == PAT_FIELDS
    assert token not in json.dumps(listed) and "argon2" not in json.dumps(listed)
    assert listed["last_used_at"] is not None  # the recent use, even before the flush

    # revoke: the token stops working at once; the record stays, marked
    revoked = api.revoke(pid, pat["id"], uid)
    assert revoked.status == 200, revoked.raw
    assert revoked.data["status"] == "revoked" and ISO.fullmatch(revoked.data["revoked_at"])
    assert_envelope_error(api.me(token), 401, "unauthorized")
    again = api.revoke(pid, pat["id"], uid)  # idempotent, the first time kept
    assert again.data["revoked_at"] == revoked.data["revoked_at"]
    assert [p["status"] for p in api.pats(pid, uid)] == ["revoked"]
    assert json.loads(r.get(f"pat:{pat['id']}"))["revoked_at"] == revoked.data["revoked_at"]
    assert r.smembers(f"pat:prefix:{pat['token_prefix']}") == set()


def test_envelope_errors(api: Api) -> None:
    pid, uid = api.team()
    tokens = f"{PROJECTS}/{pid}/tokens"
    for body, field in (
        ({"name": "x"}, "user_id"),
        ({"user_id": uid}, "name"),
        ({"user_id": "bob", "name": "x"}, "user_id"),
        ({"user_id": uid, "name": ""}, "name"),
        ({"user_id": uid, "name": " "}, "name"),
        ({"user_id": uid, "name": "x" * 101}, "name"),
        ({"user_id": uid, "name": "x", "scopes": []}, "scopes"),
        ({"user_id": uid, "name": "x", "expires_at": "tomorrow"}, "expires_at"),
        ({"user_id": uid, "name": "x", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({"user_id": uid, "name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"user_id": uid, "name": "x", "expires_at": 5}, "expires_at"),
    ):
        assert_envelope_error(api("POST", tokens, body), 400, "invalid_body", field)
    assert_envelope_error(api("POST", tokens, raw=b"{"), 400, "invalid_json")
    big = b'{"user_id": "' + b"u" * (1 << 20) + b'", "name": "x"}'
    assert_envelope_error(api("POST", tokens, raw=big), 413, "payload_too_large")
    assert api.pats(pid, uid) == []
    assert_envelope_error(
        api("POST", tokens, {"user_id": uid, "name": "x"}, content_type="text/plain"),
        415,
        "unsupported_media_type",
    )
    # the acting user, in the query
    for query, field in (
        ("", "user_id"),
        ("?user_id=", "user_id"),
        (f"?user_id={uid}&user_id={uid}", "user_id"),
        (f"?user_id={uid}&all=1", "all"),
        ("?user_id=bob", "user_id"),
    ):
        assert_envelope_error(api("GET", tokens + query), 400, "invalid_query", field)
    ghost_user, ghost_project = "u_111111111111", "p_111111111111"
    assert_envelope_error(api("GET", f"{tokens}?user_id={ghost_user}"), 404, "user_not_found")
    assert_envelope_error(
        api("GET", f"{PROJECTS}/{ghost_project}/tokens?user_id={uid}"), 404, "project_not_found"
    )
    assert_envelope_error(
        api("POST", f"{PROJECTS}/{ghost_project}/tokens", {"user_id": uid, "name": "x"}),
        404,
        "project_not_found",
    )
    assert_envelope_error(
        api("POST", tokens, {"user_id": ghost_user, "name": "x"}), 404, "user_not_found"
    )
    for tid in ("t_111111111111", "nope"):
        assert_envelope_error(api.revoke(pid, tid, uid), 404, "token_not_found")
    # a token of another project is not found through this one
    pid2, uid2 = api.team()
    elsewhere = api.pat(pid2, uid2)
    api.member(pid, uid2, "owner")
    assert_envelope_error(api.revoke(pid, elsewhere["id"], uid2), 404, "token_not_found")
    # the router's own 404/405 keep the standard document (no endpoint ran)
    assert_admin_error(api("PUT", tokens), 405, "method_not_allowed")
    # HEAD answers like GET, without a body
    head, get = api("HEAD", f"{tokens}?user_id={uid}"), api("GET", f"{tokens}?user_id={uid}")
    assert (head.status, head.raw) == (200, b"")
    assert head.headers["content-length"] == get.headers["content-length"] != "0"


def test_non_members_get_no_tokens(api: Api, redis_db: RedisServer) -> None:
    pid = api.project()
    outsider, invited, member = api.user(), api.user(), api.user()
    api.member(pid, invited, "owner", accepted=False)
    api.member(pid, member, "viewer")
    for uid in (outsider, invited):
        assert_envelope_error(api.create_pat(pid, uid), 403, "not_a_member")
        assert_envelope_error(
            api("GET", f"{PROJECTS}/{pid}/tokens?user_id={uid}"), 403, "not_a_member"
        )
    assert redis_db.client().keys("pat:*") == []

    # removing a member revokes their tokens (re-adding them does not bring them back)
    pat = api.pat(pid, member)
    assert api.me(pat["token"]).status == 200
    assert api("DELETE", f"{PROJECTS}/{pid}/members/{member}").status == 204
    assert_envelope_error(api.me(pat["token"]), 401, "unauthorized")
    stored = json.loads(redis_db.client().get(f"pat:{pat['id']}"))
    assert stored["revoked_at"] is not None
    api.member(pid, member, "viewer")
    assert_envelope_error(api.me(pat["token"]), 401, "unauthorized")
    assert [p["status"] for p in api.pats(pid, member)] == ["revoked"]

    # an accepted member demoted to a pending invitation: the token stops working
    fresh = api.pat(pid, member)
    assert api.me(fresh["token"]).status == 200
    api.member(pid, member, "viewer", accepted=False)
    assert_envelope_error(api.me(fresh["token"]), 401, "unauthorized")
    api.member(pid, member, "viewer", accepted=True)
    assert api.me(fresh["token"]).status == 200


def test_who_may_revoke(api: Api) -> None:
    pid = api.project()
    owner, maintainer, viewer = api.user(), api.user(), api.user()
    api.member(pid, owner, "owner")
    api.member(pid, maintainer, "maintainer")
    api.member(pid, viewer, "viewer")
    mine = api.pat(pid, viewer)
    theirs = api.pat(pid, maintainer)
    # another member that is not a project owner: 403
    error = assert_envelope_error(api.revoke(pid, theirs["id"], viewer), 403, "forbidden")
    assert "owner" in error["message"]
    assert_envelope_error(api.revoke(pid, mine["id"], maintainer), 403, "forbidden")
    assert api.me(mine["token"]).status == 200
    # the token's owner, whatever the role
    assert api.revoke(pid, mine["id"], viewer).status == 200
    # a project owner, for anyone's token
    assert api.revoke(pid, theirs["id"], owner).status == 200
    assert_envelope_error(api.me(theirs["token"]), 401, "unauthorized")
    # a non-member may not act at all
    outsider = api.user()
    assert_envelope_error(api.revoke(pid, theirs["id"], outsider), 403, "not_a_member")


def test_expiry_and_the_active_token_limit(api: Api, redis_db: RedisServer) -> None:
    pid, uid = api.team()
    later = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    offset = later.astimezone(timezone(timedelta(hours=2))).isoformat()  # any offset, stored in UTC
    dated = api.pat(pid, uid, "dated", expires_at=offset)
    assert dated["expires_at"] == later.isoformat().replace("+00:00", "Z")
    others = [api.pat(pid, uid, f"t{i}") for i in range(8)]
    # the short-lived one last, so that it is still active when the limit is checked below
    # however long the creations above took on a busy machine
    expiring = api.pat(pid, uid, "short", expires_at=in_future(2.5))
    assert ISO.fullmatch(expiring["expires_at"])
    assert api.me(expiring["token"]).data["token"]["expires_at"] == expiring["expires_at"]
    tokens = [expiring, dated, *others]
    assert len(tokens) == 10

    # the 11th active token is refused, the list unchanged
    refused = api.create_pat(pid, uid, "eleventh")
    error = assert_envelope_error(refused, 409, "token_limit_reached")
    assert "10" in error["message"]
    assert len(api.pats(pid, uid)) == 10
    # the limit is per user and project
    other = api.user()
    api.member(pid, other, "viewer")
    assert api.create_pat(pid, other).status == 201

    # once expired: 401 (even though this worker cached its verification), and a free slot
    wait_for(lambda: api.me(expiring["token"]).status == 401, timeout=6, interval=0.2)
    assert_envelope_error(api.me(expiring["token"]), 401, "unauthorized")
    assert [p["status"] for p in api.pats(pid, uid)].count("expired") == 1
    assert api.create_pat(pid, uid, "eleventh").status == 201
    assert_envelope_error(api.create_pat(pid, uid, "twelfth"), 409, "token_limit_reached")
    # revoking frees a slot too
    assert api.revoke(pid, tokens[3]["id"], uid).status == 200
    assert api.create_pat(pid, uid, "twelfth").status == 201

    # concurrent creations never exceed the limit (one transaction checks and writes)
    pid2, uid2 = api.team()
    for i in range(7):
        api.pat(pid2, uid2, f"c{i}")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: api.create_pat(pid2, uid2, f"race{i}"), range(8)))
    assert sorted(a.status for a in answers) == [201] * 3 + [409] * 5
    assert len(api.pats(pid2, uid2)) == 10


def test_revocation_reaches_every_worker_at_once(edge_factory: EdgeFactory, admin: str) -> None:
    edge = edge_factory(ADMIN_TOKEN=admin, EDGE_WORKERS=2)
    api = Api(edge, admin)
    pid, uid = api.team()
    pat = api.pat(pid, uid)
    token = pat["token"]

    # both workers verify it (each caches its success); new connections spread over them
    def every_worker_answers(status: int) -> set[str]:
        seen: set[str] = set()
        deadline = time.monotonic() + 15
        while len(seen) < 2 and time.monotonic() < deadline:
            answer = api.me(token)
            assert answer.status == status, (answer.status, answer.raw)
            seen.add(answer.worker)
        return seen

    before = every_worker_answers(200)
    assert len(before) == 2
    for _ in range(4):  # cached now: these skip Argon2
        assert api.me(token).status == 200
    assert api.revoke(pid, pat["id"], uid).status == 200
    # not "within seconds": the very next request on either worker is refused
    after = every_worker_answers(401)
    assert after == before


def test_revocation_and_membership_changes_reach_another_node_at_once(
    edge_factory: EdgeFactory, admin: str
) -> None:
    """Two edges (nodes) on one Redis: what one node changes, the other's cache never hides."""
    first = Api(edge_factory(ADMIN_TOKEN=admin), admin)
    second = Api(edge_factory(ADMIN_TOKEN=admin), admin)
    pid, uid = first.team("maintainer")
    pat = first.pat(pid, uid)
    token = pat["token"]
    other = first.pat(pid, uid, "other")
    for node in (first, second):
        for _ in range(3):  # verified, then cached on each node
            answer = node.me(token)
            assert answer.status == 200 and answer.data["role"] == "maintainer"
    # a role change on one node is the next answer's role on the other
    first.member(pid, uid, "viewer")
    assert second.me(token).data["role"] == "viewer"
    # revoked on the first node: the second refuses the very next request
    assert first.revoke(pid, pat["id"], uid).status == 200
    assert_envelope_error(second.me(token), 401, "unauthorized")
    assert second.me(other["token"]).status == 200
    # membership removed on the second node: the first refuses the other token at once
    assert first.me(other["token"]).status == 200
    assert second("DELETE", f"{PROJECTS}/{pid}/members/{uid}").status == 204
    assert_envelope_error(first.me(other["token"]), 401, "unauthorized")


def test_mistyped_pats_never_reach_redis(
    edge_factory: EdgeFactory, admin: str, redis_db: RedisServer
) -> None:
    # nothing else of the edge's talks to Redis meanwhile: no resync, no last-used flush,
    # no request log (its batches are EVALSHA calls too)
    edge = edge_factory(
        ADMIN_TOKEN=admin,
        CONFIG_RESYNC_INTERVAL=3600,
        PAT_LAST_USED_FLUSH_INTERVAL=3600,
        REQUEST_LOG="off",
    )
    api = Api(edge, admin)
    pid, uid = api.team()
    token = api.pat(pid, uid)["token"]
    assert api.me(token).status == 200
    typos = [mistype(token, i) for i in range(5, len(token)) if token[i] != "_"]
    typos += [
        token[:-1],
        token + "1",
        token.replace("edge_", "edgf_"),
        token.replace("edge_", "EDGE_"),
        token[:13] + "-" + token[14:],
        " ".join([token[:20], token[20:]]),
        token[:30] + "0" + token[31:],  # not base58
        "edge_" + "z" * 42,
    ]
    r = redis_db.client()
    watched = ("get", "mget", "smembers", "set", "exists", "scan", "sismember", "eval", "evalsha")

    def commands() -> dict[str, int]:
        stats = r.info("commandstats")
        return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in watched}

    before = commands()
    for typo in typos:
        for authorization in (f"Bearer {typo}", typo):
            answer = call(api.port, "GET", ME, authorization=authorization)
            assert_envelope_error(answer, 401, "unauthorized")
    assert commands() == before
    # the same path with a well-formed token does ask Redis
    api.me(forge(token[5:13]))
    assert commands()["smembers"] > before["smembers"]

    # and with Redis gone: a typo is still a quick 401, a well-formed token a 503
    redis_db.stop()
    started = time.monotonic()
    for typo in typos[:10]:
        assert_envelope_error(api.me(typo), 401, "unauthorized")
    assert time.monotonic() - started < 2
    assert_envelope_error(api.me(token), 503, "redis_unavailable")
    assert "worker" in edge.health()


def test_bad_pats_do_not_stall_other_traffic(
    edge_factory: EdgeFactory, admin: str, redis_db: RedisServer, upstream: Upstream
) -> None:
    redis_db.client().set("proxy:app.test", proxy_doc("app.test", upstream.url))
    edge = edge_factory(ADMIN_TOKEN=admin, EDGE_WORKERS=1)
    edge.wait_generation(lambda h: h["proxies"] == 1)
    api = Api(edge, admin)
    pid, uid = api.team()
    token = api.pat(pid, uid)["token"]
    assert api.me(token).status == 200  # verified once: cached from now on
    prefix = token[5:13]
    # well-formed, valid checksum, the prefix of a real token: each costs an Argon2 verify
    forged = [forge(prefix) for _ in range(30)]

    def proxied() -> float:
        conn = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=10)
        started = time.monotonic()
        try:
            conn.request("GET", "/ping", headers={"Host": "app.test"})
            assert conn.getresponse().read()
        finally:
            conn.close()
        return time.monotonic() - started

    def timed(fn: Callable[[], Any]) -> float:
        started = time.monotonic()
        fn()
        return time.monotonic() - started

    baseline = max(timed(edge.health) for _ in range(5))
    done = threading.Event()
    latencies: dict[str, list[float]] = {"health": [], "proxied": [], "valid": []}
    failures: list[BaseException | int] = []  # checked here, not in the prober's thread

    def probe() -> None:
        while not done.is_set():
            try:
                latencies["health"].append(timed(edge.health))
                latencies["proxied"].append(proxied())
                answer = api.me(token)
            except Exception as exc:  # reported by the test's own thread
                failures.append(exc)
                return
            if answer.status != 200:
                failures.append(answer.status)
            latencies["valid"].append(answer.elapsed)

    prober = threading.Thread(target=probe)
    prober.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(30) as pool:
            # the flood's own answers may queue behind each other on a loaded machine: they
            # get time; what must stay fast is the other traffic, measured below
            answers = list(pool.map(lambda t: api.me(t, timeout=60), forged))
    finally:
        flood = time.monotonic() - started
        done.set()
        prober.join()
    assert failures == []
    for answer in answers:
        assert_envelope_error(answer, 401, "unauthorized")
    # the flood really cost Argon2 time (30 verifies over 2 threads)...
    assert flood > 0.2
    # ...but the loop kept answering: other traffic (and a cached valid PAT) stays fast
    assert latencies["health"] and latencies["proxied"] and latencies["valid"]
    for kind, values in latencies.items():
        assert max(values) < 0.5 + baseline, (kind, values, flood)


def test_last_used_is_flushed_into_the_record(api: Api, redis_db: RedisServer) -> None:
    pid, uid = api.team()
    pat = api.pat(pid, uid)
    r = redis_db.client()
    assert r.get(f"pat_last_used:{pat['id']}") is None
    assert api.me(pat["token"]).status == 200
    pending = r.get(f"pat_last_used:{pat['id']}")
    assert pending is not None and ISO.fullmatch(pending.decode())
    assert 0 < r.ttl(f"pat_last_used:{pat['id']}") <= 300

    def flushed() -> str | None:
        value = json.loads(r.get(f"pat:{pat['id']}"))["last_used_at"]
        return value  # type: ignore[no-any-return]

    wait_for(flushed, timeout=5)
    assert flushed() == pending.decode()
    assert api.pats(pid, uid)[0]["last_used_at"] == pending.decode()
    # a later use moves it forward; the lock is released after each flush
    time.sleep(1.1)
    assert api.me(pat["token"]).status == 200
    newer = r.get(f"pat_last_used:{pat['id']}").decode()
    assert newer > pending.decode()
    wait_for(lambda: flushed() == newer, timeout=5)
    wait_for(lambda: r.get("lock:pat_last_used") is None, timeout=5)
    # (a revocation racing a flush: tests/unit/test_last_used_flush.py)


def test_only_one_node_flushes_at_a_time(
    edge_factory: EdgeFactory, admin: str, redis_db: RedisServer
) -> None:
    r = redis_db.client()
    edge = edge_factory(ADMIN_TOKEN=admin, PAT_LAST_USED_FLUSH_INTERVAL="0.5")
    api = Api(edge, admin)
    pid, uid = api.team()
    pat = api.pat(pid, uid)
    # another node holds the lock: nothing is flushed until it is released or expires
    r.set("lock:pat_last_used", "another-node", ex=3)
    assert api.me(pat["token"]).status == 200
    time.sleep(1.5)
    assert json.loads(r.get(f"pat:{pat['id']}"))["last_used_at"] is None
    assert r.get("lock:pat_last_used") == b"another-node"  # never taken over nor deleted
    wait_for(lambda: json.loads(r.get(f"pat:{pat['id']}"))["last_used_at"], timeout=6)


def test_no_plaintext_pat_in_redis_or_logs(api: Api, redis_db: RedisServer) -> None:
    pid, uid = api.team()
    pats = [api.pat(pid, uid, f"t{i}") for i in range(3)]
    secrets_seen = []
    for pat in pats:
        token = pat["token"]
        assert api.me(token).status == 200
        assert api.me(mistype(token, 30)).status == 401
        assert api.me(forge(pat["token_prefix"])).status == 401
        secrets_seen += [token, token[14:], mistype(token, 30)]
    api.revoke(pid, pats[0]["id"], uid)
    assert api.me(pats[0]["token"]).status == 401
    # a client that puts its PAT in the query string is refused, and the log keeps no query
    leaked = call(api.port, "GET", f"{ME}?access_token={pats[1]['token']}")
    assert leaked.status == 401
    # every use has been flushed into its record before Redis is read
    r = redis_db.client()
    for pat in pats:
        wait_for(lambda p=pat: json.loads(r.get(f"pat:{p['id']}"))["last_used_at"], timeout=5)
    stored = b"\n".join(every_redis_byte(redis_db))
    # every request is in the access log before it is read, and the edge has flushed all
    wanted = 3 * 3 + 1  # the uses, the two refusals of each, the revoked use
    wait_for(lambda: sum(1 for e in api.edge.access_log() if e.get("path") == ME) >= wanted, 5)
    assert api.edge.stop() == 0
    logs = api.edge.stderr() + api.edge.stdout()
    for secret in secrets_seen:
        assert secret.encode() not in stored
        assert secret not in logs
    assert pats[0]["token_prefix"] in logs  # the prefix (not secret) helps find failures


def test_no_token_value_is_ever_sent_to_redis(api: Api, redis_db: RedisServer) -> None:
    """Every command the edge sends to Redis, read with MONITOR, over the whole life of an
    admin token and of PATs: created, used, refused, revoked, flushed."""
    with Monitor(redis_db) as monitor:  # complete: it reads up to a marker sent at exit
        # an admin token: created, used, deleted, then refused
        made = api("POST", "/api/v1/tokens/", {"name": "ops"})
        assert made.status == 201, made.raw
        ops = made.doc["token"]
        assert call(api.port, "GET", "/api/v1/tokens/info", ops).status == 200
        assert api("DELETE", "/api/v1/tokens/ops").status == 204
        assert call(api.port, "GET", "/api/v1/tokens/info", ops).status == 401
        # PATs: created, used, mistyped, forged, revoked, then refused; last use flushed
        pid, uid = api.team()
        pats = [api.pat(pid, uid, f"m{i}") for i in range(2)]
        for pat in pats:
            assert api.me(pat["token"]).status == 200
            assert api.me(mistype(pat["token"], 30)).status == 401
            assert api.me(forge(pat["token_prefix"])).status == 401
        r = redis_db.client()
        wait_for(lambda: json.loads(r.get(f"pat:{pats[1]['id']}"))["last_used_at"], timeout=5)
        assert api.revoke(pid, pats[0]["id"], uid).status == 200
        assert api.me(pats[0]["token"]).status == 401
    assert monitor.commands[-1]["command"] == "ECHO monitor-stop"
    seen = "\n".join(c["command"] for c in monitor.commands)
    # the capture saw the traffic: the hashes and ids were sent, just never a value
    assert hashlib.sha256(ops.encode()).hexdigest() in seen
    assert hashlib.sha256(api.admin.encode()).hexdigest() in seen
    assert f"pat:{pats[0]['id']}" in seen and "$argon2id$v=19$" in seen
    assert pats[0]["token_prefix"] in seen and '"revoked_at":"' in seen
    values = [ops, ops[5:], api.admin, api.admin[5:]]
    for pat in pats:
        values += [pat["token"], pat["token"][14:], mistype(pat["token"], 30)[14:]]
    for value in values:
        assert value not in seen


def test_verification_overload_is_a_quick_503(edge_factory: EdgeFactory, admin: str) -> None:
    edge = edge_factory(ADMIN_TOKEN=admin, EDGE_WORKERS=1)
    api = Api(edge, admin)
    pid, uid = api.team()
    token = api.pat(pid, uid)["token"]
    # far more distinct verifications than one worker queues (2 running + 64 waiting)
    forged = [forge(token[5:13]) for _ in range(200)]
    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(lambda t: api.me(t, timeout=30), forged))
    busy = [a for a in answers if a.status == 503]
    assert busy, sorted({a.status for a in answers})
    for answer in busy:
        assert_envelope_error(answer, 503, "auth_overloaded")
        assert answer.headers["retry-after"] == "1"
        assert answer.elapsed < 5
    for answer in answers:
        if answer.status != 503:
            assert_envelope_error(answer, 401, "unauthorized")
    assert api.me(token).status == 200


def test_redis_outage_is_enveloped(api: Api, redis_db: RedisServer) -> None:
    pid, uid = api.team()
    token = api.pat(pid, uid)["token"]
    redis_db.stop()
    assert_envelope_error(
        api("GET", f"{PROJECTS}/{pid}/tokens?user_id={uid}"), 503, "redis_unavailable"
    )
    assert_envelope_error(api.me(token), 503, "redis_unavailable")
    assert_admin_error(api("GET", USERS), 503, "redis_unavailable")
