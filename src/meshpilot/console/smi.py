"""SMI Traffic Metrics (`metrics.smi-spec.io/v1alpha1`) from the console's Envoy stats.

Served on the debug address (`debug/http.py`) under `/apis/metrics.smi-spec.io/v1alpha1/`,
beside `/metrics`, which republishes the same numbers: tools speak HTTP to it without the
console's login. The numbers are the stats collector's window (`StatsCollector.proxy_traffic`),
so the API answers only while the console runs (otherwise 503, saying so).

Resources, mapped onto meshpilot's model:

    pods          one connected Envoy; its name is the proxy id's workload part (`client` in
                  `sidecar~127.0.1.10~client.default~…`), with `-<ip>` when several connected
                  proxies of a namespace share it
    deployments   every connected proxy with that `--workload-name` in the namespace
    services      a service of the registry (name: the host's first label for
                  `<name>.<namespace>.svc.…` hosts, else the host)
    namespaces    every proxy of the namespace

A resource's own metrics are the requests it received, measured by its sidecars on their
inbound clusters: `edge: {direction: from, side: server, resource: null}` (a service: what the
sidecars of its endpoints received on its ports). Edges (`…/{name}/edges`):

- of a pod, deployment or namespace: one per service it called, measured by its own sidecars
  on their outbound clusters (`direction: to, side: client`, the edge resource a Service);
- of a service: one per calling deployment, measured at the caller
  (`direction: from, side: client`).

An Envoy's inbound stats do not say who called and its outbound stats do not say which endpoint
answered, so no pod-to-pod edge is claimed. Failures are responses with status ≥ 500, successes
every other response; latencies are quantiles of Envoy's `upstream_rq_time` histogram in ms
(null when the window holds no request). Values are Kubernetes quantities written as plain
decimals (`"108"`, `"3.25"`), which `resource.Quantity` parses.
"""

from __future__ import annotations

import datetime
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshpilot.console.graph import ProxyView, inbound_services
from meshpilot.console.stats import StatsCollector, Traffic
from meshpilot.envoy.names import INBOUND, OUTBOUND, ClusterName
from meshpilot.model import Proxy
from meshpilot.model.snapshot import Snapshot

GROUP = "metrics.smi-spec.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
BASE = f"/apis/{API_VERSION}"
KINDS = {"pods": "Pod", "deployments": "Deployment", "services": "Service",
         "namespaces": "Namespace"}
RESOURCE_OF = {kind: plural for plural, kind in KINDS.items()}
QUANTILES = (("p99_response_latency", 0.99), ("p90_response_latency", 0.9),
             ("p50_response_latency", 0.5))


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason = code, reason

    def status(self) -> dict[str, Any]:
        """A Kubernetes `Status`, as an API server answers errors."""
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": str(self), "reason": self.reason, "code": self.code}


@dataclass(frozen=True, slots=True, order=True)
class Ref:
    """An ObjectReference: kind, namespace ('' for a namespace or an unknown host), name."""

    kind: str
    namespace: str
    name: str

    def to_json(self) -> dict[str, str]:
        out = {"kind": self.kind, "name": self.name}
        if self.namespace:
            out["namespace"] = self.namespace
        return out

    def self_link(self) -> str:
        plural = RESOURCE_OF[self.kind]
        if self.kind == "Namespace" or not self.namespace:
            return f"{BASE}/{plural}/{self.name}"
        return f"{BASE}/namespaces/{self.namespace}/{plural}/{self.name}"


@dataclass
class Pod:
    ref: Ref
    workload: str
    labels: Mapping[str, str]
    received: Traffic = field(default_factory=Traffic)
    """Everything its sidecar's inbound clusters carried."""
    received_by_service: dict[Ref, Traffic] = field(default_factory=dict)
    sent: dict[Ref, Traffic] = field(default_factory=dict)
    """Destination service → what its sidecar's outbound clusters carried there."""


@dataclass
class Measurements:
    """Everything the API answers from, built from one capture of the proxies."""

    pods: list[Pod]
    services: dict[Ref, Mapping[str, str]]
    """Every service of the snapshot (and external hosts called) → its labels."""
    timestamp: float
    window: float


