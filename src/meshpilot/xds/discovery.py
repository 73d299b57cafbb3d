"""The discovery server: inputs in, snapshots built, pushes fanned out to connections.

    config store ──┐ handlers            ┌─► Connection ─► stream (SotW or Delta)
                   ├─► config_update ─► debounce ─► push ─► Snapshot ─┼─► Connection ─► …
    registries ────┘                     └─► …

The server answers no xDS request until every config source and registry has synced once, so
a restarted server never serves an empty or partial mesh. A full push rebuilds the snapshot; an
endpoint-only push derives it from the previous one and sends EDS for the changed hosts only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshpilot.config.secrets import SecretStore
from meshpilot.config.store import ConfigStore
from meshpilot.config.support import UnsupportedFields
from meshpilot.console.history import PushHistory
from meshpilot.debug.metrics import Metrics
from meshpilot.envoy.generators import GENERATORS, Resource
from meshpilot.envoy.names import ClusterName
from meshpilot.envoy.targets import service_targets
from meshpilot.extensions.modules import WasmModules
from meshpilot.model import Kind, Proxy, PushRequest, TriggerReason
from meshpilot.model.meshconfig import MeshConfig
from meshpilot.model.security import MeshSecurity
from meshpilot.model.snapshot import Snapshot
from meshpilot.registry.autoregistration import AutoRegistration
from meshpilot.registry.base import ServiceRegistry
from meshpilot.xds.connection import Connection
from meshpilot.xds.debounce import debounce

if TYPE_CHECKING:
    from meshpilot.analysis.server import ServerAnalysis
    from meshpilot.security.runtime import SecurityRuntime

log = logging.getLogger("meshpilot.xds")

ROUTING_KINDS = (
    Kind.VIRTUAL_SERVICE, Kind.DESTINATION_RULE, Kind.GATEWAY, Kind.SIDECAR, Kind.TELEMETRY,
    Kind.ENVOY_FILTER, Kind.WASM_PLUGIN,
    Kind.PEER_AUTHENTICATION, Kind.AUTHORIZATION_POLICY, Kind.REQUEST_AUTHENTICATION,
)
"""Config kinds read into every snapshot (registries read ServiceEntry and WorkloadEntry)."""


@dataclass(frozen=True, slots=True)
class DebounceSettings:
    quiet: float = 0.1
    """Push once no event arrived for this long (seconds)."""
    max_delay: float = 10.0
    """…or once this long passed since the first event of a burst."""


class DiscoveryServer:
    def __init__(
        self,
        store: ConfigStore,
        registry: ServiceRegistry,
        debounce_settings: DebounceSettings = DebounceSettings(),
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = debounce_settings
        self.snapshot: Snapshot | None = None
        self.ready = asyncio.Event()
        self.connections: dict[str, Connection] = {}
        self.push_count = 0
        self.full_push_count = 0
        """Pushes that rebuilt the snapshot (the rest were endpoint-only)."""
        self._inbox: asyncio.Queue[PushRequest] = asyncio.Queue()
        self._versions = itertools.count(1)
        self._pushed = asyncio.Condition()
        self.metrics = Metrics(self)
        self.secrets: SecretStore | None = None
        """Gateway credentials (`--secrets-dir`), read into every full snapshot."""
        self.mesh = MeshConfig()
        self.wasm_modules: WasmModules | None = None
        """WasmPlugin modules fetched by the server (extensions/modules.py)."""
        """Mesh-wide settings (`--mesh-config`), carried into every snapshot."""
        self.security: MeshSecurity | None = None
        """Trust domain, workload certificates (`--ca-dir`) and JWKS fetching, carried into
        every snapshot (see meshpilot.security)."""
        self.security_runtime: SecurityRuntime | None = None
        """What rotates certificates and fetches JWKS for `security` (app.py runs it)."""
        self.autoregistration: AutoRegistration | None = None
        """Creates WorkloadEntries for proxies that name a WorkloadGroup (see its module)."""
        self.unsupported = UnsupportedFields()
        """Fields of current config that meshpilot accepts but does not apply, by resource."""
        self.analysis: ServerAnalysis | None = None
        """Config analysis on every change (`meshpilot.analysis.server`), unless turned off."""
        self.push_history = PushHistory()
        """Recent responses per proxy with their ACK/NACK (the console's proxy pages)."""
        store.register_handler(self.unsupported.on_config)
        store.register_handler(self._on_config)

    # Inputs ---------------------------------------------------------------------------------

    def config_update(self, request: PushRequest) -> None:
        """The one door for every input: queue a push request for debouncing."""
        if not request.started:
            request = PushRequest(
                full=request.full,
                config_kinds=request.config_kinds,
                eds_hosts=request.eds_hosts,
                reasons=request.reasons,
                count=request.count,
                started=asyncio.get_running_loop().time(),
            )
        self.metrics.triggered(request.reasons)
        self._inbox.put_nowait(request)

    def _on_config(self, old: object, new: object, event: object) -> None:
        config = new or old
        kind = getattr(config, "kind", "")
        self.metrics.config_event(kind, str(event))
        if kind in ROUTING_KINDS:
            self.config_update(
                PushRequest(
                    full=True,
                    config_kinds=frozenset({kind}),
                    reasons=frozenset({TriggerReason.CONFIG}),
                )
            )

    # Lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        await self._wait_synced()
        self.snapshot = self._build_full()
        self.ready.set()
        log.info("synced: %d services, serving xDS", len(self.snapshot.services))
        # Events that came in while syncing are covered by the first snapshot.
        while not self._inbox.empty():
            self._inbox.get_nowait()
        await debounce(self._inbox, self.push, self.settings.quiet, self.settings.max_delay)

    async def _wait_synced(self) -> None:
        await self.store.wait_synced()
        await self.registry.wait_synced()
        if self.secrets is not None:
            await self.secrets.wait_synced()

    async def wait_for_push(self, count: int) -> None:
        """Wait until at least `count` pushes have been processed (for tests and tools)."""
        await self.wait_for(lambda: self.push_count >= count)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate` holds, re-checked after every push."""
        async with self._pushed:
            await self._pushed.wait_for(predicate)

    # Snapshots and pushes ---------------------------------------------------------------------

    def _next_version(self) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return f"{stamp}/{next(self._versions)}"

    def _build_full(self) -> Snapshot:
        services = self.registry.services()
        endpoints = [
            ep for svc in services for ep in self.registry.endpoints(svc.hostname, svc.namespace)
        ]
        configs = [c for kind in ROUTING_KINDS for c in self.store.list(kind)]
        secrets = self.secrets.credentials if self.secrets is not None else None
        return Snapshot.build(
            self._next_version(), services, endpoints, configs, secrets, mesh=self.mesh,
            security=self.security,
            wasm_modules=self.wasm_modules.loaded() if self.wasm_modules else None,
        )

    def _build_endpoints(self, previous: Snapshot, hosts: Collection[tuple[str, str]]) -> Snapshot:
        changed = {
            host: self.registry.endpoints(host, namespace)
            for namespace, host in hosts
            if (svc := previous.services.get(host)) is not None and svc.namespace == namespace
        }
        return previous.with_endpoints(self._next_version(), changed)

    async def push(self, request: PushRequest) -> None:
        previous = self.snapshot
        start = time.monotonic()
        if request.started:
            self.metrics.debounced(request, asyncio.get_running_loop().time() - request.started)
        if request.full or previous is None:
            self.snapshot = self._build_full()
        else:
            self.snapshot = self._build_endpoints(previous, request.eds_hosts)
        log.debug(
            "push %s full=%s events=%d hosts=%d built in %.1fms",
            self.snapshot.version,
            request.full,
            request.count,
            len(request.eds_hosts),
            (time.monotonic() - start) * 1000,
        )
        for connection in list(self.connections.values()):
            connection.enqueue(request)
        async with self._pushed:
            self.push_count += 1
            self.full_push_count += request.full or previous is None
            self._pushed.notify_all()

    # Per-connection generation ----------------------------------------------------------------

    def connect(self, connection: Connection) -> None:
        self.connections[connection.id] = connection
        if self.autoregistration is not None:
            self.autoregistration.connected(connection.proxy)
        log.info("connected %s (%s) from %s", connection.proxy.id,
                 "delta" if connection.delta else "sotw", connection.peer)

    def disconnect(self, connection: Connection) -> None:
        self.connections.pop(connection.id, None)
        self.push_history.disconnected(connection.proxy.id, connection.id)
        if self.autoregistration is not None:
            self.autoregistration.disconnected(connection.proxy)
        log.info("disconnected %s", connection.proxy.id)

    def generate(
        self, proxy: Proxy, type_url: str, names: Collection[str] | None
    ) -> list[Resource]:
        assert self.snapshot is not None
        return GENERATORS[type_url].generate(self.snapshot, proxy, names)

    def targets_digest(self, proxy: Proxy) -> tuple[object, ...]:
        assert self.snapshot is not None
        return tuple(
            (ep.hostname, ep.service_port, ep.address, ep.port)
            for ep in service_targets(self.snapshot, proxy)
        )


def eds_names_for(names: Collection[str], hosts: Collection[tuple[str, str]]) -> set[str]:
    """The subscribed cluster names whose service is among the changed hosts."""
    changed = {host for _, host in hosts}
    return {
        n for n in names if (parsed := ClusterName.parse(n)) is not None and parsed.host in changed
    }
