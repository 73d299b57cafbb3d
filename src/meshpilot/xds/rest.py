"""REST-JSON xDS: `POST /v3/discovery:<type>` as Envoy's `api_type: REST` polls it.

    POST /v3/discovery:clusters | :listeners | :routes | :endpoints
    body: a DiscoveryRequest as JSON (node, resource_names, version_info)
    200:  a DiscoveryResponse as JSON (version_info, resources, type_url)
    304:  the client's `version_info` is already current

Answers come from the same generators and per-snapshot caches as ADS (`DiscoveryServer.generate`
and `xds/encoding.ResourceSet`), so a REST client gets what an ADS client with the same node
gets. Two differences a polling client needs:

- `version_info` is a digest of the resources returned, not the snapshot version: a poll after
  a push that did not change this client's resources is "already current" (304), which is what
  makes polling cheap. ADS responses carry the snapshot version, as before.
- a REST client has no ADS stream, so config sources that say `ads` (EDS in clusters, RDS in
  HTTP connection managers) are rewritten to poll this API through the client's xDS cluster
  (`--rest-xds-cluster`, meshpilot's bootstrap name by default). The rewritten resources and the
  JSON of each answer are cached per snapshot like everything else.

The server answers 503 until every source has synced, as ADS answers nothing until then.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, json_format

from meshpilot.agent.node import proxy_from_node
from meshpilot.envoy.generators import GENERATORS, Resource
from meshpilot.envoy.names import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshpilot.model.snapshot import Snapshot
from meshpilot.xds.discovery import DiscoveryServer
from meshpilot.xds.encoding import resource_set

PATHS = {"clusters": CLUSTER, "listeners": LISTENER, "routes": ROUTE, "endpoints": ENDPOINT}
"""`/v3/discovery:<path>` → type URL, as Envoy derives the path from the type."""

DEFAULT_XDS_CLUSTER = "xds-grpc"
"""The cluster meshpilot's own bootstrap names for the control plane (agent/bootstrap.py)."""

_HCM_TYPE = (
    "type.googleapis.com/" + http_connection_manager_pb2.HttpConnectionManager.DESCRIPTOR.full_name
)


def rest_source(xds_cluster: str, refresh: float) -> config_source_pb2.ConfigSource:
    source = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    api = source.api_config_source
    api.api_type = config_source_pb2.ApiConfigSource.REST
    api.transport_api_version = config_source_pb2.V3
    api.cluster_names.append(xds_cluster)
    api.refresh_delay.FromNanoseconds(int(refresh * 1e9))
    return source


def _rewrite_cluster(body: any_pb2.Any, source: config_source_pb2.ConfigSource) -> Any:
    cluster = cluster_pb2.Cluster()
    body.Unpack(cluster)
    if not cluster.eds_cluster_config.eds_config.HasField("ads"):
        return body
    cluster.eds_cluster_config.eds_config.CopyFrom(source)
    packed = any_pb2.Any()
    packed.Pack(cluster)
    return packed


def _rewrite_listener(body: any_pb2.Any, source: config_source_pb2.ConfigSource) -> Any:
    listener = listener_pb2.Listener()
    body.Unpack(listener)
    changed = False
    chains = [*listener.filter_chains]
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for flt in chain.filters:
            if flt.typed_config.type_url != _HCM_TYPE:
                continue
            manager = http_connection_manager_pb2.HttpConnectionManager()
            flt.typed_config.Unpack(manager)
            if manager.HasField("rds") and manager.rds.config_source.HasField("ads"):
                manager.rds.config_source.CopyFrom(source)
                flt.typed_config.Pack(manager)
                changed = True
    if not changed:
        return body
    packed = any_pb2.Any()
    packed.Pack(listener)
    return packed


class RestXds:
    def __init__(self, discovery: DiscoveryServer, xds_cluster: str = DEFAULT_XDS_CLUSTER,
                 refresh: float = 1.0) -> None:
        self.discovery = discovery
        self.source = rest_source(xds_cluster, refresh)
        self.requests = 0
        self.not_modified = 0

    def answer(self, type_url: str, request: Any) -> tuple[int, bytes]:
        """Status and JSON body for a DiscoveryRequest (already parsed)."""
        snapshot = self.discovery.snapshot
        assert snapshot is not None
        proxy = proxy_from_node(request.node)
        names = frozenset(request.resource_names)
        wildcard = GENERATORS[type_url].wildcard and (not names or "*" in names)
        resources = self.discovery.generate(proxy, type_url, None if wildcard else names)
        shared = resource_set(snapshot, resources)
        version = _digest(snapshot, shared.versions, id(shared))
        if request.version_info == version:
            self.not_modified += 1
            return 304, b""
        key = ("rest-json", id(shared), type_url)
        found: tuple[object, bytes] | None = snapshot.cache.get(key)
        if found is None or found[0] is not shared:
            body = self._json(snapshot, type_url, version, resources)
            found = snapshot.cache[key] = (shared, body)
        return 200, found[1]

    def _json(
        self, snapshot: Snapshot, type_url: str, version: str, resources: list[Resource]
    ) -> bytes:
        response = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url)
        response.resources.extend(self._rest_body(snapshot, type_url, r) for r in resources)
        return json.dumps(json_format.MessageToDict(response)).encode()

    def _rest_body(self, snapshot: Snapshot, type_url: str, resource: Resource) -> Any:
        if type_url not in (CLUSTER, LISTENER):
            return resource.body
        key = ("rest-body", type_url, resource.name, resource.version)
        found = snapshot.cache.get(key)
        if found is None:
            rewrite = _rewrite_cluster if type_url == CLUSTER else _rewrite_listener
            found = snapshot.cache[key] = rewrite(resource.body, self.source)
        return found

    async def handle(self, request: web.Request) -> web.Response:
        type_url = PATHS.get(request.match_info["type"])
        if type_url is None:
            return web.Response(status=404, text="unknown xDS type\n")
        if not self.discovery.ready.is_set() or self.discovery.snapshot is None:
            return web.Response(status=503, text="not ready: config and registries syncing\n")
        try:
            parsed = json_format.Parse(
                await request.read(), discovery_pb2.DiscoveryRequest(), ignore_unknown_fields=True
            )
        except json_format.ParseError as error:
            return web.Response(status=400, text=f"bad DiscoveryRequest: {error}\n")
        if not parsed.node.id:
            return web.Response(status=400, text="DiscoveryRequest has no node id\n")
        self.requests += 1
        status, body = self.answer(type_url, parsed)
        return web.Response(status=status, body=body or None,
                            content_type="application/json" if body else None)


def _digest(snapshot: Snapshot, versions: dict[str, str], identity: int) -> str:
    """A version naming exactly this set of resources, computed once per set and snapshot;
    equal sets in later snapshots get equal digests."""
    key = ("rest-version", identity)
    found: tuple[dict[str, str], str] | None = snapshot.cache.get(key)
    if found is None or found[0] is not versions:
        hasher = hashlib.blake2b(digest_size=8)
        for name in sorted(versions):
            hasher.update(f"{name}\0{versions[name]}\0".encode())
        found = snapshot.cache[key] = (versions, hasher.hexdigest())
    return found[1]


def make_app(rest: RestXds) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v3/discovery:{type}", rest.handle)
    return app


async def start_rest_server(
    discovery: DiscoveryServer, host: str, port: int, xds_cluster: str = DEFAULT_XDS_CLUSTER
) -> tuple[web.AppRunner, int]:
    """Serve REST xDS on `host:port`; returns the runner and the port bound."""
    runner = web.AppRunner(make_app(RestXds(discovery, xds_cluster)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    return runner, bound
