"""The node-metadata contract between the agent and the server.

Envoy identifies itself on every xDS stream with a `Node`: an id, a service cluster and a
free-form metadata Struct. The agent writes that Node into the bootstrap (`NodeInfo.to_node_proto`)
and the server reads it back into a `Proxy` (`proxy_from_node`). Both directions live here so the
key names and encodings cannot drift apart.

Metadata keys follow Istio's names where Istio has one:

    NAMESPACE       config namespace of the workload
    LABELS          Struct of string labels
    WORKLOAD_NAME   workload (service account / deployment) name
    INSTANCE_IPS    comma-separated instance IPs
    NETWORK         network the instance sits on
    CLUSTER_ID      registry cluster the instance belongs to
    ISTIO_VERSION   meshpilot's version (Istio's key, so Istio-aware tooling recognises it)
    PROXY_TYPE      `sidecar` or `router`
    OUTBOUND_BIND   address outbound listeners bind to (no traffic capture)
    APP_ADDRESS     `host:port` of the application behind the inbound listener
    ADMIN_ADDRESS   `host:port` of Envoy's admin endpoint
    SERVICE_ACCOUNT the workload's service account (its mesh identity), when given

The reader is tolerant: a Node from a plain Envoy or an Istio agent may carry none of these. Then
an Istio-form node id (`sidecar~10.0.0.1~name.ns~ns.svc.cluster.local`) supplies type, IP,
workload and namespace, and `node.cluster` (`workload.namespace`) is the last resort.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format, struct_pb2

from meshpilot import __version__
from meshpilot.model import Locality, NodeType, Proxy

NAMESPACE = "NAMESPACE"
LABELS = "LABELS"
WORKLOAD_NAME = "WORKLOAD_NAME"
INSTANCE_IPS = "INSTANCE_IPS"
NETWORK = "NETWORK"
CLUSTER_ID = "CLUSTER_ID"
ISTIO_VERSION = "ISTIO_VERSION"
PROXY_TYPE = "PROXY_TYPE"
OUTBOUND_BIND = "OUTBOUND_BIND"
APP_ADDRESS = "APP_ADDRESS"
ADMIN_ADDRESS = "ADMIN_ADDRESS"
SERVICE_ACCOUNT = "SERVICE_ACCOUNT"

DEFAULT_NAMESPACE = "default"
DEFAULT_OUTBOUND_BIND = "127.0.0.1"
DEFAULT_ADMIN_PORT = 15000
DNS_SUFFIX = "svc.cluster.local"


class XdsVariant(enum.StrEnum):
    """Which ADS protocol the proxy speaks: state-of-the-world or incremental (delta)."""

    SOTW = "sotw"
    DELTA = "delta"


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: str) -> HostPort:
    """Parse `host:port` or `[v6]:port`; raise ValueError with a user-facing message."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"{value!r}: write an IPv6 host as [ADDR]:PORT")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r}: the port must be a number between 1 and 65535")
    return HostPort(host, int(port_text))


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class IstioNodeId(NamedTuple):
    """The parts of `type~ip~id~domain`, with `id` split into workload and namespace."""

    type: NodeType
    ip: str
    workload_name: str
    namespace: str
    domain: str


def format_node_id(proxy_type: NodeType, ip: str, workload_name: str, namespace: str) -> str:
    return f"{proxy_type}~{ip}~{workload_name}.{namespace}~{namespace}.{DNS_SUFFIX}"


