"""Debounce: merge bursts of change events into one push.

After the first event, wait until `quiet` seconds pass with no new event, or `max_delay`
seconds since the first, whichever comes first; then push everything merged. Events that
arrive during a push wait in the inbox and form the next one, so pushes never overlap; their
timing counts from when they arrived (`PushRequest.started`, in loop time), not from when the
push ended, so a slow push does not add a quiet period of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from meshpilot.model import PushRequest


async def debounce(
    inbox: asyncio.Queue[PushRequest],
    push: Callable[[PushRequest], Awaitable[None]],
    quiet: float,
    max_delay: float,
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        pending = await inbox.get()
        first = last = pending.started or loop.time()
        while not inbox.empty():
            request = inbox.get_nowait()
            pending = pending.merge(request)
            last = request.started or loop.time()
        while True:
            deadline = min(last + quiet, first + max_delay)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                request = await asyncio.wait_for(inbox.get(), remaining)
            except TimeoutError:
                break
            pending = pending.merge(request)
            last = loop.time()
        await push(pending)
