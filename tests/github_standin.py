"""A local stand-in of GitHub's OAuth endpoints, for tests.

GitHub is the one part of the login flow that cannot be real here: tests have no GitHub
account, app or network. This stand-in answers the four endpoints the edge uses the way
GitHub documents them ("Authorizing OAuth apps", "Users" and "Emails" REST API):

* ``GET /login/oauth/authorize``: checks ``client_id`` and ``redirect_uri`` (same host and
  port as the app's callback URL, path the same or below it, as GitHub requires), then
  redirects at once to ``redirect_uri?code=..&state=..``, like a user already signed in
  to GitHub who already authorized the app; or with ``error=access_denied`` when the test
  says the user cancels. An unknown client gets GitHub's 404 page.
* ``POST /login/oauth/access_token``: a form with ``client_id``, ``client_secret``,
  ``code`` (single use) and ``redirect_uri``; JSON with ``Accept: application/json``, else
  form-encoded, as GitHub does. Errors are GitHub's: status 200 with
  ``{"error": "bad_verification_code"}`` (or ``incorrect_client_credentials``,
  ``redirect_uri_mismatch``).
* ``GET /user`` and ``GET /user/emails``: ``Authorization: Bearer|token <token>`` ->
  the profile and the e-mail list of the token's user; 401 otherwise; 403 without a
  ``User-Agent`` (GitHub's API refuses those).

Use :func:`github_standin` and put :attr:`GitHubStandin.authorize_url`, ``token_url`` and
``api_url`` in ``GITHUB_AUTHORIZE_URL`` / ``GITHUB_TOKEN_URL`` / ``GITHUB_API_URL``
(:meth:`GitHubStandin.settings` gives all five settings).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers import free_port


@dataclass(frozen=True)
class StandinEmail:
    email: str
    primary: bool = False
    verified: bool = True


@dataclass
class StandinUser:
    login: str
    id: int
    name: str | None = None
    emails: list[StandinEmail] = field(default_factory=list)

    def profile(self) -> dict[str, Any]:
        public = next((e.email for e in self.emails if e.primary), None)
        return {
            "login": self.login,
            "id": self.id,
            "node_id": f"U_standin{self.id}",
            "type": "User",
            "site_admin": False,
            "name": self.name,
            "email": public,
        }


@dataclass(frozen=True)
class _Grant:
    login: str
    client_id: str
    redirect_uri: str
    expires_at: float


class GitHubStandin:
    """The stand-in's state; the HTTP server runs in a thread while it is open.

    ``users`` by login; ``sign_in(login)`` picks who the next authorizations are for;
    ``deny = True`` makes the user cancel; ``fail(path, status, body)`` makes an endpoint
    answer that instead (an outage, a broken answer); ``delay`` holds every answer that
    many seconds; ``calls`` counts requests per endpoint path.
    """

    CODE_LIFETIME = 600.0  # GitHub's codes expire after 10 minutes

    def __init__(
        self,
        *,
        client_id: str = "standin-client-id",
        client_secret: str = "standin-client-secret",
        callback_url: str | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.callback_url = callback_url  # None: any redirect_uri is accepted
        self.users: dict[str, StandinUser] = {}
        self.current: str | None = None
        self.deny = False
        self.delay = 0.0
        self.calls: Counter[str] = Counter()
        self.authorize_requests: list[dict[str, str]] = []
        self.failures: dict[str, tuple[int, bytes]] = {}
        self._codes: dict[str, _Grant] = {}
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def authorize_url(self) -> str:
        return f"{self.base_url}/login/oauth/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/login/oauth/access_token"

    @property
    def api_url(self) -> str:
        return self.base_url

    def settings(self) -> dict[str, str]:
        """The edge's GitHub settings pointing at this stand-in."""
        return {
            "GITHUB_CLIENT_ID": self.client_id,
            "GITHUB_CLIENT_SECRET": self.client_secret,
            "GITHUB_AUTHORIZE_URL": self.authorize_url,
            "GITHUB_TOKEN_URL": self.token_url,
            "GITHUB_API_URL": self.api_url,
        }

    def add_user(
        self,
        login: str,
        id: int,
        *,
        name: str | None = None,
        emails: list[StandinEmail] | None = None,
        sign_in: bool = True,
    ) -> StandinUser:
        """A GitHub user; with ``sign_in`` (default) the one the next logins are for.

        ``emails`` defaults to one primary verified ``{login}@users.example``.
        """
        if emails is None:
            emails = [StandinEmail(f"{login}@users.example", primary=True)]
        user = StandinUser(login, id, name, list(emails))
        with self._lock:
            self.users[login] = user
            if sign_in:
                self.current = login
        return user

    def sign_in(self, login: str | None) -> None:
        """Who is signed in to GitHub in the browser from now on (None: nobody)."""
        if login is not None and login not in self.users:
            raise KeyError(login)
        self.current = login

    def fail(self, path: str, status: int, body: bytes = b"") -> None:
        """Make ``path`` answer ``status`` with ``body`` until ``heal(path)``."""
        self.failures[path] = (status, body)

    def heal(self, path: str) -> None:
        self.failures.pop(path, None)

    def token_for(self, login: str) -> str:
        """A GitHub token of ``login``, as if the OAuth flow had run (for API-only tests)."""
        token = "gho_" + secrets.token_urlsafe(27)
        with self._lock:
            self._tokens[token] = login
        return token

    def start(self) -> GitHubStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # the endpoints; each returns (status, headers, body)

    def authorize(self, query: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        self.authorize_requests.append(query)
        if query.get("client_id") != self.client_id:
            return _page(404, "Not Found")
        redirect_uri = query.get("redirect_uri") or self.callback_url
        if not redirect_uri or not self._redirect_allowed(redirect_uri):
            return _page(400, "The redirect_uri is not associated with this application.")
        params: dict[str, str] = {}
        if self.deny:
            params["error"] = "access_denied"
            params["error_description"] = "The user has denied your application access."
            params["error_uri"] = "https://docs.github.com/apps/troubleshooting"
        else:
            login = self.current
            if login is None:
                return _page(401, "Sign in to GitHub (no user is signed in to the stand-in)")
            code = secrets.token_hex(10)
            with self._lock:
                self._codes[code] = _Grant(
                    login, self.client_id, redirect_uri, time.monotonic() + self.CODE_LIFETIME
                )
            params["code"] = code
        if "state" in query:
            params["state"] = query["state"]
        joiner = "&" if "?" in redirect_uri else "?"
        location = redirect_uri + joiner + urllib.parse.urlencode(params)
        return 302, [("Location", location), ("Content-Length", "0")], b""

    def access_token(
        self, form: dict[str, str], accept: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        code = form.get("code", "")
        with self._lock:
            grant = self._codes.pop(code, None)
        if form.get("client_id") != self.client_id or not secrets.compare_digest(
            form.get("client_secret", ""), self.client_secret
        ):
            answer = {
                "error": "incorrect_client_credentials",
                "error_description": "The client_id and/or client_secret passed are incorrect.",
            }
        elif grant is None or grant.expires_at < time.monotonic():
            answer = {
                "error": "bad_verification_code",
                "error_description": "The code passed is incorrect or expired.",
            }
        elif "redirect_uri" in form and form["redirect_uri"] != grant.redirect_uri:
            answer = {
                "error": "redirect_uri_mismatch",
                "error_description": "The redirect_uri MUST match the registered callback URL.",
            }
        else:
            token = "gho_" + secrets.token_urlsafe(27)
            with self._lock:
                self._tokens[token] = grant.login
            answer = {
                "access_token": token,
                "token_type": "bearer",
                "scope": "read:user,user:email",
            }
        if "application/json" in accept:
            return _json(200, answer)
        body = urllib.parse.urlencode(answer).encode()
        return 200, [("Content-Type", "application/x-www-form-urlencoded")], body

    def api(
        self, path: str, authorization: str, agent: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        if not agent:
            return _json(403, {"message": "Request forbidden by administrative rules."})
        scheme, _, token = authorization.partition(" ")
        with self._lock:
            login = self._tokens.get(token) if scheme.lower() in ("bearer", "token") else None
            user = self.users.get(login) if login is not None else None
        if user is None:
            return _json(401, {"message": "Bad credentials", "status": "401"})
        if path == "/user":
            return _json(200, user.profile())
        return _json(
            200,
            [
                {"email": e.email, "primary": e.primary, "verified": e.verified, "visibility": None}
                for e in user.emails
            ],
        )

    def _redirect_allowed(self, redirect_uri: str) -> bool:
        if self.callback_url is None:
            return True
        want = urllib.parse.urlsplit(self.callback_url)
        got = urllib.parse.urlsplit(redirect_uri)
        if (got.scheme, got.hostname, got.port) != (want.scheme, want.hostname, want.port):
            return False
        base = want.path.rstrip("/")
        return got.path == want.path or got.path.startswith(base + "/")


def _json(status: int, document: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    return (
        status,
        [("Content-Type", "application/json; charset=utf-8")],
        json.dumps(document).encode(),
    )


def _page(status: int, text: str) -> tuple[int, list[tuple[str, str]], bytes]:
    body = f"<!doctype html><title>GitHub stand-in</title><p>{text}</p>".encode()
    return status, [("Content-Type", "text/html; charset=utf-8")], body


def _handler(standin: GitHubStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def _answer(self, answer: tuple[int, list[tuple[str, str]], bytes]) -> None:
            status, headers, body = answer
            self.send_response(status)
            for name, value in headers:
                if name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _prelude(self) -> tuple[str, dict[str, str]] | None:
            """Count the call, apply the delay and any failure; the path and query."""
            parts = urllib.parse.urlsplit(self.path)
            path = parts.path
            with standin._lock:
                standin.calls[path] += 1
            if standin.delay:
                time.sleep(standin.delay)
            failure = standin.failures.get(path)
            if failure is not None:
                status, body = failure
                self._answer((status, [("Content-Type", "application/json")], body))
                return None
            return path, dict(urllib.parse.parse_qsl(parts.query))

        def do_GET(self) -> None:
            prelude = self._prelude()
            if prelude is None:
                return
            path, query = prelude
            if path == "/login/oauth/authorize":
                self._answer(standin.authorize(query))
            elif path in ("/user", "/user/emails"):
                self._answer(
                    standin.api(
                        path,
                        self.headers.get("Authorization", ""),
                        self.headers.get("User-Agent", ""),
                    )
                )
            else:
                self._answer(_json(404, {"message": "Not Found"}))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            prelude = self._prelude()
            if prelude is None:
                return
            path, _ = prelude
            if path == "/login/oauth/access_token":
                form = dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace")))
                self._answer(standin.access_token(form, self.headers.get("Accept", "")))
            else:
                self._answer(_json(404, {"message": "Not Found"}))

    return Handler


@contextlib.contextmanager
def github_standin(
    *,
    client_id: str = "standin-client-id",
    client_secret: str = "standin-client-secret",
    callback_url: str | None = None,
) -> Iterator[GitHubStandin]:
    """A running stand-in of GitHub for the body of the ``with``."""
    standin = GitHubStandin(
        client_id=client_id, client_secret=client_secret, callback_url=callback_url
    ).start()
    try:
        yield standin
    finally:
        standin.stop()
