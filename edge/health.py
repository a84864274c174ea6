"""``/health`` as a view: each part of a worker reports on itself, the view joins them.

A part (the config watcher, the connections hub, the TLS store, the upstream pool, the
PROXY stages, the background services, the worker's own identity) returns a
:class:`Report`: the fields it adds to the document and its verdict. The document's
``status`` is the worst verdict: ``draining`` (503 to load balancers, nothing else is),
``degraded`` (serving, with something to fix: Redis unreachable, a rejected key, a
certificate that does not load), or ``ok``. A new part (ACME renewal, the request-log
writer, metrics) adds itself to the view instead of widening a hand-built dictionary.
This module imports nothing of edge.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HealthView", "Report", "Verdict"]


class Verdict(enum.IntEnum):
    """Worse is larger: the document takes the largest of its parts'."""

    OK = 0
    DEGRADED = 1
    DRAINING = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Report:
    fields: Mapping[str, object] = field(default_factory=dict)
    verdict: Verdict = Verdict.OK


Part = Callable[[], Report]


class HealthView:
    """The health document of one worker, assembled from its parts in their order."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[Part] = []

    def add(self, part: Part) -> None:
        self._parts.append(part)

    def __call__(self) -> dict[str, Any]:
        document: dict[str, Any] = {"status": None}
        verdict = Verdict.OK
        for part in self._parts:
            report = part()
            document.update(report.fields)
            verdict = max(verdict, report.verdict)
        document["status"] = verdict.label
        return document
