"""LazyTimer: fires by the earliest requested time, never re-schedules for later ones."""

from __future__ import annotations

import asyncio

from edge.deadline import LazyTimer


async def test_fires_by_the_earliest_deadline_and_sleeps_again_when_not_due() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    deadline = {"at": 0.0}

    def callback() -> None:
        if timer.due(deadline["at"]):
            fired.append(loop.time())

    timer = LazyTimer(loop, callback)
    start = loop.time()
    deadline["at"] = start + 0.3
    timer.wake_by(deadline["at"])
    handle = timer._handle
    deadline["at"] = start + 0.6  # later: the scheduled wake-up stays
    timer.wake_by(deadline["at"])
    assert timer._handle is handle
    deadline["at"] = start + 0.1  # earlier: re-scheduled
    timer.wake_by(deadline["at"])
    assert timer._handle is not handle
    deadline["at"] = start + 0.4  # moved later after scheduling: the early wake-up re-sleeps
    await asyncio.sleep(0.25)
    assert fired == []
    await asyncio.sleep(0.3)
    assert len(fired) == 1
    assert fired[0] - start >= 0.4 - 0.01


async def test_cancel_stops_it() -> None:
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    timer = LazyTimer(loop, lambda: fired.append(1))
    timer.wake_by(loop.time() + 0.05)
    timer.cancel()
    await asyncio.sleep(0.1)
    assert fired == []
