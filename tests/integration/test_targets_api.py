"""Port-forward targets on a real edge and a real Redis: the admin's endpoints, the members'
public listings (live from the configuration, the project's own, per role), hand edits with
a plain Redis client, and a bad value reported while its last good one keeps serving."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.api_client import Answer, assert_error, call, new_token
from tests.helpers import ROOT, EdgeProcess, RedisServer, wait_for

EdgeFactory = Callable[..., EdgeProcess]
APPS = "/api/v1/apps"
RESOURCES = "/api/v1/app-resources"
DATABASES = "/api/v1/databases"
GENERATED = {kind: re.compile(rf"{kind}_[1-9A-HJ-NP-Za-km-z]{{12}}") for kind in "ard"}
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


class Api:
    """An edge with an admin token, and shortcuts for people and targets."""

    def __init__(self, edge: EdgeProcess, admin: str) -> None:
        self.edge = edge
        self.admin = admin
        self.port = edge.api_port
        self._n = 0

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> Answer:
        return call(self.port, method, path, self.admin, body, **kw)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        answer = self(method, path, body)
        assert answer.status == status, (method, path, answer.status, answer.raw)
        return answer.doc if answer.raw else None

    def project(self) -> str:
        self._n += 1
        return str(self.ok("POST", "/api/v1/projects/", {"name": f"project-{self._n}"}, 201)["id"])

    def member_pat(self, pid: str, role: str) -> tuple[str, str]:
        """A new user, member of ``pid`` with ``role``, and a PAT of theirs: (uid, token)."""
        self._n += 1
        uid = self.ok(
            "POST", "/api/v1/users/", {"name": "Dev", "email": f"dev{self._n}@example.com"}, 201
        )["id"]
        member = {"role": role, "accepted": True}
        self.ok("PUT", f"/api/v1/projects/{pid}/members/{uid}", member, 201)
        pat = self.ok("POST", f"/api/v1/projects/{pid}/tokens", {"user_id": uid, "name": "x"}, 201)
        return uid, pat["data"]["token"]

    def public(self, token: str, path: str) -> Answer:
        return call(self.port, "GET", f"/public-api{path}", token)


@pytest.fixture
def api(edge_factory: EdgeFactory, admin: str) -> Iterator[Api]:
    yield Api(edge_factory(ADMIN_TOKEN=admin), admin)


def listed(answer: Answer) -> list[str]:
    """The ids of an enveloped public listing."""
    assert answer.status == 200, answer.raw
    return [item["id"] for item in answer.data]


def envelope_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer.raw
    doc = answer.doc
    assert doc["data"] is None and doc["errors"][0]["code"] == code, doc


# ---------------------------------------------------------------------------- admin


def test_apps_and_their_resources(api: Api, redis_db: RedisServer) -> None:
    r = redis_db.client()
    pid = api.project()
    created = api("POST", f"{APPS}/", {"id": "web", "project_id": pid, "name": "Web"})
    assert created.status == 201, created.raw
    app = created.doc
    assert set(app) == {"id", "project_id", "name", "created_at", "updated_at"}
    assert app["id"] == "web" and ISO.fullmatch(app["created_at"])
    assert created.headers["location"] == f"{APPS}/web"
    assert json.loads(r.get("app:web") or b"") == app  # exactly what a GET shows
    assert api.ok("GET", f"{APPS}/web") == app
    # an id is drawn when none is given
    drawn = api.ok("POST", APPS, {"project_id": pid, "name": "Worker"}, 201)
    assert GENERATED["a"].fullmatch(drawn["id"]), drawn
    assert_error(
        api("POST", APPS, {"id": "web", "project_id": pid, "name": "x"}), 409, "app_exists", "id"
    )
    assert_error(
        api("POST", APPS, {"project_id": "p_1111111111ab", "name": "x"}),
        404,
        "project_not_found",
        "project_id",
    )
    # the loader's own validation, the field named
    for body, field in (
        ({"project_id": pid}, "name"),
        ({"project_id": pid, "name": "x", "colour": "red"}, "colour"),
        ({"project_id": pid, "name": "a\nb"}, "name"),
        ({"project_id": "p 1", "name": "x"}, "project_id"),
        ({"id": "a:b", "project_id": pid, "name": "x"}, "id"),
        ({"project_id": pid, "name": "x", "created_at": "2020-01-01T00:00:00Z"}, "created_at"),
    ):
        assert_error(api("POST", APPS, body), 400, "invalid_body", field)

    # resources: created under their app, in its project
    res = api.ok(
        "POST",
        f"{APPS}/web/resources",
        {"name": "postgres", "host": "DB.Internal", "config_port": 5432},
        201,
    )
    assert GENERATED["r"].fullmatch(res["id"]), res
    assert (res["app_id"], res["project_id"], res["host"]) == ("web", pid, "db.internal")
    assert res["config_internal_ports"] == []
    metrics = api.ok(
        "POST",
        f"{APPS}/web/resources",
        {"id": "metrics", "name": "m", "host": "10.0.0.7", "config_port": 9100,
         "config_internal_ports": [9187, 9188]},
        201,
    )  # fmt: skip
    other = api.project()
    base = {"name": "x", "host": "h", "config_port": 1}
    for change in (
        {"project_id": other},
        {"app_id": "api"},
        {"config_port": 70000},
        {"host": "*.h"},
        {"config_internal_ports": [2, 2]},
    ):
        [field] = change
        answer = api("POST", f"{APPS}/web/resources", {**base, **change})
        assert_error(answer, 400, "invalid_body", field)
    assert_error(
        api("POST", f"{APPS}/nope/resources", {"name": "x", "host": "h", "config_port": 1}),
        404,
        "app_not_found",
    )
    ids = sorted([res["id"], "metrics"])
    assert sorted(i["id"] for i in api.ok("GET", f"{APPS}/web/resources")["resources"]) == ids
    assert api.ok("GET", f"{APPS}/{drawn['id']}/resources") == {"resources": []}
    assert sorted(i["id"] for i in api.ok("GET", RESOURCES)["resources"]) == ids
    assert api.ok("GET", f"{RESOURCES}?project_id={other}") == {"resources": []}
    assert api.ok("GET", f"{RESOURCES}/metrics") == metrics

    # PUT replaces (fields left out: defaults); ids, project and app never change
    put = api.ok(
        "PUT", f"{RESOURCES}/metrics", {"name": "m2", "host": "10.0.0.8", "config_port": 9100}
    )
    assert (put["name"], put["config_internal_ports"], put["app_id"]) == ("m2", [], "web")
    assert put["created_at"] == metrics["created_at"] and put["updated_at"] >= metrics["updated_at"]
    assert_error(
        api("PUT", f"{RESOURCES}/metrics", {**put, "app_id": drawn["id"]}),
        400,
        "invalid_body",
        "app_id",
    )
    assert_error(
        api("PUT", f"{APPS}/web", {"name": "x", "project_id": other}),
        400,
        "invalid_body",
        "project_id",
    )
    assert_error(api("PUT", f"{APPS}/web", {"name": "x", "id": "web2"}), 400, "invalid_body", "id")
    assert_error(api("PUT", f"{APPS}/absent", {"name": "x"}), 404, "app_not_found")
    renamed = api.ok("PUT", f"{APPS}/web", {**app, "name": "Web front"})  # read, edit, send back
    assert renamed["name"] == "Web front" and renamed["project_id"] == pid
    assert_error(api("GET", f"{APPS}/a%20b"), 404, "app_not_found")

    # an app goes with its resources, in one transaction
    r.set("app_resource:hand", json.dumps({"id": "hand", "app_id": "web", "oops": 1}))
    assert api.ok("DELETE", f"{APPS}/web", status=204) is None
    assert r.keys("app_resource:*") == [] and r.get("app:web") is None
    assert_error(api("DELETE", f"{APPS}/web"), 404, "app_not_found")
    assert [a["id"] for a in api.ok("GET", APPS)["apps"]] == [drawn["id"]]
    assert api.ok("GET", f"{APPS}?project_id={other}") == {"apps": []}
    assert_error(api("GET", f"{APPS}?project=x"), 400, "invalid_query", "project")


def test_no_resource_outlives_its_app(api: Api, redis_db: RedisServer) -> None:
    """Resources created while their app is deleted: each one is either deleted with the
    app or refused (404), never left behind."""
    r = redis_db.client()
    pid = api.project()
    for attempt in range(3):
        app_id = f"web{attempt}"
        api.ok("POST", APPS, {"id": app_id, "project_id": pid, "name": "w"}, 201)
        body = {"name": "x", "host": "10.0.0.1", "config_port": 5432}
        with ThreadPoolExecutor(8) as pool:
            creates = [
                pool.submit(api, "POST", f"{APPS}/{app_id}/resources", body) for _ in range(30)
            ]
            time.sleep(0.01 * attempt)
            deleted = api("DELETE", f"{APPS}/{app_id}")
            statuses = {c.result().status for c in creates}
        assert deleted.status == 204, deleted.raw
        assert statuses <= {201, 404}, statuses
        left = [k for k in r.scan_iter("app_resource:*") if app_id.encode() in (r.get(k) or b"")]
        assert left == [], (attempt, left)


def test_databases(api: Api, redis_db: RedisServer) -> None:
    pid = api.project()
    pg = api.ok(
        "POST",
        DATABASES,
        {"project_id": pid, "name": "main", "engine": "postgres", "host": "pg"},
        201,
    )
    assert GENERATED["d"].fullmatch(pg["id"])
    assert (pg["port"], pg["status"]) == (5432, "created")  # stored with its defaults
    cache = api.ok(
        "POST",
        DATABASES,
        {"id": "cache", "project_id": pid, "name": "c", "engine": "redis", "host": "::1",
         "status": "creating"},
        201,
    )  # fmt: skip
    assert cache["port"] == 6379
    assert json.loads(redis_db.client().get("database:cache") or b"")["port"] == 6379
    assert_error(
        api("POST", DATABASES, {"project_id": pid, "name": "x", "engine": "mysql", "host": "h"}),
        400,
        "invalid_body",
        "engine",
    )
    ready = api.ok("PUT", f"{DATABASES}/cache", {**cache, "status": "created", "port": 16379})
    assert (ready["status"], ready["port"]) == ("created", 16379)
    assert sorted(d["id"] for d in api.ok("GET", DATABASES)["databases"]) == sorted(
        ["cache", pg["id"]]
    )
    assert api.ok("DELETE", f"{DATABASES}/cache", status=204) is None
    assert_error(api("GET", f"{DATABASES}/cache"), 404, "database_not_found")


def test_only_the_admin_writes_targets(api: Api) -> None:
    token = new_token(api.port, api.admin, "ci")
    pid = api.project()
    for method, path in (("GET", APPS), ("POST", APPS), ("GET", f"{DATABASES}/x")):
        assert_error(call(api.port, method, path, token, {"project_id": pid}), 403, "forbidden")
        assert_error(call(api.port, method, path, None), 401, "unauthorized")
    # and a PAT is no admin token either
    _, pat = api.member_pat(pid, "owner")
    assert_error(call(api.port, "GET", APPS, pat), 401, "unauthorized")


# ---------------------------------------------------------------------------- public


def test_public_listings_are_live_per_project_and_role(api: Api, redis_db: RedisServer) -> None:
    r = redis_db.client()
    pid, other = api.project(), api.project()
    uid, viewer = api.member_pat(pid, "viewer")
    _, outsider = api.member_pat(other, "owner")
    api.ok("POST", APPS, {"id": "web", "project_id": pid, "name": "b-web"}, 201)
    api.ok("POST", APPS, {"id": "theirs", "project_id": other, "name": "theirs"}, 201)
    api.ok(
        "POST",
        f"{APPS}/web/resources",
        {"id": "pg", "name": "pg", "host": "h", "config_port": 5432},
        201,
    )
    api.ok(
        "POST",
        f"{APPS}/theirs/resources",
        {"id": "t", "name": "t", "host": "h", "config_port": 1},
        201,
    )
    api.ok(
        "POST",
        DATABASES,
        {"id": "db_1", "project_id": pid, "name": "main", "engine": "postgres", "host": "h"},
        201,
    )

    # the API's writes reach the listing like any other config change: within a second
    wait_for(lambda: listed(api.public(viewer, "/apps")) == ["web"], timeout=2)
    assert listed(api.public(viewer, "/apps/web/resources")) == ["pg"]
    answer = api.public(viewer, "/databases")
    assert answer.headers["cache-control"] == "no-store"
    [db] = answer.data
    assert db == {**json.loads(r.get("database:db_1") or b""), "port": 5432}
    assert "password" not in json.dumps(answer.doc)
    # another project's targets: not there, and its app is no more found than a missing one
    assert listed(api.public(outsider, "/apps")) == ["theirs"]
    envelope_error(api.public(viewer, "/apps/theirs/resources"), 404, "app_not_found")
    envelope_error(api.public(viewer, "/apps/absent/resources"), 404, "app_not_found")

    # a plain Redis client's write is served within a second, sorted by name
    doc = {"id": "api", "project_id": pid, "name": "a-api"}
    r.set("app:api", json.dumps(doc))
    wait_for(lambda: listed(api.public(viewer, "/apps")) == ["api", "web"], timeout=1.0)
    cache = {"id": "cache", "project_id": pid, "app_id": "api", "name": "redis"}
    r.set("app_resource:cache", json.dumps({**cache, "host": "10.1.0.1", "config_port": 6379}))
    wait_for(lambda: listed(api.public(viewer, "/apps/api/resources")) == ["cache"], timeout=1.0)
    r.delete("app:api")
    wait_for(lambda: listed(api.public(viewer, "/apps")) == ["web"], timeout=1.0)

    # no longer an accepted member: the PAT is refused
    api.ok("PUT", f"/api/v1/projects/{pid}/members/{uid}", {"role": "viewer", "accepted": False})
    envelope_error(api.public(viewer, "/apps"), 401, "unauthorized")
    envelope_error(api.public(viewer, "/databases"), 401, "unauthorized")
    envelope_error(call(api.port, "GET", "/public-api/apps", api.admin), 401, "unauthorized")
    envelope_error(call(api.port, "GET", "/public-api/apps", None), 401, "unauthorized")


def run_check(redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "edge", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
        check=False,
    )


def test_a_bad_value_is_reported_while_its_last_good_one_serves(
    api: Api, redis_db: RedisServer
) -> None:
    r = redis_db.client()
    pid = api.project()
    _, pat = api.member_pat(pid, "viewer")
    good = {"id": "db_1", "project_id": pid, "name": "main", "engine": "redis", "host": "10.0.0.9"}
    r.set("database:db_1", json.dumps(good))
    wait_for(lambda: listed(api.public(pat, "/databases")) == ["db_1"], timeout=2)
    assert run_check(redis_db.url).returncode == 0

    r.set("database:db_1", json.dumps({**good, "host": "10.0.0.10", "port": 0, "engine": "mongo"}))
    wait_for(lambda: "database:db_1" in api.edge.health()["rejected"], timeout=2)
    health = api.edge.health()
    assert health["status"] == "degraded"
    assert "field 'engine'" in health["rejected"]["database:db_1"]
    assert "database:db_1" in health["last_good"]
    [served] = api.public(pat, "/databases").data
    assert (served["host"], served["port"]) == ("10.0.0.9", 6379)  # the last good value

    done = run_check(redis_db.url)
    assert done.returncode == 1, done.stdout
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: database:db_1: field 'engine': invalid value 'mongo' "
        "(allowed: 'postgres', 'redis')",
        "error: database:db_1: field 'port': expected int >= 1",
    ], done.stdout

    # the admin API refuses to show it as a record, and PUT fixes it
    assert_error(api("GET", f"{DATABASES}/db_1"), 409, "invalid_document")
    api.ok("PUT", f"{DATABASES}/db_1", {**good, "host": "10.0.0.11"})
    wait_for(lambda: api.public(pat, "/databases").data[0]["host"] == "10.0.0.11", timeout=2)
    assert "database:db_1" not in api.edge.health()["rejected"]


# ---------------------------------------------------------------------------- command line


def edge_cli(api: Api, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("API_URL", "TOKEN", "ADMIN_TOKEN")}
    env.update(
        PYTHONPATH=str(ROOT),
        API_URL=f"http://127.0.0.1:{api.port}",
        TOKEN=token,
        XDG_CONFIG_HOME="/nonexistent",
        NO_COLOR="1",
    )
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def cli_json(api: Api, token: str, *args: str) -> Any:
    done = edge_cli(api, token, *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_command_line(api: Api) -> None:
    admin = api.admin
    api.ok("POST", "/api/v1/projects/", {"name": "shop"}, 201)
    app = cli_json(api, admin, "app", "create", "Web", "--project", "shop", "--id", "web")
    pid = app["project_id"]
    assert (app["id"], app["name"]) == ("web", "Web")
    res = cli_json(
        api, admin, "app-resource", "create", "pg", "--app", "web", "--host", "10.0.0.5",
        "--port", "5432", "--internal-port", "9187",
    )  # fmt: skip
    assert (res["project_id"], res["config_internal_ports"]) == (pid, [9187])
    db = cli_json(
        api, admin, "database", "create", "main", "--project", pid, "--engine", "redis",
        "--host", "cache.internal", "--status", "creating",
    )  # fmt: skip
    assert (db["port"], db["status"]) == (6379, "creating")
    changed = cli_json(api, admin, "database", "update", db["id"], "--status", "created")
    assert changed["status"] == "created" and changed["created_at"] == db["created_at"]
    table = edge_cli(api, admin, "app-resource", "list", "--app", "web")
    assert table.returncode == 0, table.stderr
    assert table.stdout.split("\n")[0].split()[:4] == ["ID", "NAME", "APP", "HOST"]
    assert res["id"] in table.stdout and "9187" in table.stdout
    assert [a["id"] for a in cli_json(api, admin, "app", "list", "--project", "shop")] == ["web"]
    # the edge's refusal, in one line
    bad = edge_cli(api, admin, "app-resource", "update", res["id"], "--host", "*.x")
    assert bad.returncode == 1 and bad.stderr.startswith("edge: invalid host"), bad.stderr

    # a member's PAT lists the project's targets through the public API
    _, pat = api.member_pat(pid, "viewer")
    wait_for(lambda: [a["id"] for a in cli_json(api, pat, "app", "list")] == ["web"], timeout=2)
    assert [r["id"] for r in cli_json(api, pat, "app-resource", "list", "--app", "web")] == [
        res["id"]
    ]
    assert [d["id"] for d in cli_json(api, pat, "database", "list")] == [db["id"]]

    done = edge_cli(api, admin, "app", "delete", "web")
    assert done.returncode == 0 and "deleted app web and its resources" in done.stdout + done.stderr
    assert cli_json(api, admin, "app-resource", "list") == []
