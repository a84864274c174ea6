"""systemd/edge.service: a notify service with a watchdog, sandboxed to an exposure of at
most 2.0 by ``systemd-analyze security`` (the number the unit and the docs quote)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "edge.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            found.setdefault(name, []).append(value)
    return found


def test_notify_with_watchdog_and_sandbox() -> None:
    d = directives()
    assert d["Type"] == ["notify"]
    assert d["WatchdogSec"] == ["30s"]
    # a reload re-reads every configuration key from Redis in every worker (SIGHUP)
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for name, value in {
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "UMask": "0077",
        "SystemCallErrorNumber": "EPERM",
    }.items():
        assert d[name] == [value], name
    assert d["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]


def test_exposure_at_most_2_and_documented() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    out = subprocess.run(
        [analyze, "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    match = re.search(r"Overall exposure level for edge\.service: (\d+\.\d)", out)
    assert match is not None, out
    exposure = float(match.group(1))
    assert exposure <= 2.0, out
    quoted = f"exposure {match.group(1)}"
    assert quoted in UNIT.read_text()
    assert quoted in (ROOT / "docs" / "operations.md").read_text()


def test_env_file_examples_carry_no_inline_comments() -> None:
    """systemd keeps ``80  # note`` as the value: a setting's example line never has one."""
    from edge.settings import ENV_NAMES

    setting = re.compile(rf"^#?({'|'.join(ENV_NAMES)})=[^\n]*[ \t]#", re.M)
    files = [*ROOT.glob("docs/*.md"), ROOT / "README.md", *ROOT.glob("config/*.env")]
    files.append(ROOT / "systemd" / "edge.env.example")
    offending = [f"{f.name}: {m.group(0)}" for f in files for m in setting.finditer(f.read_text())]
    assert not offending, offending
