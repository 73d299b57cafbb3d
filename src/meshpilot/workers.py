"""`meshpilot discovery --workers N`: xDS streams served by N worker processes on one port.

One Python process serves xDS from one core: every response is written by the event loop, and
on a push to a thousand proxies that loop, not snapshot building, is the bottleneck. Workers
share the xDS port with SO_REUSEPORT (grpc sets it on Linux by default), so the kernel spreads
incoming connections over them, and each push fans out on every core.

Design: **each worker is a whole discovery server watching the same config sources**, rather
than a main process building snapshots and shipping them to workers. Why:

- a snapshot holds live objects (services, configs, per-proxy generator caches keyed by object
  identity) that do not pickle compactly; shipping the *encoded* resource sets instead would
  need the per-proxy views (Sidecar scoping, node metadata) decided in the main process, i.e.
  a second xDS protocol between the two. Rebuilding in each worker costs a full build
  (9-53 ms at 1,000 services) or an endpoint derive (under a millisecond) per worker per push;
- sources (files, registries) are already watched with debouncing and a sync barrier
  ("no answer before every source has synced"), so workers converge on the same config with
  no new consistency machinery. Versions differ per worker; a proxy only ever compares
  versions from the one worker its stream is on, and a reconnect starts a new stream.

The cost is N times the config memory and N watchers; the gain is N event loops writing responses.

The main process only supervises: it starts the workers (spawned, each with its own debug
HTTP on an ephemeral port), serves the debug HTTP address itself, and answers from the
workers: `/debug/syncz` and `/debug/adsz` aggregate every worker's proxies; `/ready` is ready
when every worker is; requests naming a proxy (`proxyID`) go to the worker that has it; any
other path (config, analysis, metrics) comes from worker 0 (all workers serve the same config;
only worker 0 runs the in-server analysis, ControlZ, the console, status writing and REST xDS).
Limitations: `/metrics` are worker 0's only, and the xDS debug types (`istio.io/debug/syncz`
over ADS, i.e. `meshpilot proxy-status --xds-address`) see the proxies of the worker the tool
happens to connect to; use the debug HTTP address for a whole view. Every worker runs the
security runtime on the same `--ca-dir`, and with `--replicas-lease` each worker is one more
replica of the lease (one leader among them all), as separate servers would be.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import multiprocessing
import signal
import socket
import urllib.error
import urllib.request
from multiprocessing.connection import Connection, wait
from typing import Any

from aiohttp import web

from meshpilot.settings import DiscoverySettings

log = logging.getLogger("meshpilot.workers")

AGGREGATED = ("/debug/syncz", "/debug/adsz")


def worker_settings(settings: DiscoverySettings, index: int) -> DiscoverySettings:
    """A worker's settings: the shared xDS port, its own ephemeral debug port; the
    once-per-server duties on worker 0 only."""
    first = index == 0
    return dataclasses.replace(
        settings,
        workers=1,
        debug_address="127.0.0.1:0",
        controlz_address=settings.controlz_address if first else "127.0.0.1:0",
        analysis=settings.analysis and first,
        write_status=settings.write_status and first,
        rest_address=settings.rest_address if first else "",
        # The TLS xDS and CA ports: worker 0 only (proxies on them are not spread yet).
        secure_xds_address=settings.secure_xds_address if first else "",
        ca_address=settings.ca_address if first else "",
        console=settings.console if first else dataclasses.replace(settings.console, address=""),
    )


def _worker(settings: DiscoverySettings, report: Connection, level: int) -> None:
    from meshpilot.app import serve  # imported in the child: spawn starts a fresh interpreter

    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)-7s %(name)s[worker]: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor stops workers with SIGTERM
    asyncio.run(serve(settings, on_started=lambda running: report.send(running.debug_port)))


def _fixed_port(address: str) -> str:
    """Workers must agree on the port: `:0` is resolved here, once."""
    host, _, port = address.rpartition(":")
    if int(port):
        return address
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
        s.bind((host.strip("[]"), 0))
        return f"{host}:{s.getsockname()[1]}"


def _fetch(port: int, path_qs: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path_qs}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def merge(path: str, answers: list[Any]) -> Any:
    """One answer from every worker's: syncz lists are concatenated, adsz clients too."""
    if path == "/debug/adsz":
        clients = [c for a in answers for c in a.get("clients", ())]
        return {**answers[0], "totalClients": len(clients), "clients": clients}
    return [entry for a in answers for entry in a]


def debug_app(ports: list[int]) -> web.Application:
    async def ask(port: int, request: web.Request) -> tuple[int, bytes]:
        return await asyncio.to_thread(_fetch, port, request.path_qs)

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/ready":
            answers = await asyncio.gather(*(ask(p, request) for p in ports))
            ready = all(status == 200 for status, _ in answers)
            return web.Response(status=200 if ready else 503, text="ok" if ready else "not ready")
        if request.path in AGGREGATED:
            answers = await asyncio.gather(*(ask(p, request) for p in ports))
            bad = next(((s, b) for s, b in answers if s != 200), None)
            if bad is not None:
                return web.Response(status=bad[0], body=bad[1], content_type="application/json")
            merged = merge(request.path, [json.loads(body) for _, body in answers])
            return web.json_response(merged)
        candidates = ports if "proxyID" in request.query else ports[:1]
        status, body = 404, b""
        for port in candidates:
            status, body = await ask(port, request)
            if status != 404:
                break
        content_type = "text/plain" if request.path == "/metrics" else "application/json"
        return web.Response(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


async def serve_workers(settings: DiscoverySettings) -> None:
    """Run `settings.workers` discovery workers on one xDS port until SIGTERM/SIGINT or until
    one of them exits (then all stop: a partial server would silently drop proxies)."""
    shared = dataclasses.replace(settings, xds_address=_fixed_port(settings.xds_address))
    context = multiprocessing.get_context("spawn")
    processes, pipes = [], []
    for index in range(settings.workers):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(
            target=_worker, name=f"meshpilot-worker-{index}",
            args=(worker_settings(shared, index), send, logging.getLogger().level),
        )
        process.start()
        processes.append(process)
        pipes.append(receive)
    runner: web.AppRunner | None = None
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    try:
        ports = [int(await asyncio.to_thread(pipe.recv)) for pipe in pipes]
        host, _, port = settings.debug_address.rpartition(":")
        runner = web.AppRunner(debug_app(ports), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        log.info("%d workers serving xDS on %s; debug HTTP on %s", len(processes),
                 shared.xds_address, settings.debug_address)
        # Returns when any worker exits (its sentinel becomes ready).
        await asyncio.to_thread(wait, [p.sentinel for p in processes])
        log.error("a worker exited; stopping")
    except (asyncio.CancelledError, EOFError):
        log.info("shutting down")
    finally:
        if runner is not None:
            await runner.cleanup()
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            await asyncio.to_thread(process.join, 10)
            if process.is_alive():
                process.kill()
