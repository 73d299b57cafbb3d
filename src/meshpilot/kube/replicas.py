"""What `meshpilot discovery` runs for Kubernetes beside serving: leader election among
replicas (`--replicas-lease kube://…`, or `etcd://…?key=KEY`: `etcd.leader`) and status
write-back for Kubernetes config sources.

Every replica watches the same sources and serves xDS from its own complete view, so proxies
may connect to any of them; only the duties that must happen once — writing `status` into
the Istio objects, and with `signingRotation=` publishing a new signing intermediate (in etcd:
`etcd.signing`, in a Secret: `kube.signing`) — wait for the lease. Without `--replicas-lease`
the one server is its own leader and writes status itself.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from meshpilot.config.composite import CompositeStore
from meshpilot.config.kube_source import KubeConfigStore
from meshpilot.config.store import ConfigStore
from meshpilot.config.translating import TranslatingStore
from meshpilot.election import Elector
from meshpilot.etcd.leader import EtcdLeaderElector
from meshpilot.etcd.signing import signing_rotation
from meshpilot.kube.leader import LeaderElector
from meshpilot.kube.signing import kube_signing_rotation
from meshpilot.kube.status import RouteConditions, StatusWriter
from meshpilot.model import PushRequest, TriggerReason
from meshpilot.settings import DiscoverySettings

if TYPE_CHECKING:
    from meshpilot.xds.discovery import DiscoveryServer

DEFAULT_LEASE = "meshpilot-discovery"
DEFAULT_ETCD_KEY = "/meshpilot/leader/discovery"


def kube_stores(store: ConfigStore) -> list[KubeConfigStore]:
    """The Kubernetes sources inside the server's store, through composites and wrappers
    (a wrapping store keeps what it wraps as `inner`)."""
    if isinstance(store, KubeConfigStore):
        return [store]
    if isinstance(store, CompositeStore):
        return [k for source in store.sources for k in kube_stores(source)]
    inner = getattr(store, "inner", None)
    return kube_stores(inner) if inner is not None else []


def replica_duties(
    settings: DiscoverySettings, discovery: DiscoveryServer
) -> Iterator[tuple[str, Coroutine[Any, Any, None]]]:
    """(task name, coroutine) for each long-running part to add to the server's TaskGroup."""
    elector: Elector | None = None
    if settings.replicas_lease.startswith("etcd://"):
        etcd_elector = EtcdLeaderElector.from_url(settings.replicas_lease, DEFAULT_ETCD_KEY)
        elector = etcd_elector
        yield "leader-election", etcd_elector.run()
        if etcd_elector.address.param("signingRotation"):
            runtime = discovery.security_runtime
            yield "signing-ca", signing_rotation(
                etcd_elector, runtime.certificates if runtime else None, settings.ca_dir,
                settings.cert_ttl, lambda: discovery.config_update(PushRequest(
                    full=True, reasons=frozenset({TriggerReason.SECRET})))).run()
    elif settings.replicas_lease:
        kube_elector = LeaderElector.from_url(settings.replicas_lease, DEFAULT_LEASE)
        elector = kube_elector
        yield "leader-election", kube_elector.run()
        if kube_elector.options.param("signingRotation"):
            runtime = discovery.security_runtime
            yield "signing-ca", kube_signing_rotation(
                kube_elector, runtime.certificates if runtime else None, settings.ca_dir,
                settings.cert_ttl, lambda: discovery.config_update(PushRequest(
                    full=True, reasons=frozenset({TriggerReason.SECRET})))).run()
    if not settings.write_status:
        return
    routes = route_conditions(discovery.store)
    for store in kube_stores(discovery.store):
        writer = StatusWriter(store, discovery.analysis, elector=elector, routes=routes)
        yield f"status-{store.name}", writer.run()


def route_conditions(store: ConfigStore | None) -> Callable[[], RouteConditions] | None:
    """The Gateway API route conditions of the translating store in the server's chain."""
    while store is not None:
        if isinstance(store, TranslatingStore):
            translating = store
            return lambda: translating.route_status
        store = getattr(store, "inner", None)
    return None
