"""GitHub login (edge.oauth.github) end to end over real sockets against the local stand-in
of GitHub (tests/github_standin.py; GitHub itself cannot be reached from tests): the
authorize redirect, the code exchange, the user and the primary verified e-mail, and every
failure GitHub can answer, each mapped to its kind without a code, token or secret in the
message."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from edge.oauth.github import GitHubError, GitHubLogin
from edge.oauth.records import GitHubUser
from tests.github_standin import GitHubStandin, StandinEmail, github_standin

CALLBACK = "https://auth.example.test/callback"


@pytest.fixture
def standin() -> Iterator[GitHubStandin]:
    with github_standin(callback_url=CALLBACK) as running:
        yield running


def login_for(standin: GitHubStandin, **kw: Any) -> GitHubLogin:
    return GitHubLogin(
        client_id=standin.client_id,
        client_secret=kw.pop("client_secret", standin.client_secret),
        authorize_url=standin.authorize_url,
        token_url=standin.token_url,
        api_url=standin.api_url,
        **kw,
    )


def browse(url: str) -> tuple[int, str]:
    """What a browser gets for ``url``: the status and the Location (not followed)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location") or ""
    finally:
        conn.close()


def redirected_code(github: GitHubLogin, state: str = "st-1") -> str:
    status, location = browse(github.authorize_url(state=state, redirect_uri=CALLBACK))
    assert status == 302
    assert location.startswith(CALLBACK + "?")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert query["state"] == state
    return query["code"]


def failure(coro: Any, *secrets: str) -> GitHubError:
    with pytest.raises(GitHubError) as caught:
        asyncio.run(coro)
    for secret in secrets:
        assert secret not in str(caught.value)
    return caught.value


def test_the_whole_login(standin: GitHubStandin) -> None:
    standin.add_user(
        "octo",
        583231,
        name="The Octocat",
        emails=[
            StandinEmail("old@example.org", verified=True),
            StandinEmail("octo@example.org", primary=True, verified=True),
        ],
    )
    github = login_for(standin)
    url = github.authorize_url(state="s t&x", redirect_uri=CALLBACK)
    asked = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert asked == {
        "client_id": standin.client_id,
        "redirect_uri": CALLBACK,
        "state": "s t&x",
        "scope": "read:user user:email",
    }
    code = redirected_code(github, "s t&x")

    async def main() -> GitHubUser:
        token = await github.exchange(code, CALLBACK)
        return await github.user(token)

    user = asyncio.run(main())
    assert user == GitHubUser(
        github_id=583231, login="octo", email="octo@example.org", name="The Octocat"
    )
    assert standin.calls["/login/oauth/access_token"] == 1
    assert standin.calls["/user"] == 1 and standin.calls["/user/emails"] == 1


def test_allow_signup_is_passed_when_set(standin: GitHubStandin) -> None:
    url = login_for(standin, allow_signup=False).authorize_url(state="s", redirect_uri=CALLBACK)
    assert dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["allow_signup"] == (
        "false"
    )


def test_the_user_signed_in_next_is_who_comes_back(standin: GitHubStandin) -> None:
    standin.add_user("first", 1)
    standin.add_user("second", 2, sign_in=False)
    github = login_for(standin)
    first = redirected_code(github)
    standin.sign_in("second")
    second = redirected_code(github)

    async def main() -> list[str]:
        out = []
        for code in (first, second):
            out.append((await github.user(await github.exchange(code, CALLBACK))).login)
        return out

    assert asyncio.run(main()) == ["first", "second"]


@pytest.mark.parametrize(
    ("emails", "expected"),
    [
        ([], None),
        ([StandinEmail("a@x.test", primary=True, verified=False)], None),
        (
            [
                StandinEmail("a@x.test", primary=True, verified=False),
                StandinEmail("b@x.test", primary=False, verified=True),
            ],
            None,
        ),
        (
            [
                StandinEmail("b@x.test", primary=False, verified=True),
                StandinEmail("a@x.test", primary=True, verified=True),
            ],
            "a@x.test",
        ),
    ],
)
def test_only_the_primary_verified_email_counts(
    standin: GitHubStandin, emails: list[StandinEmail], expected: str | None
) -> None:
    standin.add_user("mail", 7, emails=emails)
    github = login_for(standin)
    user = asyncio.run(github.user(standin.token_for("mail")))
    assert user.email == expected and user.name is None


@pytest.mark.parametrize("status", [403, 404])
def test_emails_not_readable_leave_the_email_out(standin: GitHubStandin, status: int) -> None:
    standin.add_user("private", 8)
    standin.fail("/user/emails", status, b'{"message": "Resource not accessible"}')
    user = asyncio.run(login_for(standin).user(standin.token_for("private")))
    assert user.login == "private" and user.email is None


def test_a_code_is_good_once(standin: GitHubStandin) -> None:
    standin.add_user("once", 3)
    github = login_for(standin)
    code = redirected_code(github)

    async def main() -> None:
        await github.exchange(code, CALLBACK)
        with pytest.raises(GitHubError) as caught:
            await github.exchange(code, CALLBACK)
        assert caught.value.kind == "bad_code"
        assert code not in str(caught.value)

    asyncio.run(main())


