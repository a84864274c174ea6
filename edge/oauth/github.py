"""Login with GitHub: the edge is a GitHub OAuth app, GitHub the identity provider.

Three calls, all through :func:`edge.oauth.outbound.fetch` with a bounded size and a
deadline: the browser is sent to GitHub's authorize URL; ``/callback`` exchanges the code
GitHub sends back for a GitHub access token; that token reads the user (``/user``) and
their e-mail addresses (``/user/emails``). The GitHub token is used for those two reads
and dropped: the edge issues its own tokens and never stores or logs GitHub's.

The three URLs are settings (``GITHUB_AUTHORIZE_URL``, ``GITHUB_TOKEN_URL``,
``GITHUB_API_URL``) so that tests can point them at a local stand-in of GitHub.

Failures are :class:`GitHubError` with a ``kind`` the callback page can switch on and a
message safe to show and log (no code, token or secret in it).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any, Literal, TypeAlias

from edge.oauth.outbound import Fetched, FetchError, fetch
from edge.oauth.records import GitHubUser

SCOPE = "read:user user:email"
MAX_BYTES = 64 * 1024  # GitHub's answers here are a few KiB; a user with many e-mails fits

_ERROR_CODE = re.compile(r"[a-z_]{1,60}")  # GitHub's error codes, shown; anything else is not

GitHubErrorKind: TypeAlias = Literal[
    "bad_code",  # the code is unknown, used or expired (GitHub: bad_verification_code)
    "refused",  # GitHub refused the exchange otherwise (wrong client secret, redirect URI)
    "bad_token",  # the GitHub token was refused (401)
    "unavailable",  # no answer, a network failure or a 5xx
    "unexpected",  # an answer of a shape GitHub does not give
]


class GitHubError(Exception):
    """GitHub could not tell who signed in; ``str()`` / ``message`` are safe to show."""

    def __init__(self, kind: GitHubErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: GitHubErrorKind = kind
        self.message = message


class GitHubLogin:
    """GitHub's OAuth web flow for one GitHub OAuth app (client id and secret)."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        authorize_url: str,
        token_url: str,
        api_url: str,
        timeout: float = 10.0,
        ca_file: str | None = None,
        allow_signup: bool | None = None,
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._authorize_url = authorize_url
        self._token_url = token_url
        self._api_url = api_url.rstrip("/")
        self._timeout = timeout
        self._ca_file = ca_file
        self._allow_signup = allow_signup

    def __repr__(self) -> str:  # the secret stays out of reprs and tracebacks
        return f"GitHubLogin(client_id={self._client_id!r}, token_url={self._token_url!r})"

    def authorize_url(self, *, state: str, redirect_uri: str) -> str:
        """Where to send the browser: GitHub asks the user (once) and comes back to
        ``redirect_uri`` with ``code`` and ``state``."""
        params = {
            "client_id": self._client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "scope": SCOPE,
        }
        if self._allow_signup is not None:
            params["allow_signup"] = "true" if self._allow_signup else "false"
        joiner = "&" if "?" in self._authorize_url else "?"
        return self._authorize_url + joiner + urllib.parse.urlencode(params)

    async def exchange(self, code: str, redirect_uri: str) -> str:
        """The GitHub access token for ``code`` (never logged, never stored)."""
        form = urllib.parse.urlencode(
            {
                "client_id": self._client_id,
                "client_secret": self._client_secret,
                "code": code,
                "redirect_uri": redirect_uri,
            }
        ).encode("ascii")
        answer = await self._call(
            self._token_url,
            "POST",
            [
                ("Accept", "application/json"),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("User-Agent", "edge"),
            ],
            form,
        )
        if answer.status != 200:
            raise self._status_error("the token endpoint", answer.status)
        document = _json_object(answer, "the token endpoint")
        error = document.get("error")
        if error is not None:
            # GitHub answers 200 with an error member (its OAuth errors are not RFC 6749's)
            if error == "bad_verification_code":
                raise GitHubError("bad_code", "the GitHub code is invalid, used or expired")
            shown = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else "?"
            raise GitHubError("refused", f"GitHub refused the code exchange ({shown})")
        token = document.get("access_token")
        if not isinstance(token, str) or not token:
            raise GitHubError("unexpected", "GitHub's token answer holds no access token")
        return token

    async def user(self, github_token: str) -> GitHubUser:
        """Who the token belongs to: id, login, name and the primary verified e-mail.

        The e-mail is None when the user has no verified primary address, or when
        ``/user/emails`` is not readable with the token (403/404: an app or token without
        the e-mail permission); the login still identifies the user.
        """
        profile = await self._api(github_token, "/user")
        if profile.status != 200:
            raise self._status_error("/user", profile.status)
        document = _json_object(profile, "/user")
        github_id = document.get("id")
        login = document.get("login")
        name = document.get("name")
        if (
            not isinstance(github_id, int)
            or isinstance(github_id, bool)
            or github_id <= 0
            or not isinstance(login, str)
            or not login
        ):
            raise GitHubError("unexpected", "GitHub's /user answer has no valid id and login")
        if not isinstance(name, str) or not name:
            name = None
        return GitHubUser(
            github_id=github_id, login=login, email=await self._email(github_token), name=name
        )

    async def _email(self, github_token: str) -> str | None:
        answer = await self._api(github_token, "/user/emails")
        if answer.status in (403, 404):
            return None
        if answer.status != 200:
            raise self._status_error("/user/emails", answer.status)
        try:
            addresses = json.loads(answer.body)
        except (ValueError, UnicodeDecodeError):
            addresses = None
        if not isinstance(addresses, list):
            raise GitHubError("unexpected", "GitHub's /user/emails answer is not a list")
        for entry in addresses:
            if (
                isinstance(entry, dict)
                and entry.get("primary") is True
                and entry.get("verified") is True
                and isinstance(entry.get("email"), str)
                and entry["email"]
            ):
                return str(entry["email"])
        return None

    async def _api(self, github_token: str, path: str) -> Fetched:
        return await self._call(
            self._api_url + path,
            "GET",
            [
                ("Authorization", f"Bearer {github_token}"),
                ("Accept", "application/vnd.github+json"),
                ("User-Agent", "edge"),
            ],
            b"",
        )

    async def _call(
        self, url: str, method: str, headers: list[tuple[str, str]], body: bytes
    ) -> Fetched:
        try:
            return await fetch(
                url,
                method=method,
                headers=headers,
                body=body,
                timeout=self._timeout,
                max_bytes=MAX_BYTES,
                ca_file=self._ca_file,
            )
        except FetchError as exc:
            if exc.kind in ("too_large", "protocol"):
                raise GitHubError("unexpected", f"GitHub's answer is unusable: {exc}") from None
            raise GitHubError("unavailable", f"GitHub is unreachable: {exc}") from None
        except ValueError:
            raise GitHubError("unexpected", "a GitHub URL setting cannot be fetched") from None

    @staticmethod
    def _status_error(what: str, status: int) -> GitHubError:
        if status == 401:
            return GitHubError("bad_token", f"GitHub refused the token ({what}: 401)")
        if status >= 500:
            return GitHubError("unavailable", f"GitHub failed ({what}: {status})")
        return GitHubError("unexpected", f"GitHub answered {status} ({what})")


def _json_object(answer: Fetched, what: str) -> dict[str, Any]:
    try:
        document = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict):
        raise GitHubError("unexpected", f"GitHub's answer ({what}) is not a JSON object")
    return document