def service_ref(host: str, namespace: str) -> Ref:
    first, _, rest = host.partition(".")
    name = first if namespace and rest.startswith(f"{namespace}.svc.") else host
    return Ref("Service", namespace, name)


def measure(snapshot: Snapshot | None, views: Iterable[ProxyView], timestamp: float
            ) -> Measurements:
    views = [v for v in views if not v.proxy.proxyless]
    services: dict[Ref, Mapping[str, str]] = {}
    if snapshot is not None:
        for known in snapshot.services.values():
            services[service_ref(known.hostname, known.namespace)] = known.labels
    names = _pod_names([v.proxy for v in views])
    pods, window = [], 0.0
    for view in views:
        proxy = view.proxy
        pod = Pod(Ref("Pod", proxy.namespace, names[proxy.id]),
                  proxy.workload_name or names[proxy.id], proxy.labels)
        inbound: dict[int, list[str]] | None = None
        for cluster, traffic in view.clusters.items():
            window = max(window, traffic.seconds)
            parsed = ClusterName.parse(cluster)
            if parsed is None:
                continue
            if parsed.direction == OUTBOUND:
                svc = snapshot.services.get(parsed.host) if snapshot is not None else None
                ref = service_ref(parsed.host, svc.namespace if svc is not None else "")
                services.setdefault(ref, {})
                pod.sent.setdefault(ref, Traffic()).add(traffic)
            elif parsed.direction == INBOUND:
                pod.received.add(traffic)
                if snapshot is None:
                    continue
                if inbound is None:
                    inbound = inbound_services(snapshot, proxy)
                for sid in inbound.get(parsed.port, ()):
                    namespace, _, host = sid.removeprefix("svc:").partition("/")
                    pod.received_by_service.setdefault(
                        service_ref(host, namespace), Traffic()).add(traffic)
        pods.append(pod)
    return Measurements(pods, services, timestamp, window)


def _pod_names(proxies: list[Proxy]) -> dict[str, str]:
    base: dict[str, str] = {}
    for proxy in proxies:
        parts = proxy.id.split("~")
        name = parts[2] if len(parts) == 4 else proxy.id
        base[proxy.id] = name.removesuffix(f".{proxy.namespace}")
    count: dict[tuple[str, str], int] = {}
    for proxy in proxies:
        key = (proxy.namespace, base[proxy.id])
        count[key] = count.get(key, 0) + 1
    out = {}
    for proxy in proxies:
        name = base[proxy.id]
        if count[(proxy.namespace, name)] > 1:
            parts = proxy.id.split("~")
            name = f"{name}-{parts[1] if len(parts) == 4 else proxy.id}"
        out[proxy.id] = name
    return out


# Values ----------------------------------------------------------------------------------------


