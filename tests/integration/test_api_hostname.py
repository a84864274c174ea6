"""``API_HOSTNAME``: the whole API through the public listeners, on that host only.

One real edge (HTTP and HTTPS listeners, a certificate for the API host in Redis), a real
upstream for another host, and real clients: ``http.client`` for plain HTTP and ``curl``
(``--resolve``, verifying the certificate) for HTTPS.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from edge.auth.secrets import new_admin_token
from tests.api_client import Answer, assert_error, call
from tests.helpers import EdgeProcess, RedisServer, Upstream, free_port, proxy_doc, require_tool

API_HOST = "edge-api.test"
APP_HOST = "app.test"
EdgeFactory = Callable[..., EdgeProcess]


@dataclass
class Setup:
    edge: EdgeProcess
    admin: str
    https_port: int
    ca_file: Path

    def public(
        self, method: str, path: str, token: str | None = None, body: Any = None, **kw: Any
    ) -> Answer:
        kw.setdefault("host", API_HOST)
        return call(self.edge.http_port, method, path, token, body, **kw)

    def tls(
        self, method: str, path: str, authorization: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        """One request over HTTPS with curl, the certificate verified against the test CA."""
        args = [
            require_tool("curl"),
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            str(self.ca_file),
            "--resolve",
            f"{API_HOST}:{self.https_port}:127.0.0.1",
            "-X",
            method,
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ]
        if authorization is not None:
            args += ["-H", f"Authorization: {authorization}"]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        args.append(f"https://{API_HOST}:{self.https_port}{path}")
        done = subprocess.run(args, capture_output=True, text=True, timeout=20, check=True)
        text, _, status = done.stdout.rpartition("\n")
        return int(status), json.loads(text) if text else None


@pytest.fixture
def setup(
    edge_factory: EdgeFactory, redis_db: RedisServer, upstream: Upstream, tmp_path: Path
) -> Iterator[Setup]:
    ca = trustme.CA()
    leaf = ca.issue_cert(API_HOST)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    r = redis_db.client()
    r.set(
        "cert:api",
        json.dumps(
            {
                "cert_name": "api",
                "domains": [API_HOST],
                "fullchain_pem": "".join(b.bytes().decode() for b in leaf.cert_chain_pems),
                "private_key_pem": leaf.private_key_pem.bytes().decode(),
            }
        ),
    )
    r.set(f"proxy:{APP_HOST}", proxy_doc(APP_HOST, upstream.url))
    admin = new_admin_token()
    https_port = free_port()
    edge = edge_factory(ADMIN_TOKEN=admin, API_HOSTNAME=API_HOST, HTTPS_PORT=https_port)
    edge.wait_generation(lambda h: h["proxies"] == 1)
    yield Setup(edge, admin, https_port, ca_file)


def test_admin_reads_and_writes_through_the_public_port(setup: Setup) -> None:
    admin = setup.admin
    answer = setup.public("GET", "/api/v1/tokens/info", admin)
    assert answer.status == 200 and answer.doc["name"] == "admin"
    assert_error(setup.public("GET", "/api/v1/tokens/info"), 401, "unauthorized")
    # a write: a token created on the public port works on the loopback API port, and back
    created = setup.public("POST", "/api/v1/tokens/", admin, {"name": "ops"})
    assert created.status == 201, created.raw
    ops = created.doc["token"]
    assert call(setup.edge.api_port, "GET", "/api/v1/tokens/info", ops).doc["name"] == "ops"
    made = setup.public(
        "POST",
        "/api/v1/proxy/targets/",
        ops,
        {"hostname": "o.test", "target_url": "http://127.0.0.1:9"},
    )
    assert made.status == 201, made.raw
    assert call(setup.edge.api_port, "GET", "/api/v1/proxy/targets/o.test", ops).status == 200
    # errors answer as on the API port
    assert_error(
        setup.public("POST", "/api/v1/tokens/", admin, {"name": "BAD NAME"}),
        400,
        "invalid_body",
        "name",
    )
    assert_error(setup.public("GET", "/api/v1/nothing-here", admin), 404, "not_found")
    assert setup.public("DELETE", "/api/v1/tokens/ops", admin).status == 204
    assert_error(setup.public("GET", "/api/v1/tokens/info", ops), 401, "unauthorized")
    # the host matches as hosts do: any case, a port, a trailing dot
    for host in ("EDGE-API.test", f"{API_HOST}:{setup.edge.http_port}", f"{API_HOST}."):
        assert setup.public("GET", "/api/v1/tokens/info", admin, host=host).status == 200
    assert setup.public("GET", "/health").status == 200


def test_people_and_pats_through_the_public_port(setup: Setup) -> None:
    admin = setup.admin
    user = setup.public("POST", "/api/v1/users/", admin, {"name": "Ann", "email": "a@example.com"})
    project = setup.public("POST", "/api/v1/projects/", admin, {"name": "web"})
    assert user.status == project.status == 201
    uid, pid = user.doc["id"], project.doc["id"]
    member = setup.public(
        "PUT", f"/api/v1/projects/{pid}/members/{uid}", admin, {"role": "owner", "accepted": True}
    )
    assert member.status in (200, 201), member.raw
    made = setup.public(
        "POST", f"/api/v1/projects/{pid}/tokens", admin, {"user_id": uid, "name": "laptop"}
    )
    assert made.status == 201, made.raw
    pat = made.data["token"]
    listed = setup.public("GET", f"/api/v1/projects/{pid}/tokens?user_id={uid}", admin)
    assert [t["name"] for t in listed.data] == ["laptop"]
    me = setup.public("GET", "/public-api/me", authorization=pat)
    assert me.status == 200
    assert me.data["user"]["id"] == uid and me.data["role"] == "owner"
    # the same PAT over HTTPS, then revoked on the public port: refused on both listeners
    status, doc = setup.tls("GET", "/public-api/me", f"Bearer {pat}")
    assert status == 200 and doc["data"]["project"]["id"] == pid
    tid = made.data["id"]
    revoked = setup.public("DELETE", f"/api/v1/projects/{pid}/tokens/{tid}?user_id={uid}", admin)
    assert revoked.status == 200, revoked.raw
    assert setup.public("GET", "/public-api/me", authorization=pat).status == 401
    status, doc = setup.tls("GET", "/public-api/me", pat)
    assert status == 401 and doc["errors"][0]["code"] == "unauthorized"


def test_the_https_listener_serves_the_api_with_its_certificate(setup: Setup) -> None:
    status, doc = setup.tls("GET", "/api/v1/tokens/info", f"Bearer {setup.admin}")
    assert status == 200 and doc["name"] == "admin"
    status, doc = setup.tls("POST", "/api/v1/tokens/", f"Bearer {setup.admin}", {"name": "tls"})
    assert status == 201 and doc["token"].startswith("edge_")
    status, doc = setup.tls("GET", "/api/v1/tokens/info")
    assert status == 401 and doc["error"]["code"] == "unauthorized"
    status, doc = setup.tls("GET", "/api/v1/tokens/info", f"Bearer {new_admin_token()}")
    assert status == 401 and doc["error"]["code"] == "unauthorized"


def test_other_hosts_on_the_public_port_never_reach_the_api(
    setup: Setup, upstream: Upstream
) -> None:
    admin = setup.admin
    # a proxied host forwards /api/v1/... to its upstream like any other path
    answer = setup.public("GET", "/api/v1/tokens/info", admin, host=APP_HOST)
    assert answer.status == 200
    assert answer.doc["path"] == "/api/v1/tokens/info"
    assert upstream.requests[-1]["path"] == "/api/v1/tokens/info"
    # an unknown host, a host that merely contains the API host, the bare address: no API
    for host in ("nobody.test", f"x.{API_HOST}", f"{API_HOST}.evil.test", "127.0.0.1"):
        answer = setup.public("GET", "/api/v1/tokens/info", admin, host=host)
        assert answer.status == 404, (host, answer.raw)
        assert b'"name"' not in answer.raw and b"admin" not in answer.raw
        seen = len(upstream.requests)
        assert setup.public("GET", "/public-api/me", host=host).status == 404
        assert len(upstream.requests) == seen


def test_without_api_hostname_no_host_reaches_the_api(edge_factory: EdgeFactory) -> None:
    admin = new_admin_token()
    edge = edge_factory(ADMIN_TOKEN=admin)
    for host in (API_HOST, "127.0.0.1", "localhost"):
        answer = call(edge.http_port, "GET", "/api/v1/tokens/info", admin, host=host)
        assert answer.status == 404, (host, answer.raw)
    assert call(edge.api_port, "GET", "/api/v1/tokens/info", admin).status == 200
