"""The client command line (``edge token|proxy|...``) against a real edge, as a subprocess.

Each command runs as ``python -m edge ...`` with ``HOME`` and ``XDG_CONFIG_HOME`` in the
test's directory, so the config file is the test's own. Every run is checked for what must
never happen: a traceback, or a failure message longer than one line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import select
import shlex
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509

from edge.auth.secrets import new_admin_token
from tests.api_client import call as api_call
from tests.helpers import ROOT, EdgeProcess, Upstream, free_port, http_request, wait_for

Done = subprocess.CompletedProcess[str]
CLIENT_ENV = ("API_URL", "TOKEN", "ADMIN_TOKEN", "EDGE_PROFILE", "NO_COLOR", "XDG_CONFIG_HOME")
ANSI = "\x1b["


# ---------------------------------------------------------------------------- helpers


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The test environment without client settings; HOME and XDG_CONFIG_HOME under ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env["PYTHONPATH"] = str(ROOT)
    env["HOME"] = str(home / "home")
    env["XDG_CONFIG_HOME"] = str(home / "xdg")
    env.update(extra)
    return env


def cli(command: str, *more: str, env: dict[str, str], stdin: str | None = None) -> Done:
    """Run ``edge {command} {more...}`` (``command`` split like a shell would)."""
    done = subprocess.run(
        [sys.executable, "-m", "edge", *shlex.split(command), *more],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=env["HOME"],
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    if done.returncode and not done.stderr.startswith("usage:"):
        # one clear line: "edge: ..."
        assert done.stderr.startswith("edge: "), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done


def ok(done: Done) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def as_json(done: Done) -> Any:
    return json.loads(ok(done))


def failed(done: Done, status: int = 1) -> str:
    """The error line of a command that failed with ``status`` (nothing on stdout)."""
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    return done.stderr


def config_file(home: Path) -> Path:
    return home / "xdg" / "edge" / "config.toml"


def write_profiles(home: Path, text: str) -> Path:
    path = config_file(home)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(text)
    path.chmod(0o600)
    return path


def url(edge: EdgeProcess) -> str:
    return f"http://127.0.0.1:{edge.api_port}"


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # bound and closed again: nothing listens


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path


@pytest.fixture
def env(api: EdgeProcess, admin: str, home: Path) -> dict[str, str]:
    """Settings from the environment: API_URL and TOKEN of the test edge's admin."""
    return cli_env(home, API_URL=url(api), TOKEN=admin)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


# ---------------------------------------------------------------------------- settings


def test_settings_layers_flag_env_file_default(home: Path) -> None:
    def show(options: str = "", **extra: str) -> dict[str, Any]:
        doc = as_json(cli(f"config show -o json {options}", env=cli_env(home, **extra)))
        assert isinstance(doc, dict)
        return doc

    # nothing anywhere: the defaults
    doc = show()
    assert doc["api_url"] == "http://127.0.0.1:9000" and doc["api_url_source"] == "default"
    assert doc["token"] is None and doc["profile"] == "default"
    assert doc["config_file"] == str(config_file(home))

    file_token = "edge_FILEfileFILEfileFILEfile0123456789abcdefghij"
    prod_token = "edge_PRODprodPRODprodPRODprod0123456789abcdefghij"
    write_profiles(
        home,
        f'[profiles.default]\napi_url = "http://file.example:9000"\ntoken = "{file_token}"\n\n'
        f'[profiles.prod]\napi_url = "https://prod.example"\ntoken = "{prod_token}"\n',
    )
    doc = show()  # the file beats the defaults
    assert doc["api_url"] == "http://file.example:9000"
    assert doc["api_url_source"].startswith("profile 'default'")
    assert doc["token"] == "edge_FIL…hij" and doc["token_source"].startswith("profile 'default'")

    env_token = "edge_ENVenvENVenvENVenvENVenv0123456789abcdefghij"
    doc = show(API_URL="http://env.example:9000", ADMIN_TOKEN=env_token)  # env beats the file
    assert doc["api_url"] == "http://env.example:9000" and doc["api_url_source"] == "env API_URL"
    assert doc["token"] == "edge_ENV…hij" and doc["token_source"] == "env ADMIN_TOKEN"
    doc = show(ADMIN_TOKEN=env_token, TOKEN=prod_token)  # TOKEN beats ADMIN_TOKEN
    assert doc["token_source"] == "env TOKEN" and doc["token"] == "edge_PRO…hij"

    flag_token = "edge_FLAGflagFLAGflagFLAGflag0123456789abcdefghij"
    doc = show(  # flags beat the environment
        f"--api-url http://flag.example:1 --token {flag_token}",
        API_URL="http://env.example:9000",
        TOKEN=env_token,
    )
    assert doc["api_url"] == "http://flag.example:1" and doc["api_url_source"] == "--api-url"
    assert doc["token"] == "edge_FLA…hij" and doc["token_source"] == "--token"

    # --profile picks a profile; EDGE_PROFILE too, and the flag wins
    doc = show("--profile prod")
    assert doc["api_url"] == "https://prod.example" and doc["profile_source"] == "--profile"
    assert doc["token"] == "edge_PRO…hij"
    assert show(EDGE_PROFILE="prod")["api_url"] == "https://prod.example"
    assert show("--profile default", EDGE_PROFILE="prod")["api_url"].startswith("http://file")
    # the options are accepted before the subcommand too
    assert as_json(cli("config --profile prod show -o json", env=cli_env(home)))["profile"] == (
        "prod"
    )

    # default_profile chooses when nothing else does (edge config use writes it)
    ok(cli("config use prod", env=cli_env(home)))
    assert show()["profile"] == "prod"
    assert show()["profile_source"] == "default_profile in the config file"

    # a profile that is not there, a bad URL, a bad file: exit 2, one line
    missing = failed(cli("token list --profile staging", env=cli_env(home)), 2)
    assert "no profile 'staging'" in missing
    bad_url = failed(cli("config show", env=cli_env(home, API_URL="ftp://x")), 2)
    assert "invalid API URL 'ftp://x' (from env API_URL)" in bad_url
    config_file(home).write_text("profiles = [")
    assert "invalid config file" in failed(cli("config show", env=cli_env(home)), 2)


