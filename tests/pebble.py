"""A real ACME CA for tests: Pebble (with pebble-challtestsrv as its DNS) on loopback, and
:class:`AcmeFront`, an HTTPS proxy of the tests' own in front of it that counts requests
and can stand in for what Pebble 2.4.0 lacks (ACME Renewal Information, rate limits).

Pebble keeps everything in memory and makes a new issuing root at every start: after
:meth:`Pebble.restart` its accounts, orders and root are new.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme

from tests.helpers import free_port, require_tool, stop_process

# Pebble's knobs (see its README): never sleep before a validation; everything else at
# Pebble's defaults (5% of good nonces rejected as badNonce, valid authorizations reused
# half the time). PEBBLE_VA_ALWAYS_VALID stays unset: challenges are really validated.
DEFAULT_ENV = {"PEBBLE_VA_NOSLEEP": "1"}


def _https_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class Pebble:
    """Pebble on its own loopback ports, answering HTTPS with a certificate of its own
    trustme CA (``ca_bundle_path``), validating HTTP-01 on 127.0.0.1:``http_port``.

    Every name resolves to 127.0.0.1 (pebble-challtestsrv is its DNS server), so an order
    for any name is validated against whatever listens on ``http_port``.
    ``env`` adds to or overrides :data:`DEFAULT_ENV` (``PEBBLE_*`` variables of the test
    process are not passed on); ``cert_validity`` sets the lifetime in seconds of the
    certificates it issues (Pebble's default: 5 years).
    """

    def __init__(
        self,
        workdir: Path,
        http_port: int,
        *,
        env: Mapping[str, str] | None = None,
        cert_validity: int | None = None,
        ca: trustme.CA | None = None,
    ) -> None:
        self.http_port = http_port
        self.port = free_port()
        self.management_port = free_port()
        self.tls_port = free_port()  # TLS-ALPN-01 validation port: nothing listens there
        self.dns_port = free_port()
        self.dns_management_port = free_port()
        self.workdir = workdir / f"pebble-{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca = ca or trustme.CA()
        self.ca_bundle_path = self.workdir / "https-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_bundle_path))
        leaf = self.ca.issue_cert("localhost", "127.0.0.1")
        cert_path = self.workdir / "https-cert.pem"
        key_path = self.workdir / "https-key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert_path))
        leaf.private_key_pem.write_to_path(str(key_path))
        config: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(cert_path),
            "privateKey": str(key_path),
            "httpPort": http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if cert_validity is not None:
            config["certificateValidityPeriod"] = cert_validity
        self.config_path = self.workdir / "pebble-config.json"
        self.config_path.write_text(json.dumps({"pebble": config}, indent=2))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
        self.env.update(DEFAULT_ENV)
        self.env.update(env or {})
        self.log_path = self.workdir / "pebble.log"
        self.dns_log_path = self.workdir / "challtestsrv.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.dns_proc: subprocess.Popen[bytes] | None = None
        self._context = _https_context(self.ca)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def directory_url(self) -> str:
        return f"{self.base_url}/dir"

    @property
    def management_url(self) -> str:
        return f"https://127.0.0.1:{self.management_port}"

    def start(self, timeout: float = 15.0) -> Pebble:
        """Start the DNS server and Pebble; return once the directory answers."""
        if self.dns_proc is None or self.dns_proc.poll() is not None:
            self.dns_proc = self._spawn(
                [require_tool("pebble-challtestsrv"),
                 "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                 "-dns01", f"127.0.0.1:{self.dns_port}",
                 "-http01", "", "-https01", "", "-tlsalpn01", "",
                 "-management", f"127.0.0.1:{self.dns_management_port}"],
                self.dns_log_path,
            )  # fmt: skip
            self._wait("pebble-challtestsrv", self.dns_proc, self._dns_ready, timeout)
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._spawn(
                [require_tool("pebble"), "-config", str(self.config_path),
                 "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                self.log_path,
            )  # fmt: skip
            self._wait("pebble", self.proc, self._directory_ready, timeout)
        return self

    def stop(self) -> None:
        """Stop Pebble and its DNS server (SIGTERM, then SIGKILL); their ports stay ours."""
        for proc in (self.proc, self.dns_proc):
            if proc is not None:
                stop_process(proc, timeout=5)
        self.proc = None
        self.dns_proc = None

    def restart(self, timeout: float = 15.0) -> Pebble:
        """Stop and start again on the same ports: a new, empty CA with a new root."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def logs(self) -> str:
        """What Pebble and pebble-challtestsrv wrote, over all their starts."""
        parts = []
        for name, path in (("pebble", self.log_path), ("pebble-challtestsrv", self.dns_log_path)):
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {name} ({path}) ---\n{text}")
        return "\n".join(parts)

    def management_get(self, path: str) -> bytes:
        """GET a path of Pebble's management interface (HTTPS, same trustme CA)."""
        url = f"{self.management_url}{path}"
        with urllib.request.urlopen(url, timeout=5, context=self._context) as resp:
            body: bytes = resp.read()
            return body

    def root_pem(self) -> str:
        """Pebble's issuing root (PEM); a new one after every (re)start."""
        return self.management_get("/roots/0").decode()

    def intermediate_pem(self) -> str:
        """The intermediate that signs Pebble's certificates (PEM)."""
        return self.management_get("/intermediates/0").decode()

    def write_root(self, path: Path | None = None) -> Path:
        """Write :meth:`root_pem` to ``path`` (default: in the work directory), for
        ``openssl s_client -CAfile``; returns the path."""
        target = path or self.workdir / f"pebble-root-{time.monotonic_ns()}.pem"
        target.write_text(self.root_pem())
        return target

    def _spawn(self, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                argv,
                env=self.env,
                cwd=str(self.workdir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _wait(
        self,
        name: str,
        proc: subprocess.Popen[bytes],
        ready: Callable[[], bool],
        timeout: float,
    ) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.stop()
                raise AssertionError(
                    f"{name} exited with status {proc.returncode} while starting:\n{self.logs()}"
                )
            try:
                if ready():
                    return
            except (OSError, ValueError) as exc:  # not listening yet, or a partial answer
                last = exc
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"{name} not ready within {timeout}s (last: {last!r}):\n{self.logs()}")

    def _dns_ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.dns_management_port), timeout=1):
            return True

    def _directory_ready(self) -> bool:
        with urllib.request.urlopen(self.directory_url, timeout=2, context=self._context) as r:
            return "newOrder" in json.loads(r.read())


