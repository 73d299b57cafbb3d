"""Which security policies apply to a workload, by Istio's selection rules.

* **PeerAuthentication**: the most specific policy wins — one in the workload's namespace whose
  `selector` matches its labels, else one in its namespace without a selector, else one without
  a selector in the root namespace (mesh-wide). Among equals the first by name wins (Istio takes
  the oldest; files carry no creation time). A mode of UNSET (or none) inherits from the next
  level up, ending at PERMISSIVE, Istio's default. `portLevelMtls` of a workload policy
  overrides the mode for one workload port.
* **AuthorizationPolicy** and **RequestAuthentication**: every policy applies that is in the
  root namespace (to every workload, or those its selector matches, in any namespace), or in
  the workload's namespace without a selector or with a matching one. They are combined, not
  ranked. A policy derived from an SMI TrafficTarget selects by service account instead
  (`SERVICE_ACCOUNT_ANNOTATION`), which Istio's label selector cannot express.

Results are memoised per snapshot by (namespace, labels).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshpilot.config.foreign.smi_access import SERVICE_ACCOUNT_ANNOTATION
from meshpilot.envoy.scope import ROOT_NAMESPACE
from meshpilot.model import Config
from meshpilot.model.snapshot import Snapshot

STRICT = "STRICT"
PERMISSIVE = "PERMISSIVE"
DISABLE = "DISABLE"
UNSET = "UNSET"
DEFAULT_MODE = PERMISSIVE


def _selector(config: Config) -> Mapping[str, str] | None:
    selector = config.spec.get("selector")
    if selector is None:
        return None
    labels: Mapping[str, str] = selector.get("matchLabels") or {}
    return labels


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _labels_key(labels: Mapping[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    """The effective PeerAuthentication of one workload."""

    mode: str
    """STRICT, PERMISSIVE or DISABLE for ports without an override."""
    ports: Mapping[int, str]
    """Workload port → mode, from `portLevelMtls`."""
    sources: tuple[Config, ...] = ()
    """The policies that decided it, most specific first (for describe and messages)."""

    def mode_for(self, port: int) -> str:
        return self.ports.get(port, self.mode)


def peer_policy(snapshot: Snapshot, namespace: str, labels: Mapping[str, str]) -> PeerPolicy:
    key = ("peer-policy", namespace, _labels_key(labels))
    found: PeerPolicy | None = snapshot.cache.get(key)
    if found is None:
        found = snapshot.cache[key] = _peer_policy(snapshot, namespace, labels)
    return found


def _peer_policy(snapshot: Snapshot, namespace: str, labels: Mapping[str, str]) -> PeerPolicy:
    workload = namespace_wide = mesh = None
    for policy in snapshot.peer_authentications:  # sorted by (namespace, name)
        selector = _selector(policy)
        if policy.namespace == namespace and selector is not None:
            if workload is None and _matches(selector, labels):
                workload = policy
        elif policy.namespace == namespace and selector is None:
            namespace_wide = namespace_wide or policy
        elif policy.namespace == ROOT_NAMESPACE and selector is None:
            mesh = mesh or policy
    chain = tuple(p for p in (workload, namespace_wide, mesh) if p is not None)
    mode = DEFAULT_MODE
    for policy in reversed(chain):  # mesh, then namespace, then workload
        mode = _mode(policy.spec.get("mtls"), mode)
    ports: dict[int, str] = {}
    if workload is not None:
        for port, setting in (workload.spec.get("portLevelMtls") or {}).items():
            ports[int(port)] = _mode(setting, mode)
    return PeerPolicy(mode, ports, chain)


def _mode(setting: Any, inherited: str) -> str:
    mode = str((setting or {}).get("mode") or UNSET).upper()
    return inherited if mode == UNSET else mode


def _applies(config: Config, namespace: str, labels: Mapping[str, str],
             service_account: str = "") -> bool:
    if config.namespace not in (namespace, ROOT_NAMESPACE):
        return False
    account = config.annotations.get(SERVICE_ACCOUNT_ANNOTATION)
    if account is not None:
        return config.namespace == namespace and account == service_account
    selector = _selector(config)
    return selector is None or _matches(selector, labels)


def authorization_policies(
    snapshot: Snapshot, namespace: str, labels: Mapping[str, str], service_account: str = ""
) -> tuple[Config, ...]:
    key = ("authz-policies", namespace, _labels_key(labels), service_account)
    found: tuple[Config, ...] | None = snapshot.cache.get(key)
    if found is None:
        found = snapshot.cache[key] = tuple(
            p for p in snapshot.authorization_policies
            if _applies(p, namespace, labels, service_account)
        )
    return found


def request_authentications(
    snapshot: Snapshot, namespace: str, labels: Mapping[str, str]
) -> tuple[Config, ...]:
    key = ("request-authn", namespace, _labels_key(labels))
    found: tuple[Config, ...] | None = snapshot.cache.get(key)
    if found is None:
        found = snapshot.cache[key] = tuple(
            p for p in snapshot.request_authentications if _applies(p, namespace, labels)
        )
    return found
