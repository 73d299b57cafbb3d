"""Helpers for the registry adapter tests: a push recorder that also runs the server's real
debounce, a poll-until helper, and a runner for a registry's watch loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from meshpilot.model import PushRequest
from meshpilot.registry.base import ServiceRegistry
from meshpilot.xds.debounce import debounce


class Pushes:
    """An Updater: records every push request and feeds them through the real debounce."""

    def __init__(self, quiet: float = 0.05, max_delay: float = 5.0) -> None:
        self.requests: list[PushRequest] = []
        self.debounced: list[PushRequest] = []
        self._inbox: asyncio.Queue[PushRequest] = asyncio.Queue()
        self._task = asyncio.create_task(debounce(self._inbox, self._push, quiet, max_delay))

    def config_update(self, request: PushRequest) -> None:
        self.requests.append(request)
        self._inbox.put_nowait(request)

    async def _push(self, request: PushRequest) -> None:
        self.debounced.append(request)

    def take(self) -> list[PushRequest]:
        out, self.requests = self.requests, []
        return out

    def close(self) -> None:
        self._task.cancel()


async def eventually(check: Callable[[], Any], seconds: float = 10.0, what: str = "") -> Any:
    """Poll `check()` until truthy; fail naming `what` (and the last value) on timeout."""
    deadline = asyncio.get_running_loop().time() + seconds
    value = None
    while asyncio.get_running_loop().time() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or check}: last value {value!r}")


@asynccontextmanager
async def running(registry: ServiceRegistry, synced: bool = True) -> AsyncIterator[None]:
    task = asyncio.create_task(registry.run())
    try:
        if synced:
            async with asyncio.timeout(10):
                await registry.wait_synced()
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def addresses(registry: ServiceRegistry, host: str, namespace: str = "default") -> list[str]:
    return sorted(f"{e.address}:{e.port}" for e in registry.endpoints(host, namespace))