@dataclass
class FrontRequest:
    """One request :class:`AcmeFront` received: ``at`` is its arrival (``time.time()``);
    ``status`` and ``problem`` (an ACME error type) are those of the answer."""

    method: str
    path: str
    kind: str
    at: float
    status: int | None = None
    problem: str | None = None


@dataclass
class _Failure:
    times: int
    status: int
    problem_type: str
    detail: str
    retry_after: int | None


_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "content-length",
    "accept-encoding",  # bodies are rewritten: keep them plain
}  # fmt: skip

# written by the front's send_response itself: Pebble's would make a second Date field
_OWN_FIELDS = {"date", "server"}

# JSON fields of ACME objects (RFC 8555 section 7.1) whose URLs tell the kind of a path
_URL_FIELDS = {"finalize": "finalize", "certificate": "certificate", "orders": "orders"}

RENEWAL_INFO_PATH = "/renewal-info"


def _rfc3339(moment: datetime.datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("renewal window times must be timezone-aware")
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _FrontServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, front: AcmeFront, context: ssl.SSLContext) -> None:
        self.front = front
        self.context = context
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", front.port), _FrontHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the TLS handshake runs here, in the connection's own thread, not in accept()
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except OSError:
            return
        with self.connections_lock:
            self.connections.add(tls)
        try:
            super().finish_request(tls, client_address)
        finally:
            with self.connections_lock:
                self.connections.discard(tls)

    def close_connections(self) -> None:
        """Cut kept-alive connections too: a stopped front answers nothing."""
        with self.connections_lock:
            for sock in self.connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FrontServer

    def do_GET(self) -> None:
        self.server.front._handle(self)

    do_POST = do_GET
    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


