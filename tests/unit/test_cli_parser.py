"""The ``edge`` command line without a running edge: version, what its help and start-up
import, global options on either side of the command, the internal worker kept out of
sight, every help's examples, ``serve --help``'s settings, shell completion, seed files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge import __version__
from edge.cli import _parser
from edge.cli_help import _EXAMPLES, completion_script, grouped_settings
from edge.config.seed import SeedError, load_seed
from edge.settings import ENV_NAMES
from tests.helpers import ROOT, RedisServer

HEAVY = ("redis", "cryptography", "msgspec", "uvloop", "h11")


def edge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def imported(*args: str, env: dict[str, str] | None = None, status: int = 0) -> set[str]:
    """The top-level packages ``edge ARGS`` imports (python -X importtime)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edge", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == status, done.stdout + done.stderr
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_version_three_ways() -> None:
    for args in (["version"], ["-V"], ["--version"]):
        done = edge(*args)
        assert (done.returncode, done.stdout) == (0, f"edge {__version__}\n"), args


@pytest.mark.parametrize(
    "args",
    [
        ("version",),
        ("--help",),
        ("proxy", "--help"),
        ("cert", "--help"),
        ("cert", "list", "--help"),
        ("certs", "list", "--help"),
        ("check", "--help"),
        ("serve", "--help"),
    ],
)
def test_version_and_help_import_nothing_heavy(args: tuple[str, ...]) -> None:
    found = imported(*args)
    assert "edge" in found  # the measure works
    assert not found & set(HEAVY), (args, found & set(HEAVY))


def test_one_shot_commands_import_only_what_they_use(redis_db: RedisServer) -> None:
    """What bounds the start-up of `edge cert list` and `edge check` (python's start and
    its imports are most of it): no redis-py nor asyncio for one read, no server code, the
    certificate checks only for a record to check, the HTTP client only for the API."""
    env = {k: "" for k in ENV_NAMES} | {"REDIS_URL": redis_db.url}
    env |= {"API_URL": "", "TOKEN": "", "EDGE_PROFILE": "", "XDG_CONFIG_HOME": "/nonexistent"}
    server = {"redis", "asyncio", "uvloop", "h11", "wsproto", "http", "ssl"}
    empty = imported("cert", "list", env=env)
    assert "edge" in empty
    assert not empty & (server | {"cryptography", "msgspec"}), empty & server
    checked = imported("check", env=env)
    assert not checked & (server | {"cryptography"}), checked & server
    # records to check: cryptography and msgspec now, still no server code
    redis_db.client().set("proxy:a.test", '{"hostname": "a.test"}')  # invalid: exit 1
    redis_db.client().set("cert:x", '{"cert_name": "x"}')
    for args, status in ((("cert", "list"), 0), (("check",), 1)):
        found = imported(*args, env=env, status=status)
        assert "cryptography" in found and "msgspec" in found  # the records were checked
        assert not found & server, (args, found & server)


def test_global_options_before_or_after_the_command_group() -> None:
    for argv in (
        ["--profile", "p", "--format", "json", "--timeout", "3", "proxy", "list"],
        ["proxy", "--profile", "p", "-o", "json", "list", "--timeout", "3"],
        ["proxy", "list", "--profile", "p", "--format", "json", "--timeout", "3"],
    ):
        args = _parser().parse_args(argv)
        assert (args.profile, args.format, args.timeout) == ("p", "json", 3.0), argv
    args = _parser().parse_args(
        ["--api-url", "http://127.0.0.1:1", "--token", "t", "route", "list"]
    )
    assert (args.api_url, args.token, args.command) == ("http://127.0.0.1:1", "t", "route")
    # the value of a global option is not taken for the command
    done = edge("--profile", "serve", "proxy", "list", env={"XDG_CONFIG_HOME": "/nonexistent"})
    assert "profile" in done.stderr and "serve" in done.stderr, done.stderr


def test_the_internal_worker_is_never_listed() -> None:
    for args in (["bogus"], [], ["--help"]):
        done = edge(*args)
        assert re.search(r"\bworker\b", done.stdout + done.stderr) is None, args
    assert edge("bogus").returncode == 2
    done = edge("worker", "--help")  # still there for the supervisor
    assert done.returncode == 0 and done.stdout.startswith("usage: edge worker")


