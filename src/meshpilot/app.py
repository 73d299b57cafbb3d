"""`meshpilot discovery` wired together: sources → registries → server → gRPC and HTTP.

All long-running parts run in one TaskGroup: if one fails, all stop. SIGTERM and SIGINT
cancel the group, which stops the gRPC server (with a short grace) and the HTTP server.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from aiohttp import web

from meshpilot.analysis.server import ServerAnalysis
from meshpilot.config.composite import CompositeStore
from meshpilot.config.filestore import FileConfigStore
from meshpilot.config.secrets import SecretStore
from meshpilot.config.sources import config_source
from meshpilot.config.store import ConfigStore
from meshpilot.config.translating import TranslatingStore
from meshpilot.console.server import Console, start_console
from meshpilot.debug.controlz import start_controlz
from meshpilot.debug.http import start_debug_server
from meshpilot.extensions.modules import WasmModules
from meshpilot.kube.replicas import replica_duties
from meshpilot.model.meshconfig import load_mesh_config
from meshpilot.registry.aggregate import AggregateRegistry
from meshpilot.registry.autoregistration import AutoRegistration
from meshpilot.registry.plugins import create_registry
from meshpilot.registry.serviceentry import ServiceEntryRegistry
from meshpilot.security.runtime import SecurityRuntime
from meshpilot.settings import DiscoverySettings
from meshpilot.xds.discovery import DiscoveryServer
from meshpilot.xds.rest import start_rest_server
from meshpilot.xds.secure import SecureServer, start_secure
from meshpilot.xds.server import start_grpc_server

log = logging.getLogger("meshpilot")


@dataclass
class Running:
    """A started server, for callers (tests, the CLI) that need its parts and ports."""

    discovery: DiscoveryServer
    grpc_server: grpc.aio.Server
    xds_port: int
    http: web.AppRunner
    debug_port: int
    controlz: web.AppRunner | None = None
    rest: web.AppRunner | None = None
    """REST-JSON xDS (`--rest-address`), when served."""
    rest_port: int = 0
    console: Console | None = None
    """The mesh console (`--console-address`), unless turned off or its port was taken."""
    secure: SecureServer | None = None
    """The secure xDS and CA ports (`--ca-dir`)."""


def build_discovery(settings: DiscoverySettings) -> DiscoveryServer:
    files = FileConfigStore(list(settings.config_dirs))
    sources = [config_source(url) for url in settings.config_sources]
    combined: ConfigStore = CompositeStore([files, *sources]) if sources else files
    # SMI and Gateway API objects are served as the Istio config they translate to.
    translating = TranslatingStore(combined)
    store: ConfigStore = translating
    aggregate = AggregateRegistry()
    discovery = DiscoveryServer(store, aggregate, settings.debounce)
    if settings.mesh_config is not None or settings.mesh_networks is not None:
        discovery.mesh = load_mesh_config(
            str(settings.mesh_config) if settings.mesh_config else None,
            str(settings.mesh_networks) if settings.mesh_networks else None,
        )
    trust_domain = settings.trust_domain or discovery.mesh.trust_domain
    translating.set_trust_domain(trust_domain)  # SMI TrafficTarget principals
    runtime = SecurityRuntime.create(
        discovery, trust_domain, settings.ca_dir,
        datetime.timedelta(seconds=settings.cert_ttl),
    )
    discovery.security, discovery.security_runtime = runtime.security, runtime
    discovery.wasm_modules = WasmModules(store, discovery)
    discovery.autoregistration = AutoRegistration(store)
    aggregate.add(ServiceEntryRegistry(
        store, discovery, cluster_id=settings.cluster_id,
        more_stores=[discovery.autoregistration.store],
    ))
    for url in settings.registries:
        aggregate.add(create_registry(url, discovery))
    if settings.secrets_dir is not None:
        discovery.secrets = SecretStore(settings.secrets_dir, discovery)
    return discovery


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def start(settings: DiscoverySettings, discovery: DiscoveryServer) -> Running:
    grpc_server, xds_port = await start_grpc_server(discovery, settings.xds_address)
    host, port = _split(settings.debug_address)
    http = await start_debug_server(discovery, host, port)
    debug_port = port
    for site in http.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            debug_port = server.sockets[0].getsockname()[1]
    running = Running(discovery, grpc_server, xds_port, http, debug_port)
    running.secure = await start_secure(settings, discovery)
    if settings.rest_address:
        host, port = _split(settings.rest_address)
        running.rest, running.rest_port = await start_rest_server(
            discovery, host, port, settings.rest_xds_cluster
        )
    host, port = _split(settings.controlz_address)
    try:
        running.controlz = await start_controlz(discovery, host, port)
    except OSError as error:
        # Introspection is an aid: a busy port must not keep the control plane down.
        log.warning("ControlZ not started on %s: %s", settings.controlz_address, error)
    if settings.console.address:
        try:
            running.console = await start_console(discovery, settings.console)
            log.info("console on http://%s/", settings.console.address)
        except OSError as error:
            # Like ControlZ: an aid, so a busy port must not keep the control plane down.
            log.warning("console not started on %s: %s", settings.console.address, error)
    return running


async def stop(running: Running) -> None:
    await running.grpc_server.stop(grace=1.0)
    if running.secure is not None:
        await running.secure.server.stop(grace=1.0)
    await running.http.cleanup()
    if running.controlz is not None:
        await running.controlz.cleanup()
    if running.rest is not None:
        await running.rest.cleanup()
    if running.console is not None:
        await running.console.stop()


async def serve(
    settings: DiscoverySettings, on_started: Callable[[Running], None] | None = None
) -> None:
    if settings.workers > 1:
        from meshpilot.workers import serve_workers

        await serve_workers(settings)
        return
    # A push allocates a few objects per proxy, so CPython's default (a young collection per
    # 700 allocations, each older one scanning the snapshot's ~340k objects) spent ~12% of an
    # endpoint push's CPU collecting garbage there is little of: collect young objects less
    # often.
    gc.set_threshold(20_000, 10, 10)
    discovery = build_discovery(settings)
    if settings.analysis:
        discovery.analysis = ServerAnalysis(discovery)
    running = await start(settings, discovery)
    log.info(
        "xDS on %s (port %d), debug HTTP on %s",
        settings.xds_address,
        running.xds_port,
        settings.debug_address,
    )
    if on_started is not None:
        on_started(running)  # a worker tells its supervisor where its debug HTTP is
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(discovery.store.run(), name="config-store")
            group.create_task(discovery.registry.run(), name="registries")
            group.create_task(discovery.run(), name="discovery")
            if discovery.secrets is not None:
                group.create_task(discovery.secrets.run(), name="secrets")
            if discovery.analysis is not None:
                group.create_task(discovery.analysis.run(), name="analysis")
            if discovery.security_runtime is not None:
                group.create_task(discovery.security_runtime.run(), name="security")
            for name, duty in replica_duties(settings, discovery):
                group.create_task(duty, name=name)
    except asyncio.CancelledError:
        log.info("shutting down")
    finally:
        await stop(running)
