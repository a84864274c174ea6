"""The teardown check that fails a test whose edge logged an error nobody expected.

The errors come from the edge's own JSON log setup and a real asyncio loop in a child
process, so a change of the log format or of asyncio's wording breaks these tests rather
than silently blinding the check.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.edge_log import unexpected_errors
from tests.helpers import ROOT, EdgeProcess

# A process that logs like an edge worker: what passes, what asyncio reports for a task
# whose exception nobody retrieved and for a raising callback, and finally a traceback the
# interpreter prints raw because the exception escaped everything.
CHILD = textwrap.dedent(
    """
    import asyncio, gc, logging
    from edge.observe.accesslog import setup_logging

    setup_logging("INFO", worker=0)
    log = logging.getLogger("edge.worker")
    log.info("listening")
    log.warning("upstream slow")

    async def boom() -> None:
        raise ValueError("task boom")

    def callback_boom() -> None:
        raise KeyError("callback boom")

    async def main() -> None:
        asyncio.get_running_loop().call_soon(callback_boom)
        asyncio.ensure_future(boom())
        await asyncio.sleep(0.05)
        gc.collect()
        log.error("upstream gone", extra={"fields": {"upstream": "a"}})

    asyncio.run(main())
    gc.collect()
    raise RuntimeError("escaped")
    """
)


@pytest.fixture(scope="module")
def child_stderr() -> str:
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    return result.stderr


def test_finds_each_kind_of_error_and_passes_info_and_warnings(child_stderr: str) -> None:
    found = unexpected_errors(child_stderr)
    assert len(found) == 4, found
    callback, task, logged, raw = found
    assert "Exception in callback" in callback and "callback boom" in callback
    assert "Task exception was never retrieved" in task and "task boom" in task
    assert '"level":"error"' in logged.replace(" ", "") and "upstream gone" in logged
    # a raw traceback is one entry, from its first line to the exception
    assert raw.startswith("Traceback (most recent call last)")
    assert raw.endswith("RuntimeError: escaped")
    assert not any("listening" in entry or "upstream slow" in entry for entry in found)


def test_allowed_patterns_let_only_the_errors_they_match_pass(child_stderr: str) -> None:
    found = unexpected_errors(child_stderr, [r"upstream gone", r"RuntimeError: escaped"])
    assert [("callback boom" in e, "task boom" in e) for e in found] == [
        (True, False),
        (False, True),
    ]
    everything = [r"callback boom", r"task boom", r"upstream gone", r"escaped"]
    assert unexpected_errors(child_stderr, everything) == []


def test_clean_log_and_critical_level() -> None:
    clean = '{"level":"info","message":"ready"}\n{"level":"warning","message":"slow"}\n'
    assert unexpected_errors(clean) == []
    fatal = '{"level":"critical","logger":"edge.supervisor","message":"worker 0 died"}'
    assert unexpected_errors(clean + fatal + "\n") == [fatal]


def test_edge_process_check_fails_the_test_with_the_offending_lines(tmp_path: Path) -> None:
    edge = EdgeProcess(None, tmp_path)
    edge.stderr_path.write_text(
        '{"level":"info","message":"ready"}\n'
        '{"level":"error","message":"listener crashed"}\n'
        '{"level":"error","message":"redis unreachable"}\n'
    )
    with pytest.raises(pytest.fail.Exception) as failed:
        edge.check_errors()
    assert "listener crashed" in str(failed.value) and "ready" not in str(failed.value)
    edge.expect_errors(r"listener crashed")
    with pytest.raises(pytest.fail.Exception) as failed:
        edge.check_errors()
    assert "listener crashed" not in str(failed.value)
    edge.check_errors([r"^\{.*redis unreachable"])  # the marker's patterns: passes
