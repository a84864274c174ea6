"""The admin API as tests call it: one HTTP request, its answer, and the error checks."""

from __future__ import annotations

import hashlib
import http.client
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from edge.auth.secrets import BASE58_ALPHABET
from tests.helpers import EdgeProcess


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    raw: bytes
    elapsed: float = 0.0

    @property
    def doc(self) -> Any:
        return json.loads(self.raw)

    @property
    def data(self) -> Any:
        """The ``data`` of an enveloped success (``errors`` must be null)."""
        doc = self.doc
        assert set(doc) == {"data", "errors"}, doc
        assert doc["errors"] is None, doc
        return doc["data"]

    @property
    def worker(self) -> str:
        """The answering worker process: request ids start with a per-process prefix."""
        return self.headers["x-request-id"][:8]

    @property
    def error(self) -> dict[str, Any]:
        err = self.doc["error"]
        assert isinstance(err, dict)
        return err


def call(
    port: int,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    *,
    raw: bytes | None = None,
    content_type: str | None = "application/json",
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    authorization: str | None = None,
    timeout: float = 5.0,
) -> Answer:
    """One request; ``token`` goes as ``Bearer``, ``authorization`` as the whole header."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if authorization is not None:
        sent["Authorization"] = authorization
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if data is not None and content_type is not None:
        sent["Content-Type"] = content_type
    if host != "127.0.0.1":
        sent["Host"] = host
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        payload = resp.read()
        received = {k.lower(): v for k, v in resp.getheaders()}
        return Answer(resp.status, received, payload, time.monotonic() - started)
    finally:
        conn.close()


def assert_error(answer: Answer, status: int, code: str, field: str | None = None) -> None:
    assert answer.status == status, (answer.status, answer.raw)
    assert answer.headers["content-type"] == "application/json"
    err = answer.error
    assert err["code"] == code, err
    assert err["request_id"] == answer.headers["x-request-id"]
    assert isinstance(err["message"], str) and err["message"]
    if field is None:
        assert "field" not in err, err
    else:
        assert err["field"] == field, err


def ok(answer: Answer, status: int = 200) -> Any:
    """The answer's document (None without a body), once its status is ``status``."""
    assert answer.status == status, (answer.status, answer.raw)
    return answer.doc if answer.raw else None


def new_token(port: int, admin: str, name: str) -> str:
    """Token ``name`` created with the ``admin`` token: its value."""
    token = ok(call(port, "POST", "/api/v1/tokens", admin, {"name": name}), 201)["token"]
    assert isinstance(token, str)
    return token


def served_by(edge: EdgeProcess, host: str, path: str = "/") -> str | int:
    """The tag of the upstream that answered ``host`` through the edge (an upstream of
    ``tests.helpers.tagged``), or the edge's status."""
    answer = call(edge.http_port, "GET", path, host=host)
    if answer.status == 200:
        tag = answer.doc.get("upstream")
        if isinstance(tag, str):
            return tag
    return answer.status


def forge_pat(prefix: str) -> str:
    """A well-formed PAT with a valid checksum for ``prefix`` but a random (wrong) secret.

    Built from the documented construction, independently of edge.auth.pat.
    """
    random = secrets.token_bytes(20)
    check = hashlib.sha256(b"edge-pat-v1\x00" + prefix.encode() + random).digest()[:4]
    n = int.from_bytes(random + check, "big")
    digits = ""
    while n:
        n, r = divmod(n, 58)
        digits = BASE58_ALPHABET[r] + digits
    return f"edge_{prefix}_{digits.rjust(33, '1')}"


def sha256(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
