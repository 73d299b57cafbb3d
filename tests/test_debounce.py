"""Debounce timing, in fake loop time: a table of named scenarios.

Each scenario sends events at given loop times and expects pushes at given loop times with
given merged event counts. `looptime` makes the loop clock jump, so no test waits for real.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from meshpilot.model import PushRequest
from meshpilot.xds.debounce import debounce

QUIET = 0.1
MAX_DELAY = 1.0


@dataclass(frozen=True)
class Scenario:
    name: str
    events: list[tuple[float, bool]]
    """(loop time, full?) of each event."""
    pushes: list[tuple[float, int, bool]]
    """(loop time, merged count, full?) of each expected push."""
    push_takes: float = 0.0


SCENARIOS = [
    Scenario("one event pushes after the quiet period", [(0.0, True)], [(0.1, 1, True)]),
    Scenario(
        "a burst merges into one push",
        [(0.0, False), (0.05, False), (0.09, True)],
        [(0.19, 3, True)],
    ),
    Scenario(
        "events spaced beyond the quiet period push separately",
        [(0.0, True), (0.5, False)],
        [(0.1, 1, True), (0.6, 1, False)],
    ),
    Scenario(
        "a steady stream is cut at the max delay",
        [(i * 0.03, False) for i in range(40)],
        [(1.0, 34, False), (1.27, 6, False)],
    ),
    Scenario(
        "events during a slow push wait for it and merge",
        [(0.0, True), (0.2, False), (0.3, False)],
        [(0.1, 1, True), (0.6, 2, False)],
        push_takes=0.5,
    ),
    Scenario(
        "events during a short push still wait for quiet",
        [(0.0, True), (0.15, False)],
        [(0.1, 1, True), (0.25, 1, False)],
        push_takes=0.1,
    ),
]


@pytest.mark.looptime
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_debounce(scenario: Scenario) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    inbox: asyncio.Queue[PushRequest] = asyncio.Queue()
    pushes: list[tuple[float, int, bool]] = []

    async def push(request: PushRequest) -> None:
        pushes.append((round(loop.time() - start, 3), request.count, request.full))
        await asyncio.sleep(scenario.push_takes)

    task = asyncio.create_task(debounce(inbox, push, QUIET, MAX_DELAY))
    for at, full in scenario.events:
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        inbox.put_nowait(PushRequest(full=full, started=loop.time()))
    await asyncio.sleep(MAX_DELAY * 3)
    task.cancel()
    assert pushes == scenario.pushes


def test_push_request_merge() -> None:
    a = PushRequest(full=False, eds_hosts=frozenset({("ns", "a")}), started=2.0)
    b = PushRequest(full=True, config_kinds=frozenset({"VirtualService"}), started=1.0)
    merged = a.merge(b)
    assert merged.full
    assert merged.eds_hosts == {("ns", "a")}
    assert merged.config_kinds == {"VirtualService"}
    assert merged.count == 2
    assert merged.started == 1.0
    assert a.merge(None) is a
