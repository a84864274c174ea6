"""Unexpected errors in an edge's stderr, which fail the test that ran the edge.

uvloop's ``_testbase`` fails a test whenever the loop's exception handler ran: a task whose
exception nobody retrieved or a callback that raised is a bug even when every response the
test checked came back right. Our edges run as child processes, so the same check reads
what they wrote to stderr: one JSON object a line (``edge/observe/accesslog.py``, levels
in lower case), plus raw text from anything that wrote before logging was set up or past
it (a traceback printed by the interpreter itself).

A test that provokes an error on purpose lists the errors it expects, as regular
expressions searched in each offending entry: ``@pytest.mark.edge_errors(r"...")`` for
every edge of the test, ``edge.expect_errors(r"...")`` for one edge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

# What asyncio's default exception handler and the interpreter print for an error that
# reached nobody; they may arrive as a JSON log message or as raw text.
UNEXPECTED_TEXT = (
    "Task exception was never retrieved",
    "Traceback (most recent call last)",
    "Exception in callback",
)
# ``record.levelname.lower()`` in the JSON formatter
UNEXPECTED_LEVELS = frozenset({"error", "critical"})


def entries(stderr: str) -> list[str]:
    """Each JSON line alone; consecutive raw lines as one entry (a raw traceback spans
    several lines and is one error)."""
    found: list[str] = []
    raw: list[str] = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            if raw:
                found.append("\n".join(raw))
                raw = []
            found.append(line)
        elif line.strip():
            raw.append(line)
    if raw:
        found.append("\n".join(raw))
    return found


def is_unexpected(entry: str) -> bool:
    """An error-level log record, or text that only an unhandled exception produces."""
    if any(text in entry for text in UNEXPECTED_TEXT):
        return True
    if not entry.startswith("{"):
        return False
    try:
        record = json.loads(entry)
    except ValueError:
        return False  # a raw line that happens to start with a brace
    return isinstance(record, dict) and record.get("level") in UNEXPECTED_LEVELS


def unexpected_errors(stderr: str, allowed: Iterable[str | re.Pattern[str]] = ()) -> list[str]:
    """The entries of ``stderr`` that are errors and match none of ``allowed``."""
    patterns = [re.compile(p) for p in allowed]
    return [
        entry
        for entry in entries(stderr)
        if is_unexpected(entry) and not any(p.search(entry) for p in patterns)
    ]
