"""Envoy resource names and type URLs, in Istio's conventions so istioctl habits carry over."""

from __future__ import annotations

from typing import NamedTuple

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
EXTENSION = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"

SHORT_NAMES = {
    CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS",
    EXTENSION: "ECDS",
}
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, EXTENSION, SECRET)
"""Clusters before the endpoints they warm on, listeners before the routes they name; secrets
last, as Istio orders them (a rotation changes only them)."""

OUTBOUND = "outbound"
INBOUND = "inbound"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
PASSTHROUGH_CLUSTER = "PassthroughCluster"


class ClusterName(NamedTuple):
    direction: str
    port: int
    subset: str
    host: str

    def __str__(self) -> str:
        return f"{self.direction}|{self.port}|{self.subset}|{self.host}"

    @classmethod
    def parse(cls, name: str) -> ClusterName | None:
        parts = name.split("|")
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2], parts[3])


def outbound_cluster(host: str, port: int, subset: str = "") -> str:
    return f"{OUTBOUND}|{port}|{subset}|{host}"


def sni_dnat_cluster(host: str, port: int, subset: str = "") -> str:
    """Istio's SNI for mesh mTLS, also the name of the east-west gateway's cluster that passes
    such connections through unopened."""
    return f"{OUTBOUND}_.{port}_.{subset}_.{host}"


def inbound_cluster(port: int) -> str:
    return f"{INBOUND}|{port}||"
