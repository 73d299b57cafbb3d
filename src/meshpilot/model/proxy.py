"""A connected proxy as the server sees it, built from the xDS Node it sends."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
    outbound_bind: str = "127.0.0.1"
    """Where outbound listeners bind: the application reaches services here (capture mode NONE)."""
    app_address: str = ""
    """`host:port` of the application behind the inbound listener; '' means 127.0.0.1:<port>."""
    admin_address: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def short_name(self) -> str:
        return f"{self.workload_name}.{self.namespace}"
