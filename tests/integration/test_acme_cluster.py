"""ACME issuance across several nodes and through faults: real redis-server, real Pebble
(with pebble-challtestsrv as its DNS), real edge processes.

* three nodes on one Redis, sharing one HTTP port, order each certificate exactly once;
* a node killed while it holds an order's lease: another node takes the order over once
  the lease has run out;
* a failed HTTP-01 validation, the CA stopped mid-order (and started again, as a new CA
  that knows no account), the CA's rate limit: each is recorded in the status with the
  CA's words and tried again later, while other certificates and proxied requests go on;
* orders never block the event loop that serves proxied requests.
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from edge.certs.acme.order import proxy_cert_name
from tests.acme_helpers import acme_env, assert_served, wait_status
from tests.api_client import call
from tests.helpers import EdgeProcess, Upstream, free_port, proxy_doc, wait_for
from tests.pebble import AcmeFront, Pebble

pytestmark = pytest.mark.timeout(120)

APP = "app.test"  # a proxy of every test, to an upstream that answers 200


# ---------------------------------------------------------------------------- helpers


def node_env(front_or_pebble: AcmeFront | Pebble, admin: str, **more: Any) -> dict[str, Any]:
    """An ACME node's settings: the CA (or the front before it) and the admin token."""
    env = acme_env(front_or_pebble.directory_url, str(front_or_pebble.ca_bundle_path), **more)
    env["ADMIN_TOKEN"] = admin
    return env


def start_nodes(
    edge_factory: Callable[..., EdgeProcess], count: int, http_port: int, **env: Any
) -> list[EdgeProcess]:
    """``count`` edges started at once, sharing ``http_port``, each with its own TLS port."""
    nodes = [
        edge_factory(
            wait=False, HTTP_PORT=http_port, SHARE_PORTS="true", HTTPS_PORT=free_port(), **env
        )
        for _ in range(count)
    ]
    for node in nodes:
        node.wait_ready()
    return nodes


def https_port(node: EdgeProcess) -> int:
    return int(node.env["HTTPS_PORT"])


def logged(node: EdgeProcess, message: str, cert: str | None = None) -> list[dict[str, Any]]:
    """The node's log entries with ``message`` (about ``cert`` if given)."""
    found = []
    for line in node.stderr().splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") == message and (cert is None or entry.get("cert") == cert):
            found.append(entry)
    return found


def order(node: EdgeProcess, admin: str, name: str, domain: str) -> None:
    answer = call(
        node.api_port,
        "POST",
        "/api/v1/certificates/",
        admin,
        {"cert_name": name, "domain": domain},
    )
    assert answer.status == 202, answer.raw


def status(rdb: redis.Redis, name: str) -> dict[str, Any]:
    raw = rdb.get(f"cert:status:{name}")
    assert raw is not None, f"no status for {name}"
    doc = json.loads(raw)
    assert isinstance(doc, dict)
    return doc


