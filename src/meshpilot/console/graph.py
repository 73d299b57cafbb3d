"""The topology graph: services and workloads, with the traffic the Envoys measured on each edge.

Built at request time from three things the server already holds: the snapshot (services and
their endpoints), the connected proxies, and the stats collector's traffic per proxy cluster.

Nodes (ids are stable, so the page can keep its selection across refreshes):

    svc:<namespace>/<host>   a service of the registry (namespace '' for a host the registry
                             does not know, reached through passthrough: kind `external`)
    wl:<namespace>/<name>    a workload: a connected proxy, or an endpoint's workload (its
                             WorkloadEntry name, else its address)
    ns:<namespace>           a namespace, when aggregated by namespace

Edges:

    workload → service   from the client proxy's outbound clusters `outbound|port|subset|host`
                         (subsets summed): requests, 5xx, latency histogram, connections
    service → workload   membership (the workload is an endpoint of the service), with the
                         traffic the workload's own proxy received on its inbound cluster for
                         that port, when it has one

Large meshes stay usable by reducing the graph before it leaves the server: `aggregate`
(`workload`, `service`: every workload folded into the service it serves; `namespace`: every
node folded into its namespace; `auto`: the finest of those that fits in `limit` nodes), then
`namespace`, `q` (search) and `focus` (a node and its neighbours to `depth`), then at most
`limit` nodes, the busiest first. Rates, error rates and latencies of merged edges are
recomputed from their summed counts and histograms, never averaged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshpilot.console.stats import Traffic
from meshpilot.envoy.names import INBOUND, OUTBOUND, ClusterName
from meshpilot.envoy.targets import service_targets
from meshpilot.model import Proxy
from meshpilot.model.snapshot import Snapshot

LEVELS = ("workload", "service", "namespace")
DEFAULT_LIMIT = 300
MAX_LIMIT = 5000
EXTERNAL_NAMESPACE = "(external)"


@dataclass
class Node:
    id: str
    kind: str
    """service, external, workload, gateway, namespace"""
    name: str
    namespace: str
    host: str = ""
    proxies: list[str] = field(default_factory=list)
    members: int = 1
    internal: Traffic = field(default_factory=Traffic)
    """Traffic between members folded into this node (namespace aggregation)."""
    group: str = ""
    """The service a workload is folded into by service aggregation ('' : none)."""


@dataclass
class Edge:
    source: str
    target: str
    kind: str = "member"
    """`traffic` when measured, else `member` (a service and one of its endpoints)."""
    protocol: str = ""
    traffic: Traffic = field(default_factory=Traffic)


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[tuple[str, str], Edge] = field(default_factory=dict)

    def node(self, node: Node) -> Node:
        existing = self.nodes.get(node.id)
        if existing is None:
            self.nodes[node.id] = node
            return node
        return existing

    def edge(self, source: str, target: str) -> Edge:
        edge = self.edges.get((source, target))
        if edge is None:
            edge = self.edges[(source, target)] = Edge(source, target)
        return edge


@dataclass(frozen=True, slots=True)
class ProxyView:
    """What the graph needs of one connected proxy, captured on the event loop."""

    proxy: Proxy
    clusters: Mapping[str, Traffic]


def service_id(namespace: str, host: str) -> str:
    return f"svc:{namespace}/{host}"


def workload_id(namespace: str, name: str) -> str:
    return f"wl:{namespace}/{name}"


def _short(host: str) -> str:
    return host.split(".", 1)[0] if not host.replace(".", "").isdigit() else host


def _add_traffic(edge: Edge, traffic: Traffic) -> None:
    edge.kind = "traffic"
    edge.traffic.add(traffic)
    if traffic.requests or traffic.total or traffic.codes:
        edge.protocol = "http"
    elif not edge.protocol:
        edge.protocol = "tcp"


def build(snapshot: Snapshot | None, proxies: Iterable[ProxyView]) -> Graph:
    """The workload-level graph."""
    graph = Graph()
    if snapshot is None:
        return graph
    for svc in snapshot.services.values():
        graph.node(Node(service_id(svc.namespace, svc.hostname), "service", _short(svc.hostname),
                        svc.namespace, host=svc.hostname))
    for (host, _), endpoints in snapshot.endpoints.items():
        owner = snapshot.services.get(host)
        if owner is None:
            continue
        for ep in endpoints:
            wid = workload_id(ep.namespace, ep.workload_name or ep.address)
            workload = graph.node(Node(wid, "workload", ep.workload_name or ep.address,
                                       ep.namespace))
            sid = service_id(owner.namespace, host)
            workload.group = workload.group or sid
            graph.edge(sid, wid)
    for view in proxies:
        proxy = view.proxy
        wid = workload_id(proxy.namespace, proxy.workload_name or proxy.id)
        kind = "gateway" if str(proxy.type) == "router" else "workload"
        workload = graph.node(Node(wid, kind, proxy.workload_name or proxy.id, proxy.namespace))
        workload.kind = kind
        workload.proxies.append(proxy.id)
        inbound: dict[int, list[str]] | None = None
        for cluster, traffic in view.clusters.items():
            parsed = ClusterName.parse(cluster)
            if parsed is None:
                continue
            if parsed.direction == OUTBOUND:
                called = snapshot.services.get(parsed.host)
                if called is not None:
                    target = service_id(called.namespace, called.hostname)
                else:
                    target = service_id("", parsed.host)
                    graph.node(Node(target, "external", parsed.host, "", host=parsed.host))
                _add_traffic(graph.edge(wid, target), traffic)
            elif parsed.direction == INBOUND:
                if inbound is None:
                    inbound = inbound_services(snapshot, proxy)
                for sid in inbound.get(parsed.port, ()):
                    _add_traffic(graph.edge(sid, wid), traffic)
    for node in graph.nodes.values():
        node.proxies.sort()
    return graph


def inbound_services(snapshot: Snapshot, proxy: Proxy) -> dict[int, list[str]]:
    """Workload port → the services whose endpoint the proxy serves on it."""
    out: dict[int, list[str]] = {}
    for ep in service_targets(snapshot, proxy):
        svc = snapshot.services.get(ep.hostname)
        if svc is not None:
            sid = service_id(svc.namespace, svc.hostname)
            if sid not in out.setdefault(ep.port, []):
                out[ep.port].append(sid)
    return out


# Reducing --------------------------------------------------------------------------------------


def aggregate(graph: Graph, level: str) -> Graph:
    if level == "workload":
        return graph
    groups: dict[str, Node] = {}
    mapping: dict[str, str] = {}
    for node in graph.nodes.values():
        if level == "namespace":
            namespace = node.namespace or EXTERNAL_NAMESPACE
            group = Node(f"ns:{namespace}", "namespace", namespace, namespace, members=0)
        elif node.kind in ("workload", "gateway") and node.group in graph.nodes:
            owner = graph.nodes[node.group]
            group = Node(owner.id, owner.kind, owner.name, owner.namespace, host=owner.host,
                         members=0)
        else:
            group = Node(node.id, node.kind, node.name, node.namespace, host=node.host,
                         members=0)
        merged = groups.setdefault(group.id, group)
        merged.members += node.members
        merged.proxies.extend(node.proxies)
        merged.internal.add(node.internal)
        mapping[node.id] = group.id
    out = Graph(nodes=groups)
    for edge in graph.edges.values():
        source, target = mapping[edge.source], mapping[edge.target]
        if source == target:
            if edge.kind == "traffic" and not edge.source.startswith("svc:"):
                # Calls between members (a service's edge into its own workloads would count
                # the same requests twice).
                out.nodes[source].internal.add(edge.traffic)
            continue
        merged_edge = out.edge(source, target)
        if edge.kind == "traffic":
            merged_edge.kind = "traffic"
            merged_edge.protocol = merged_edge.protocol if merged_edge.protocol == "http" else (
                edge.protocol or merged_edge.protocol)
            merged_edge.traffic.add(edge.traffic)
    for node in out.nodes.values():
        node.proxies.sort()
    return out


def neighbours(graph: Graph) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {node: set() for node in graph.nodes}
    for source, target in graph.edges:
        out[source].add(target)
        out[target].add(source)
    return out


def select(
    graph: Graph, *, namespace: str = "", query: str = "", focus: str = "", depth: int = 1
) -> tuple[Graph, set[str]]:
    """The part of the graph asked for, and the nodes that matched the search or focus."""
    adjacent: dict[str, set[str]] | None = None
    keep: set[str] | None = None
    matched: set[str] = set()
    if namespace:
        adjacent = neighbours(graph)
        inside = {n.id for n in graph.nodes.values() if n.namespace == namespace}
        keep = inside | {m for n in inside for m in adjacent[n]}
    if query:
        adjacent = adjacent or neighbours(graph)
        needle = query.lower()
        matched = {n.id for n in graph.nodes.values()
                   if needle in n.id.lower() or needle in n.name.lower()}
        found = matched | {m for n in matched for m in adjacent[n]}
        keep = found if keep is None else keep & found
    if focus:
        adjacent = adjacent or neighbours(graph)
        ring = {focus} if focus in graph.nodes else set()
        reached = set(ring)
        for _ in range(max(depth, 0)):
            ring = {m for n in ring for m in adjacent[n]} - reached
            reached |= ring
        matched = matched | ({focus} & reached)
        keep = reached if keep is None else keep & reached
    if keep is None:
        return graph, matched
    return _subgraph(graph, keep), matched


def _subgraph(graph: Graph, keep: set[str]) -> Graph:
    return Graph(
        nodes={k: v for k, v in graph.nodes.items() if k in keep},
        edges={k: v for k, v in graph.edges.items() if k[0] in keep and k[1] in keep},
    )


def limit(graph: Graph, count: int, first: set[str]) -> tuple[Graph, bool]:
    """At most `count` nodes: those in `first`, then the busiest, then the best connected."""
    if len(graph.nodes) <= count:
        return graph, False
    busy: dict[str, float] = {n: 0.0 for n in graph.nodes}
    degree: dict[str, int] = {n: 0 for n in graph.nodes}
    for (source, target), edge in graph.edges.items():
        rate = edge.traffic.rate_sum + edge.traffic.cps_sum
        for node in (source, target):
            busy[node] += rate
            degree[node] += 1
    ranked = sorted(graph.nodes, key=lambda n: (n not in first, -busy[n], -degree[n], n))
    return _subgraph(graph, set(ranked[:count])), True


# JSON ------------------------------------------------------------------------------------------


def node_traffic(graph: Graph) -> dict[str, tuple[Traffic, Traffic]]:
    """Node → (traffic in, traffic out), over measured edges."""
    out: dict[str, tuple[Traffic, Traffic]] = {n: (Traffic(), Traffic()) for n in graph.nodes}
    for (source, target), edge in graph.edges.items():
        if edge.kind == "traffic":
            out[source][1].add(edge.traffic)
            out[target][0].add(edge.traffic)
    return out


def to_json(graph: Graph, matched: set[str] | None = None) -> dict[str, Any]:
    sums = node_traffic(graph)
    nodes = []
    for node in sorted(graph.nodes.values(), key=lambda n: n.id):
        inbound, outbound = sums[node.id]
        entry: dict[str, Any] = {
            "id": node.id,
            "kind": node.kind,
            "name": node.name,
            "namespace": node.namespace,
            "members": node.members,
            "proxies": node.proxies[:20],
            "proxyCount": len(node.proxies),
            "in": inbound.to_json(),
            "out": outbound.to_json(),
            "match": node.id in (matched or ()),
        }
        if node.host:
            entry["host"] = node.host
        if node.internal.rate_sum or node.internal.total or node.internal.cps_sum:
            entry["internal"] = node.internal.to_json()
        nodes.append(entry)
    edges = [
        {
            "id": f"{edge.source}->{edge.target}",
            "source": edge.source,
            "target": edge.target,
            "kind": edge.kind,
            "protocol": edge.protocol,
            **edge.traffic.to_json(),
        }
        for edge in sorted(graph.edges.values(), key=lambda e: (e.source, e.target))
    ]
    return {"nodes": nodes, "edges": edges}


def render(
    base: Graph,
    *,
    level: str = "auto",
    namespace: str = "",
    query: str = "",
    focus: str = "",
    depth: int = 1,
    max_nodes: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """The `/api/graph` answer for these parameters (see the module docstring)."""
    max_nodes = min(max(max_nodes, 1), MAX_LIMIT)
    levels = LEVELS if level == "auto" else (level,)
    if any(lv not in LEVELS for lv in levels):
        raise ValueError(f"aggregate must be auto, {', '.join(LEVELS)}; got {level!r}")
    for chosen in levels:
        graph, matched = select(aggregate(base, chosen), namespace=namespace, query=query,
                                focus=focus, depth=depth)
        if len(graph.nodes) <= max_nodes:
            break
    total = len(graph.nodes)
    graph, truncated = limit(graph, max_nodes, matched)
    return {
        "aggregate": chosen,
        "requested": level,
        "limit": max_nodes,
        "totalNodes": total,
        "truncated": truncated,
        "workloadNodes": len(base.nodes),
        **to_json(graph, matched),
    }
