"""What the server would send a proxy now, as an Envoy `/config_dump`.

The dump is built from `DiscoveryServer.generate` for the proxy, never from what was last sent,
so comparing it with the proxy's own `/config_dump` shows whether the proxy runs the current
config. It asks for what Envoy itself would ask for: every cluster and listener, the route
configurations the listeners name over RDS, and the EDS services of the EDS clusters.

Sections use Envoy's own messages (`ClustersConfigDump`, `ListenersConfigDump`, …), so the JSON
has exactly Envoy's shape and the two can be diffed field by field.
"""

from __future__ import annotations

from typing import Any

from envoy.admin.v3 import (
    clusters_pb2,  # noqa: F401  (registers admin types used in Any)
    config_dump_pb2,
    config_dump_shared_pb2,
)
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from meshpilot.envoy.generators import Resource
from meshpilot.envoy.names import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshpilot.model import Proxy
from meshpilot.xds.discovery import DiscoveryServer

HCM_TYPE = "type.googleapis.com/" + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name


def server_config_dump(server: DiscoveryServer, proxy: Proxy) -> config_dump_pb2.ConfigDump:
    assert server.snapshot is not None
    version = server.snapshot.version
    clusters = server.generate(proxy, CLUSTER, None)
    listeners = server.generate(proxy, LISTENER, None)
    routes = server.generate(proxy, ROUTE, sorted(route_names(listeners)))
    endpoints = server.generate(proxy, ENDPOINT, sorted(eds_names(clusters)))

    dump = config_dump_pb2.ConfigDump()
    section_clusters = config_dump_shared_pb2.ClustersConfigDump(version_info=version)
    for r in clusters:
        section_clusters.dynamic_active_clusters.add(version_info=version).cluster.CopyFrom(r.body)
    section_listeners = config_dump_shared_pb2.ListenersConfigDump(version_info=version)
    for r in listeners:
        entry = section_listeners.dynamic_listeners.add(name=r.name)
        entry.active_state.version_info = version
        entry.active_state.listener.CopyFrom(r.body)
    section_routes = config_dump_shared_pb2.RoutesConfigDump()
    for r in routes:
        section_routes.dynamic_route_configs.add(version_info=version).route_config.CopyFrom(r.body)
    section_endpoints = config_dump_shared_pb2.EndpointsConfigDump()
    for r in endpoints:
        section_endpoints.dynamic_endpoint_configs.add(
            version_info=version
        ).endpoint_config.CopyFrom(r.body)
    for section in (section_clusters, section_listeners, section_routes, section_endpoints):
        dump.configs.add().Pack(section)
    return dump


def config_dump_json(server: DiscoveryServer, proxy: Proxy) -> dict[str, Any]:
    """The dump as Envoy prints it: proto field names, `@type` on every Any."""
    data: dict[str, Any] = json_format.MessageToDict(
        server_config_dump(server, proxy), preserving_proto_field_name=True
    )
    return data


def route_names(listeners: list[Resource]) -> set[str]:
    """Route configurations the listeners ask for over RDS."""
    names: set[str] = set()
    for resource in listeners:
        listener = listener_pb2.Listener()
        resource.body.Unpack(listener)
        for chain in [*listener.filter_chains, listener.default_filter_chain]:
            for network_filter in chain.filters:
                if network_filter.typed_config.type_url != HCM_TYPE:
                    continue
                manager = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(manager)
                if manager.HasField("rds"):
                    names.add(manager.rds.route_config_name)
    return names


def eds_names(clusters: list[Resource]) -> set[str]:
    """EDS service names of the EDS clusters (the cluster name when none is set)."""
    names: set[str] = set()
    for resource in clusters:
        cluster = cluster_pb2.Cluster()
        resource.body.Unpack(cluster)
        if cluster.type == cluster_pb2.Cluster.EDS:
            names.add(cluster.eds_cluster_config.service_name or cluster.name)
    return names
