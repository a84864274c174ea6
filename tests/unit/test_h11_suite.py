"""h11's own tests, run against edge's ``ServerConnection`` / ``ClientConnection``.

``edge.h11compat`` reaches into h11 internals for speed and promises h11's events,
exceptions and bytes exactly; h11's test suite is the most thorough statement of those.
Running it against edge's classes turns an h11 upgrade into a test run.

Where h11's tests come from: the installed package if it ships ``h11/tests`` (the 0.16
wheel does not), else the sdist of the *installed* version, which ``.ci/run`` downloads
with pip into ``.cache/h11-sdist`` (or ``$H11_SDIST_DIR``) before the tests. Nothing of h11
is copied into this repository. A missing sdist fails the test with the command that
fetches it; it is never a skip.

The modules run in a child pytest (their relative imports need them to be the package
``h11.tests``, and the child keeps our conftest and settings out of h11's tests); the
rebinding of ``Connection`` / ``READERS`` and the list of expected differences live in
``tests/h11_suite_plugin.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import h11

ROOT = Path(__file__).resolve().parents[2]
SDIST_DIR = Path(os.environ.get("H11_SDIST_DIR", ROOT / ".cache" / "h11-sdist"))
MODULES = ["test_connection", "test_io", "test_against_stdlib_http"]
# h11 0.16.0 has 51 tests in these modules; far fewer means collection went wrong
MIN_TESTS = 45


def h11_tests_dir(scratch: Path) -> Path:
    """The ``h11/tests`` directory matching the installed h11, extracted if need be."""
    installed = Path(h11.__file__).parent / "tests"
    if (installed / "test_connection.py").is_file():
        return installed
    name = f"h11-{h11.__version__}"
    sdist = SDIST_DIR / f"{name}.tar.gz"
    if not sdist.is_file():
        # fetched once (PyPI), so the README's one test command needs nothing more
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:",
             "--no-deps", f"h11=={h11.__version__}", "-d", str(SDIST_DIR)],
            check=False, timeout=120,
        )  # fmt: skip
    if not sdist.is_file():
        raise AssertionError(
            f"{sdist} is missing: the installed h11 wheel has no tests; fetch them with\n"
            f"  pip download --no-binary :all: --no-deps h11=={h11.__version__} -d {SDIST_DIR}"
        )
    # the whole h11/ of the sdist: pytest names a test module after the packages
    # (``__init__.py``) above it, and it must be ``h11.tests.*``; the plugin imports h11
    # first, so the code under test is still the installed h11
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(f"{name}/h11/")]
        if hasattr(tarfile, "data_filter"):
            archive.extractall(scratch, members=members, filter="data")
        else:  # Python before 3.11.4 (Debian 12's python3 is 3.11.2): the checks by hand
            for member in members:
                if not (member.isfile() or member.isdir()) or ".." in member.name.split("/"):
                    raise AssertionError(f"unexpected member in {sdist}: {member.name}")
            archive.extractall(scratch, members=members)
    return scratch / name / "h11" / "tests"


def test_h11_suite_passes_against_edge_connections(tmp_path: Path) -> None:
    tests_dir = h11_tests_dir(tmp_path / "src")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "pytest.ini").write_text("[pytest]\n")
    junit = run_dir / "junit.xml"
    built = run_dir / "built.json"
    env = {
        **os.environ,
        "H11_TESTS_DIR": str(tests_dir),
        "H11_SUITE_REPORT": str(built),
        "PYTHONPATH": str(ROOT),
    }
    # keep xdist's worker variables from leaking into the child
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-rfEX",
            "-c", "pytest.ini", "--rootdir", str(tests_dir.parents[1]),
            "-p", "no:cacheprovider", "-p", "no:asyncio", "-p", "no:xdist",
            "-p", "tests.h11_suite_plugin",
            f"--junitxml={junit}",
            "--pyargs", *(f"h11.tests.{module}" for module in MODULES),
        ],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    tests = int(suite.get("tests", "0"))
    failed = int(suite.get("failures", "0")) + int(suite.get("errors", "0"))
    assert failed == 0, output
    assert tests >= MIN_TESTS, output
    # the tests ran through edge's classes, not h11.Connection
    counts = json.loads(built.read_text())
    assert counts["ServerConnection"] > 0 and counts["ClientConnection"] > 0, counts