def test_settings_layers_decide_what_a_real_call_uses(
    api: EdgeProcess, admin: str, home: Path
) -> None:
    other = new_admin_token()
    # the file: a closed port, the admin token
    write_profiles(home, f'[profiles.default]\napi_url = "{closed_url()}"\ntoken = "{admin}"\n')
    assert "cannot reach" in failed(cli("token info", env=cli_env(home)))
    # the environment's URL beats the file's; the file's token is used
    reached = as_json(cli("token info -o json", env=cli_env(home, API_URL=url(api))))
    assert reached["name"] == "admin"
    # a flag's token beats the file's (and is refused)
    refused = cli(f"token info --token {other}", env=cli_env(home, API_URL=url(api)))
    assert "(401)" in failed(refused)
    # the environment's token beats the file's (refused too); the flag beats the environment
    assert "(401)" in failed(cli("token info", env=cli_env(home, API_URL=url(api), TOKEN=other)))
    ok(cli(f"token info --token {admin}", env=cli_env(home, API_URL=url(api), TOKEN=other)))
    # --api-url beats API_URL
    ok(cli(f"token info --api-url {url(api)}", env=cli_env(home, API_URL=closed_url())))


def test_login_writes_a_0600_file_and_no_command_prints_the_token(
    api: EdgeProcess, admin: str, home: Path
) -> None:
    env = cli_env(home)
    path = config_file(home)
    # a refused token is not saved
    refused = cli(f"login --api-url {url(api)} --token {new_admin_token()}", env=env)
    assert "(401)" in failed(refused)
    assert not path.exists()

    done = cli(f"login --api-url {url(api)} --token {admin}", env=env)
    out = ok(done)
    assert "as token 'admin'" in out and f"{admin[:8]}…{admin[-3:]}" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = tomllib.loads(path.read_text())
    assert saved["profiles"]["default"] == {"api_url": url(api), "token": admin}
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temporary file left

    # the saved profile is used with nothing in the environment
    assert as_json(cli("token info -o json", env=env))["name"] == "admin"

    # a second profile, the token read from stdin
    stdin_login = cli(
        f"login --profile second --api-url {url(api)} --token -", env=env, stdin=admin + "\n"
    )
    ok(stdin_login)
    saved = tomllib.loads(path.read_text())
    assert saved["profiles"]["second"]["token"] == admin
    assert "default_profile" not in saved  # another profile never changes the default

    outputs = [refused, done, stdin_login]
    for command in (
        "config show",
        "config show -o json",
        "config show -o yaml",
        "config show -o csv",
        "config list",
        "config list -o json",
        "config path",
        f"config set api_url {url(api)} --profile third",
        f"config set token {admin} --profile third",
        "config use third",
        "logout --profile second",
        f"login --no-verify --api-url {url(api)} --token {admin}",
        "token info",
    ):
        outputs.append(cli(command, env=env))
        assert outputs[-1].returncode == 0, (command, outputs[-1].stderr)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for output in outputs:
        assert admin not in output.stdout + output.stderr
    saved = tomllib.loads(path.read_text())
    assert saved["default_profile"] == "third"
    assert saved["profiles"]["third"] == {"api_url": url(api), "token": admin}
    assert "token" not in saved["profiles"]["second"]

    # unset takes one field out of one profile, and keeps the file 0600
    ok(cli("config unset token --profile third", env=env))
    saved = tomllib.loads(path.read_text())
    assert saved["profiles"]["third"] == {"api_url": url(api)}
    assert saved["profiles"]["default"]["token"] == admin
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "edge: no token" in failed(cli("token info", env=env), 2)
    assert failed(cli("config unset colour --profile third", env=env), 2).startswith("usage:")
    ok(cli("config unset api_url --profile third", env=env))
    assert tomllib.loads(path.read_text())["profiles"]["third"] == {}
    assert "is not set" in ok(cli("config unset api_url --profile third", env=env))
    ok(cli(f"config set token {admin} --profile third", env=env))
    ok(cli(f"config set api_url {url(api)} --profile third", env=env))

    # a file readable by others is reported (never its content) and rewritten 0600
    path.chmod(0o644)
    warned = cli("config show", env=env)
    assert "readable by others" in warned.stderr and admin not in warned.stderr
    ok(cli(f"config set api_url {url(api)}", env=env))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_login_with_a_personal_access_token(api: EdgeProcess, admin: str, home: Path) -> None:
    port = api.api_port
    # a user, a project, a membership and a PAT, through the API
    body = {"name": "Ann", "email": "ann@example.com"}
    uid = api_call(port, "POST", "/api/v1/users/", admin, body).doc["id"]
    pid = api_call(port, "POST", "/api/v1/projects/", admin, {"name": "shop"}).doc["id"]
    member = {"role": "maintainer", "accepted": True}
    api_call(port, "PUT", f"/api/v1/projects/{pid}/members/{uid}", admin, member)
    tokens = f"/api/v1/projects/{pid}/tokens"
    pat = api_call(port, "POST", tokens, admin, {"user_id": uid, "name": "laptop"}).data
    token = pat["token"]

    env = cli_env(home)
    path = config_file(home)
    done = cli(f"login --api-url {url(api)} --token -", env=env, stdin=token + "\n")
    out = ok(done)
    assert "as ann@example.com in project 'shop' (maintainer)" in out, out
    assert token not in out + done.stderr
    saved = tomllib.loads(path.read_text())
    assert saved["profiles"]["default"] == {"api_url": url(api), "token": token}
    # later commands send it
    me = as_json(cli("pat me -o json", env=env))
    assert me["user"]["id"] == uid and me["project"]["id"] == pid
    # it opens no admin endpoint: a PAT is checked where a PAT can be used
    assert "(401)" in failed(cli("token info", env=env))

    # a mistyped PAT and a revoked one are refused, and not saved
    mistyped = token[:-1] + ("2" if token[-1] != "2" else "3")
    for wrong in (mistyped, "revoked"):
        if wrong == "revoked":
            revoked = api_call(port, "DELETE", f"{tokens}/{pat['id']}?user_id={uid}", admin)
            assert revoked.status == 200, revoked.raw
            wrong = token
        refused = cli(f"login --profile other --api-url {url(api)} --token -", env=env, stdin=wrong)
        assert "(401)" in failed(refused)
        assert "other" not in tomllib.loads(path.read_text())["profiles"]
    # an admin token is still checked against the token endpoint
    assert "as token 'admin'" in ok(cli(f"login --api-url {url(api)} --token {admin}", env=env))


