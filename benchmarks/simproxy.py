"""Simulated proxies: many real ADS streams per process, subscribing and ACKing as Envoy does.

Each simulated proxy has its own gRPC channel (its own TCP connection: a local subchannel pool
keeps grpc from sharing one connection between channels to the same target) and one ADS stream,
SotW or Delta. Like Envoy it subscribes to every cluster and listener (wildcard CDS and LDS),
then by name to the EDS assignments of the EDS clusters it received and to the route
configurations its listeners' HTTP connection managers name (RDS), and ACKs every response.

Responses are read as raw bytes and parsed with upb; which names a cluster or listener asks for
is remembered per distinct serialized resource, so a thousand proxies receiving the same
cluster decode it once per process. The client side stays cheap because on a 2-core machine
every cycle it spends is taken from the server under test.

A worker process is driven over a pipe by the benchmark (`Command`): `mark` starts counting
(responses, bytes, the time of each proxy's last ACK) afresh for a scenario; `status` reports
progress; `collect` returns per-proxy results; `capture` returns what proxy 0 received since
the mark, for the reference server to replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing.connection
import os
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SHORT = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}

_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
_DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
_HCM = "type.googleapis.com/" + (
    http_connection_manager_pb2.HttpConnectionManager.DESCRIPTOR.full_name
)


def _raw(data: bytes) -> bytes:
    return data


# What a resource makes the proxy subscribe to, by its serialized bytes (per process).
_EDS_NAME: dict[bytes, str | None] = {}
_RDS_NAMES: dict[bytes, tuple[str, ...]] = {}


def eds_name(body: bytes) -> str | None:
    """The EDS resource an EDS cluster asks for; None for other cluster types."""
    found = _EDS_NAME.get(body, "")
    if found == "":
        cluster = cluster_pb2.Cluster.FromString(body)
        found = None
        if cluster.type == cluster_pb2.Cluster.EDS:
            found = cluster.eds_cluster_config.service_name or cluster.name
        _EDS_NAME[body] = found
    return found


def rds_names(body: bytes) -> tuple[str, ...]:
    """The route configurations a listener's HTTP connection managers load over RDS."""
    found = _RDS_NAMES.get(body)
    if found is None:
        listener = listener_pb2.Listener.FromString(body)
        names = []
        chains = [*listener.filter_chains]
        if listener.HasField("default_filter_chain"):
            chains.append(listener.default_filter_chain)
        for chain in chains:
            for flt in chain.filters:
                if flt.typed_config.type_url == _HCM:
                    hcm = http_connection_manager_pb2.HttpConnectionManager.FromString(
                        flt.typed_config.value
                    )
                    if hcm.HasField("rds"):
                        names.append(hcm.rds.route_config_name)
        found = _RDS_NAMES[body] = tuple(sorted(set(names)))
    return found


def make_node(index: int, namespace: str) -> Any:
    """A sidecar in `namespace` with the labels every simulated proxy shares, at its own IP
    (one no workload uses, so it has no inbound side, as pilot-load's fake pods)."""
    ip = f"10.251.{index // 250}.{index % 250 + 1}"
    metadata = struct_pb2.Struct()
    metadata.update({
        "NAMESPACE": namespace,
        "WORKLOAD_NAME": "loadgen",
        "LABELS": {"app": "loadgen"},
        "INSTANCE_IPS": ip,
        "OUTBOUND_BIND": "127.0.0.1",
    })
    return base_pb2.Node(
        id=f"sidecar~{ip}~loadgen-{index}.{namespace}~{namespace}.svc.cluster.local",
        cluster=f"loadgen.{namespace}",
        metadata=metadata,
    )


@dataclass
class Stats:
    """What one proxy saw since the last mark."""

    responses: int = 0
    received: int = 0
    last_ack: float = 0.0
    """time.monotonic() of the last ACK sent (CLOCK_MONOTONIC is system-wide on Linux)."""
    types: dict[str, int] = field(default_factory=dict)
    captured: list[tuple[str, bytes]] = field(default_factory=list)


