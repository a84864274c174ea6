"""The node's metrics directory: one set of files per worker process, summed at a scrape.

Each worker writes its own totals into memory-mapped files of prometheus-client's
multiprocess format (``counter_{pid}.db``, ``histogram_{pid}.db``,
``gauge_{mode}_{pid}.db``), named by its pid; any worker answering a scrape reads every
file of the directory with ``MultiProcessCollector``, which adds counters and histograms
over all of them and combines gauges by their mode (``livesum``, ``livemin``,
``livemax``: over the live workers only). The supervisor makes the directory fresh at
start and, when a worker exits, removes that worker's gauge files (``forget_process``);
its counter and histogram files stay, so a restarted worker's predecessor still counts and
no counter goes back while the node runs.

A worker writes absolute values (its own cumulative totals), only those that changed since
its last write: a worker killed between two writes loses at most the counts of that
interval, never the totals already written. The files are written by the worker's loop
thread alone (not thread-safe, as prometheus-client's own).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = ["CONTENT_TYPE", "ENV", "ProcessFiles", "Sample", "forget_process", "render"]

#: where the supervisor tells its workers the node's metrics directory is
ENV = "EDGE_METRICS_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one series: ``file`` is ``counter``, ``histogram`` or
    ``gauge_{mode}``; ``metric`` the family (a counter's without ``_total``), ``name`` the
    sample's own name (``..._total``, ``..._bucket`` with an ``le`` label, ``..._sum``)."""

    file: str
    metric: str
    name: str
    labels: Labels
    value: float
    help: str


class ProcessFiles:
    """This process's files in ``directory``; ``write`` stores the samples that changed."""

    __slots__ = ("_directory", "_files", "_keys", "_last", "_pid")

    def __init__(self, directory: str, pid: int | None = None) -> None:
        self._directory = directory
        self._pid = os.getpid() if pid is None else pid
        self._files: dict[str, Any] = {}  # file prefix -> MmapedDict
        self._keys: dict[tuple[str, str, Labels], str] = {}
        self._last: dict[str, float] = {}  # mmap key -> value last written

    def write(self, samples: Iterable[Sample]) -> int:
        """Store each sample whose value changed; how many were written."""
        written = 0
        last = self._last
        for s in samples:
            key = self._key(s)
            if last.get(key) == s.value:
                continue
            self._file(s.file).write_value(key, s.value, 0.0)
            last[key] = s.value
            written += 1
        return written

    def _key(self, s: Sample) -> str:
        ident = (s.file, s.name, s.labels)
        key = self._keys.get(ident)
        if key is None:
            names = [n for n, _ in s.labels]
            values = [v for _, v in s.labels]
            key = self._keys[ident] = mmap_key(s.metric, s.name, names, values, s.help)
        return key

    def _file(self, prefix: str) -> Any:
        f = self._files.get(prefix)
        if f is None:
            path = os.path.join(self._directory, f"{prefix}_{self._pid}.db")
            f = self._files[prefix] = MmapedDict(path)  # type: ignore[no-untyped-call]
        return f

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def render(directory: str) -> bytes:
    """The Prometheus text exposition of every file in ``directory`` by prometheus-client
    itself: the reference that :class:`edge.observe.metrics_render.Renderer` (what a
    scrape uses, several times faster) is tested against."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def forget_process(directory: str, pid: int) -> None:
    """A worker exited: its live gauges leave the sums (its counters stay)."""
    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
