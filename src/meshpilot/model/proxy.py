"""A connected proxy as the server sees it, built from the xDS Node it sends."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshpilot.model.service import Locality


class NodeType(enum.StrEnum):
    SIDECAR = "sidecar"
    ROUTER = "router"


@dataclass(frozen=True, slots=True)
class Proxy:
    id: str
    """The xDS node id, unique per proxy."""
    type: NodeType
    namespace: str
    workload_name: str
    cluster: str = ""
    """Envoy's `node.cluster` (service cluster, e.g. `reviews.default`)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    ip_addresses: tuple[str, ...] = ()
    network: str = ""
    cluster_id: str = ""
    locality: Locality = field(default_factory=Locality)
    """Where the proxy runs (xDS `node.locality`): the base of locality-aware balancing."""
    outbound_bind: str = "127.0.0.1"
    """Where outbound listeners bind: the application reaches services here (capture mode NONE)."""
    app_address: str = ""
    """`host:port` of the application behind the inbound listener; '' means 127.0.0.1:<port>."""
    admin_address: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def short_name(self) -> str:
        return f"{self.workload_name}.{self.namespace}"

    @property
    def proxyless(self) -> bool:
        """A proxyless gRPC client rather than an Envoy: Istio's agent marks those with node
        metadata `GENERATOR: grpc`, and they get their own translation (envoy/proxyless.py)."""
        return self.metadata.get("GENERATOR") == "grpc"