class SimProxy:
    def __init__(self, index: int, target: str, namespace: str, delta: bool, capture: bool):
        self.index = index
        self.node = make_node(index, namespace)
        self.delta = delta
        self.capture = capture
        self.channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ],
        )
        self.stats = Stats()
        self.connected = False
        self.acks_total = 0
        self.eds: set[str] = set()
        self.rds: set[str] = set()
        self.clusters: dict[str, str | None] = {}
        """Delta: cluster name → EDS name, kept across responses."""
        self.listeners: dict[str, tuple[str, ...]] = {}
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._first = True

    def mark(self) -> None:
        self.stats = Stats()

    async def run(self) -> None:
        method = _DELTA if self.delta else _SOTW
        request_type = (
            discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        )
        call = self.channel.stream_stream(
            method, request_serializer=request_type.SerializeToString, response_deserializer=_raw
        )(self._requests())
        self._send(CLUSTER)
        self._send(LISTENER)
        async for raw in call:
            self._on_response(raw)

    async def _requests(self) -> Any:
        while True:
            yield await self._outbox.get()

    def _send(self, type_url: str, names: list[str] | None = None, nonce: str = "",
              version: str = "", subscribe: list[str] | None = None,
              unsubscribe: list[str] | None = None) -> None:
        request: Any
        if self.delta:
            request = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, response_nonce=nonce,
                resource_names_subscribe=subscribe or [],
                resource_names_unsubscribe=unsubscribe or [],
            )
        else:
            request = discovery_pb2.DiscoveryRequest(
                type_url=type_url, resource_names=names or [], response_nonce=nonce,
                version_info=version,
            )
        if self._first:
            request.node.CopyFrom(self.node)
            self._first = False
        self._outbox.put_nowait(request)

    def _on_response(self, raw: bytes) -> None:
        self.connected = True
        stats = self.stats
        stats.responses += 1
        stats.received += len(raw)
        if self.delta:
            self._on_delta(discovery_pb2.DeltaDiscoveryResponse.FromString(raw))
        else:
            self._on_sotw(discovery_pb2.DiscoveryResponse.FromString(raw), raw)
        stats.last_ack = time.monotonic()
        self.acks_total += 1

    def _on_sotw(self, response: Any, raw: bytes) -> None:
        type_url = response.type_url
        self.stats.types[type_url] = self.stats.types.get(type_url, 0) + 1
        if self.capture:
            body = discovery_pb2.DiscoveryResponse(resources=response.resources)
            self.stats.captured.append((type_url, body.SerializeToString()))
        ack = dict(nonce=response.nonce, version=response.version_info)
        if type_url == CLUSTER:
            wanted = {n for r in response.resources if (n := eds_name(r.value)) is not None}
            self._send(CLUSTER, **ack)
            if wanted != self.eds:
                self.eds = wanted
                self._send(ENDPOINT, sorted(wanted))
        elif type_url == LISTENER:
            wanted = {n for r in response.resources for n in rds_names(r.value)}
            self._send(LISTENER, **ack)
            if wanted != self.rds:
                self.rds = wanted
                self._send(ROUTE, sorted(wanted))
        elif type_url == ENDPOINT:
            self._send(ENDPOINT, sorted(self.eds), **ack)
        else:
            self._send(type_url, sorted(self.rds), **ack)

    def _on_delta(self, response: Any) -> None:
        type_url = response.type_url
        self.stats.types[type_url] = self.stats.types.get(type_url, 0) + 1
        if type_url == CLUSTER:
            for r in response.resources:
                self.clusters[r.name] = eds_name(r.resource.value)
            for name in response.removed_resources:
                self.clusters.pop(name, None)
            self._send(CLUSTER, nonce=response.nonce)
            wanted = {n for n in self.clusters.values() if n is not None}
            self._resubscribe(ENDPOINT, self.eds, wanted)
            self.eds = wanted
        elif type_url == LISTENER:
            for r in response.resources:
                self.listeners[r.name] = rds_names(r.resource.value)
            for name in response.removed_resources:
                self.listeners.pop(name, None)
            self._send(LISTENER, nonce=response.nonce)
            wanted = {n for names in self.listeners.values() for n in names}
            self._resubscribe(ROUTE, self.rds, wanted)
            self.rds = wanted
        else:
            self._send(type_url, nonce=response.nonce)

    def _resubscribe(self, type_url: str, had: set[str], wanted: set[str]) -> None:
        if wanted != had:
            self._send(type_url, subscribe=sorted(wanted - had), unsubscribe=sorted(had - wanted))


@dataclass(frozen=True)
class WorkerArgs:
    target: str
    first: int
    count: int
    namespace: str
    delta: bool
    capture: bool
    """Whether this worker's first proxy keeps what it receives (for the reference server)."""


def worker_main(conn: multiprocessing.connection.Connection, args: WorkerArgs) -> None:
    """Entry point of a worker process."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_worker(conn, args))


async def _worker(conn: multiprocessing.connection.Connection, args: WorkerArgs) -> None:
    proxies = [
        SimProxy(args.first + i, args.target, args.namespace, args.delta,
                 args.capture and i == 0)
        for i in range(args.count)
    ]
    tasks = [asyncio.create_task(p.run()) for p in proxies]
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    try:
        while True:
            command, *_params = await commands.get()
            if command == "mark":
                for p in proxies:
                    p.mark()
                conn.send(time.monotonic())
            elif command == "status":
                conn.send(_status(proxies, tasks))
            elif command == "collect":
                conn.send([(p.index, p.stats.last_ack, p.stats.responses, p.stats.received,
                            dict(p.stats.types)) for p in proxies])
            elif command == "capture":
                conn.send([c for p in proxies for c in p.stats.captured])
            elif command == "stop":
                break
    finally:
        loop.remove_reader(conn.fileno())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.channel.close() for p in proxies), return_exceptions=True)
        conn.send("stopped")


def _status(proxies: list[SimProxy], tasks: list[asyncio.Task[None]]) -> dict[str, Any]:
    failed = [t for t in tasks if t.done()]
    errors = sorted({repr(t.exception())[:200] for t in failed if not t.cancelled()
                     and t.exception() is not None})
    return {
        "pid": os.getpid(),
        "connected": sum(p.connected for p in proxies),
        "responses": sum(p.stats.responses for p in proxies),
        "bytes": sum(p.stats.received for p in proxies),
        "acked": sum(p.stats.responses > 0 for p in proxies),
        "last": max((p.stats.last_ack for p in proxies), default=0.0),
        "failed": len(failed),
        "errors": errors,
        "subscribed": sum(bool(p.eds) and bool(p.rds) for p in proxies),
    }
