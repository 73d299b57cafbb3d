"""The bootstrap file of a proxyless gRPC client: how a gRPC channel finds meshpilot.

A gRPC application resolves `xds:///reviews.default.svc.cluster.local:9080` with the xDS
client built into gRPC. That client reads its bootstrap once per process, from the JSON file
named by the `GRPC_XDS_BOOTSTRAP` environment variable (gRFC A27):

    {
      "xds_servers": [{"server_uri": "127.0.0.1:15010",
                       "channel_creds": [{"type": "insecure"}],
                       "server_features": ["xds_v3"]}],
      "node": {"id": "sidecar~10.0.0.1~client.default~default.svc.cluster.local",
               "cluster": "client.default",
               "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default", …},
               "locality": {"region": …, "zone": …, "sub_zone": …}}
    }

The node is the one an Envoy for the same workload would send (see `node`), minus the keys
that only describe an Envoy (its listeners' bind address, the application behind it, its admin
port), plus `GENERATOR: grpc`, Istio's marker for proxyless clients: the server answers such a
node with resources gRPC implements (envoy/proxyless.py). `server_features: ["xds_v3"]` makes
gRPC speak the v3 transport, the only one meshpilot serves.
"""

from __future__ import annotations

import json
from typing import Any

from meshpilot.agent.node import ADMIN_ADDRESS, APP_ADDRESS, OUTBOUND_BIND, HostPort, NodeInfo
from meshpilot.model import Locality

GRPC_XDS_BOOTSTRAP = "GRPC_XDS_BOOTSTRAP"
"""The environment variable gRPC reads the bootstrap file name from."""
GENERATOR = "GENERATOR"
PROXYLESS_GENERATOR = "grpc"

_ENVOY_ONLY_KEYS = (OUTBOUND_BIND, APP_ADDRESS, ADMIN_ADDRESS)


def build_grpc_bootstrap(
    node: NodeInfo, discovery_address: HostPort, locality: Locality | None = None
) -> dict[str, Any]:
    """The bootstrap for a gRPC client with identity `node`, served by `discovery_address`."""
    metadata = {k: v for k, v in node.metadata().items() if k not in _ENVOY_ONLY_KEYS}
    metadata[GENERATOR] = PROXYLESS_GENERATOR
    node_json: dict[str, Any] = {
        "id": node.effective_node_id,
        "cluster": node.service_cluster,
        "metadata": metadata,
    }
    if locality is not None and locality != Locality():
        node_json["locality"] = {
            "region": locality.region,
            "zone": locality.zone,
            "sub_zone": locality.subzone,
        }
    return {
        "xds_servers": [
            {
                "server_uri": str(discovery_address),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": node_json,
    }


def render_grpc_bootstrap(bootstrap: dict[str, Any]) -> str:
    return json.dumps(bootstrap, indent=2, sort_keys=True) + "\n"