def quantity(value: float) -> str:
    """A plain decimal Kubernetes quantity, to the milli-unit (as the SMI SDK keeps them)."""
    text = f"{round(value, 3):.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def go_duration(seconds: float) -> str:
    """`window` is a metav1.Duration: Go's notation (`30s`, `1m0s`, `58.5s`)."""
    millis = round(seconds * 1000)
    minutes, millis = divmod(millis, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return "0s" if millis == 0 else secs


def metrics_of(traffic: Traffic) -> list[dict[str, Any]]:
    failures = sum(n for code, n in traffic.codes.items() if code.startswith("5"))
    successes = sum(n for code, n in traffic.codes.items() if not code.startswith("5"))
    out: list[dict[str, Any]] = []
    for name, q in QUANTILES:
        value = traffic.quantile(q) if traffic.requests else None
        out.append({"name": name, "unit": "ms",
                    "value": quantity(value) if value is not None else None})
    out.append({"name": "success_count", "value": quantity(successes)})
    out.append({"name": "failure_count", "value": quantity(failures)})
    return out


# Answers ---------------------------------------------------------------------------------------


def _timestamp(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def traffic_metrics(data: Measurements, ref: Ref, edge: dict[str, Any], traffic: Traffic,
                    edges: bool = False) -> dict[str, Any]:
    link = ref.self_link() + ("/edges" if edges else "")
    meta = {"name": ref.name, "selfLink": link, "creationTimestamp": _timestamp(data.timestamp)}
    if ref.namespace and ref.kind != "Namespace":
        meta["namespace"] = ref.namespace
    return {
        "kind": "TrafficMetrics",
        "apiVersion": API_VERSION,
        "metadata": meta,
        "timestamp": _timestamp(data.timestamp),
        "window": go_duration(traffic.seconds or data.window),
        "resource": ref.to_json(),
        "edge": edge,
        "metrics": metrics_of(traffic),
    }


def _members(data: Measurements, ref: Ref) -> list[Pod]:
    if ref.kind == "Pod":
        return [p for p in data.pods if p.ref == ref]
    if ref.kind == "Deployment":
        return [p for p in data.pods
                if p.ref.namespace == ref.namespace and p.workload == ref.name]
    if ref.kind == "Namespace":
        return [p for p in data.pods if p.ref.namespace == ref.name]
    return []


def received(data: Measurements, ref: Ref) -> Traffic:
    out = Traffic()
    if ref.kind == "Service":
        for pod in data.pods:
            out.add(pod.received_by_service.get(ref, Traffic()))
    else:
        for pod in _members(data, ref):
            out.add(pod.received)
    return out


def resources(data: Measurements, kind: str, namespace: str) -> list[Ref]:
    """Every resource of a kind (in a namespace, '' for all)."""
    found: set[Ref] = set()
    if kind == "Pod":
        found = {p.ref for p in data.pods}
    elif kind == "Deployment":
        found = {Ref("Deployment", p.ref.namespace, p.workload) for p in data.pods}
    elif kind == "Service":
        found = {r for r in data.services if r.namespace}
    elif kind == "Namespace":
        found = {Ref("Namespace", "", p.ref.namespace) for p in data.pods}
        found |= {Ref("Namespace", "", r.namespace) for r in data.services if r.namespace}
    if namespace and kind != "Namespace":
        found = {r for r in found if r.namespace == namespace}
    return sorted(found)


def _labels(data: Measurements, ref: Ref) -> Mapping[str, str]:
    if ref.kind == "Service":
        return data.services.get(ref, {})
    members = _members(data, ref)
    if ref.kind == "Namespace" or not members:
        return {}
    # A deployment's labels: those all its proxies share.
    shared = dict(members[0].labels)
    for pod in members[1:]:
        shared = {k: v for k, v in shared.items() if pod.labels.get(k) == v}
    return shared


def parse_selector(text: str) -> dict[str, str]:
    """`labelSelector` with equality terms (`app=foo,version=v1`, `==` too)."""
    out: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = term.partition("==") if "==" in term else term.partition("=")
        if not sep or not key.strip() or key.endswith("!"):
            raise ApiError(400, "BadRequest", f"labelSelector {term!r}: only equality terms "
                                              "(key=value) are supported")
        out[key.strip()] = value.strip()
    return out


def _edge_server() -> dict[str, Any]:
    return {"direction": "from", "side": "server", "resource": None}


def find(data: Measurements, plural: str, namespace: str, name: str) -> Ref:
    kind = KINDS.get(plural)
    if kind is None:
        raise ApiError(404, "NotFound", f"the server doesn't have a resource type {plural!r}")
    if kind == "Service":
        for ref in data.services:
            if ref.namespace == namespace and (ref.name == name or name.startswith(
                    f"{ref.name}.{namespace}.svc.")):
                return ref
    else:
        ref = Ref(kind, "" if kind == "Namespace" else namespace, name)
        if ref in resources(data, kind, namespace):
            return ref
    where = f" in namespace {namespace!r}" if namespace and kind != "Namespace" else ""
    raise ApiError(404, "NotFound", f"{plural} {name!r} not found{where}")


def one(data: Measurements, ref: Ref) -> dict[str, Any]:
    return traffic_metrics(data, ref, _edge_server(), received(data, ref))


def edges(data: Measurements, ref: Ref) -> dict[str, Any]:
    items = []
    if ref.kind == "Service":
        callers: dict[Ref, Traffic] = {}
        for pod in data.pods:
            if ref in pod.sent:
                caller = Ref("Deployment", pod.ref.namespace, pod.workload)
                callers.setdefault(caller, Traffic()).add(pod.sent[ref])
        for caller, traffic in sorted(callers.items()):
            items.append(traffic_metrics(data, ref, {"direction": "from", "side": "client",
                                                     "resource": caller.to_json()}, traffic,
                                         edges=True))
    else:
        sent: dict[Ref, Traffic] = {}
        for pod in _members(data, ref):
            for target, traffic in pod.sent.items():
                sent.setdefault(target, Traffic()).add(traffic)
        for target, traffic in sorted(sent.items()):
            items.append(traffic_metrics(data, ref, {"direction": "to", "side": "client",
                                                     "resource": target.to_json()}, traffic,
                                         edges=True))
    return _list(ref.to_json(), ref.self_link() + "/edges", items)


def listing(data: Measurements, plural: str, namespace: str, selector: Mapping[str, str]
            ) -> dict[str, Any]:
    kind = KINDS.get(plural)
    if kind is None:
        raise ApiError(404, "NotFound", f"the server doesn't have a resource type {plural!r}")
    refs = [r for r in resources(data, kind, namespace)
            if all(_labels(data, r).get(k) == v for k, v in selector.items())]
    resource = {"kind": kind, **({"namespace": namespace} if namespace else {})}
    link = (f"{BASE}/namespaces/{namespace}/{plural}" if namespace and kind != "Namespace"
            else f"{BASE}/{plural}")
    out = _list(resource, link, [one(data, r) for r in refs])
    if selector:
        out["selector"] = {"matchLabels": dict(selector)}
    return out


def _list(resource: dict[str, Any], link: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "TrafficMetricsList", "apiVersion": API_VERSION,
            "metadata": {"selfLink": link}, "resource": resource, "items": items}


def resource_list() -> dict[str, Any]:
    return {
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION,
        "resources": [{"name": plural, "namespaced": kind != "Namespace",
                       "kind": "TrafficMetrics", "verbs": ["get", "list"]}
                      for plural, kind in KINDS.items()]
        + [{"name": f"{plural}/edges", "namespaced": kind != "Namespace",
            "kind": "TrafficMetricsList", "verbs": ["get"]} for plural, kind in KINDS.items()],
    }


def answer(data: Measurements, path: str, query: Mapping[str, str]) -> dict[str, Any]:
    """The answer for a path under BASE (`/namespaces/default/pods/client/edges`)."""
    parts = [p for p in path.removeprefix(BASE).split("/") if p]
    selector = parse_selector(query.get("labelSelector", ""))
    match parts:
        case []:
            return resource_list()
        case [plural]:
            return listing(data, plural, "", selector)
        case ["namespaces", name]:
            return one(data, find(data, "namespaces", "", name))
        case ["namespaces", name, "edges"]:
            return edges(data, find(data, "namespaces", "", name))
        case ["namespaces", namespace, plural] if plural != "namespaces":
            return listing(data, plural, namespace, selector)
        case ["namespaces", namespace, plural, name] if plural != "namespaces":
            return one(data, find(data, plural, namespace, name))
        case ["namespaces", namespace, plural, name, "edges"] if plural != "namespaces":
            return edges(data, find(data, plural, namespace, name))
    raise ApiError(404, "NotFound", f"no such path in {API_VERSION}: {path}")


# Wiring: the console registers its collector; the debug server asks for it per request -----------

_collectors: weakref.WeakKeyDictionary[object, StatsCollector] = weakref.WeakKeyDictionary()


def attach(server: object, stats: StatsCollector) -> None:
    _collectors[server] = stats


def detach(server: object) -> None:
    _collectors.pop(server, None)


def collector(server: object) -> StatsCollector | None:
    return _collectors.get(server)


def respond(snapshot: Snapshot | None, views: list[ProxyView], at: float, path: str,
            query: Mapping[str, str]) -> dict[str, Any]:
    """The answer for a request, from inputs captured on the event loop (a worker thread
    runs this: `measure` walks every proxy's clusters)."""
    return answer(measure(snapshot, views, at), path, query)


def no_console() -> ApiError:
    return ApiError(
        503, "ServiceUnavailable",
        "traffic metrics come from the console's stats collector, which is off: start "
        "meshpilot discovery with --console-address")
