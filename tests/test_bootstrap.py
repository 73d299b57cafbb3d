"""The node-metadata contract (both directions) and the Envoy bootstrap built from it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from meshpilot import __version__
from meshpilot.agent.bootstrap import (
    HTTP_PROTOCOL_OPTIONS_KEY,
    XDS_CLUSTER_NAME,
    build_bootstrap,
    render_bootstrap_json,
    write_bootstrap,
)
from meshpilot.agent.envoy_process import find_envoy_binary
from meshpilot.agent.node import (
    HostPort,
    IstioNodeId,
    NodeInfo,
    XdsVariant,
    parse_host_port,
    parse_istio_node_id,
    proxy_from_node,
)
from meshpilot.model import NodeType, Proxy

DISCOVERY = HostPort("127.0.0.1", 15010)


def full_node() -> NodeInfo:
    return NodeInfo(
        workload_name="reviews-v1",
        namespace="bookinfo",
        proxy_type=NodeType.SIDECAR,
        labels={"app": "reviews", "version": "v1"},
        instance_ips=("10.0.0.7", "fd00::7"),
        network="net-a",
        cluster_id="vms",
        outbound_bind="127.0.0.2",
        app_address="127.0.0.1:9080",
        admin_address="127.0.0.1:15001",
    )


def test_node_proto_carries_id_cluster_and_metadata() -> None:
    node = full_node().to_node_proto()

    assert node.id == "sidecar~10.0.0.7~reviews-v1.bookinfo~bookinfo.svc.cluster.local"
    assert node.cluster == "reviews-v1.bookinfo"
    metadata = json_format.MessageToDict(node.metadata)
    assert metadata == {
        "NAMESPACE": "bookinfo",
        "LABELS": {"app": "reviews", "version": "v1"},
        "WORKLOAD_NAME": "reviews-v1",
        "INSTANCE_IPS": "10.0.0.7,fd00::7",
        "NETWORK": "net-a",
        "CLUSTER_ID": "vms",
        "ISTIO_VERSION": __version__,
        "PROXY_TYPE": "sidecar",
        "OUTBOUND_BIND": "127.0.0.2",
        "APP_ADDRESS": "127.0.0.1:9080",
        "ADMIN_ADDRESS": "127.0.0.1:15001",
    }


def test_metadata_round_trips_through_proxy_from_node() -> None:
    info = full_node()

    proxy = proxy_from_node(info.to_node_proto())

    assert proxy == Proxy(
        id=info.effective_node_id,
        type=NodeType.SIDECAR,
        namespace="bookinfo",
        workload_name="reviews-v1",
        cluster="reviews-v1.bookinfo",
        labels={"app": "reviews", "version": "v1"},
        ip_addresses=("10.0.0.7", "fd00::7"),
        network="net-a",
        cluster_id="vms",
        outbound_bind="127.0.0.2",
        app_address="127.0.0.1:9080",
        admin_address="127.0.0.1:15001",
        metadata=proxy.metadata,
    )
    assert proxy.metadata["ISTIO_VERSION"] == __version__


def test_round_trip_survives_the_wire_encoding() -> None:
    wire = full_node().to_node_proto().SerializeToString()

    proxy = proxy_from_node(base_pb2.Node.FromString(wire))

    assert proxy.labels == {"app": "reviews", "version": "v1"}
    assert proxy.ip_addresses == ("10.0.0.7", "fd00::7")


def test_default_node_id_without_ips_uses_loopback_and_the_proxy_type() -> None:
    router = NodeInfo(workload_name="ingress", namespace="edge", proxy_type=NodeType.ROUTER)

    assert router.effective_node_id == "router~127.0.0.1~ingress.edge~edge.svc.cluster.local"
    assert proxy_from_node(router.to_node_proto()).type is NodeType.ROUTER


def test_explicit_node_id_is_kept() -> None:
    info = NodeInfo(workload_name="reviews", node_id="vm-42")

    assert info.to_node_proto().id == "vm-42"
    assert proxy_from_node(info.to_node_proto()).workload_name == "reviews"


@pytest.mark.parametrize(
    ("node_id", "expected"),
    [
        (
            "sidecar~10.0.0.1~name.ns~ns.svc.cluster.local",
            IstioNodeId(NodeType.SIDECAR, "10.0.0.1", "name", "ns", "ns.svc.cluster.local"),
        ),
        (
            "router~10.0.0.2~gw-5d9f.istio-system~istio-system.svc.cluster.local",
            IstioNodeId(
                NodeType.ROUTER,
                "10.0.0.2",
                "gw-5d9f",
                "istio-system",
                "istio-system.svc.cluster.local",
            ),
        ),
        (
            "sidecar~fd00::1~a.b.ns~ns.svc.cluster.local",
            IstioNodeId(NodeType.SIDECAR, "fd00::1", "a.b", "ns", "ns.svc.cluster.local"),
        ),
        (
            "sidecar~not-an-ip~name.ns~cluster.local",
            IstioNodeId(NodeType.SIDECAR, "", "name", "ns", "cluster.local"),
        ),
        ("sidecar~10.0.0.1~name.ns~", IstioNodeId(NodeType.SIDECAR, "10.0.0.1", "name", "ns", "")),
    ],
)
def test_parse_istio_node_id(node_id: str, expected: IstioNodeId) -> None:
    assert parse_istio_node_id(node_id) == expected


@pytest.mark.parametrize(
    "node_id",
    ["", "vm-42", "sidecar~10.0.0.1~name.ns", "gateway~10.0.0.1~n.ns~ns.svc", "a~b~c~d~e"],
)
def test_parse_istio_node_id_rejects_other_forms(node_id: str) -> None:
    assert parse_istio_node_id(node_id) is None


def test_proxy_from_node_without_metadata_reads_the_istio_node_id() -> None:
    node = base_pb2.Node(id="router~10.1.2.3~gw.istio-system~istio-system.svc.cluster.local")

    proxy = proxy_from_node(node)

    assert proxy.type is NodeType.ROUTER
    assert proxy.ip_addresses == ("10.1.2.3",)
    assert proxy.workload_name == "gw"
    assert proxy.namespace == "istio-system"
    assert proxy.labels == {}
    assert proxy.outbound_bind == "127.0.0.1"
    assert proxy.app_address == ""


def test_proxy_from_node_falls_back_to_cluster_then_defaults() -> None:
    assert proxy_from_node(base_pb2.Node(id="vm-1", cluster="ratings.shop")).short_name == (
        "ratings.shop"
    )
    bare = proxy_from_node(base_pb2.Node(id="vm-1"))
    assert (bare.type, bare.workload_name, bare.namespace) == (NodeType.SIDECAR, "vm-1", "default")


def test_metadata_wins_over_the_node_id() -> None:
    node = base_pb2.Node(id="sidecar~10.0.0.1~old.ns1~ns1.svc.cluster.local")
    node.metadata.update(
        {
            "NAMESPACE": "ns2",
            "WORKLOAD_NAME": "new",
            "INSTANCE_IPS": "10.9.9.9",
            "PROXY_TYPE": "router",
        }
    )

    proxy = proxy_from_node(node)

    assert (proxy.namespace, proxy.workload_name) == ("ns2", "new")
    assert proxy.ip_addresses == ("10.9.9.9",)
    assert proxy.type is NodeType.ROUTER


def test_proxy_from_node_tolerates_odd_metadata_values() -> None:
    node = base_pb2.Node(id="vm-1")
    node.metadata.update(
        {
            "LABELS": {"replicas": 3, "canary": True, "ratio": 0.5, "nested": {"x": "y"}},
            "PROXY_TYPE": "mystery",
            "NAMESPACE": 7,
            "INSTANCE_IPS": " 10.0.0.1 , ,10.0.0.2 ",
        }
    )

    proxy = proxy_from_node(node)

    assert proxy.labels == {"replicas": "3", "canary": "true", "ratio": "0.5"}
    assert proxy.type is NodeType.SIDECAR
    assert proxy.namespace == "default"
    assert proxy.ip_addresses == ("10.0.0.1", "10.0.0.2")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:15010", HostPort("127.0.0.1", 15010)),
        ("istiod.mesh:15012", HostPort("istiod.mesh", 15012)),
        ("[::1]:15010", HostPort("::1", 15010)),
    ],
)
def test_parse_host_port(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected
    assert parse_host_port(str(expected)) == expected


@pytest.mark.parametrize("text", ["", "host", ":80", "host:", "host:0", "host:65536", "::1:80"])
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port|IPv6"):
        parse_host_port(text)


@pytest.mark.parametrize(
    ("variant", "api_type"),
    [
        (XdsVariant.SOTW, config_source_pb2.ApiConfigSource.GRPC),
        (XdsVariant.DELTA, config_source_pb2.ApiConfigSource.DELTA_GRPC),
    ],
)
def test_dynamic_resources_use_ads(variant: XdsVariant, api_type: int) -> None:
    node = NodeInfo(workload_name="reviews", xds_variant=variant)

    dynamic = build_bootstrap(node, DISCOVERY).dynamic_resources

    ads = dynamic.ads_config
    assert ads.api_type == api_type
    assert ads.transport_api_version == config_source_pb2.V3
    assert [s.envoy_grpc.cluster_name for s in ads.grpc_services] == [XDS_CLUSTER_NAME]
    assert ads.set_node_on_first_message_only
    for source in (dynamic.cds_config, dynamic.lds_config):
        assert source.HasField("ads")
        assert source.resource_api_version == config_source_pb2.V3


def test_xds_cluster_is_static_http2_with_keepalive_and_high_limits() -> None:
    bootstrap = build_bootstrap(NodeInfo(workload_name="reviews"), DISCOVERY)

    (cluster,) = bootstrap.static_resources.clusters
    assert cluster.name == XDS_CLUSTER_NAME
    assert cluster.type == cluster_pb2.Cluster.STATIC
    assert cluster.connect_timeout.ToSeconds() == 1
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == DISCOVERY
    options = http_protocol_options_pb2.HttpProtocolOptions()
    assert cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    assert cluster.upstream_connection_options.tcp_keepalive.keepalive_time.value > 0
    limits = {t.priority: t.max_requests.value for t in cluster.circuit_breakers.thresholds}
    assert limits == {base_pb2.DEFAULT: 100_000, base_pb2.HIGH: 100_000}


def test_xds_cluster_resolves_a_host_name() -> None:
    bootstrap = build_bootstrap(NodeInfo(workload_name="r"), HostPort("istiod.mesh", 15012))

    (cluster,) = bootstrap.static_resources.clusters
    assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
    assert cluster.dns_lookup_family == cluster_pb2.Cluster.V4_PREFERRED


def test_admin_listens_on_the_node_admin_address_and_logs_nowhere() -> None:
    node = NodeInfo(workload_name="reviews", admin_address="127.0.0.1:15123")

    admin = build_bootstrap(node, DISCOVERY).admin

    assert admin.address.socket_address.address == "127.0.0.1"
    assert admin.address.socket_address.port_value == 15123
    (log,) = admin.access_log
    assert log.typed_config.value.endswith(b"/dev/null")


def test_json_rendering_parses_back_to_the_same_bootstrap(tmp_path: Path) -> None:
    bootstrap = build_bootstrap(full_node(), DISCOVERY)

    path = write_bootstrap(bootstrap, tmp_path / "conf")

    assert path.suffix == ".json"
    text = path.read_text()
    assert text == render_bootstrap_json(bootstrap)
    assert json.loads(text)["dynamic_resources"]["ads_config"]["set_node_on_first_message_only"]
    assert json_format.Parse(text, bootstrap_pb2.Bootstrap()) == bootstrap
    assert list(tmp_path.joinpath("conf").iterdir()) == [path]


@pytest.mark.parametrize(
    ("variant", "discovery"),
    [
        (XdsVariant.SOTW, DISCOVERY),
        (XdsVariant.DELTA, HostPort("localhost", 15010)),
    ],
)
def test_real_envoy_accepts_the_bootstrap(
    tmp_path: Path, variant: XdsVariant, discovery: HostPort
) -> None:
    node = NodeInfo(
        workload_name="reviews",
        proxy_type=NodeType.ROUTER,
        labels={"app": "r"},
        xds_variant=variant,
    )
    path = write_bootstrap(build_bootstrap(node, discovery), tmp_path)

    result = subprocess.run(
        [str(find_envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
