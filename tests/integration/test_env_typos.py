"""Mistyped settings are named at start-up: ``edge serve`` logs them, ``edge check`` prints them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from edge.settings import ENV_NAMES
from tests.helpers import ROOT, EdgeProcess, RedisServer

SECRET = "hunter2-typo"


def test_serve_logs_each_mistyped_variable_once(
    edge_factory: Callable[..., EdgeProcess], tmp_path: Path
) -> None:
    env_file = tmp_path / "edge.env"
    env_file.write_text("LOG_LEVEL=INFO\nTLS_STRICT_SNY=true\n", encoding="utf-8")
    edge = edge_factory(
        "--env-file",
        str(env_file),
        EDGE_WORKERS=2,
        EDGE_WORKER=4,
        REDIS_PASWORD=SECRET,
        HTTP_PROXY="http://proxy.invalid:3128",  # another tool's setting: not ours to judge
    )
    edge.stop(timeout=10)
    records = [json.loads(line) for line in edge.stderr().splitlines() if line.startswith("{")]
    ours = {"EDGE_WORKER", "REDIS_PASWORD", "TLS_STRICT_SNY", "HTTP_PROXY"}
    warned = [
        r for r in records if r["message"].startswith("unknown setting") and r["variable"] in ours
    ]
    # the supervisor warns, not each of the two workers
    assert sorted(r["message"] for r in warned) == [
        "unknown setting EDGE_WORKER (did you mean EDGE_WORKERS?)",
        "unknown setting REDIS_PASWORD (did you mean REDIS_PASSWORD?)",
        f"unknown setting TLS_STRICT_SNY in {env_file} (did you mean TLS_STRICT_SNI?)",
    ]
    for record in warned:
        assert record["level"] == "warning"
        assert record["logger"] == "edge.settings"
    by_name = {r["variable"]: r for r in warned}
    assert by_name["TLS_STRICT_SNY"]["source"] == str(env_file)
    assert by_name["EDGE_WORKER"]["source"] == "environment"
    assert by_name["EDGE_WORKER"]["suggestion"] == "EDGE_WORKERS"
    assert SECRET not in edge.stderr() + edge.stdout()


def test_check_prints_mistyped_variables_as_warnings(redis_db: RedisServer, tmp_path: Path) -> None:
    env_file = tmp_path / "edge.env"
    env_file.write_text(f"REDIS_URL={redis_db.url}\nPROXY_CONECT_TIMEOUT=5\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env.update(PYTHONPATH=str(ROOT), edge_workers="2", REDIS_PASWORD=SECRET)
    done = subprocess.run(
        [sys.executable, "-m", "edge", "check", "--env-file", str(env_file)],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr  # a warning, not a failure
    lines = done.stdout.splitlines()
    for expected in (
        f"warning: unknown setting PROXY_CONECT_TIMEOUT in {env_file} "
        "(did you mean PROXY_CONNECT_TIMEOUT?)",
        "warning: unknown setting REDIS_PASWORD (did you mean REDIS_PASSWORD?)",
        "warning: unknown setting edge_workers (did you mean EDGE_WORKERS?)",
    ):
        assert lines.count(expected) == 1, done.stdout
    assert "settings: ok" in lines
    assert SECRET not in done.stdout + done.stderr
