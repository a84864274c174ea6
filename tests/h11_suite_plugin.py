"""pytest plugin that runs h11's own test modules against edge's h11 subclasses.

Loaded only by ``tests/unit/test_h11_suite.py``, in a child pytest whose environment names
the directory of h11's test package (``H11_TESTS_DIR``, the ``h11/tests`` of the sdist of
the installed h11 version; the wheel does not ship it). The tests import h11 relatively
(``from .._connection import Connection``), so the directory is added to the *installed*
h11 package's search path: ``h11.tests`` comes from the sdist, everything it tests from the
installed h11 that edge runs on.

Before collection the plugin rebinds, in h11's test modules:

- ``Connection`` (test_connection.py and the ``ConnectionPair`` helper) to a factory that
  builds ``ServerConnection`` for ``SERVER`` and ``ClientConnection`` for ``CLIENT``, so
  every conversation h11 tests runs through edge's fast paths;
- ``READERS`` (test_io.py) to edge's reader table, whose request and response head readers
  replace h11's;
- ``h11`` (test_against_stdlib_http.py) to a copy of the module whose ``Connection`` is
  that factory, so edge's classes talk to the stdlib's HTTP client and server over
  loopback sockets.

Known, intended differences would be listed in ``EXPECTED_FAILURES`` (strict xfail: one that
starts passing fails the run, so the list cannot go stale). Today it is empty: edge's
classes promise h11's events, exceptions and bytes exactly.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import h11
import pytest
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE

from edge import h11compat
from edge.h11compat import ClientConnection, ServerConnection

# "test_module.py::test_name[param]" -> why edge's behaviour differs there on purpose
EXPECTED_FAILURES: dict[str, str] = {}

# how many connections of each edge class h11's tests built: proof the patch took effect
BUILT = {"ServerConnection": 0, "ClientConnection": 0}


def edge_connection(
    our_role: Any, max_incomplete_event_size: int = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
) -> h11.Connection:
    """``h11.Connection(role, ...)`` as edge builds it for that role."""
    if our_role is h11.SERVER:
        BUILT["ServerConnection"] += 1
        return ServerConnection(max_incomplete_event_size)
    if our_role is h11.CLIENT:
        BUILT["ClientConnection"] += 1
        return ClientConnection(max_incomplete_event_size)
    # not a role: h11 itself must reject it (test_Connection_basics checks the error)
    return h11.Connection(our_role, max_incomplete_event_size=max_incomplete_event_size)


def _patch(module: ModuleType, name: str, value: object) -> None:
    # fail loudly if h11 renamed what we replace: a silent no-op would test stock h11
    if not hasattr(module, name):
        raise RuntimeError(f"{module.__name__} has no {name!r}; update {__name__}")
    setattr(module, name, value)


def pytest_configure(config: pytest.Config) -> None:
    tests_dir = Path(os.environ["H11_TESTS_DIR"])
    if not (tests_dir / "test_connection.py").is_file():
        raise RuntimeError(f"no h11 test modules in {tests_dir}")
    h11.__path__.append(str(tests_dir.parent))
    helpers = importlib.import_module("h11.tests.helpers")
    test_connection = importlib.import_module("h11.tests.test_connection")
    test_io = importlib.import_module("h11.tests.test_io")
    against_stdlib = importlib.import_module("h11.tests.test_against_stdlib_http")
    # the code under test must be the installed h11 that edge runs on, not the sdist's copy
    if Path(h11._connection.__file__).is_relative_to(tests_dir.parent):
        raise RuntimeError(f"h11 was imported from {tests_dir.parent}, not the installed h11")
    _patch(helpers, "Connection", edge_connection)
    _patch(test_connection, "Connection", edge_connection)
    _patch(test_io, "READERS", h11compat._FAST_READERS)
    edge_h11 = ModuleType("h11")
    edge_h11.__dict__.update(vars(h11))
    edge_h11.Connection = edge_connection  # type: ignore[attr-defined]
    _patch(against_stdlib, "h11", edge_h11)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        reason = EXPECTED_FAILURES.get(f"{item.path.name}::{item.name}")
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


def pytest_sessionfinish(session: pytest.Session) -> None:
    report = os.environ.get("H11_SUITE_REPORT")
    if report:
        Path(report).write_text(json.dumps(BUILT))
