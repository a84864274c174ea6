"""The ServiceRunner: crashed services come back after a growing pause, stop() asks
politely then cancels, and health() tells which service is up, restarting or stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import pytest

from edge.lifecycle import Service, ServiceRunner, TaskService


class Flaky:
    """Crashes ``crashes`` times, then runs until asked to stop."""

    def __init__(self, crashes: int) -> None:
        self.name = "flaky"
        self.crashes = crashes
        self.starts: list[float] = []
        self.running = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self.starts.append(asyncio.get_running_loop().time())
        if len(self.starts) <= self.crashes:
            raise RuntimeError(f"boom {len(self.starts)}")
        self.running.set()
        await stop.wait()

    def health(self) -> Mapping[str, object]:
        return {"starts": len(self.starts)}


class Stubborn:
    """Ignores the stop event: only a cancel ends it."""

    name = "stubborn"

    def __init__(self) -> None:
        self.cancelled = False

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    def health(self) -> Mapping[str, object]:
        return {}


def test_crashing_service_restarts_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        flaky = Flaky(crashes=2)
        service: Service = flaky
        runner = ServiceRunner(backoff_initial=0.05, backoff_max=1.0, stop_timeout=1.0)
        runner.start(service)
        async with asyncio.timeout(10):
            await flaky.running.wait()
        first, second, third = flaky.starts
        # the pause doubles: at least 0.05 s, then at least 0.1 s
        assert second - first >= 0.05
        assert third - second >= 0.1
        health = runner.health()["flaky"]
        assert health == {
            "state": "running",
            "restarts": 2,
            "last_error": "RuntimeError: boom 2",
            "starts": 3,
        }
        await runner.stop()
        assert runner.health()["flaky"]["state"] == "stopped"

    with caplog.at_level(logging.ERROR, logger="edge.lifecycle"):
        asyncio.run(main())
    crashes = [r for r in caplog.records if r.getMessage() == "service crashed; restarting"]
    assert len(crashes) == 2  # once per crash
    assert all(r.__dict__["fields"]["service"] == "flaky" for r in crashes)


def test_stop_waits_then_cancels() -> None:
    async def main() -> None:
        polite, stubborn = Flaky(crashes=0), Stubborn()
        runner = ServiceRunner(stop_timeout=0.2)
        runner.start(polite)
        runner.start(stubborn)
        async with asyncio.timeout(10):
            await polite.running.wait()
        await runner.stop()
        assert stubborn.cancelled
        assert {name: h["state"] for name, h in runner.health().items()} == {
            "flaky": "stopped",
            "stubborn": "stopped",
        }
        assert not runner.tasks

    asyncio.run(main())


def test_service_that_returns_is_not_restarted() -> None:
    async def main() -> None:
        done = asyncio.Event()

        async def once() -> None:
            done.set()

        runner = ServiceRunner(backoff_initial=0.01)
        runner.start(TaskService("once", once))
        async with asyncio.timeout(10):
            await done.wait()
            await asyncio.wait(set(runner.tasks))
        assert runner.health()["once"] == {"state": "stopped", "restarts": 0, "last_error": None}
        await runner.stop()

    asyncio.run(main())


def test_task_service_stops_a_loop_that_ignores_the_event() -> None:
    async def main() -> None:
        ticks = 0
        ticking = asyncio.Event()

        async def loop_forever() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                if ticks >= 3:
                    ticking.set()
                await asyncio.sleep(0.01)

        runner = ServiceRunner(stop_timeout=5.0)
        runner.start(TaskService("ticker", loop_forever, lambda: {"ticks": ticks}))
        async with asyncio.timeout(10):
            await ticking.wait()
        assert runner.health()["ticker"]["ticks"] == ticks
        started = asyncio.get_running_loop().time()
        await runner.stop()
        # the wrapped loop ends with the event, not at the stop bound
        assert asyncio.get_running_loop().time() - started < 4.0
        assert runner.health()["ticker"]["state"] == "stopped"

    asyncio.run(main())


class CrashAfter:
    """Crashes at once twice, then after running ``healthy`` seconds, then stays up."""

    name = "crash-after"

    def __init__(self, healthy: float) -> None:
        self.healthy = healthy
        self.runs = 0
        self.running = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        if self.runs == 3:
            await asyncio.sleep(self.healthy)
        if self.runs <= 3:
            raise RuntimeError(f"crash {self.runs}")
        self.running.set()
        await stop.wait()

    def health(self) -> Mapping[str, object]:
        return {}


def test_pause_is_short_again_after_a_healthy_run(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        service = CrashAfter(healthy=0.3)
        runner = ServiceRunner(backoff_initial=0.01, backoff_max=10.0, reset_after=0.2)
        runner.start(service)
        async with asyncio.timeout(10):
            await service.running.wait()
        await runner.stop()

    with caplog.at_level(logging.ERROR, logger="edge.lifecycle"):
        asyncio.run(main())
    pauses = [r.__dict__["fields"]["restart_in"] for r in caplog.records]
    # doubling after quick crashes; back to the first pause after a run of 0.3 s >= 0.2 s
    assert pauses == [0.01, 0.02, 0.01]
