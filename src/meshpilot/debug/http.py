"""Debug HTTP endpoints on the server's own event loop (loopback by default).

Every JSON topic lives in `debug/topics.py` and is routed here by path; `/ready` and `/metrics`
are plain text. Each answer is built from the live server at request time, never from a copy.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from meshpilot.console import smi
from meshpilot.console.api import proxy_views
from meshpilot.debug.metrics import CONTENT_TYPE
from meshpilot.debug.topics import TOPICS, TopicError, render_topic
from meshpilot.xds.discovery import DiscoveryServer


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


def make_app(server: DiscoveryServer) -> web.Application:
    async def ready(_: web.Request) -> web.Response:
        if server.ready.is_set():
            return web.Response(text="ready\n")
        return web.Response(
            status=503, text="not ready: waiting for config and registries to sync\n"
        )

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=server.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE}
        )

    async def topic(request: web.Request) -> web.Response:
        try:
            data = render_topic(server, request.path, dict(request.query))
        except TopicError as error:
            return web.json_response({"error": str(error)}, status=error.status, dumps=_dumps)
        return web.json_response(data, dumps=_dumps)

    async def traffic_metrics(request: web.Request) -> web.Response:
        # SMI Traffic Metrics (console/smi.py): views captured here, where the collector
        # lives; the answer is computed in a worker thread, as the console's graph is.
        stats = smi.collector(server)
        try:
            if stats is None:
                raise smi.no_console()
            snapshot, views = server.snapshot, proxy_views(server, stats)
            body = await asyncio.to_thread(smi.respond, snapshot, views,
                                           stats.last_round or time.time(), request.path,
                                           dict(request.query))
        except smi.ApiError as error:
            return web.json_response(error.status(), status=error.code, dumps=_dumps)
        return web.json_response(body, dumps=_dumps)

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get(smi.BASE + "{tail:(/.*)?}", traffic_metrics)
    app.router.add_get("/metrics", metrics)
    for path in TOPICS:
        app.router.add_get(path, topic)
    return app


async def start_debug_server(server: DiscoveryServer, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(server), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
