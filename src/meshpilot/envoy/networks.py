"""Several networks: split-horizon endpoints, as Istio serves them.

Each endpoint is in a network: its own `network` (WorkloadEntry, registry metadata), else the
mesh networks config (`--mesh-networks`, Istio's `meshNetworks` shape) puts it there —
`fromRegistry: <cluster id>` or `fromCidr: <range>`. A proxy's network is its node metadata
`NETWORK`. When building the endpoints a proxy receives:

- endpoints in the proxy's own network (or in none) are sent as they are;
- endpoints of another network are replaced by that network's gateways (`address`+`port`, or
  the endpoints of `registryServiceName`), their weights summed and spread over the gateways,
  and marked for mutual TLS: the gateway routes by the SNI Istio's mTLS sets
  (`outbound_.<port>_.<subset>_.<host>`, see the AUTO_PASSTHROUGH gateway server), so only
  traffic that will be mTLS can cross — without the mesh CA, or for a network without a
  gateway, those endpoints are left out (and a warning says why).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from meshpilot.model import Endpoint
from meshpilot.model.snapshot import Snapshot

log = logging.getLogger("meshpilot.envoy")

GATEWAY_LABEL = "meshpilot.io/network-gateway"
"""Set on the stand-in endpoints that point at another network's gateway."""


def active(snapshot: Snapshot) -> bool:
    """Whether assignments depend on the client's network at all."""
    key = ("networks-active",)
    if key not in snapshot.cache:
        snapshot.cache[key] = bool(snapshot.mesh.networks) or any(
            ep.network for group in snapshot.endpoints.values() for ep in group
        )
    found: bool = snapshot.cache[key]
    return found


def network_of(snapshot: Snapshot, endpoint: Endpoint) -> str:
    if endpoint.network:
        return endpoint.network
    for name, spec in snapshot.mesh.networks.items():
        for source in (spec or {}).get("endpoints") or ():
            registry = source.get("fromRegistry")
            if registry and registry == endpoint.cluster_id:
                return str(name)
            cidr = source.get("fromCidr")
            if cidr and _in_cidr(endpoint.address, str(cidr)):
                return str(name)
    return ""


def _in_cidr(address: str, cidr: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


def gateways_of(snapshot: Snapshot, network: str) -> list[tuple[str, int]]:
    spec: Mapping[str, Any] = snapshot.mesh.networks.get(network) or {}
    out: list[tuple[str, int]] = []
    for gateway in spec.get("gateways") or ():
        port = int(gateway.get("port") or 15443)
        if gateway.get("address"):
            out.append((str(gateway["address"]), port))
        elif gateway.get("registryServiceName"):
            host = str(gateway["registryServiceName"])
            service = snapshot.services.get(host)
            for number in [p.number for p in service.ports] if service else []:
                out.extend((ep.address, port) for ep in snapshot.service_endpoints(host, number)
                           if network_of(snapshot, ep) == network)
    return sorted(set(out))


def split_horizon(
    snapshot: Snapshot, endpoints: Iterable[Endpoint], client_network: str, mtls: bool
) -> list[Endpoint]:
    """The endpoints a client in `client_network` should get (see the module docstring)."""
    local: list[Endpoint] = []
    remote: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        network = network_of(snapshot, ep)
        if not network or network == client_network:
            local.append(ep)
        else:
            remote.setdefault(network, []).append(ep)
    for network, group in sorted(remote.items()):
        gateways = gateways_of(snapshot, network)
        if not mtls or not gateways:
            _warn_once(snapshot, network, "the mesh has no CA for mTLS" if not mtls
                       else "the network has no gateway")
            continue
        total = sum(max(ep.weight, 1) for ep in group)
        share = max(1, total // len(gateways))
        first = group[0]
        for address, port in gateways:
            local.append(Endpoint(
                hostname=first.hostname, namespace=first.namespace,
                service_port=first.service_port, address=address, port=port,
                labels={**first.labels, GATEWAY_LABEL: network}, network=network,
                cluster_id=first.cluster_id, locality=first.locality,
                service_account=first.service_account, weight=share,
            ))
    return local


def _warn_once(snapshot: Snapshot, network: str, reason: str) -> None:
    key = ("network-warned", network, reason)
    if key not in snapshot.cache:
        snapshot.cache[key] = True
        log.warning("endpoints in network %r are unreachable from other networks: %s",
                    network, reason)
