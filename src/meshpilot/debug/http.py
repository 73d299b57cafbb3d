"""Debug HTTP endpoints on the server's own event loop (loopback by default).

Every topic is listed once in `TOPICS` with a description; `/debug/list` shows them. Each
answers JSON built from the live server, never from a copy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from meshpilot.envoy.names import SHORT_NAMES
from meshpilot.xds.discovery import DiscoveryServer
from meshpilot.xds.watch import WatchState

Handler = Callable[[DiscoveryServer, web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


async def ready(server: DiscoveryServer, _: web.Request) -> web.Response:
    if server.ready.is_set():
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready: waiting for config and registries to sync\n")


async def configz(server: DiscoveryServer, _: web.Request) -> web.Response:
    configs = server.store.all()
    errors = server.store.errors()
    return _json(
        {
            "configs": [
                {
                    "kind": c.kind,
                    "apiVersion": f"{c.group}/{c.version}",
                    "namespace": c.namespace,
                    "name": c.name,
                    "origin": c.origin,
                    "spec": c.spec,
                }
                for c in sorted(configs, key=lambda c: c.key)
            ],
            "errors": [_error(e) for e in errors],
        }
    )


async def config_errors(server: DiscoveryServer, _: web.Request) -> web.Response:
    return _json([_error(e) for e in server.store.errors()])


def _error(e: Any) -> dict[str, Any]:
    return {
        "file": e.file,
        "line": e.line,
        "resource": str(e.key) if e.key else "",
        "field": e.field,
        "message": e.message,
        "text": str(e),
    }


def _watch(state: WatchState) -> dict[str, Any]:
    if state.last_error:
        status = "ERROR"
    elif not state.nonce_sent:
        status = "NOT SENT"
    elif state.nonce_acked == state.nonce_sent:
        status = "SYNCED"
    else:
        status = "STALE"
    return {
        "status": status,
        "nonce_sent": state.nonce_sent,
        "nonce_acked": state.nonce_acked,
        "version_sent": state.version_sent,
        "version_acked": state.version_acked,
        "last_error": state.last_error,
        "last_send_time": state.last_send_time,
        "resources": len(state.sent),
    }


async def syncz(server: DiscoveryServer, _: web.Request) -> web.Response:
    return _json(
        [
            {
                "proxy": c.proxy.id,
                "cluster_id": c.proxy.cluster_id,
                "connection": c.id,
                "delta": c.delta,
                **{
                    SHORT_NAMES.get(t, t): _watch(s)
                    for t, s in sorted(c.watches.items(), key=lambda i: i[0])
                },
            }
            for c in sorted(server.connections.values(), key=lambda c: c.proxy.id)
        ]
    )


async def adsz(server: DiscoveryServer, _: web.Request) -> web.Response:
    now = time.time()
    return _json(
        {
            "totalClients": len(server.connections),
            "clients": [
                {
                    "connectionId": c.id,
                    "proxy": c.proxy.id,
                    "peer": c.peer,
                    "variant": "delta" if c.delta else "sotw",
                    "connectedFor": round(now - c.connected_at, 1),
                    "namespace": c.proxy.namespace,
                    "workload": c.proxy.workload_name,
                    "labels": dict(c.proxy.labels),
                    "ips": list(c.proxy.ip_addresses),
                    "pushes": c.pushes,
                    "watches": {
                        SHORT_NAMES.get(t, t): sorted(s.names) if not s.wildcard else ["*"]
                        for t, s in c.watches.items()
                    },
                }
                for c in sorted(server.connections.values(), key=lambda c: c.proxy.id)
            ],
        }
    )


async def registryz(server: DiscoveryServer, _: web.Request) -> web.Response:
    snapshot = server.snapshot
    if snapshot is None:
        return _json({"error": "not synced yet"}, status=503)
    return _json(
        {
            "version": snapshot.version,
            "services": [
                {
                    "hostname": s.hostname,
                    "namespace": s.namespace,
                    "registry": s.registry,
                    "source": s.source,
                    "resolution": s.resolution,
                    "ports": [
                        {"name": p.name, "port": p.number, "protocol": p.protocol}
                        for p in s.ports
                    ],
                    "endpoints": [
                        {
                            "address": e.address,
                            "port": e.port,
                            "servicePort": e.service_port,
                            "labels": dict(e.labels),
                            "health": e.health,
                            "workload": e.workload_name,
                        }
                        for p in s.ports
                        for e in snapshot.service_endpoints(s.hostname, p.number)
                    ],
                }
                for s in sorted(snapshot.services.values(), key=lambda s: s.hostname)
            ],
        }
    )


async def debug_list(_: DiscoveryServer, __: web.Request) -> web.Response:
    return _json({path: description for path, (_, description) in TOPICS.items()})


TOPICS: dict[str, tuple[Handler, str]] = {
    "/ready": (ready, "200 once every config source and registry has synced"),
    "/debug/list": (debug_list, "this list"),
    "/debug/configz": (configz, "all config with its origin, and rejected documents"),
    "/debug/config_errors": (config_errors, "rejected documents with file, line and reason"),
    "/debug/syncz": (syncz, "per proxy and type: SYNCED, NOT SENT, STALE or ERROR"),
    "/debug/adsz": (adsz, "connected proxies and their subscriptions"),
    "/debug/registryz": (registryz, "services and endpoints in the current snapshot"),
}


def make_app(server: DiscoveryServer) -> web.Application:
    app = web.Application()
    for path, (handler, _) in TOPICS.items():

        async def serve(request: web.Request, h: Handler = handler) -> web.StreamResponse:
            return await h(server, request)

        app.router.add_get(path, serve)
    return app


async def start_debug_server(server: DiscoveryServer, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(server), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