def test_every_example_parses_and_every_group_shows_some() -> None:
    parser = _parser()
    for name, lines in _EXAMPLES.items():
        for line in lines:
            words = line.split("#")[0].split(">")[0].split()
            assert words[0] == "edge", line
            try:
                parser.parse_args(words[1:])
            except SystemExit as exc:  # pragma: no cover - the failure's message
                pytest.fail(f"example of {name!r} does not parse ({exc}): {line}")
    groups = ["serve", "check", "cert", "reverse-proxy", "completion", "proxy", "route"]
    groups += ["service", "certs", "resource", "user", "project", "pat", "token", "config"]
    for group in groups:
        done = edge(group, "--help")
        assert done.returncode == 0 and "\nexamples:\n  edge " in done.stdout, group


def test_serve_help_lists_every_setting_grouped_with_its_default() -> None:
    listed = [name for _, entries in grouped_settings() for name, _ in entries]
    assert sorted(listed) == sorted(ENV_NAMES)  # each once, new ones under "other"
    text = edge("serve", "--help").stdout
    for name in ENV_NAMES:
        assert f"\n    {name} " in text, name
    assert "HTTP_PORT                      80\n" in text
    assert "DRAIN_TIMEOUT                  30\n" in text
    assert "  listeners:\n" in text and "  Redis and state:\n" in text
    assert "docs/configuration.md" in text
    assert "ADMIN_TOKEN                    unset\n" in text  # never a secret's value


def bash_complete(script: Path, *words: str) -> list[str]:
    """What ``edge WORDS<TAB>`` offers in bash with ``script`` loaded."""
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}; COMP_WORDS=(edge {line}); COMP_CWORD={len(words)}; "
        '_edge; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion(tmp_path: Path) -> None:
    done = edge("completion", "bash")
    assert done.returncode == 0
    script = tmp_path / "edge.bash"
    script.write_text(done.stdout)
    top = bash_complete(script, "")
    assert {"serve", "check", "cert", "proxy", "reverse-proxy", "completion"} <= set(top)
    assert "worker" not in top
    assert bash_complete(script, "pro") == ["project", "proxy"]
    assert "update" in bash_complete(script, "proxy", "u")
    assert bash_complete(script, "proxy", "update", "app", "--no-h") == [
        "--no-http",
        "--no-https",
    ]
    assert "--seed-replace" in bash_complete(script, "serve", "--")
    assert "--profile" in bash_complete(script, "--")  # global options before the command


def test_zsh_completion_script() -> None:
    script = completion_script(_parser(), "zsh")
    assert script.startswith("#compdef edge\n") and "compdef _edge edge" in script
    if shutil.which("zsh"):
        done = subprocess.run(["zsh", "-n"], input=script, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    done = subprocess.run(["bash", "-n"], input=script.replace("compdef", ":"), text=True)
    assert done.returncode == 0


def test_seed_file_is_validated_whole(tmp_path: Path) -> None:
    example = load_seed(str(ROOT / "config" / "example.json"))
    assert "proxy:localhost" in example.keys and example.warnings == ()
    bad = tmp_path / "seed.json"
    bad.write_text(
        json.dumps(
            {
                "keys": {
                    "proxy:a.test": {"hostname": "a.test", "target_url": "ftp://x"},
                    "proxy:b.test": {"hostname": "b.test", "target_url": "http://b", "x": 1},
                    "route:r": {"route_id": "r"},
                    "service:url:ok": "http://127.0.0.1:1",
                    "other": "kept as a warning",
                }
            }
        )
    )
    with pytest.raises(SeedError) as caught:
        load_seed(str(bad))
    message = str(caught.value)
    assert message.startswith(f"seed file {bad}: ") and "nothing written" in message
    for key in ("proxy:a.test", "proxy:b.test", "route:r"):
        assert f"\n  {key}: " in message, key
    assert "service:url:ok" not in message
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"keys": {"other": "x", "service:url:a": "http://127.0.0.1:1"}}))
    loaded = load_seed(str(good))
    assert loaded.keys == {"other": "x", "service:url:a": "http://127.0.0.1:1"}
    assert loaded.warnings == ("other: not a configuration key (the edge ignores it)",)
