"""Build the Envoy bootstrap that points a proxy at meshpilot over ADS.

The bootstrap is the only static config Envoy gets. It carries the node identity (see `node`),
the admin endpoint, and one static cluster, `xds-grpc`, that reaches the discovery server over
HTTP/2. Everything else — listeners, clusters, routes, endpoints — arrives over a single
aggregated (ADS) gRPC stream: `cds_config` and `lds_config` name ADS as their source, and RDS/EDS
follow because the generated listeners and clusters name ADS too.

With the agent's own certificate (`sds_socket`, the CSR flow), two things change, as in Istio:
a static `sds-grpc` cluster reaches the agent's SDS server on its Unix socket, and `xds-grpc`
speaks mutual TLS to the secure discovery port with the certificate and root from that SDS,
checking the server's certificate for Istio's discovery name.

The bootstrap is built as a typed proto so field names are checked by protobuf, then rendered as
JSON (Envoy picks the format from the `.json` extension of the `-c` file).
"""

from __future__ import annotations

from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from meshpilot.agent.node import HostPort, NodeInfo, XdsVariant, is_ip, parse_host_port
from meshpilot.envoy import sds
from meshpilot.xds.secure_names import DISCOVERY_NAME

XDS_CLUSTER_NAME = "xds-grpc"
BOOTSTRAP_FILE_NAME = "envoy-bootstrap.json"
HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# The xDS stream is one long-lived connection; limits high enough that Envoy's defaults (1024)
# never throttle reconnects or the requests multiplexed on it.
_CIRCUIT_BREAKER_LIMIT = 100_000

_API_TYPES = {
    XdsVariant.SOTW: config_source_pb2.ApiConfigSource.GRPC,
    XdsVariant.DELTA: config_source_pb2.ApiConfigSource.DELTA_GRPC,
}


def build_bootstrap(
    node: NodeInfo, discovery_address: HostPort, sds_socket: Path | None = None
) -> bootstrap_pb2.Bootstrap:
    """The complete bootstrap for `node`, fetching its config from `discovery_address`; with
    `sds_socket`, over mutual TLS with the agent's certificate served on that socket."""
    clusters = [_xds_cluster(discovery_address)]
    node_proto = node.to_node_proto()
    if sds_socket is not None:
        clusters[0].transport_socket.name = "envoy.transport_sockets.tls"
        clusters[0].transport_socket.typed_config.Pack(_xds_tls())
        clusters.append(_sds_cluster(sds_socket))
        node_proto.metadata.fields[sds.AGENT_SDS].string_value = sds.AGENT_SDS_VALUE
    return bootstrap_pb2.Bootstrap(
        node=node_proto,
        admin=_admin(parse_host_port(node.admin_address)),
        dynamic_resources=_dynamic_resources(node.xds_variant),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(clusters=clusters),
    )


def _xds_tls() -> tls_pb2.UpstreamTlsContext:
    with sds.secrets_source(agent=True):
        common = sds.mesh_common_context()
    san = common.combined_validation_context.default_validation_context
    san.match_typed_subject_alt_names.add(
        san_type=common_pb2.SubjectAltNameMatcher.DNS
    ).matcher.exact = DISCOVERY_NAME
    common.alpn_protocols.append("h2")
    return tls_pb2.UpstreamTlsContext(common_tls_context=common, sni=DISCOVERY_NAME)


def _sds_cluster(socket: Path) -> cluster_pb2.Cluster:
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(pipe=address_pb2.Pipe(path=str(socket)))
        )
    )
    cluster = cluster_pb2.Cluster(
        name=sds.SDS_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=sds.SDS_CLUSTER,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
        ),
    )
    cluster.connect_timeout.FromSeconds(1)
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].Pack(
        http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
    )
    return cluster


def render_bootstrap_json(bootstrap: bootstrap_pb2.Bootstrap) -> str:
    # Envoy accepts both spellings; snake_case matches its documentation.
    text: str = json_format.MessageToJson(bootstrap, indent=2, preserving_proto_field_name=True)
    return text + "\n"


def write_bootstrap(bootstrap: bootstrap_pb2.Bootstrap, directory: Path) -> Path:
    """Write the bootstrap JSON into `directory` (created if missing); return the file path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / BOOTSTRAP_FILE_NAME
    # Write then rename so a restarting Envoy never reads a half-written file.
    partial = path.with_suffix(".json.tmp")
    partial.write_text(render_bootstrap_json(bootstrap), encoding="utf-8")
    partial.replace(path)
    return path


def _admin(address: HostPort) -> bootstrap_pb2.Admin:
    access_log = file_pb2.FileAccessLog(path="/dev/null")
    admin = bootstrap_pb2.Admin(address=_socket_address(address))
    log = admin.access_log.add(name="envoy.access_loggers.file")
    log.typed_config.Pack(access_log)
    return admin


def _dynamic_resources(variant: XdsVariant) -> bootstrap_pb2.Bootstrap.DynamicResources:
    ads_source = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )
    return bootstrap_pb2.Bootstrap.DynamicResources(
        ads_config=config_source_pb2.ApiConfigSource(
            api_type=_API_TYPES[variant],
            transport_api_version=config_source_pb2.V3,
            grpc_services=[
                grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=XDS_CLUSTER_NAME)
                )
            ],
            # The node is large (metadata) and never changes during a stream.
            set_node_on_first_message_only=True,
        ),
        cds_config=ads_source,
        lds_config=ads_source,
    )


def _xds_cluster(address: HostPort) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=XDS_CLUSTER_NAME,
        # An IP needs no resolution; a name is re-resolved so a moved server is found again.
        type=cluster_pb2.Cluster.STATIC if is_ip(address.host) else cluster_pb2.Cluster.STRICT_DNS,
        load_assignment=_load_assignment(address),
        upstream_connection_options=cluster_pb2.UpstreamConnectionOptions(
            # Keepalive notices a silently dead server (NAT timeout, host gone) on an idle stream;
            # the kernel's default of two hours before the first probe is far too late.
            tcp_keepalive=_tcp_keepalive()
        ),
        circuit_breakers=_circuit_breakers(),
    )
    if not is_ip(address.host):
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    cluster.connect_timeout.FromSeconds(1)
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].Pack(
        http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
    )
    return cluster


def _tcp_keepalive() -> address_pb2.TcpKeepalive:
    keepalive = address_pb2.TcpKeepalive()
    keepalive.keepalive_time.value = 300
    keepalive.keepalive_interval.value = 30
    keepalive.keepalive_probes.value = 3
    return keepalive


def _load_assignment(address: HostPort) -> endpoint_pb2.ClusterLoadAssignment:
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=_socket_address(address))
    )
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=XDS_CLUSTER_NAME,
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
    )


def _circuit_breakers() -> circuit_breaker_pb2.CircuitBreakers:
    thresholds = [
        circuit_breaker_pb2.CircuitBreakers.Thresholds(priority=priority)
        for priority in (base_pb2.DEFAULT, base_pb2.HIGH)
    ]
    for threshold in thresholds:
        threshold.max_connections.value = _CIRCUIT_BREAKER_LIMIT
        threshold.max_pending_requests.value = _CIRCUIT_BREAKER_LIMIT
        threshold.max_requests.value = _CIRCUIT_BREAKER_LIMIT
        threshold.max_retries.value = _CIRCUIT_BREAKER_LIMIT
    return circuit_breaker_pb2.CircuitBreakers(thresholds=thresholds)


def _socket_address(address: HostPort) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address.host, port_value=address.port)
    )
