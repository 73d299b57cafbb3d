"""Outbound traffic to hosts the mesh does not know (`outboundTrafficPolicy: ALLOW_ANY`).

Istio passes such traffic to its original destination, which it learns from traffic capture.
meshpilot's sidecars do not capture traffic, so the destination is what the application put in
the Host header: a dynamic forward proxy resolves that name (or IP literal) and port and
connects there. With `REGISTRY_ONLY` the same requests get a 502, as from Istio's black hole.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2
from envoy.extensions.common.dynamic_forward_proxy.v3 import dns_cache_pb2
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import (
    dynamic_forward_proxy_pb2 as dfp_filter_pb2,
)

from meshpilot.envoy.names import PASSTHROUGH_CLUSTER
from meshpilot.envoy.protos import duration, pack

FILTER = "envoy.filters.http.dynamic_forward_proxy"
CLUSTER_TYPE = "envoy.clusters.dynamic_forward_proxy"
DNS_CACHE = "passthrough_dns_cache"


def _dns_cache() -> dns_cache_pb2.DnsCacheConfig:
    return dns_cache_pb2.DnsCacheConfig(
        name=DNS_CACHE, dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED
    )


def http_filter() -> dfp_filter_pb2.FilterConfig:
    """Resolves the Host of requests routed to the passthrough cluster; others pass by."""
    return dfp_filter_pb2.FilterConfig(dns_cache_config=_dns_cache())


def cluster() -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster(name=PASSTHROUGH_CLUSTER, connect_timeout=duration(10))
    out.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    out.cluster_type.name = CLUSTER_TYPE
    out.cluster_type.typed_config.CopyFrom(
        pack(dfp_cluster_pb2.ClusterConfig(dns_cache_config=_dns_cache()))
    )
    return out
