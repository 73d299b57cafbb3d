"""Ask a real Envoy whether it accepts what meshpilot generates, without running a mesh.

Everything a proxy would receive (clusters, listeners with their routes inlined) goes into the
static part of a bootstrap, and `envoy --mode validate` loads it: every cluster, listener,
filter and route is instantiated and checked as Envoy would on an xDS update.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from meshpilot.agent.envoy_process import find_envoy_binary
from meshpilot.envoy.generators import GENERATORS
from meshpilot.envoy.listeners import HCM
from meshpilot.envoy.names import CLUSTER, LISTENER, ROUTE
from meshpilot.model import Proxy
from meshpilot.model.snapshot import Snapshot


def bootstrap_for(snapshot: Snapshot, proxy: Proxy) -> bootstrap_pb2.Bootstrap:
    boot = bootstrap_pb2.Bootstrap()
    boot.node.id = proxy.id
    boot.node.cluster = proxy.cluster or "validate"
    ads = boot.dynamic_resources.ads_config
    ads.api_type = config_source_pb2.ApiConfigSource.GRPC
    ads.transport_api_version = config_source_pb2.V3
    ads.grpc_services.add().envoy_grpc.cluster_name = "xds-grpc"
    xds = boot.static_resources.clusters.add(name="xds-grpc")
    xds.type = cluster_pb2.Cluster.STATIC
    xds.load_assignment.cluster_name = "xds-grpc"
    address = xds.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address
    address.socket_address.address = "127.0.0.1"
    address.socket_address.port_value = 1
    for resource in GENERATORS[CLUSTER].generate(snapshot, proxy, None):
        cluster = cluster_pb2.Cluster()
        resource.body.Unpack(cluster)
        boot.static_resources.clusters.append(cluster)
    listeners = []
    for resource in GENERATORS[LISTENER].generate(snapshot, proxy, None):
        listener = listener_pb2.Listener()
        resource.body.Unpack(listener)
        listeners.append(listener)
    route_names = set()
    for listener in listeners:
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if network_filter.name == HCM:
                    manager = hcm_pb2.HttpConnectionManager()
                    network_filter.typed_config.Unpack(manager)
                    if manager.HasField("rds"):
                        route_names.add(manager.rds.route_config_name)
    routes = {}
    for resource in GENERATORS[ROUTE].generate(snapshot, proxy, sorted(route_names)):
        config = route_pb2.RouteConfiguration()
        resource.body.Unpack(config)
        routes[config.name] = config
    for listener in listeners:
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if network_filter.name == HCM:
                    manager = hcm_pb2.HttpConnectionManager()
                    network_filter.typed_config.Unpack(manager)
                    if manager.HasField("rds"):
                        manager.route_config.CopyFrom(routes[manager.rds.route_config_name])
                    network_filter.typed_config.Pack(manager)
        boot.static_resources.listeners.append(listener)
    return boot


def envoy_rejects(snapshot: Snapshot, proxy: Proxy) -> str:
    """'' when Envoy accepts the proxy's whole config, else Envoy's error text."""
    boot = bootstrap_for(snapshot, proxy)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bootstrap.json"
        path.write_text(json_format.MessageToJson(boot))
        result = subprocess.run(
            [str(find_envoy_binary()), "--mode", "validate", "-c", str(path),
             "--log-level", "error", "--disable-hot-restart"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    return "" if result.returncode == 0 else (result.stderr or result.stdout)[-4000:]