def parse_istio_node_id(node_id: str) -> IstioNodeId | None:
    """Split an Istio-form node id; None if `node_id` is not in that form."""
    parts = node_id.split("~")
    if len(parts) != 4 or parts[0] not in {t.value for t in NodeType}:
        return None
    type_text, ip, ident, domain = parts
    # The DNS domain (`ns.svc.cluster.local`) names the namespace most reliably; the id is
    # `name.ns`, so strip that suffix when it matches and otherwise cut at the first dot.
    domain_namespace, _, domain_rest = domain.partition(".")
    is_service_domain = domain_rest == "svc" or domain_rest.startswith("svc.")
    namespace = domain_namespace if is_service_domain else ""
    if namespace and ident.endswith("." + namespace):
        workload = ident.removesuffix("." + namespace)
    else:
        workload, _, id_namespace = ident.partition(".")
        namespace = namespace or id_namespace
    return IstioNodeId(NodeType(type_text), ip if is_ip(ip) else "", workload, namespace, domain)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Who a proxy is, as the agent knows it before Envoy starts."""

    workload_name: str
    namespace: str = DEFAULT_NAMESPACE
    proxy_type: NodeType = NodeType.SIDECAR
    node_id: str = ""
    """Explicit xDS node id; '' means the Istio-form default (see `effective_node_id`)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    instance_ips: tuple[str, ...] = ()
    network: str = ""
    cluster_id: str = ""
    locality: str = ""
    """`region/zone/subzone`, sent as the xDS node's locality (as Istio's agent does)."""
    workload_group: str = ""
    """A WorkloadGroup to register this workload in when it connects (auto-registration)."""
    service_account: str = ""
    """The workload's service account (Istio's SERVICE_ACCOUNT): its mesh identity."""
    outbound_bind: str = DEFAULT_OUTBOUND_BIND
    app_address: str = ""
    admin_address: str = f"127.0.0.1:{DEFAULT_ADMIN_PORT}"
    xds_variant: XdsVariant = XdsVariant.SOTW

    @property
    def effective_node_id(self) -> str:
        if self.node_id:
            return self.node_id
        ip = self.instance_ips[0] if self.instance_ips else "127.0.0.1"
        return format_node_id(self.proxy_type, ip, self.workload_name, self.namespace)

    @property
    def service_cluster(self) -> str:
        return f"{self.workload_name}.{self.namespace}"

    def metadata(self) -> dict[str, Any]:
        """The metadata as plain JSON values, before encoding into a Struct."""
        extra: dict[str, Any] = (
            {"AUTO_REGISTER_GROUP": self.workload_group} if self.workload_group else {}
        )
        if self.service_account:
            extra[SERVICE_ACCOUNT] = self.service_account
        return extra | {
            NAMESPACE: self.namespace,
            LABELS: dict(self.labels),
            WORKLOAD_NAME: self.workload_name,
            INSTANCE_IPS: ",".join(self.instance_ips),
            NETWORK: self.network,
            CLUSTER_ID: self.cluster_id,
            ISTIO_VERSION: __version__,
            PROXY_TYPE: str(self.proxy_type),
            OUTBOUND_BIND: self.outbound_bind,
            APP_ADDRESS: self.app_address,
            ADMIN_ADDRESS: self.admin_address,
        }

    def to_node_proto(self) -> base_pb2.Node:
        node = base_pb2.Node(id=self.effective_node_id, cluster=self.service_cluster)
        node.metadata.update(self.metadata())
        where = Locality.parse(self.locality)
        node.locality.region, node.locality.zone = where.region, where.zone
        node.locality.sub_zone = where.subzone
        return node


def proxy_from_node(node: base_pb2.Node) -> Proxy:
    """Build the server's view of a proxy from the Node it sent, filling gaps from the id."""
    metadata = _struct_to_dict(node.metadata)
    from_id = parse_istio_node_id(node.id)
    cluster_workload, _, cluster_namespace = node.cluster.partition(".")

    namespace = (
        _str(metadata, NAMESPACE)
        or (from_id.namespace if from_id else "")
        or cluster_namespace
        or DEFAULT_NAMESPACE
    )
    workload = (
        _str(metadata, WORKLOAD_NAME)
        or (from_id.workload_name if from_id else "")
        or cluster_workload
        or node.id
    )
    ips = _split_ips(_str(metadata, INSTANCE_IPS))
    if not ips and from_id and from_id.ip:
        ips = (from_id.ip,)

    return Proxy(
        id=node.id,
        type=_proxy_type(_str(metadata, PROXY_TYPE), from_id),
        namespace=namespace,
        workload_name=workload,
        cluster=node.cluster,
        labels=_labels(metadata.get(LABELS)),
        ip_addresses=ips,
        network=_str(metadata, NETWORK),
        cluster_id=_str(metadata, CLUSTER_ID),
        locality=Locality(node.locality.region, node.locality.zone, node.locality.sub_zone),
        outbound_bind=_str(metadata, OUTBOUND_BIND) or DEFAULT_OUTBOUND_BIND,
        app_address=_str(metadata, APP_ADDRESS),
        admin_address=_str(metadata, ADMIN_ADDRESS),
        metadata=metadata,
    )


def _struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    value: dict[str, Any] = json_format.MessageToDict(struct)
    return value


def _str(metadata: Mapping[str, Any], key: str) -> str:
    value = metadata.get(key)
    return value.strip() if isinstance(value, str) else ""


def _proxy_type(text: str, from_id: IstioNodeId | None) -> NodeType:
    try:
        return NodeType(text)
    except ValueError:
        return from_id.type if from_id else NodeType.SIDECAR


def _split_ips(text: str) -> tuple[str, ...]:
    return tuple(ip for ip in (part.strip() for part in text.split(",")) if ip)


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    # Struct numbers and bools are legal JSON but labels are strings; keep scalars as text and
    # drop anything nested rather than rejecting the whole proxy.
    return {
        str(key): _label_text(item)
        for key, item in value.items()
        if isinstance(item, str | int | float | bool)
    }


def _label_text(item: str | int | float | bool) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, float) and item.is_integer():
        return str(int(item))
    return str(item)
