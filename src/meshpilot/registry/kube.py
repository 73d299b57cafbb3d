"""Kubernetes as a service registry: `meshpilot discovery --registry kube://?kubeconfig=PATH`.

Three informers (list and watch, see `kube.informer`) follow Services, EndpointSlices and Pods;
every change recomputes the mesh view of the Services it concerns, the way Istio's Kubernetes
registry does:

- a Service `reviews` in namespace `bookinfo` is the host `reviews.bookinfo.svc.cluster.local`
  (`clusterDomain=` changes the suffix), in mesh namespace `bookinfo`, with its ClusterIP as
  address, its labels, and `networking.istio.io/exportTo` as exportTo; an `ExternalName`
  Service resolves its external name by DNS; UDP and SCTP ports are left out;
- the protocol of a port comes from `appProtocol` (`http`, `grpc`, `kubernetes.io/h2c`, …),
  else from the port name's prefix (`http-web`, `grpc`), else TCP;
- endpoints come from the EndpointSlices labelled `kubernetes.io/service-name`: an address per
  endpoint, the slice's port of the same name as the service port, the locality from the
  endpoint's Node (region, zone, subzone topology labels; the slice's zone first); the
  Pod named by `targetRef` gives labels and the service account. Ready endpoints (a missing
  `ready` means ready, as the API documents) are HEALTHY, terminating ones that still serve
  are DRAINING (Envoy sends them no new requests), other unready ones are left out unless the
  Service says `publishNotReadyAddresses`.

Publishing goes through the catalog engine shared by every registry adapter (`catalog`): it
diffs each Service's view against what it published and asks for the smallest push (nothing,
EDS for the hosts whose endpoints alone changed, or a full push), and `ExternalRegistry` keeps
the last known state — marked stale — while the API server is unreachable, reconnecting with
backoff. On every (re)connection all three resources are listed again before anything is
published, so deletions made while meshpilot was away are seen and a half-read cluster is
never pushed; after that, watches resume from their resourceVersion (bookmarks keep it fresh)
and a 410 Expired means one more list of that resource.

URL parameters: `kubeconfig`, `context`, `inCluster=true` (see `kube.client`), `namespace=` to
watch one namespace only, `clusterDomain=`, `cluster=` (the endpoints' cluster id, default
`Kubernetes`), `network=`, `watchTimeout=` (seconds per watch request, default 5 to 10 minutes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from meshpilot.kube.client import (
    ENDPOINT_SLICES,
    NODES,
    PODS,
    SERVICES,
    KubeApiError,
    KubeClient,
    KubeOptions,
    Object,
)
from meshpilot.kube.informer import Informer, Key, key_of
from meshpilot.model import (
    Endpoint,
    HealthStatus,
    Locality,
    Port,
    Protocol,
    Resolution,
    Service,
    ServiceLocation,
)
from meshpilot.registry.base import Updater
from meshpilot.registry.catalog import Catalog, ExternalRegistry, RegistryError, _Published
from meshpilot.registry.mapping import Instance, MappingRules
from meshpilot.registry.urls import RegistryUrl

log = logging.getLogger("meshpilot.registry")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"
NETWORK_LABEL = "topology.istio.io/network"
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"
DEFAULT_CLUSTER_ID = "Kubernetes"

_APP_PROTOCOLS = {
    "kubernetes.io/h2c": Protocol.HTTP2,
    "kubernetes.io/ws": Protocol.HTTP,
    "kubernetes.io/wss": Protocol.HTTPS,
    "grpc-web": Protocol.HTTP,
    "http2": Protocol.HTTP2,
}


def port_protocol(port: Mapping[str, Any]) -> Protocol:
    """Istio's rule: appProtocol, then the port name's prefix, else TCP."""
    app = str(port.get("appProtocol") or "")
    if app:
        mapped = _APP_PROTOCOLS.get(app.lower()) or Protocol.parse(app)
        if mapped is not Protocol.UNSUPPORTED:
            return mapped
    name = str(port.get("name") or "")
    if name:
        by_name = Protocol.from_port_name(name)
        if by_name is not Protocol.UNSUPPORTED:
            return by_name
    return Protocol.TCP


def hostname(name: str, namespace: str, domain: str) -> str:
    return f"{name}.{namespace}.svc.{domain}"


class _KubeCatalog(Catalog):
    """The catalog's diff and push logic over views computed from Kubernetes objects.

    The catalog converts adapters' instances itself; Kubernetes already says what a Service is
    (its ports differ from its endpoints' ports, and it exists without endpoints), so each
    Service is handed over as one marker instance and `_convert` returns the view computed for
    it.
    """

    def __init__(self, rules: MappingRules, updater: Updater) -> None:
        super().__init__(rules, updater)
        self._views: dict[str, _Published] = {}

    def publish(self, views: Mapping[str, tuple[Service, tuple[Endpoint, ...]] | None],
                *, complete: bool = False) -> None:
        markers: dict[str, tuple[Instance, ...]] = {}
        if complete:
            for gone in set(self._views) - set(views):
                del self._views[gone]
        for key, view in views.items():
            if view is None:
                self._views.pop(key, None)
                markers[key] = ()
            else:
                self._views[key] = _Published(*view)
                markers[key] = (Instance(service=key, id=key, address="", ports={}),)
        self._apply(markers, remove_others=complete)

    def _convert(self, instances: tuple[Instance, ...]) -> _Published:
        return self._views[instances[0].service]

    def instance_count(self) -> int:
        return sum(len(view.endpoints) for view in self._views.values())


class KubeRegistry(ExternalRegistry):
    default_protocol = "TCP"

    def __init__(self, url: RegistryUrl, updater: Updater, options: KubeOptions) -> None:
        url = dataclasses.replace(url, params={"name": "kubernetes", **url.params})
        rules = MappingRules(registry="kubernetes", namespace="",
                             cluster_id=url.param("cluster") or DEFAULT_CLUSTER_ID,
                             network=url.param("network"))
        super().__init__(url, updater, rules)
        self.catalog: _KubeCatalog = _KubeCatalog(rules, updater)
        self.options = options
        self.domain = url.param("clusterDomain") or "cluster.local"
        namespace = url.param("namespace") or None
        timeout = int(url.number("watchTimeout", 0))
        self.informers = {
            "services": Informer(SERVICES, self._on_service, namespace=namespace,
                                 watch_timeout=timeout),
            "slices": Informer(ENDPOINT_SLICES, self._on_slice, namespace=namespace,
                               watch_timeout=timeout),
            "pods": Informer(PODS, self._on_pod, namespace=namespace, watch_timeout=timeout),
            # Nodes carry the region and subzone (topology labels); slices carry only the zone.
            "nodes": Informer(NODES, self._on_node, watch_timeout=timeout),
        }
        self._services_of_node: dict[str, set[Key]] = {}
        """Node → the Services with endpoints on it (grows only: an extra recompute is cheap)."""
        self._slices_of: dict[Key, set[Key]] = {}
        """Service → its EndpointSlices."""
        self._services_of_pod: dict[Key, set[Key]] = {}
        """Pod → the Services whose endpoints it backs (from the last computation)."""
        self._pods_of_service: dict[Key, set[Key]] = {}
        """The reverse of `_services_of_pod`, to forget a Service's pods before recomputing."""
        self._dirty: set[Key] = set()
        self._live = False
        """Whether changes are published as they come (after the lists of a connection)."""

    # Watching ----------------------------------------------------------------------------------

    async def watch(self) -> None:
        self._live = False
        client = await KubeClient.connect(self.options, "meshpilot-discovery")
        try:
            for informer in self.informers.values():
                await informer.relist(client)
            self._publish_all()
            self._live = True
            self.synced()
            await _run_all(client, list(self.informers.values()))
        except KubeApiError as error:
            # Refused (401, 403, …): reported and retried like an unreachable server.
            raise RegistryError(str(error)) from error
        finally:
            self._live = False
            await client.close()

    def _publish_all(self) -> None:
        keys = {key_of(s) for s in self.informers["services"].objects()}
        views = {f"{ns}/{name}": self._view((ns, name)) for ns, name in keys}
        self._dirty.clear()
        self.catalog.publish(views, complete=True)

    def _changed(self, keys: set[Key]) -> None:
        self._dirty |= keys
        if not self._live:
            return
        dirty, self._dirty = self._dirty, set()
        self.catalog.publish({f"{ns}/{name}": self._view((ns, name)) for ns, name in dirty})

    def _on_service(self, old: Object | None, new: Object | None) -> None:
        self._changed({key_of(old or new or {})})

    def _on_slice(self, old: Object | None, new: Object | None) -> None:
        keys: set[Key] = set()
        for obj, present in ((old, False), (new, True)):
            if obj is None:
                continue
            service = (obj.get("metadata", {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
            if not service:
                continue
            slice_key = key_of(obj)
            service_key = (slice_key[0], str(service))
            slices = self._slices_of.setdefault(service_key, set())
            if present:
                slices.add(slice_key)
            else:
                slices.discard(slice_key)
            keys.add(service_key)
        self._changed(keys)

    def _on_node(self, old: Object | None, new: Object | None) -> None:
        _, name = key_of(old or new or {})
        self._changed(set(self._services_of_node.get(name, ())))

    def _on_pod(self, old: Object | None, new: Object | None) -> None:
        pod = key_of(old or new or {})
        self._changed(set(self._services_of_pod.get(pod, ())))

    # Conversion --------------------------------------------------------------------------------

    def _view(self, key: Key) -> tuple[Service, tuple[Endpoint, ...]] | None:
        namespace, name = key
        obj = self.informers["services"].get(namespace, name)
        for pod_key in self._pods_of_service.pop(key, set()):
            services = self._services_of_pod.get(pod_key)
            if services is not None:
                services.discard(key)
                if not services:
                    del self._services_of_pod[pod_key]
        if obj is None:
            return None
        spec = obj.get("spec") or {}
        meta = obj.get("metadata") or {}
        host = hostname(name, namespace, self.domain)
        ports = tuple(
            Port(str(p.get("name") or f"{port_protocol(p).value.lower()}-{p['port']}"),
                 int(p["port"]), port_protocol(p),
                 target_port=p["targetPort"] if isinstance(p.get("targetPort"), int) else None)
            for p in spec.get("ports") or []
            if str(p.get("protocol") or "TCP") == "TCP" and isinstance(p.get("port"), int)
        )
        external = spec.get("type") == "ExternalName"
        cluster_ip = str(spec.get("clusterIP") or "")
        export_to = str((meta.get("annotations") or {}).get(EXPORT_TO_ANNOTATION) or "")
        service = Service(
            hostname=host,
            namespace=namespace,
            ports=ports,
            resolution=Resolution.DNS if external else Resolution.STATIC,
            location=ServiceLocation.MESH_EXTERNAL if external else ServiceLocation.MESH_INTERNAL,
            addresses=(cluster_ip,) if cluster_ip and cluster_ip != "None" else (),
            labels=dict(meta.get("labels") or {}),
            export_to=tuple(e.strip() for e in export_to.split(",") if e.strip()),
            registry="kubernetes",
            source=f"Kubernetes Service {namespace}/{name}",
        )
        if external:
            target = str(spec.get("externalName") or "")
            endpoints = tuple(
                Endpoint(hostname=host, namespace=namespace, service_port=p.number,
                         address=target, port=p.number, cluster_id=self.cluster_id)
                for p in ports if target
            )
            return service, endpoints
        return service, self._endpoints(key, service, spec)

    def _endpoints(self, key: Key, service: Service, spec: Mapping[str, Any]
                   ) -> tuple[Endpoint, ...]:
        namespace, _ = key
        not_ready_too = bool(spec.get("publishNotReadyAddresses"))
        spec_ports = [p for p in spec.get("ports") or [] if isinstance(p.get("port"), int)]
        found: dict[tuple[str, int, int], Endpoint] = {}
        for slice_key in sorted(self._slices_of.get(key, ())):
            eps = self.informers["slices"].get(*slice_key)
            if eps is None or eps.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
                continue
            slice_ports = {str(p.get("name") or ""): p.get("port")
                           for p in eps.get("ports") or [] if isinstance(p.get("port"), int)}
            for endpoint in eps.get("endpoints") or []:
                health = _health(endpoint.get("conditions") or {}, not_ready_too)
                addresses = endpoint.get("addresses") or []
                if health is None or not addresses:
                    continue
                pod_key, pod = self._pod(namespace, endpoint.get("targetRef"))
                if pod_key is not None:
                    self._services_of_pod.setdefault(pod_key, set()).add(key)
                    self._pods_of_service.setdefault(key, set()).add(pod_key)
                labels = dict((pod or {}).get("metadata", {}).get("labels") or {})
                account = str((pod or {}).get("spec", {}).get("serviceAccountName") or "")
                for port in spec_ports:
                    number = slice_ports.get(str(port.get("name") or ""))
                    if number is None or service.port(int(port["port"])) is None:
                        continue
                    ep = Endpoint(
                        hostname=service.hostname,
                        namespace=namespace,
                        service_port=int(port["port"]),
                        # Consumers use the first address; the others are the same endpoint.
                        address=str(addresses[0]),
                        port=int(number),
                        labels=labels,
                        network=labels.get(NETWORK_LABEL, self.catalog.rules.network),
                        cluster_id=self.cluster_id,
                        locality=self._locality(key, endpoint),
                        service_account=account,
                        health=health,
                        workload_name=pod_key[1] if pod_key else str(addresses[0]),
                    )
                    # An address in two slices (as during a slice split) is one endpoint.
                    found.setdefault((ep.address, ep.service_port, ep.port), ep)
        return tuple(found[k] for k in sorted(found))

    def _locality(self, service: Key, endpoint: Mapping[str, Any]) -> Locality:
        """Region and subzone from the endpoint's Node's topology labels, the zone from the
        slice (else the Node), as Istio reads them."""
        node_name = str(endpoint.get("nodeName") or "")
        labels: Mapping[str, str] = {}
        if node_name:
            self._services_of_node.setdefault(node_name, set()).add(service)
            node = self.informers["nodes"].get("", node_name) or {}
            labels = node.get("metadata", {}).get("labels") or {}
        return Locality(region=str(labels.get(REGION_LABEL, "")),
                        zone=str(endpoint.get("zone") or labels.get(ZONE_LABEL, "")),
                        subzone=str(labels.get(SUBZONE_LABEL, "")))

    def _pod(self, namespace: str, ref: Any) -> tuple[Key | None, Object | None]:
        if not isinstance(ref, Mapping) or ref.get("kind") != "Pod" or not ref.get("name"):
            return None, None
        pod_key = (str(ref.get("namespace") or namespace), str(ref["name"]))
        return pod_key, self.informers["pods"].get(*pod_key)

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["resourceVersions"] = {n: i.resource_version for n, i in self.informers.items()}
        status["relists"] = {n: i.lists for n, i in self.informers.items()}
        return status


def _health(conditions: Mapping[str, Any], not_ready_too: bool) -> HealthStatus | None:
    ready = conditions.get("ready")
    if ready is None or ready:
        return HealthStatus.HEALTHY
    if not_ready_too:
        return HealthStatus.HEALTHY
    serving = conditions.get("serving")
    if conditions.get("terminating") and (serving is None or serving):
        return HealthStatus.DRAINING
    return None


async def _run_all(client: KubeClient, informers: list[Informer]) -> None:
    """Run informers together; the first failure stops all and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for informer in informers:
                group.create_task(informer.run(client), name=f"informer-{informer.resource}")
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None


def create(url: RegistryUrl, updater: Updater) -> KubeRegistry:
    options = KubeOptions.from_url(url.text) if url.text else KubeOptions()
    return KubeRegistry(url, updater, options)
