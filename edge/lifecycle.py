"""Background jobs as services with one lifecycle.

A worker runs a few long-lived jobs beside its listeners (the config watcher, the PAT
last-used flush, the admin-token keeper, the default-certificate retry). Started by hand,
a job that raised was gone for good, its exception reported only when the task was
garbage-collected. The ``ServiceRunner`` owns them instead: every task is tracked, a
crashed service is logged once per crash and started again after a pause that doubles
(so a service failing on start does not spin), and shutdown asks every service to stop,
waits with a bound, then cancels what is left. ``health()`` says which job is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.health import Report

log = logging.getLogger("edge.lifecycle")

BACKOFF_INITIAL = 1.0  # seconds before the first restart of a crashed service
BACKOFF_MAX = 60.0  # the pause doubles up to this
BACKOFF_RESET_AFTER = 60.0  # a run this long counts as healthy: the next pause is short again
STOP_TIMEOUT = 5.0  # how long stop() waits for services to end on their own


class Service(Protocol):
    """A long-lived job: runs until ``stop`` is set (returning ends it for good; raising
    gets it restarted)."""

    name: str

    async def run(self, stop: asyncio.Event) -> None: ...

    def health(self) -> Mapping[str, object]: ...


class State(enum.Enum):
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass
class _Entry:
    service: Service
    state: State = State.RUNNING
    restarts: int = 0
    last_error: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class ServiceRunner:
    """Starts services as tracked tasks, restarts crashed ones, stops them all."""

    def __init__(
        self,
        *,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        reset_after: float = BACKOFF_RESET_AFTER,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.reset_after = reset_after
        self.stop_timeout = stop_timeout
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self._entries: dict[str, _Entry] = {}

    def start(self, service: Service) -> None:
        """Run ``service`` from now on (a name is used once per runner)."""
        if service.name in self._entries:
            raise ValueError(f"service {service.name!r} already started")
        entry = _Entry(service)
        self._entries[service.name] = entry
        if self.stopping.is_set():
            entry.state = State.STOPPED
            return
        task = asyncio.create_task(self._supervise(entry), name=service.name)
        entry.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        """Ask every service to stop, wait up to ``stop_timeout``, then cancel the rest."""
        self.stopping.set()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=self.stop_timeout)
        left = set(self.tasks)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)

    def health_report(self) -> Report:
        """Each service's state under ``background`` (the configured ``services`` are
        the config's count; these are the worker's own jobs)."""
        return Report({"background": self.health()})

    def health(self) -> dict[str, dict[str, object]]:
        return {
            name: {
                "state": entry.state.value,
                "restarts": entry.restarts,
                "last_error": entry.last_error,
                **entry.service.health(),
            }
            for name, entry in self._entries.items()
        }

    async def _supervise(self, entry: _Entry) -> None:
        loop = asyncio.get_running_loop()
        delay = self.backoff_initial
        try:
            while not self.stopping.is_set():
                entry.state = State.RUNNING
                began = loop.time()
                try:
                    await entry.service.run(self.stopping)
                    return  # done for good (or stopping): not restarted
                except Exception as exc:
                    if self.stopping.is_set():
                        return
                    if loop.time() - began >= self.reset_after:
                        delay = self.backoff_initial
                    entry.state = State.RESTARTING
                    entry.restarts += 1
                    entry.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    log.error(
                        "service crashed; restarting",
                        exc_info=exc,
                        extra={"fields": {"service": entry.service.name, "restart_in": delay}},
                    )
                # the pause ends early when the runner stops
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, self.backoff_max)
        finally:
            entry.state = State.STOPPED


class TaskService:
    """A service around a coroutine that loops on its own and knows no stop event: it is
    cancelled when the runner stops. ``factory`` makes a fresh coroutine for each run."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], Coroutine[Any, Any, None]],
        health: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        self.name = name
        self._factory = factory
        self._health = health

    async def run(self, stop: asyncio.Event) -> None:
        job = asyncio.ensure_future(self._factory())
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((job, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            job.cancel()
            waiter.cancel()
            await asyncio.wait((job, waiter))
        if not job.cancelled():
            job.result()  # a crash propagates to the runner

    def health(self) -> Mapping[str, object]:
        return self._health() if self._health is not None else {}