# ---------------------------------------------------------------------------- tokens


def test_token_crud_end_to_end(api: EdgeProcess, env: dict[str, str], home: Path) -> None:
    created = cli("token create ci --email ops@example.com -o json", env=env)
    doc = as_json(created)
    assert doc["name"] == "ci" and doc["cert_email"] == "ops@example.com"
    token = doc["token"]
    assert re.fullmatch(r"edge_[1-9A-HJ-NP-Za-km-z]{44}", token)
    assert "shown this once" in created.stderr

    assert [t["name"] for t in as_json(cli("token list -o json", env=env))] == ["admin", "ci"]
    shown = as_json(cli("token show ci -o json", env=env))
    assert shown["hash"].startswith("sha256:") and "token" not in shown

    # the new token, on its own record
    own = cli_env(home, API_URL=url(api), TOKEN=token)
    assert as_json(cli("token info -o json", env=own))["name"] == "ci"
    changed = as_json(cli("token email me@example.com -o json", env=own))
    assert changed["cert_email"] == "me@example.com"
    assert as_json(cli("token email --clear -o json", env=own))["cert_email"] is None
    assert "403 forbidden" in failed(cli("token list", env=own))

    generated = as_json(cli("token generate -o json", env=env))
    assert re.fullmatch(r"token-[0-9a-f]{8}", generated["name"])

    assert "deleted token ci" in ok(cli("token delete ci", env=env))
    again = failed(cli("token delete ci", env=env))
    assert re.fullmatch(r"edge: 404 token_not_found: .+ \(request \w+\)\n", again)
    assert "the token was refused (401)" in failed(cli("token info", env=own))
    assert "409 admin_token_protected" in failed(cli("token delete admin", env=env))


# ---------------------------------------------------------------------------- proxies


