"""What every registry fake shares: an aiohttp app that can be stopped and started again on the
same port, faults injected into its read endpoints, a log of the requests it received, and a
thread to run it in for tests whose other half is a separate process.

Faults apply to GET requests only (reads are what the adapters do; registrations made by the
tests themselves keep working):

- `fail_status = 500` answers every read with that status and a plain-text body;
- `malformed = True` answers every read with 200 and a body that is not JSON;
- `stop()` closes the listening socket and every open connection (blocked long polls too), so
  clients see connection refused until `start()` binds the same port again. The registry's
  data lives in the fake object, not in the server, so a restart keeps it — like a real
  registry restarting from its persisted state.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class FakeServer(abc.ABC):
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.fail_status: int | None = None
        self.malformed = False
        self.requests: list[Seen] = []
        self._runner: web.AppRunner | None = None

    # For subclasses ----------------------------------------------------------------------------

    @abc.abstractmethod
    def routes(self, app: web.Application) -> None:
        """Add the fake API's handlers to `app`."""

    # Lifecycle ---------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        self.routes(app)
        # A short shutdown: blocked long polls are cut off at once, as when a server dies.
        runner = web.AppRunner(app, shutdown_timeout=0.1, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def reads(self, path_prefix: str = "") -> list[Seen]:
        return [r for r in self.requests if r.method == "GET" and r.path.startswith(path_prefix)]

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        self.requests.append(Seen(request.method, request.path, dict(request.query),
                                  dict(request.headers)))
        if request.method == "GET":
            if self.fail_status is not None:
                return web.Response(status=self.fail_status, text="injected failure")
            if self.malformed:
                return web.Response(text='{"truncated": [', content_type="application/json")
        response: web.StreamResponse = await handler(request)
        return response


class ThreadedFake:
    """Runs a fake's event loop in a daemon thread; `call()` runs code on that loop."""

    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn()` on the fake's loop (its state is only touched from there)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)

    def close(self) -> None:
        if self.fake.running:
            self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