def moment(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def add_a_record(pebble: Pebble, host: str, address: str) -> None:
    """Make pebble-challtestsrv (Pebble's DNS) resolve ``host`` to ``address``."""
    body = json.dumps({"host": host, "addresses": [address]}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{pebble.dns_management_port}/add-a", data=body, method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (an edge supervisor's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # the command in parentheses may hold spaces: fields after the last ')'
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def kill_node(node: EdgeProcess) -> None:
    """SIGKILL a node's supervisor and workers, as a machine that dies: nothing released.

    The supervisor is stopped first so that it restarts no worker, and the workers die
    before it so that none gets its parent-death SIGTERM (which would drain them)."""
    proc = node.proc
    assert proc is not None and proc.poll() is None
    os.kill(proc.pid, signal.SIGSTOP)
    workers = children(proc.pid)
    assert workers, "the supervisor has no workers"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10)


class ProxiedClient:
    """A thread sending GET requests through the edge to :data:`APP` on one keep-alive
    connection (a new one only after a failure), noting each latency and failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProxiedClient:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                self.connections += 1
            started = time.monotonic()
            try:
                conn.request("GET", "/", headers={"Host": APP})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = None
                continue
            self.latencies.append(time.monotonic() - started)
            if resp.status != 200:
                self.failures.append(f"status {resp.status}")
            time.sleep(0.01)
        if conn is not None:
            conn.close()

    def check(self, least: int = 10) -> None:
        assert not self.failures, self.failures[:5]
        assert len(self.latencies) >= least, len(self.latencies)


# ---------------------------------------------------------------------------- cluster


@pytest.mark.timeout(90)
def test_three_nodes_order_each_certificate_once_and_all_serve_it(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: Callable[..., EdgeProcess],
    admin: str,
    rdb: redis.Redis,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    http_port = free_port()
    front = acme_front_factory(pebble_factory(http_port=http_port))
    hosts = [f"site{i}.example.test" for i in range(5)]
    for host in hosts:
        rdb.set(f"proxy:{host}", proxy_doc(host, upstream.url, enable_https=True))
    nodes = start_nodes(
        edge_factory,
        3,
        http_port,
        AUTO_HTTPS="true",
        EDGE_WORKERS=2,
        **node_env(front, admin),
    )
    for host in hosts:
        doc = wait_status(rdb, proxy_cert_name(host))
        assert doc["domains"] == [host]
        assert doc["reason"] == "automatic"
        record = rdb.get(f"cert:{proxy_cert_name(host)}")
        assert record is not None and json.loads(record)["status"] == "active"
    assert front.count("newOrder") == len(hosts), [r.path for r in front.of_kind("newOrder")]
    assert front.count("newAccount") == 1
    assert front.count("finalize") == len(hosts)
    # every order started (and every certificate requested) once, over the six workers
    for host in hosts:
        name = proxy_cert_name(host)
        assert sum(len(logged(n, "certificate order started", name)) for n in nodes) == 1
        assert sum(len(logged(n, "certificate issued", name)) for n in nodes) == 1
        assert sum(len(logged(n, "certificate requested for a proxy", name)) for n in nodes) == 1
    root = front.pebble.write_root(tmp_path / "root.pem")
    for node in nodes:
        for host in hosts:
            assert_served(https_port(node), host, root)


@pytest.mark.timeout(90)
def test_an_order_of_a_killed_node_is_finished_by_another(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: Callable[..., EdgeProcess],
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    http_port = free_port()
    front = acme_front_factory(pebble_factory(http_port=http_port))
    lease_seconds = 3.0
    nodes = start_nodes(
        edge_factory,
        2,
        http_port,
        EDGE_WORKERS=2,
        # the order waits 3 s before it polls its authorization: time to kill its node
        **node_env(front, admin, ACME_POLL_INITIAL_WAIT="3", ACME_LEASE_SECONDS=str(lease_seconds)),
    )
    order(nodes[0], admin, "taken", "taken.example.test")
    wait_status(rdb, "taken", "validating", timeout=20)
    holders = [n for n in nodes if logged(n, "certificate order started", "taken")]
    assert len(holders) == 1, [n.stderr() for n in nodes]
    holder = holders[0]
    survivor = next(n for n in nodes if n is not holder)
    token = rdb.get("edge:acme:lease:taken")
    assert token is not None
    queued = rdb.zscore("edge:acme:queue", "taken")
    assert queued is not None and queued >= time.time() + lease_seconds  # due again later
    kill_node(holder)
    killed = time.time()
    assert rdb.get("edge:acme:lease:taken") == token  # nobody released it
    lease_ends = killed + rdb.pttl("edge:acme:lease:taken") / 1000

    doc = wait_status(rdb, "taken", timeout=40)
    took = time.time() - killed
    assert doc["domains"] == ["taken.example.test"]
    assert logged(survivor, "certificate issued", "taken")
    started = logged(survivor, "certificate order started", "taken")
    assert len(started) == 1
    # not before the dead node's lease ran out and its queue entry was due, nor long after
    taken_over = moment(started[0]["time"].replace("Z", "+00:00"))
    assert taken_over >= max(lease_ends, queued) - 0.01, (taken_over, lease_ends, queued)
    assert taken_over < queued + 5, (taken_over, queued)
    assert took < 2 * lease_seconds + 15, took
    assert front.count("newOrder") == 2
    assert rdb.get("edge:acme:lease:taken") != token
    root = front.pebble.write_root(tmp_path / "root.pem")
    assert_served(https_port(survivor), "taken.example.test", root)


# ---------------------------------------------------------------------------- faults


@pytest.mark.timeout(90)
def test_a_failed_validation_is_recorded_and_retried_while_the_rest_goes_on(
    pebble_factory: Callable[..., Pebble],
    edge_factory: Callable[..., EdgeProcess],
    admin: str,
    rdb: redis.Redis,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    http_port, tls_port = free_port(), free_port()
    pebble = pebble_factory(http_port=http_port)
    # nothing answers HTTP-01 there: 127.0.0.2 is loopback, the edge listens on 127.0.0.1
    add_a_record(pebble, "nowhere.example.test", "127.0.0.2")
    rdb.set(f"proxy:{APP}", proxy_doc(APP, upstream.url))
    edge = edge_factory(HTTP_PORT=http_port, HTTPS_PORT=tls_port, **node_env(pebble, admin))
    with ProxiedClient(http_port) as client:
        order(edge, admin, "nowhere", "nowhere.example.test")
        order(edge, admin, "fine", "fine.example.test")
        failed = wait_status(rdb, "nowhere", "failed", timeout=30)
        assert failed["attempts"] == 1
        assert "urn:ietf:params:acme:error:connection" in failed["error"], failed
        assert "127.0.0.2" in failed["error"], failed
        assert failed["next_try_at"] is not None
        assert moment(failed["next_try_at"]) >= moment(failed["updated_at"])
        # tried again, after a longer pause each time
        again = wait_for(
            lambda: (
                (d := status(rdb, "nowhere"))["status"] == "failed" and d["attempts"] >= 2 and d
            ),
            timeout=20,
            interval=0.1,
        )
        assert again, status(rdb, "nowhere")
        assert again["error"].startswith("validation of nowhere.example.test failed"), again
        pause = moment(again["next_try_at"]) - moment(again["updated_at"])
        assert pause >= 1, again  # ACME_RETRY_INITIAL_SECONDS=1, doubled: 2 s (to the second)
        assert len(logged(edge, "certificate order failed", "nowhere")) >= 2
        # the other certificate is issued and served meanwhile
        wait_status(rdb, "fine")
        assert_served(tls_port, "fine.example.test", pebble.write_root(tmp_path / "root.pem"))
        assert status(rdb, "nowhere")["status"] in ("failed", "pending")
    client.check()
    assert client.connections == 1
    assert rdb.get("cert:nowhere") is None


@pytest.mark.timeout(90)
def test_the_ca_gone_mid_order_then_back_as_a_new_ca(
    pebble_factory: Callable[..., Pebble],
    edge_factory: Callable[..., EdgeProcess],
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    http_port, tls_port = free_port(), free_port()
    pebble = pebble_factory(http_port=http_port)
    edge = edge_factory(
        HTTP_PORT=http_port,
        HTTPS_PORT=tls_port,
        **node_env(
            pebble,
            admin,
            # the order waits 2 s before it polls: time to stop the CA
            ACME_POLL_INITIAL_WAIT="2",
            ACME_RETRY_MAX_SECONDS="2",
        ),
    )
    order(edge, admin, "outage", "outage.example.test")
    wait_status(rdb, "outage", "validating", timeout=20)
    pebble.stop()
    failed = wait_status(rdb, "outage", "failed", timeout=20)
    assert failed["attempts"] == 1
    assert "unreachable" in failed["error"], failed
    assert failed["next_try_at"] is not None
    entries = logged(edge, "certificate order failed", "outage")
    assert entries and entries[0]["kind"] == "unreachable", entries
    wait_for(lambda: status(rdb, "outage")["attempts"] >= 2, timeout=15, interval=0.1)
    assert status(rdb, "outage")["status"] in ("failed", "pending")
    # a new CA on the same address: the stored account is unknown to it
    pebble.start()
    doc = wait_status(rdb, "outage", timeout=30)
    assert doc["attempts"] == 0 and doc["error"] is None
    # it registered again: one account record, at a URL of the new CA
    gone = logged(edge, "ACME account unknown to the CA: registering a new one", "outage")
    assert len(gone) == 1 and "accountDoesNotExist" in gone[0]["error"], gone
    accounts = [k for k in rdb.scan_iter("edge:acme:account:*") if not k.endswith(b":lock")]
    assert len(accounts) == 1, accounts
    stored = json.loads(rdb.get(accounts[0]) or "{}")
    assert stored["uri"] != gone[0]["account"], stored
    assert logged(edge, "certificate issued", "outage")
    assert_served(tls_port, "outage.example.test", pebble.write_root(tmp_path / "root.pem"))


@pytest.mark.timeout(60)
def test_the_ca_rate_limit_is_waited_out(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: Callable[..., EdgeProcess],
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    http_port, tls_port = free_port(), free_port()
    front = acme_front_factory(pebble_factory(http_port=http_port))
    retry_after = 2
    front.fail_new_order(
        times=2, status=429, detail="too many new orders (test)", retry_after=retry_after
    )
    edge = edge_factory(HTTP_PORT=http_port, HTTPS_PORT=tls_port, **node_env(front, admin))
    order(edge, admin, "limited", "limited.example.test")
    failed = wait_status(rdb, "limited", "failed", timeout=20)
    first = front.of_kind("newOrder")[0]
    assert first.status == 429
    assert "urn:ietf:params:acme:error:rateLimited" in failed["error"], failed
    assert "too many new orders (test)" in failed["error"], failed
    assert failed["next_try_at"] is not None
    assert moment(failed["next_try_at"]) >= math.floor(first.at) + retry_after, failed
    entries = logged(edge, "certificate order failed", "limited")
    assert entries[0]["kind"] == "rate_limited" and entries[0]["retry_in"] >= retry_after

    wait_status(rdb, "limited", timeout=30)
    # newOrders the CA answered for themselves: Pebble refuses 5% of nonces on purpose, and
    # the client sends a refused request again at once
    taken = [
        r for r in front.of_kind("newOrder") if r.problem != "urn:ietf:params:acme:error:badNonce"
    ]
    arrivals = [r.at for r in taken]
    assert [r.status for r in taken][:2] == [429, 429]
    assert len(taken) == 3
    for before, after in itertools.pairwise(arrivals):
        assert after - before >= retry_after, arrivals
    assert_served(tls_port, "limited.example.test", front.pebble.write_root(tmp_path / "root.pem"))


@pytest.mark.timeout(90)
def test_orders_never_block_the_event_loop(
    pebble_factory: Callable[..., Pebble],
    edge_factory: Callable[..., EdgeProcess],
    admin: str,
    rdb: redis.Redis,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    http_port, tls_port = free_port(), free_port()
    pebble = pebble_factory(http_port=http_port)
    rdb.set(f"proxy:{APP}", proxy_doc(APP, upstream.url))
    # one worker: the loop that serves the requests is the one that runs the orders
    edge = edge_factory(
        HTTP_PORT=http_port, HTTPS_PORT=tls_port, EDGE_WORKERS=1, **node_env(pebble, admin)
    )
    names = [f"many{i}" for i in range(10)]
    with ProxiedClient(http_port) as client:
        time.sleep(0.5)  # a few requests before
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda n: order(edge, admin, n, f"{n}.example.test"), names))
        for name in names:
            wait_status(rdb, name, timeout=60)
        time.sleep(0.5)  # and after (the workers load the certificates)
    client.check(least=50)
    assert client.connections == 1
    latencies = sorted(client.latencies)
    report = {
        "requests": len(latencies),
        "max_ms": round(latencies[-1] * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "median_ms": round(latencies[len(latencies) // 2] * 1000, 1),
    }
    print(f"proxied request latencies while 10 certificates were issued: {report}")
    assert latencies[-1] < 1.0, report
    root = pebble.write_root(tmp_path / "root.pem")
    for name in names:
        assert_served(tls_port, f"{name}.example.test", root)