def test_proxy_created_with_the_cli_is_served(
    api: EdgeProcess, env: dict[str, str], upstream: Upstream
) -> None:
    def status_for(host: str) -> int:
        raw = http_request(api.http_port, f"GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return int(raw.split(b" ", 2)[1])

    assert status_for("app.test") == 404
    doc = as_json(
        cli(
            f"proxy create App.Test --target {upstream.url} --header X-Env=test "
            "--response-header X-Served=edge --no-https -o json",
            env=env,
        )
    )
    assert doc["hostname"] == "app.test" and doc["target_url"] == upstream.url
    assert doc["custom_headers"] == {"X-Env": "test"} and doc["enable_https"] is False
    wait_for(lambda: status_for("app.test") == 200, timeout=5)
    sent = {k.lower(): v for k, v in upstream.requests[-1]["headers"].items()}
    assert sent["x-env"] == "test"
    assert [p["hostname"] for p in as_json(cli("proxy list -o json", env=env))] == ["app.test"]

    # update: read, change, write back the whole document
    updated = as_json(
        cli(
            "proxy update app.test --remove-header x-env --header X-New=1 --disable -o json",
            env=env,
        )
    )
    assert updated["custom_headers"] == {"X-New": "1"} and updated["enabled"] is False
    assert updated["enable_https"] is False  # kept, not put back to its default
    assert updated["custom_response_headers"] == {"X-Served": "edge"}
    wait_for(lambda: status_for("app.test") != 200, timeout=5)
    assert "nothing to change" in failed(cli("proxy update app.test", env=env), 2)

    # the sub-resources
    auth = as_json(
        cli("proxy auth set app.test --auth-proxy auth.example.com --user alice -o json", env=env)
    )
    assert auth["auth_enabled"] is True and auth["auth_required_users"] == ["alice"]
    assert as_json(cli("proxy auth show app.test -o json", env=env)) == auth
    assert "back to the defaults" in ok(cli("proxy auth clear app.test", env=env))
    assert as_json(cli("proxy auth show app.test -o json", env=env))["auth_enabled"] is False
    routes = as_json(cli("proxy routes set app.test --mode selective --use api -o json", env=env))
    assert routes == {"route_mode": "selective", "enabled_routes": ["api"], "disabled_routes": []}
    assert as_json(cli("proxy routes show app.test -o json", env=env)) == routes
    mcp = as_json(cli("proxy mcp set app.test --endpoint /mcp --scope tools -o json", env=env))
    assert mcp["resource_endpoint"] == "/mcp" and mcp["resource_scopes"] == ["tools"]
    ok(cli("proxy mcp clear app.test", env=env))

    # a wildcard host name goes through the path percent-encoded
    ok(cli(f"proxy create '*.wild.test' --target {upstream.url}", env=env))
    assert as_json(cli("proxy show '*.wild.test' -o json", env=env))["hostname"] == "*.wild.test"

    assert "deleted proxy app.test" in ok(cli("proxy delete app.test", env=env))
    assert "404 proxy_not_found" in failed(cli("proxy show app.test", env=env))


def test_proxy_set_sends_only_the_changed_fields_with_patch(
    api: EdgeProcess, env: dict[str, str], upstream: Upstream
) -> None:
    created = as_json(
        cli(
            f"proxy create app.test --target {upstream.url} --header X-Env=test --no-https "
            "--cert-email ops@example.com --acme-directory-url http://127.0.0.1:14000/dir "
            "-o json",
            env=env,
        )
    )
    assert created["cert_email"] == "ops@example.com"
    assert created["acme_directory_url"] == "http://127.0.0.1:14000/dir"

    def calls(done: Done) -> list[str]:
        """The requests a command made (``--debug``): method and path."""
        found = re.findall(r"^edge: debug: (\w+) http://[^/]+(\S+) -> \d+", done.stderr, re.M)
        return [f"{method} {path}" for method, path in found]

    one = "/api/v1/proxy/targets/app.test"
    # one PATCH of the fields given: no read first, no whole document written back
    done = cli("proxy set app.test --cert-email dev@example.com --disable --debug -o json", env=env)
    assert calls(done) == [f"PATCH {one}"]
    changed = as_json(done)
    assert changed["cert_email"] == "dev@example.com" and changed["enabled"] is False
    assert changed["enable_https"] is False and changed["custom_headers"] == {"X-Env": "test"}
    # update is the same command; --unset sends null: the field back to its default
    done = cli(
        "proxy update app.test --unset enable_https --unset acme_directory_url "
        "--acme-directory-url https://ca.example.com/dir --debug -o json",
        env=env,
    )
    assert calls(done) == [f"PATCH {one}"]
    changed = as_json(done)
    assert changed["enable_https"] is True and changed["acme_directory_url"] is None
    # header edits need the current map: one read, then a PATCH of that field only
    done = cli("proxy set app.test --header X-New=1 --remove-header x-env --debug -o json", env=env)
    assert calls(done) == [f"GET {one}", f"PATCH {one}"]
    assert as_json(done)["custom_headers"] == {"X-New": "1"}
    assert as_json(cli("proxy show app.test -o json", env=env))["cert_email"] == "dev@example.com"

    # errors name the flag; an unknown proxy is a 404
    bad = failed(cli("proxy set app.test --cert-email nobody", env=env))
    assert bad.startswith("edge: invalid cert_email (--cert-email): "), bad
    bad = failed(cli("proxy set app.test --acme-directory-url http://ca.example.com/d", env=env))
    assert bad.startswith("edge: invalid acme_directory_url (--acme-directory-url): "), bad
    assert "404 proxy_not_found" in failed(cli("proxy set nope.test --disable", env=env))
    assert "nothing to change" in failed(cli("proxy set app.test", env=env), 2)


# ---------------------------------------------------------------------------- output


def test_every_output_format_parses(api: EdgeProcess, env: dict[str, str]) -> None:
    ok(cli("token create ci", env=env))
    ok(cli("token create deploy", env=env))
    ok(cli("token create mail --email ops@example.com", env=env))
    expected = as_json(cli("token list -o json", env=env))
    assert [t["name"] for t in expected] == ["admin", "ci", "deploy", "mail"]

    # csv: a header row, then one row per record with every field
    rows = list(csv.DictReader(io.StringIO(ok(cli("token list -o csv", env=env)))))
    assert [r["name"] for r in rows] == ["admin", "ci", "deploy", "mail"]
    assert set(rows[0]) == {"name", "cert_email", "created_at", "created_by"}
    assert rows[3]["cert_email"] == "ops@example.com" and rows[0]["cert_email"] == ""
    assert [r["created_at"] for r in rows] == [t["created_at"] for t in expected]

    # yaml: a block sequence of mappings, with the values json gave
    text = ok(cli("token list -o yaml", env=env))
    assert text.startswith("- name: admin\n")
    items = text.removeprefix("- ").split("\n- ")
    assert len(items) == 4
    for chunk, record in zip(items, expected, strict=True):
        lines = chunk.splitlines()
        assert all(line.startswith("  ") for line in lines[1:])
        parsed = {}
        for line in lines:
            key, _, value = line.strip().partition(": ")
            parsed[key] = None if value == "null" else json.loads(value) if '"' in value else value
        assert parsed == record

    # one record in every format
    one = as_json(cli("token show mail -o json", env=env))
    assert one["cert_email"] == "ops@example.com"
    assert ok(cli("token show mail -o yaml", env=env)).startswith("name: mail\n")
    row = list(csv.DictReader(io.StringIO(ok(cli("token show mail -o csv", env=env)))))
    assert row == [{k: "" if v is None else str(v) for k, v in one.items()}]

    # the table, piped: aligned columns, relative times, no colour codes
    table = ok(cli("token list", env=env)).splitlines()
    assert ANSI not in "\n".join(table)
    assert table[0].split() == ["NAME", "CERT_EMAIL", "CREATED", "CREATED_BY"]
    starts = [table[0].index(h) for h in ("CERT_EMAIL", "CREATED", "CREATED_BY")]
    for line in table[1:]:
        assert all(line[s - 2 : s] == "  " and line[s] != " " for s in starts), line
    assert re.search(r"  (just now|\d+s ago)  ", table[1]), table[1]


def test_colours_only_on_a_terminal(api: EdgeProcess, env: dict[str, str]) -> None:
    ok(cli("user create --name Ann --email ann@example.com", env=env))
    ok(cli("project create shop", env=env))
    ok(cli("project member-set shop ann@example.com --role owner --accepted", env=env))
    pat = "pat list --project shop --user ann@example.com"
    ok(cli("pat create laptop --project shop --user ann@example.com", env=env))

    def on_a_terminal(**extra: str) -> str:
        leader, follower = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge", *shlex.split(pat)],
                env={**env, "TERM": "xterm", **extra},
                stdout=follower,
                stderr=subprocess.DEVNULL,
            )
            os.close(follower)
            chunks = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ready, _, _ = select.select([leader], [], [], 0.5)
                if ready:
                    try:
                        data = os.read(leader, 65536)
                    except OSError:  # EIO: the child closed the terminal
                        break
                    if not data:
                        break
                    chunks.append(data)
                elif proc.poll() is not None:
                    break
            assert proc.wait(timeout=30) == 0
            return b"".join(chunks).decode()
        finally:
            os.close(leader)

    assert "\x1b[32mactive" in on_a_terminal()
    assert ANSI not in on_a_terminal(NO_COLOR="1")
    assert ANSI not in ok(cli(pat, env=env))  # piped


