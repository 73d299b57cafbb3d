"""One immutable view of the mesh per push.

Built by a flat list of steps from services, endpoints and config; generators read only the
snapshot, never the stores. An endpoint-only change derives a new snapshot from the previous one
(`with_endpoints`) instead of rebuilding everything, which keeps EDS pushes cheap.

The only mutable part is `cache`: serialized resources keyed by whatever they depend on, so
that N identical proxies cost one serialization per snapshot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshpilot.model.config import Config, Kind
from meshpilot.model.credential import Credential
from meshpilot.model.meshconfig import MeshConfig
from meshpilot.model.security import MeshSecurity
from meshpilot.model.service import Endpoint, Service

EndpointKey = tuple[str, int]
"""(hostname, service port)"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: str
    services: Mapping[str, Service]
    """By hostname. One namespace wins per hostname (the first by namespace order)."""
    endpoints: Mapping[EndpointKey, tuple[Endpoint, ...]]
    virtual_services: tuple[Config, ...] = ()
    """In precedence order: the first VirtualService naming a host owns it for sidecars."""
    destination_rules: tuple[Config, ...] = ()
    gateways: tuple[Config, ...] = ()
    sidecars: tuple[Config, ...] = ()
    secrets: Mapping[str, Credential] = field(default_factory=dict)
    """Gateway credentials from `--secrets-dir`, keyed `name` or `namespace/name`."""
    peer_authentications: tuple[Config, ...] = ()
    authorization_policies: tuple[Config, ...] = ()
    request_authentications: tuple[Config, ...] = ()
    security: MeshSecurity | None = None
    """Trust domain, CA and JWKS fetcher (see model/security.py); None without them."""
    telemetries: tuple[Config, ...] = ()
    envoy_filters: tuple[Config, ...] = ()
    wasm_plugins: tuple[Config, ...] = ()
    wasm_modules: Mapping[tuple[str, str], bytes] = field(default_factory=dict)
    """WasmPlugin modules the server has fetched, by (url, sha256)."""
    mesh: MeshConfig = field(default_factory=MeshConfig)
    """Mesh-wide settings (`--mesh-config`): tracing providers, access logs, defaults."""
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        version: str,
        services: Iterable[Service],
        endpoints: Iterable[Endpoint],
        configs: Iterable[Config],
        secrets: Mapping[str, Credential] | None = None,
        security: MeshSecurity | None = None,
        mesh: MeshConfig | None = None,
        wasm_modules: Mapping[tuple[str, str], bytes] | None = None,
    ) -> Snapshot:
        by_host: dict[str, Service] = {}
        for svc in sorted(services, key=lambda s: (s.hostname, s.namespace)):
            by_host.setdefault(svc.hostname, svc)
        eps = _index_endpoints(endpoints, by_host)
        configs = sorted(configs, key=lambda c: (c.namespace, c.name))
        return cls(
            version=version,
            services=by_host,
            endpoints=eps,
            virtual_services=tuple(c for c in configs if c.kind == Kind.VIRTUAL_SERVICE),
            destination_rules=tuple(c for c in configs if c.kind == Kind.DESTINATION_RULE),
            gateways=tuple(c for c in configs if c.kind == Kind.GATEWAY),
            sidecars=tuple(c for c in configs if c.kind == Kind.SIDECAR),
            secrets=dict(secrets or {}),
            peer_authentications=tuple(c for c in configs if c.kind == Kind.PEER_AUTHENTICATION),
            authorization_policies=tuple(
                c for c in configs if c.kind == Kind.AUTHORIZATION_POLICY
            ),
            request_authentications=tuple(
                c for c in configs if c.kind == Kind.REQUEST_AUTHENTICATION
            ),
            security=security,
            telemetries=tuple(c for c in configs if c.kind == Kind.TELEMETRY),
            envoy_filters=tuple(c for c in configs if c.kind == Kind.ENVOY_FILTER),
            wasm_plugins=tuple(c for c in configs if c.kind == Kind.WASM_PLUGIN),
            wasm_modules=dict(wasm_modules or {}),
            mesh=mesh or MeshConfig(),
        )

    def with_endpoints(self, version: str, changed: Mapping[str, Iterable[Endpoint]]) -> Snapshot:
        """A new snapshot where the endpoints of the hosts in `changed` are replaced."""
        eps = {k: v for k, v in self.endpoints.items() if k[0] not in changed}
        for host_eps in changed.values():
            for key, group in _index_endpoints(host_eps, self.services).items():
                eps[key] = group
        return dataclasses.replace(self, version=version, endpoints=eps, cache={})

    # Lookups used by generators. Results are memoised in `cache` since a snapshot never changes.

    @property
    def routes_use_source_labels(self) -> bool:
        """Whether any VirtualService matches on the client's labels (in http, tcp or tls
        routes), making routes and listeners per-proxy."""
        key = ("uses-source-labels",)
        if key not in self.cache:
            self.cache[key] = any(
                "sourceLabels" in match
                for vs in self.virtual_services
                for kind in ("http", "tcp", "tls")
                for route in vs.spec.get(kind) or ()
                for match in route.get("match") or ()
            )
        uses: bool = self.cache[key]
        return uses

    def service_endpoints(self, hostname: str, port: int) -> tuple[Endpoint, ...]:
        return self.endpoints.get((hostname, port), ())


def _index_endpoints(
    endpoints: Iterable[Endpoint], services: Mapping[str, Service]
) -> dict[EndpointKey, tuple[Endpoint, ...]]:
    grouped: dict[EndpointKey, list[Endpoint]] = {}
    for ep in endpoints:
        svc = services.get(ep.hostname)
        if svc is None or svc.namespace != ep.namespace:
            continue  # endpoints of a hostname owned by another namespace
        grouped.setdefault((ep.hostname, ep.service_port), []).append(ep)
    return {
        k: tuple(sorted(v, key=lambda e: (e.address, e.port)))
        for k, v in grouped.items()
    }
