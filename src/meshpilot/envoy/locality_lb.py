"""Locality-aware load balancing from `trafficPolicy.loadBalancer.localityLbSetting`.

It shapes the endpoints a proxy receives according to where the proxy is (its xDS node
locality), so the same cluster's assignment differs between proxies in different places:

- **failover** (Istio's default once `outlierDetection` is set): locality groups get priorities
  by how close they are — same region, zone and subzone first, then same zone, same region,
  and other regions last. A `failover: [{from, to}]` entry moves region `to` just behind the
  proxy's own region. When outlier detection ejects enough hosts, Envoy spills to the next
  priority.
- **distribute**: for a proxy whose locality matches `from`, traffic is split by the
  percentages in `to` (keys may end in `*`); localities matching no key get no traffic.

- **failoverPriority**: an ordered list of labels (`key`, or `key=value` to compare with that
  value instead of the client's). An endpoint matching the client on the first n labels (and
  not the n+1th) gets priority N-n: matching all is priority 0, matching none is last. Besides
  workload labels, `topology.istio.io/network`, `topology.istio.io/cluster`,
  `topology.kubernetes.io/region`, `topology.kubernetes.io/zone` and
  `topology.istio.io/subzone` mean the endpoint's network, cluster and locality. It takes the
  place of the locality ordering (a `failover` list beside it is not applied). Like failover,
  it needs `outlierDetection`.

`enabled: false` turns all of them off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2

from meshpilot.model import Locality

Policy = Mapping[str, Any]


NETWORK_LABEL = "topology.istio.io/network"
CLUSTER_LABEL = "topology.istio.io/cluster"
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"


def failover_priority(policy: Policy) -> list[str]:
    """The failoverPriority labels in force under this policy ([] when none apply)."""
    setting: Policy = (policy.get("loadBalancer") or {}).get("localityLbSetting") or {}
    if setting.get("enabled") is False or "outlierDetection" not in policy:
        return []
    return [str(label) for label in setting.get("failoverPriority") or ()]


def topology_labels(labels: Mapping[str, str], network: str, cluster: str,
                    locality: Locality) -> dict[str, str]:
    """Labels with the special topology keys filled from where a workload is."""
    return {**labels, NETWORK_LABEL: network, CLUSTER_LABEL: cluster,
            REGION_LABEL: locality.region, ZONE_LABEL: locality.zone,
            SUBZONE_LABEL: locality.subzone}


def label_priority(rules: list[str], client: Mapping[str, str],
                   endpoint: Mapping[str, str]) -> int:
    """N minus the number of leading rules on which the endpoint matches the client."""
    matched = 0
    for rule in rules:
        key, has_value, value = rule.partition("=")
        wanted = value if has_value else client.get(key)
        if wanted is None or endpoint.get(key) != wanted:
            break
        matched += 1
    return len(rules) - matched


def uses_locality(policy: Policy) -> bool:
    """Whether the assignment depends on the client's locality under this policy."""
    setting: Policy = (policy.get("loadBalancer") or {}).get("localityLbSetting") or {}
    if setting.get("enabled") is False:
        return False
    return bool(setting.get("distribute")) or "outlierDetection" in policy


def needs_locality_weights(policy: Policy) -> bool:
    """Distribution works through locality weights, which the cluster must enable."""
    setting: Policy = (policy.get("loadBalancer") or {}).get("localityLbSetting") or {}
    return setting.get("enabled") is not False and bool(setting.get("distribute"))


def apply(cla: endpoint_pb2.ClusterLoadAssignment, policy: Policy, client: Locality) -> None:
    setting: Policy = (policy.get("loadBalancer") or {}).get("localityLbSetting") or {}
    if not uses_locality(policy):
        return
    for rule in setting.get("distribute") or ():
        if _matches(str(rule.get("from", "")), client):
            _distribute(cla, rule.get("to") or {})
            return
    if "outlierDetection" in policy and not setting.get("failoverPriority"):
        _failover(cla, client, setting.get("failover") or ())


def _matches(pattern: str, locality: Locality) -> bool:
    """`region/zone/subzone` with `*` for any remaining part (Istio's locality wildcards)."""
    if pattern in ("", "*"):
        return True
    wanted = pattern.split("/")
    actual = [locality.region, locality.zone, locality.subzone]
    for want, have in zip(wanted, actual, strict=False):
        if want == "*":
            return True
        if want != have:
            return False
    return True


def _group_locality(group: endpoint_pb2.LocalityLbEndpoints) -> Locality:
    return Locality(group.locality.region, group.locality.zone, group.locality.sub_zone)


def _distribute(cla: endpoint_pb2.ClusterLoadAssignment, to: Mapping[str, Any]) -> None:
    """Each `to` key's percentage is shared by the groups it matches, by endpoint count."""
    shares: dict[int, float] = {}
    for pattern, percent in to.items():
        members = [
            i for i, group in enumerate(cla.endpoints)
            if i not in shares and _matches(str(pattern), _group_locality(group))
        ]
        total = sum(len(cla.endpoints[i].lb_endpoints) for i in members)
        for i in members:
            count = len(cla.endpoints[i].lb_endpoints)
            shares[i] = float(percent) * count / total if total else 0.0
    kept = [
        (group, shares[i]) for i, group in enumerate(cla.endpoints) if shares.get(i, 0.0) > 0
    ]
    del cla.endpoints[:]
    for group, share in kept:
        group.load_balancing_weight.value = max(1, round(share * 1000))
        cla.endpoints.append(group)


def _failover(
    cla: endpoint_pb2.ClusterLoadAssignment, client: Locality, failover: Any
) -> None:
    targets = [str(f["to"]) for f in failover if str(f.get("from", "")) == client.region]
    for group in cla.endpoints:
        group.priority = _priority(_group_locality(group), client, targets)


def _priority(where: Locality, client: Locality, failover_to: list[str]) -> int:
    if where.region == client.region:
        if where.zone == client.zone:
            return 0 if where.subzone == client.subzone else 1
        return 2
    if where.region in failover_to:
        return 3 + failover_to.index(where.region)
    return 3 + len(failover_to)