def test_proxy_groups_and_show_commands(api: EdgeProcess, env: dict[str, str]) -> None:
    ok(cli("proxy create app.test --target http://127.0.0.1:1 --header X-A=1", env=env))
    # --unset puts a field back to its default
    unset = as_json(cli("proxy update app.test --unset custom_headers -o json", env=env))
    assert unset["custom_headers"] == {}
    assert as_json(cli("proxy show app.test -o json", env=env))["custom_headers"] == {}

    # auth stored switched off, with a field only --set reaches
    auth = as_json(
        cli(
            "proxy auth set app.test --auth-proxy auth.test --user bob --disabled "
            "--set auth_cookie_name=sess -o json",
            env=env,
        )
    )
    assert auth["auth_enabled"] is False and auth["auth_required_users"] == ["bob"]
    assert auth["auth_cookie_name"] == "sess" and auth["auth_proxy"] == "auth.test"
    assert as_json(cli("proxy auth show app.test -o json", env=env)) == auth
    bad = failed(cli("proxy auth set app.test --auth-proxy auth.test --set auth_mode=x", env=env))
    assert bad.startswith("edge: invalid auth_mode (--mode): ")

    # every route but the skipped ones
    routes = as_json(
        cli("proxy routes set app.test --mode all --skip r1 --skip r2 -o json", env=env)
    )
    assert routes == {"route_mode": "all", "enabled_routes": [], "disabled_routes": ["r1", "r2"]}
    assert as_json(cli("proxy routes show app.test -o json", env=env)) == routes
    assert failed(cli("proxy routes set app.test --mode most", env=env), 2).startswith("usage:")

    mcp = as_json(
        cli(
            "proxy mcp set app.test --endpoint /mcp --scope read --scope write "
            "--version 2025-06-18 --stateful -o json",
            env=env,
        )
    )
    assert mcp["resource_scopes"] == ["read", "write"] and mcp["resource_stateful"] is True
    assert as_json(cli("proxy mcp show app.test -o json", env=env)) == mcp
    assert "404 proxy_not_found" in failed(cli("proxy mcp show nope.test", env=env))

    route = as_json(
        cli("route create r1 --path /r --target-type port --target 9001 -o json", env=env)
    )
    assert as_json(cli("route show r1 -o json", env=env)) == route
    assert "r1" in ok(cli("route show r1", env=env))
    assert "404 route_not_found" in failed(cli("route show r9", env=env))


