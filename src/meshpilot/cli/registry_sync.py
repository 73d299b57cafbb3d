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

from meshpilot.election import Elector
from meshpilot.etcd.client import EtcdAddress
from meshpilot.etcd.leader import EtcdLeaderElector
from meshpilot.kube.leader import LeaderElector
from meshpilot.mcp.server import McpServer, start_mcp_server
from meshpilot.registry.urls import RegistryUrlError
from meshpilot.sync.convert import flatten
from meshpilot.sync.kube_target import KubeTarget, kube_options
from meshpilot.sync.runner import RegistrySync
from meshpilot.sync.targets import DirectoryTarget, McpTarget, Target, manifest, plan

DEFAULT_ETCD_KEY = "/meshpilot/leader/registry-sync"


def _target(text: str) -> tuple[str, str]:
    kind, sep, rest = text.partition(":")
    if kind == "dir" and sep and rest:
        return kind, rest
    if kind == "mcp" and sep and rest.rpartition(":")[2].isdigit():
        return kind, rest
    if kind == "kube":
        return kind, rest  # the kubeconfig context, '' for the current one
    raise typer.BadParameter(f"expected dir:PATH, mcp:HOST:PORT or kube[:CONTEXT], got "
                             f"{text!r}", param_hint="--to")


def _elector(to: str, kubeconfig: str, lease: str, identity: str,
             durations: tuple[float, float, float]) -> Elector:
    lease_duration, renew_deadline, retry_period = durations
    if lease.startswith("etcd://"):
        # Any target: the key in etcd decides who writes.
        try:
            address = EtcdAddress.parse(lease)
            return EtcdLeaderElector(address, key=address.param("key") or DEFAULT_ETCD_KEY,
                                     identity=identity, lease_duration=lease_duration,
                                     renew_deadline=renew_deadline, retry_period=retry_period)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--lease") from error
    if not to.startswith("kube"):
        raise typer.BadParameter("leader election with a Kubernetes Lease needs --to "
                                 "kube[:CONTEXT]; with --to dir: or mcp: give "
                                 "--lease etcd://HOST:PORT?key=KEY", param_hint="--leader-election")
    namespace, sep, name = lease.rpartition("/")
    if not sep or not namespace or not name:
        raise typer.BadParameter(f"expected NAMESPACE/NAME, got {lease!r}", param_hint="--lease")
    try:
        return LeaderElector(kube_options(to, kubeconfig), name=name, namespace=namespace,
                             identity=identity, lease_duration=lease_duration,
                             renew_deadline=renew_deadline, retry_period=retry_period)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--lease-duration") from error


def registry_sync(
    sources: Annotated[
        list[str],
        typer.Option("--from", metavar="URL", help="A registry to read (repeatable): "
                     "consul://…, eureka://…, nacos://…, zookeeper://…, etcd://…"),
    ],
    to: Annotated[str, typer.Option("--to", metavar="dir:PATH|mcp:HOST:PORT|kube[:CONTEXT]",
                                    help="Where to write the ServiceEntries: a directory, an "
                                    "MCP server, or a Kubernetes API server (server-side "
                                    "apply).")],
    workload_entries: Annotated[bool, typer.Option(
        "--workload-entries", help="One WorkloadEntry per instance, selected by the "
        "ServiceEntry, instead of inline endpoints.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print what would change after the first read, then exit.")] = False,
    status_address: Annotated[str, typer.Option(
        help="Where /status (JSON) and /ready are served.")] = "127.0.0.1:15020",
    kubeconfig: Annotated[str, typer.Option(
        help="kubeconfig for --to kube (default $KUBECONFIG, ~/.kube/config, or in-cluster).")
    ] = "",
    leader_election: Annotated[bool, typer.Option(
        "--leader-election", help="Several replicas may run: only the holder of the lease "
        "(--lease) writes.")] = False,
    lease: Annotated[str, typer.Option(
        help="The lease for --leader-election: a Kubernetes Lease NAMESPACE/NAME (--to kube), "
        "or an etcd key, etcd://HOST:PORT[,HOST:PORT]?key=/meshpilot/leader/registry-sync "
        "(any --to).")
    ] = "istio-system/meshpilot-registry-sync",
    identity: Annotated[str, typer.Option(
        help="This replica's identity in the Lease (default $POD_NAME, else host-pid).")] = "",
    lease_duration: Annotated[float, typer.Option(
        help="Seconds a Lease not renewed stays held.")] = 15.0,
    renew_deadline: Annotated[float, typer.Option(
        help="Seconds a leader keeps leading without renewing.")] = 10.0,
    retry_period: Annotated[float, typer.Option(
        help="Seconds between Lease attempts.")] = 2.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Read service registries and keep their services written as Istio ServiceEntries."""
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    kind, where = _target(to)
    elector = _elector(to, kubeconfig, lease, identity,
                       (lease_duration, renew_deadline, retry_period)) \
        if leader_election else None
    try:
        asyncio.run(_run(sources, kind, where, workload_entries, dry_run, status_address,
                         kubeconfig, elector))
    except RegistryUrlError as error:
        typer.echo(f"error: --from {error}", err=True)
        raise typer.Exit(2) from error
    except OSError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error


async def _run(
    sources: list[str], kind: str, where: str, workload_entries: bool, dry_run: bool,
    status_address: str, kubeconfig: str = "", elector: Elector | None = None,
) -> None:
    mcp_server: McpServer | None = None
    target: Target
    kube_target: KubeTarget | None = None
    if kind == "dir":
        target = DirectoryTarget(Path(where), ",".join(sources))
    elif kind == "kube":
        target = kube_target = KubeTarget(kube_options(f"kube:{where}", kubeconfig),
                                          ",".join(sources), elector=elector)
    else:
        mcp_server = McpServer()
        target = McpTarget(mcp_server)
    sync = RegistrySync(sources, target, workload_entries=workload_entries, elector=elector)
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
        if kube_target is not None:
            await kube_target.close()


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
        data = sync.status.as_dict(sync.registries)
        if sync.elector is not None:
            data["leaderElection"] = sync.elector.status()
        return web.json_response(data, dumps=lambda d: json.dumps(d, indent=2))

    async def ready(_: web.Request) -> web.Response:
        # A follower is ready once it has read its registries: it would write on taking over.
        following = sync.elector is not None and not sync.elector.is_leader
        synced = sync.status.syncs > 0 or (following and sync.registries.has_synced())
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
