"""``edge forward`` arguments: the target spec, the local address, the token's sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.auth.pat import new_pat_token
from edge.auth.secrets import new_admin_token
from edge.cli import _parser
from edge.client.errors import ClientError
from edge.client.forward import (
    Target,
    credentials,
    format_address,
    human_bytes,
    parse_local,
    parse_target,
)


@pytest.mark.parametrize(
    ("text", "target", "body"),
    [
        (
            "database/db_1",
            Target("database", "db_1"),
            {"target_type": "database", "target_id": "db_1"},
        ),
        (
            "resource/res_7:5432",
            Target("resource", "res_7", 5432),
            {"target_type": "resource", "target_id": "res_7", "port": 5432},
        ),
        (
            "resource/res_7",
            Target("resource", "res_7"),
            {"target_type": "resource", "target_id": "res_7"},
        ),
        ("resource/a:b:1", Target("resource", "a:b", 1), None),  # the last colon is the port
        ("resource/x:65535", Target("resource", "x", 65535), None),
        ("database/Ω.db-9_", Target("database", "Ω.db-9_"), None),
    ],
)
def test_targets_parse(text: str, target: Target, body: dict[str, object] | None) -> None:
    assert parse_target(text) == target
    assert str(target) == text
    if body is not None:
        assert target.request() == body


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("db_1", "expected resource/ID:PORT or database/ID"),
        ("app/x", "expected resource/ID:PORT or database/ID"),
        ("Database/db_1", "expected"),
        ("database/", "no ID"),
        ("resource/:5432", "no ID"),
        ("database/db_1:5432", "a database has no PORT"),
        ("resource/r:0", "must be 1 to 65535"),
        ("resource/r:65536", "must be 1 to 65535"),
        ("resource/r:", "must be a number"),
        ("resource/r:5x", "must be a number"),
        ("resource/r:-1", "must be a number"),
        ("resource/r:٣", "must be a number"),  # a digit, but not ASCII
        ("resource/a/b:1", "invalid ID"),
        ("database/a b", "invalid ID"),
        ("database/a\nb", "invalid ID"),
    ],
)
def test_bad_targets_say_why(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_target(text)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("5433", ("127.0.0.1", 5433)),
        ("0", ("127.0.0.1", 0)),
        ("65535", ("127.0.0.1", 65535)),
        ("127.0.0.2:5433", ("127.0.0.2", 5433)),
        ("0.0.0.0:6380", ("0.0.0.0", 6380)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:5433", ("::1", 5433)),
        ("[::]:0", ("::", 0)),
        ("[fe80::1%lo]:80", ("fe80::1%lo", 80)),
    ],
)
def test_local_addresses_parse(text: str, address: tuple[str, int]) -> None:
    assert parse_local(text) == address
    if ":" in text:
        assert format_address(*address) == text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "must be a number"),
        ("x", "must be a number"),
        ("65536", "must be 0 to 65535"),
        ("123456", "must be a number"),
        (":5433", "invalid LOCAL_ADDR"),
        ("::1:5433", "an IPv6 address goes in brackets"),
        ("[::1]5433", r"expected \[IPv6\]:PORT"),
        ("[::1:5433", r"expected \[IPv6\]:PORT"),
        ("[127.0.0.1]:5433", "not an IPv6 address"),
        ("[::1]:", "must be a number"),
        ("a b:1", "invalid LOCAL_ADDR"),
        ("user@host:1", "invalid LOCAL_ADDR"),
    ],
)
def test_bad_local_addresses_say_why(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_local(text)


def test_the_command_line_takes_both_arguments_and_the_client_options() -> None:
    args = _parser().parse_args(
        ["forward", "[::1]:0", "database/db_1", "--token", "t", "--timeout", "3"]
    )
    assert (args.local, args.target, args.token, args.timeout) == (
        "[::1]:0",
        "database/db_1",
        "t",
        3.0,
    )
    args = _parser().parse_args(["--profile", "p", "forward", "5433", "resource/r:1"])
    assert (args.profile, args.local, args.target) == ("p", "5433", "resource/r:1")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg"), **extra}


def _profile(tmp_path: Path, token: str, url: str = "http://127.0.0.1:1") -> None:
    path = tmp_path / "xdg" / "edge" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(f'[profiles.default]\napi_url = "{url}"\ntoken = "{token}"\n')
    path.chmod(0o600)


def test_the_token_comes_from_the_flag_then_edge_pat_then_the_profile(tmp_path: Path) -> None:
    flag, from_env, saved = new_pat_token(), new_pat_token(), new_pat_token()
    _profile(tmp_path, saved, "https://edge.example.com")
    env = _env(tmp_path, EDGE_PAT=from_env)
    found = credentials(env, api_url=None, token=flag, profile=None)
    assert (found.token, found.token_source) == (flag, "--token")
    assert found.api_url == "https://edge.example.com"
    found = credentials(env, api_url="http://127.0.0.1:9", token=None, profile=None)
    assert (found.token, found.token_source, found.api_url) == (
        from_env,
        "env EDGE_PAT",
        "http://127.0.0.1:9",
    )
    found = credentials(_env(tmp_path, EDGE_PAT="  "), api_url=None, token=None, profile=None)
    assert found.token == saved and "profile 'default'" in found.token_source


def test_admin_tokens_are_never_used_for_a_tunnel(tmp_path: Path) -> None:
    admin = new_admin_token()
    env = _env(tmp_path, TOKEN=admin, ADMIN_TOKEN=admin)
    with pytest.raises(ClientError) as caught:
        credentials(env, api_url=None, token=None, profile=None)
    assert caught.value.status == 2 and "no token" in caught.value.message
    pat = new_pat_token()
    found = credentials({**env, "EDGE_PAT": pat}, api_url=None, token=None, profile=None)
    assert found.token == pat
    _profile(tmp_path, admin)
    with pytest.raises(ClientError) as caught:
        credentials(_env(tmp_path), api_url=None, token=None, profile=None)
    assert caught.value.status == 2
    assert "not a personal access token" in caught.value.message
    assert admin not in caught.value.message


def test_byte_counts_read_well() -> None:
    assert [human_bytes(n) for n in (0, 999, 1000, 12_345, 5 * 10**6, 2 * 10**9)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "12.3 kB",
        "5.0 MB",
        "2.0 GB",
    ]
