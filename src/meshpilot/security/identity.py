"""Which identity a proxy holds, and which endpoints run a sidecar that speaks mTLS.

A proxy's service account is the one of the workload it runs as, as the registry knows it (the
WorkloadEntry's or ServiceEntry endpoint's `serviceAccount`), then the `SERVICE_ACCOUNT` its node
metadata names, then Kubernetes' `default`. Taking the registry first means that a proxy can
only claim a different account where the operator left it unset.

An endpoint has a sidecar, for auto mTLS, as Istio decides it for WorkloadEntries: by the label
`security.istio.io/tlsMode` when present (`istio` or `disabled`), else by having a service
account.
"""

from __future__ import annotations

from meshpilot.agent.node import SERVICE_ACCOUNT
from meshpilot.envoy.targets import service_targets
from meshpilot.model import Endpoint, Proxy
from meshpilot.model.security import Identity
from meshpilot.model.snapshot import Snapshot

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"
TLS_MODE_LABEL = "security.istio.io/tlsMode"
ISTIO_TLS_MODE = "istio"


def trust_domain(snapshot: Snapshot) -> str:
    return snapshot.security.trust_domain if snapshot.security else DEFAULT_TRUST_DOMAIN


def proxy_identity(snapshot: Snapshot, proxy: Proxy) -> Identity:
    account = next((ep.service_account for ep in service_targets(snapshot, proxy)
                    if ep.service_account), "")
    if not account:
        account = str(proxy.metadata.get(SERVICE_ACCOUNT) or DEFAULT_SERVICE_ACCOUNT)
    return Identity(trust_domain(snapshot), proxy.namespace, account)


def has_sidecar(endpoint: Endpoint) -> bool:
    mode = endpoint.labels.get(TLS_MODE_LABEL)
    if mode is not None:
        return mode == ISTIO_TLS_MODE
    return bool(endpoint.service_account)