def test_an_unknown_code(standin: GitHubStandin) -> None:
    err = failure(login_for(standin).exchange("nope-c0de", CALLBACK), "nope-c0de")
    assert err.kind == "bad_code"


def test_a_wrong_client_secret(standin: GitHubStandin) -> None:
    standin.add_user("octo", 3)
    github = login_for(standin, client_secret="wr0ng-secret")
    code = redirected_code(github)
    err = failure(github.exchange(code, CALLBACK), "wr0ng-secret", code)
    assert err.kind == "refused"
    assert "incorrect_client_credentials" in str(err)
    assert "wr0ng-secret" not in repr(github)


def test_a_redirect_uri_other_than_the_one_authorized(standin: GitHubStandin) -> None:
    standin.add_user("octo", 3)
    github = login_for(standin)
    code = redirected_code(github)
    err = failure(github.exchange(code, CALLBACK + "/elsewhere"), code)
    assert err.kind == "refused"


def test_the_user_denies(standin: GitHubStandin) -> None:
    standin.add_user("octo", 3)
    standin.deny = True
    status, location = browse(login_for(standin).authorize_url(state="s9", redirect_uri=CALLBACK))
    assert status == 302
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert query["error"] == "access_denied" and query["state"] == "s9"
    assert "code" not in query


def test_the_standin_checks_client_and_redirect_uri(standin: GitHubStandin) -> None:
    standin.add_user("octo", 3)
    other = GitHubLogin(
        client_id="someone-else",
        client_secret="x",
        authorize_url=standin.authorize_url,
        token_url=standin.token_url,
        api_url=standin.api_url,
    )
    assert browse(other.authorize_url(state="s", redirect_uri=CALLBACK))[0] == 404
    github = login_for(standin)
    assert browse(github.authorize_url(state="s", redirect_uri="https://evil.test/cb"))[0] == 400
    assert browse(github.authorize_url(state="s", redirect_uri=CALLBACK + "/below"))[0] == 302


def test_a_refused_token(standin: GitHubStandin) -> None:
    err = failure(login_for(standin).user("gho_n0t-a-token"), "gho_n0t-a-token")
    assert err.kind == "bad_token"


@pytest.mark.parametrize("path", ["/login/oauth/access_token", "/user", "/user/emails"])
def test_github_failing_is_unavailable(standin: GitHubStandin, path: str) -> None:
    standin.add_user("octo", 3)
    token = standin.token_for("octo")
    standin.fail(path, 502, b"<html>bad gateway</html>")
    github = login_for(standin)
    call = github.exchange("c0de", CALLBACK) if "oauth" in path else github.user(token)
    err = failure(call, "c0de", token, standin.client_secret)
    assert err.kind == "unavailable"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/login/oauth/access_token", b"not json"),
        ("/login/oauth/access_token", b'{"token_type": "bearer"}'),
        ("/login/oauth/access_token", b'["access_token"]'),
        ("/user", b'{"id": "12", "login": "octo"}'),
        ("/user", b'{"id": true, "login": "octo"}'),
        ("/user", b'{"id": 12}'),
        ("/user/emails", b'{"email": "a@b"}'),
    ],
)
def test_unexpected_answers(standin: GitHubStandin, path: str, body: bytes) -> None:
    standin.add_user("octo", 3)
    token = standin.token_for("octo")
    standin.fail(path, 200, body)
    github = login_for(standin)
    call = github.exchange("c0de", CALLBACK) if "oauth" in path else github.user(token)
    assert failure(call, "c0de", token, standin.client_secret).kind == "unexpected"


def test_answers_are_bounded(standin: GitHubStandin) -> None:
    standin.add_user("octo", 3)
    token = standin.token_for("octo")
    padding = "x" * (64 * 1024)
    standin.fail("/user", 200, json.dumps({"id": 3, "login": "octo", "bio": padding}).encode())
    err = failure(login_for(standin).user(token), token)
    assert err.kind == "unexpected" and "limit 65536" in str(err)
    standin.fail("/user", 200, json.dumps({"id": 3, "login": "octo", "bio": "x" * 60000}).encode())
    assert asyncio.run(login_for(standin).user(token)).github_id == 3


def test_calls_have_a_deadline(standin: GitHubStandin) -> None:
    standin.add_user("octo", 3)
    token = standin.token_for("octo")
    standin.delay = 1.5
    started = time.monotonic()
    err = failure(login_for(standin, timeout=0.3).user(token), token)
    assert err.kind == "unavailable" and "0.3 s" in str(err)
    assert time.monotonic() - started < 1.2


def test_github_down(standin: GitHubStandin) -> None:
    standin.stop()
    err = failure(login_for(standin).exchange("c0de", CALLBACK), "c0de", standin.client_secret)
    assert err.kind == "unavailable"