class AcmeFront:
    """TEST STAND-IN, not part of any CA: an HTTPS reverse proxy in front of a
    :class:`Pebble`'s ACME API, so that tests can see and shape what a client sends.

    - Clients use :attr:`directory_url`; every Pebble URL in a body, ``Location`` or
      ``Link`` is rewritten to the front's, so they talk only to the front. Requests reach
      Pebble with the client's ``Host``, which Pebble also checks against the JWS ``url``.
    - :attr:`requests` lists every request; :meth:`count` counts them by kind
      (``newOrder``, ``newAccount``, ``finalize``, ...), learnt from the directory and the
      ACME objects that pass through.
    - ACME Renewal Information (RFC 9773) stand-in, because Pebble 2.4.0 serves no
      ``renewalInfo`` and ignores ``replaces``: with :meth:`enable_renewal_info` the
      directory gets a ``renewalInfo`` URL of the front, whose
      ``GET {renewalInfo}/{certID}`` answers the window of :meth:`set_renewal_window`.
      The ``replaces`` of every newOrder payload is kept in :attr:`replaces`.
    - :meth:`fail_next` (and :meth:`fail_new_order`) answers the next requests of a kind
      with an ACME problem document, e.g. 429 ``rateLimited`` with ``Retry-After``,
      without passing them to Pebble.

    Its certificate comes from the Pebble's trustme CA: ``ca_bundle_path`` serves both.
    """

    def __init__(self, pebble: Pebble, *, renewal_info: bool = False) -> None:
        self.pebble = pebble
        self.port = free_port()
        self.ca_bundle_path = pebble.ca_bundle_path
        self.requests: list[FrontRequest] = []
        self.new_order_payloads: list[dict[str, Any]] = []
        self.renewal_info_cert_ids: list[str] = []
        self._renewal_info = renewal_info
        self._windows: dict[str | None, tuple[str, str, int]] = {}
        self._failures: dict[str, _Failure] = {}
        self._kinds: dict[str, str] = {"/dir": "directory"}
        self._lock = threading.Lock()
        self._upstream_context = _https_context(pebble.ca)
        leaf = pebble.ca.issue_cert("localhost", "127.0.0.1")
        self._server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(self._server_context)
        self._server: _FrontServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def directory_url(self) -> str:
        return f"{self.base_url}/dir"

    @property
    def renewal_info_url(self) -> str:
        return f"{self.base_url}{RENEWAL_INFO_PATH}"

    def start(self) -> AcmeFront:
        self._server = _FrontServer(self, self._server_context)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> AcmeFront:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- what the tests read -------------------------------------------------------------

    def count(self, kind: str, *, include_bad_nonce: bool = False) -> int:
        """How many requests of ``kind`` arrived (``newOrder``, ``newAccount``,
        ``finalize``, ``newNonce``, ``directory``, ``order``, ``authz``, ``challenge``,
        ``certificate``, ``account``, ``renewalInfo``, ``revokeCert``, ``other``...).

        Requests Pebble refused with ``badNonce`` are left out unless
        ``include_bad_nonce``: Pebble refuses 5% of good nonces on purpose, the client
        sends the same request again (RFC 8555 section 6.5), and the refused one did
        nothing. Answers the front made up with :meth:`fail_next` are counted.
        """
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.kind == kind
                and (include_bad_nonce or r.problem != "urn:ietf:params:acme:error:badNonce")
            )

    def of_kind(self, kind: str) -> list[FrontRequest]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind]

    @property
    def replaces(self) -> list[str | None]:
        """The ``replaces`` field (RFC 9773 section 5) of each newOrder payload, in order
        (None when absent), badNonce-refused ones included."""
        with self._lock:
            return [p.get("replaces") for p in self.new_order_payloads]

    # --- what the tests set --------------------------------------------------------------

    def enable_renewal_info(self, enabled: bool = True) -> None:
        """Add (or with False remove) ``renewalInfo`` in the directory the front serves."""
        self._renewal_info = enabled

    def set_renewal_window(
        self,
        start: datetime.datetime,
        end: datetime.datetime,
        retry_after: int = 6 * 3600,
        cert_id: str | None = None,
    ) -> None:
        """The ``suggestedWindow`` of renewal info answers, with ``Retry-After:
        retry_after``; for one certificate (its RFC 9773 certID) or, by default, all.
        Before any window is set a renewal info request gets a 404 problem."""
        with self._lock:
            self._windows[cert_id] = (_rfc3339(start), _rfc3339(end), retry_after)

    def fail_next(
        self,
        kind: str,
        times: int = 1,
        *,
        status: int = 429,
        problem_type: str = "urn:ietf:params:acme:error:rateLimited",
        detail: str = "too many new orders (test)",
        retry_after: int | None = 60,
    ) -> None:
        """Answer the next ``times`` POSTs of ``kind`` with ``status`` and an ACME problem
        document (and a fresh Replay-Nonce from Pebble), without passing them on."""
        with self._lock:
            self._failures[kind] = _Failure(times, status, problem_type, detail, retry_after)

    def fail_new_order(self, times: int = 1, **problem: Any) -> None:
        """:meth:`fail_next` for ``newOrder`` (default: 429 rateLimited, Retry-After 60)."""
        self.fail_next("newOrder", times, **problem)

    # --- the proxy -----------------------------------------------------------------------

    def _handle(self, req: _FrontHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        path = req.path
        method = req.command
        with self._lock:
            kind = self._kind_of(path)
            entry = FrontRequest(method, path, kind, time.time())
            self.requests.append(entry)
        if kind == "newOrder" and method == "POST":
            payload = self._jws_payload(body)
            with self._lock:
                self.new_order_payloads.append(payload)
        if kind == "renewalInfo":
            status, headers, out = self._renewal_info_answer(path)
        else:
            failure = self._take_failure(kind) if method == "POST" else None
            if failure is not None:
                status, headers, out = self._failure_answer(failure)
            else:
                status, headers, out = self._forward(req, body, kind)
        entry.status = status
        if headers.get("Content-Type", "").startswith("application/problem+json"):
            with contextlib.suppress(ValueError, AttributeError):
                entry.problem = json.loads(out).get("type")
        req.send_response(status)
        for name, value in headers.items():
            for line in value.split("\0"):
                req.send_header(name, line)
        if "Content-Length" not in headers or method != "HEAD":
            req.send_header("Content-Length", str(len(out)))
        req.end_headers()
        if method != "HEAD":
            req.wfile.write(out)

    def _kind_of(self, path: str) -> str:
        bare = urllib.parse.urlsplit(path).path
        if self._renewal_info and bare.startswith(RENEWAL_INFO_PATH + "/"):
            return "renewalInfo"
        return self._kinds.get(bare, "other")

    @staticmethod
    def _jws_payload(body: bytes) -> dict[str, Any]:
        """The payload of a flattened JSON JWS (RFC 7515 section 7.2.2) as JSON."""
        try:
            payload = json.loads(_b64url_decode(json.loads(body)["payload"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            return {}
        return payload if isinstance(payload, dict) else {}

    def _take_failure(self, kind: str) -> _Failure | None:
        with self._lock:
            failure = self._failures.get(kind)
            if failure is None or failure.times <= 0:
                return None
            failure.times -= 1
            return failure

    def _failure_answer(self, failure: _Failure) -> tuple[int, dict[str, str], bytes]:
        problem = {"type": failure.problem_type, "detail": failure.detail, "status": failure.status}
        headers = {"Content-Type": "application/problem+json", "Cache-Control": "no-store"}
        if failure.retry_after is not None:
            headers["Retry-After"] = str(failure.retry_after)
        nonce = self._fresh_nonce()
        if nonce:
            headers["Replay-Nonce"] = nonce
        return failure.status, headers, json.dumps(problem).encode()

    def _fresh_nonce(self) -> str | None:
        with self._lock:
            paths = [p for p, k in self._kinds.items() if k == "newNonce"]
        if not paths:
            return None
        try:
            conn = self._upstream()
            conn.request("HEAD", paths[0])
            resp = conn.getresponse()
            resp.read()
            conn.close()
        except (OSError, http.client.HTTPException):
            return None
        return resp.getheader("Replay-Nonce")

    def _renewal_info_answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        cert_id = urllib.parse.urlsplit(path).path[len(RENEWAL_INFO_PATH) + 1 :]
        with self._lock:
            self.renewal_info_cert_ids.append(cert_id)
            window = self._windows.get(cert_id) or self._windows.get(None)
        if window is None:
            problem = {"type": "urn:ietf:params:acme:error:malformed", "status": 404,
                       "detail": "no renewal window set by the test"}  # fmt: skip
            return 404, {"Content-Type": "application/problem+json"}, json.dumps(problem).encode()
        start, end, retry_after = window
        doc = {"suggestedWindow": {"start": start, "end": end}}
        headers = {"Content-Type": "application/json", "Retry-After": str(retry_after)}
        return 200, headers, json.dumps(doc).encode()

    def _upstream(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.pebble.port, timeout=10, context=self._upstream_context
        )

    def _forward(
        self, req: _FrontHandler, body: bytes, kind: str
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP}
        if not any(k.lower() == "host" for k in headers):
            headers["Host"] = f"127.0.0.1:{self.port}"
        try:
            conn = self._upstream()
            conn.request(req.command, req.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            out = resp.read()
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            text = f"ACME server unreachable: {exc}\n".encode()
            return 502, {"Content-Type": "text/plain"}, text
        answer: dict[str, str] = {}
        for name, value in resp.getheaders():
            if name.lower() in _OWN_FIELDS:
                continue
            if name.lower() in _HOP_BY_HOP and not (
                req.command == "HEAD" and name.lower() == "content-length"
            ):
                continue
            value = self._rewrite(value)
            # repeated fields (Link) kept apart, joined with NUL for _handle to split
            answer[name] = f"{answer[name]}\0{value}" if name in answer else value
        out = self._rewrite(out.decode("utf-8", "surrogateescape")).encode(
            "utf-8", "surrogateescape"
        )
        if resp.status < 400:
            self._learn(kind, answer.get("Location"), out)
        if kind == "directory" and self._renewal_info:
            with contextlib.suppress(ValueError):
                directory = json.loads(out)
                directory["renewalInfo"] = self.renewal_info_url
                out = json.dumps(directory, indent=3).encode()
        return resp.status, answer, out

    def _rewrite(self, text: str) -> str:
        for host in ("127.0.0.1", "localhost"):
            text = text.replace(f"https://{host}:{self.pebble.port}", self.base_url)
        return text

    def _learn(self, kind: str, location: str | None, body: bytes) -> None:
        """Note the kinds of the URLs an answer names (RFC 8555 section 7.1)."""
        found: dict[str, str] = {}
        if location and kind in ("newOrder", "newAccount"):
            found[location] = "order" if kind == "newOrder" else "account"
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            if kind == "directory":
                found.update({v: k for k, v in doc.items() if isinstance(v, str)})
            for field, name in _URL_FIELDS.items():
                if isinstance(doc.get(field), str):
                    found[doc[field]] = name
            for url in doc.get("authorizations") or []:
                if isinstance(url, str):
                    found[url] = "authz"
            for challenge in doc.get("challenges") or []:
                if isinstance(challenge, dict) and isinstance(challenge.get("url"), str):
                    found[challenge["url"]] = "challenge"
            if isinstance(doc.get("url"), str) and "token" in doc:
                found[doc["url"]] = "challenge"
        with self._lock:
            for url, name in found.items():
                split = urllib.parse.urlsplit(url)
                if f"{split.scheme}://{split.netloc}" == self.base_url:
                    self._kinds.setdefault(split.path, name)
