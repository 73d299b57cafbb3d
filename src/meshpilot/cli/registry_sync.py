"""`meshpilot registry-sync`: turn third-party registries into Istio config for any Istio."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
import yaml
from aiohttp import web

from meshpilot.mcp.server import McpServer, start_mcp_server
from meshpilot.registry.urls import RegistryUrlError
from meshpilot.sync.convert import flatten
from meshpilot.sync.runner import RegistrySync
from meshpilot.sync.targets import DirectoryTarget, McpTarget, Target, manifest, plan


def _target(text: str) -> tuple[str, str]:
    kind, sep, rest = text.partition(":")
    if kind == "dir" and sep and rest:
        return kind, rest
    if kind == "mcp" and sep and rest.rpartition(":")[2].isdigit():
        return kind, rest
    if kind == "kube":
        raise typer.BadParameter(
            "the Kubernetes target is not available in this version; use dir:PATH or "
            "mcp:HOST:PORT", param_hint="--to")
    raise typer.BadParameter(f"expected dir:PATH or mcp:HOST:PORT, got {text!r}",
                             param_hint="--to")


def registry_sync(
    sources: Annotated[
        list[str],
        typer.Option("--from", metavar="URL", help="A registry to read (repeatable): "
                     "consul://…, eureka://…, nacos://…, zookeeper://…, etcd://…"),
    ],
    to: Annotated[str, typer.Option("--to", metavar="dir:PATH|mcp:HOST:PORT",
                                    help="Where to write the ServiceEntries.")],
    workload_entries: Annotated[bool, typer.Option(
        "--workload-entries", help="One WorkloadEntry per instance, selected by the "
        "ServiceEntry, instead of inline endpoints.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print what would change after the first read, then exit.")] = False,
    status_address: Annotated[str, typer.Option(
        help="Where /status (JSON) and /ready are served.")] = "127.0.0.1:15020",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Read service registries and keep their services written as Istio ServiceEntries."""
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    kind, where = _target(to)
    try:
        asyncio.run(_run(sources, kind, where, workload_entries, dry_run, status_address))
    except RegistryUrlError as error:
        typer.echo(f"error: --from {error}", err=True)
        raise typer.Exit(2) from error
    except OSError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error


async def _run(
    sources: list[str], kind: str, where: str, workload_entries: bool, dry_run: bool,
    status_address: str,
) -> None:
    mcp_server: McpServer | None = None
    target: Target
    if kind == "dir":
        target = DirectoryTarget(Path(where), ",".join(sources))
    else:
        mcp_server = McpServer()
        target = McpTarget(mcp_server)
    sync = RegistrySync(sources, target, workload_entries=workload_entries)
    if dry_run:
        await _dry_run(sync, kind, where)
        return
    grpc_server = None
    if mcp_server is not None:
        grpc_server, port = await start_mcp_server(mcp_server, where)
        logging.getLogger("meshpilot.sync").info("serving MCP on %s (port %d)", where, port)
    runner = await _status_server(sync, status_address)
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    try:
        await sync.run()
    except asyncio.CancelledError:
        pass
    finally:
        await runner.cleanup()
        if grpc_server is not None:
            await grpc_server.stop(grace=1.0)


async def _dry_run(sync: RegistrySync, kind: str, where: str) -> None:
    task = asyncio.create_task(sync.registries.run())
    try:
        await sync.wait_synced()
        groups = sync.desired()
    finally:
        task.cancel()
    if kind == "dir":
        for action, path in plan(Path(where), groups, sync.source):
            typer.echo(f"{action}\t{path}")
    typer.echo(yaml.safe_dump_all([manifest(c) for c in flatten(groups)], sort_keys=False))


async def _status_server(sync: RegistrySync, address: str) -> web.AppRunner:
    async def status(_: web.Request) -> web.Response:
        return web.json_response(sync.status.as_dict(sync.registries),
                                 dumps=lambda d: json.dumps(d, indent=2))

    async def ready(_: web.Request) -> web.Response:
        synced = sync.status.syncs > 0
        return web.Response(status=200 if synced else 503,
                            text="ready\n" if synced else "waiting for registries\n")

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/ready", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = address.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()
    return runner


def register(app: typer.Typer) -> None:
    app.command("registry-sync")(registry_sync)