def test_format_and_timeout_options(api: EdgeProcess, env: dict[str, str]) -> None:
    # --format spelled out, on the command and on its group
    listed = as_json(cli("token list --format json", env=env))
    assert [t["name"] for t in listed] == ["admin"]
    assert as_json(cli("token --format json list", env=env)) == listed
    rows = list(csv.DictReader(io.StringIO(ok(cli("token list --format csv", env=env)))))
    assert [r["name"] for r in rows] == ["admin"]
    assert ok(cli("token show admin --format yaml", env=env)).startswith("name: admin\n")
    assert "invalid choice: 'xml'" in failed(cli("token list --format xml", env=env), 2)
    # a timeout must be a number of seconds, more than 0 and at most an hour
    for value in ("0", "-1", "abc", "inf", "nan", "3601"):
        error = failed(cli(f"token list --timeout {value}", env=env), 2)
        assert error.startswith("usage:") and "argument --timeout" in error, value
    assert as_json(cli("token list --timeout 3600 -o json", env=env)) == listed


# ---------------------------------------------------------------------------- failures


def test_unreachable_api_is_one_line_and_exit_1(home: Path, silent_port: int) -> None:
    where = closed_url()
    done = cli("proxy list", env=cli_env(home, API_URL=where, TOKEN=new_admin_token()))
    assert failed(done) == f"edge: cannot reach the edge API at {where}: connection refused\n"
    # an edge that accepts and never answers: the timeout ends it
    started = time.monotonic()
    silent = cli_env(home, API_URL=f"http://127.0.0.1:{silent_port}", TOKEN=new_admin_token())
    slow = failed(cli("token list --timeout 0.5", env=silent))
    assert time.monotonic() - started < 10
    assert "cannot reach the edge API" in slow and "timed out" in slow
    # no token anywhere: said before any call
    assert "edge: no token" in failed(cli("token list", env=cli_env(home, API_URL=where)), 2)


