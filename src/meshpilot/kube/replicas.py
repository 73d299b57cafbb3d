"""What `meshpilot discovery` runs for Kubernetes beside serving: leader election among
replicas (`--replicas-lease kube://…`) and status write-back for Kubernetes config sources.

Every replica watches the same sources and serves xDS from its own complete view, so proxies
may connect to any of them; only the duties that must happen once — writing `status` into
the Istio objects — wait for the Lease. Without `--replicas-lease` the one server is its own
leader and writes status itself.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from meshpilot.config.composite import CompositeStore
from meshpilot.config.kube_source import KubeConfigStore
from meshpilot.config.store import ConfigStore
from meshpilot.kube.leader import LeaderElector
from meshpilot.kube.status import StatusWriter
from meshpilot.settings import DiscoverySettings

if TYPE_CHECKING:
    from meshpilot.xds.discovery import DiscoveryServer

DEFAULT_LEASE = "meshpilot-discovery"


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
    elector = None
    if settings.replicas_lease:
        elector = LeaderElector.from_url(settings.replicas_lease, DEFAULT_LEASE)
        yield "leader-election", elector.run()
    if not settings.write_status:
        return
    for store in kube_stores(discovery.store):
        writer = StatusWriter(store, discovery.analysis, elector=elector)
        yield f"status-{store.name}", writer.run()