def trickle_server(at_once: bytes, trickled: bytes, gap: float) -> tuple[int, Callable[[], None]]:
    """A server that reads a request, sends ``at_once``, then ``trickled`` one byte every
    ``gap`` seconds."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)  # a close from another thread does not wake accept()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            with conn:
                conn.recv(65536)
                try:
                    conn.sendall(at_once)
                    for i in range(len(trickled)):
                        if stop.wait(gap):
                            return
                        conn.sendall(trickled[i : i + 1])
                except OSError:
                    continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(5)
        assert not thread.is_alive()
        listener.close()

    return listener.getsockname()[1], close


@pytest.mark.parametrize("part", ["head", "body"])
def test_an_answer_trickling_in_is_cut_at_twice_the_timeout(home: Path, part: str) -> None:
    body = b'{"tokens": []}' + b" " * 200
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\n" % len(body) + b"X-Pad: " + b"p" * 200 + b"\r\n\r\n"
    # every byte comes well within the timeout (0.5 s); the whole would take over 10 s
    if part == "head":
        port, close = trickle_server(b"", head + body, 0.04)
    else:
        port, close = trickle_server(head, body, 0.04)
    try:
        env = cli_env(home, API_URL=f"http://127.0.0.1:{port}", TOKEN=new_admin_token())
        started = time.monotonic()
        error = failed(cli("token list --timeout 0.5", env=env))
        took = time.monotonic() - started
    finally:
        close()
    assert "the answer did not arrive whole within 1s (timed out)" in error, error
    assert took < 4, took  # the interpreter's start-up, plus one second
    # a short answer trickling in, whole within the deadline: served
    short = b'{"tokens": []}'
    short_head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(short)
    port, close = trickle_server(b"", short_head + short, 0.01)
    try:
        env = cli_env(home, API_URL=f"http://127.0.0.1:{port}", TOKEN=new_admin_token())
        assert as_json(cli("token list --timeout 0.5 -o json", env=env)) == []
    finally:
        close()


def test_refused_token_is_one_line_and_exit_1(api: EdgeProcess, home: Path) -> None:
    wrong = cli_env(home, API_URL=url(api), TOKEN=new_admin_token())
    for command in ("proxy list", "token info", "pat me", "user list", "certs list"):
        assert failed(cli(command, env=wrong)).startswith("edge: the token was refused (401)")


def test_validation_errors_name_the_field(api: EdgeProcess, env: dict[str, str]) -> None:
    def error(command: str) -> str:
        return failed(cli(command, env=env))

    assert error("proxy create bad..host --target http://127.0.0.1:1").startswith(
        "edge: invalid hostname (HOST): "
    )
    assert error("proxy create ok.test --target ftp://x").startswith(
        "edge: invalid target_url (--target): "
    )
    assert error("proxy create ok.test --target http://x --header Connection=close").startswith(
        "edge: invalid custom_headers"
    )
    assert error("proxy create ok.test --target http://x --set nope=1").startswith(
        "edge: invalid nope: "
    )
    assert error("token create 'Bad Name'").startswith("edge: invalid name (NAME): ")
    assert error("user create --name A --email nope").startswith("edge: invalid email (--email): ")
    assert error("route create r --path no-slash --target-type port --target 80").startswith(
        "edge: invalid path_pattern (--path): "
    )
    # usage errors stop before any call, exit 2
    assert "--target" in failed(cli("proxy create ok.test", env=env), 2)
    bad = failed(cli("proxy create ok.test --target http://x --header novalue", env=env), 2)
    assert "expected NAME=VALUE" in bad


# ---------------------------------------------------------------------------- the other groups


def test_routes_services_resources(api: EdgeProcess, env: dict[str, str]) -> None:
    route = as_json(
        cli(
            "route create api --path /api --target-type port --target 9001 --priority 100 "
            "--method get -o json",
            env=env,
        )
    )
    assert route["methods"] == ["GET"] and route["priority"] == 100
    conflict = failed(
        cli("route create api2 --path /api --target-type port --target 9002 --priority 100",
            env=env)
    )  # fmt: skip
    assert "409 route_conflict" in conflict and "[field path_pattern (--path)]" in conflict
    ok(cli("proxy create app.test --target http://127.0.0.1:1", env=env))
    scoped = as_json(cli("route update api --proxy app.test --priority 7 -o json", env=env))
    assert scoped["scope"] == "proxy" and scoped["proxy_hostnames"] == ["app.test"]
    assert scoped["priority"] == 7 and scoped["methods"] == ["GET"]
    table = ok(cli("route list", env=env))
    assert "port:9001" in table and "app.test" in table
    assert "deleted route api" in ok(cli("route delete api", env=env))
    assert as_json(cli("route list -o json", env=env)) == []

    service = as_json(
        cli(
            "service create billing --url https://billing.internal:8443 --description Billing "
            "-o json",
            env=env,
        )
    )
    assert service["target_url"] == "https://billing.internal:8443"
    listed = as_json(cli("service list -o json", env=env))
    assert [s["service_name"] for s in listed] == ["billing"]
    assert as_json(cli("service show billing -o json", env=env)) == service
    ok(cli("service delete billing", env=env))
    assert "404 service_not_found" in failed(cli("service show billing", env=env))

    uri = "https://mcp.example.com/mcp"
    resource = as_json(cli(f"resource create {uri} --name Tools --scope mcp:read -o json", env=env))
    assert resource["scopes"] == ["mcp:read"]
    assert as_json(cli(f"resource show {uri} -o json", env=env)) == resource
    changed = as_json(
        cli(f"resource update {uri} --description 'Tools for agents' -o json", env=env)
    )
    assert changed["description"] == "Tools for agents" and changed["scopes"] == ["mcp:read"]
    assert [r["uri"] for r in as_json(cli("resource list -o json", env=env))] == [uri]
    ok(cli(f"resource delete {uri}", env=env))
    assert as_json(cli("resource list -o json", env=env)) == []


def test_route_list_in_evaluation_order_by_scope_and_generated_ids(
    api: EdgeProcess, env: dict[str, str]
) -> None:
    ok(cli("proxy create app.test --target http://127.0.0.1:1", env=env))
    generated = as_json(
        cli("route create --path /gen --target-type port --target 9000 -o json", env=env)
    )
    assert re.fullmatch(r"r_[1-9A-HJ-NP-Za-km-z]{12}", generated["route_id"])
    ok(cli("route create low --path /low --target-type port --target 9001 --priority 1", env=env))
    ok(
        cli(
            "route create high --path /h --target-type port --target 9002 --priority 99 "
            "--proxy app.test",
            env=env,
        )
    )
    ids = [r["route_id"] for r in as_json(cli("route list -o json", env=env))]
    assert ids == ["high", generated["route_id"], "low"]  # priority 99, 50, 1
    table = ok(cli("route list", env=env)).splitlines()
    assert [line.split()[0] for line in table[1:]] == ids
    only = as_json(cli("route list --scope proxy -o json", env=env))
    assert [r["route_id"] for r in only] == ["high"]
    glob = as_json(cli("route list --scope global -o json", env=env))
    assert [r["route_id"] for r in glob] == [generated["route_id"], "low"]
    assert "invalid choice: 'local'" in failed(cli("route list --scope local", env=env), 2)


def test_certs_through_the_api_next_to_the_local_cert_command(
    api: EdgeProcess, env: dict[str, str], tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    leaf = trustme.CA().issue_cert(
        "a.example.com", not_before=now - timedelta(days=1), not_after=now + timedelta(days=90)
    )
    cert, key = tmp_path / "a.crt", tmp_path / "a.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    # `edge cert import` works on Redis; `edge certs show|delete` go through the API, and
    # the list is one command under both names (through the API here: API_URL is set)
    local = {**env, "REDIS_URL": api.env["REDIS_URL"]}
    ok(cli(f"cert import a --cert {cert} --key {key}", env=local))
    listed = as_json(cli("certs list -o json", env=env))
    assert listed == [
        {
            "name": "a",
            "domains": ["a.example.com"],
            "expires_at": leaf_not_after(leaf).isoformat(),
            "status": "imported",
            "problem": None,
        }
    ]
    table = ok(cli("certs list", env=env)).splitlines()
    assert table[0].split() == ["NAME", "DOMAINS", "EXPIRES", "DAYS", "STATUS", "PROBLEM"]
    assert re.search(r"  (89|90) +imported  -$", table[1]), table[1]
    assert ok(cli("cert list", env=env)).splitlines() == table
    shown = ok(cli("certs show a", env=env))
    assert "a.example.com" in shown and "PRIVATE KEY" not in shown
    assert "deleted certificate a" in ok(cli("certs delete a", env=env))
    assert as_json(cli("certs list -o json", env=env)) == []
    assert "no certificates" in ok(cli("cert list --source redis", env=local))


def leaf_not_after(leaf: trustme.LeafCert) -> datetime:
    chain = leaf.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(chain).not_valid_after_utc


def test_users_projects_members_and_pats(api: EdgeProcess, env: dict[str, str], home: Path) -> None:
    user = as_json(cli("user create --name 'Ann Lee' --email ann@example.com -o json", env=env))
    taken = failed(cli("user create --name Ann --email ANN@example.com", env=env))
    assert "409 email_taken" in taken and "[field email (--email)]" in taken
    assert [u["id"] for u in as_json(cli("user list -o json", env=env))] == [user["id"]]
    project = as_json(cli("project create shop -o json", env=env))
    assert as_json(cli("project list -o json", env=env)) == [project]

    # a project by name or id, a user by e-mail address or id
    member = as_json(
        cli("project member-set shop ann@example.com --role maintainer --accepted -o json",
            env=env)
    )  # fmt: skip
    assert member["role"] == "maintainer" and member["accepted"] is True
    shown = as_json(cli(f"project show {project['id']} -o json", env=env))
    assert [m["user_id"] for m in shown["members"]] == [user["id"]]
    assert as_json(cli(f"user show {user['id']} -o json", env=env))["projects"] == [member]
    assert "no project named 'nope'" in failed(cli("project show nope", env=env))

    scope = "--project shop --user ann@example.com"
    created = as_json(cli(f"pat create laptop {scope} --expires-in 30d -o json", env=env))
    assert created["status"] == "active" and created["token"].startswith("edge_")
    as_pat = cli_env(home, API_URL=url(api), TOKEN=created["token"])
    me = as_json(cli("pat me -o json", env=as_pat))
    assert me["user"]["id"] == user["id"] and me["role"] == "maintainer"
    listed = as_json(cli(f"pat list {scope} -o json", env=env))
    assert [p["id"] for p in listed] == [created["id"]] and "token" not in listed[0]
    later = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    stamp = later.isoformat().replace("+00:00", "Z")
    dated = as_json(cli(f"pat create ci {scope} --expires {stamp} -o json", env=env))
    assert dated["expires_at"] == stamp and dated["status"] == "active"
    table = ok(cli(f"pat list {scope}", env=env))
    assert re.search(rf"^{dated['id']}  ci +\w+  active  in 2d  ", table, re.M), table
    past = failed(cli(f"pat create old {scope} --expires 2000-01-01T00:00:00Z", env=env))
    assert past.startswith("edge: invalid expires_at")
    revoked = as_json(cli(f"pat revoke {created['id']} {scope} -o json", env=env))
    assert revoked["status"] == "revoked"
    assert "revoked" in ok(cli(f"pat list {scope}", env=env))
    assert "(401)" in failed(cli("pat me", env=as_pat))

    ok(cli(f"project member-remove shop {user['id']}", env=env))
    assert "403 not_a_member" in failed(cli(f"pat list {scope}", env=env))
