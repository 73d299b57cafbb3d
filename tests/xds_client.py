"""A raw ADS client for tests: speaks SotW or Delta the way Envoy does, one step at a time.

Three-line tests are the aim: `resp = await client.request(CLUSTER)`, `await client.ack(resp)`,
`await client.expect_no_response()`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

from meshpilot.envoy.names import CLUSTER, ENDPOINT, LISTENER, ROUTE

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "AdsClient",
    "make_node",
    "resource_names",
    "unpack",
]


def make_node(
    node_id: str = "sidecar~127.0.0.2~client.default~default.svc.cluster.local",
    namespace: str = "default",
    workload: str = "client",
    labels: dict[str, str] | None = None,
    ips: str = "127.0.0.2",
    outbound_bind: str = "127.0.0.2",
) -> Any:
    metadata = struct_pb2.Struct()
    metadata.update(
        {
            "NAMESPACE": namespace,
            "WORKLOAD_NAME": workload,
            "LABELS": labels or {"app": workload},
            "INSTANCE_IPS": ips,
            "OUTBOUND_BIND": outbound_bind,
        }
    )
    return base_pb2.Node(id=node_id, cluster=f"{workload}.{namespace}", metadata=metadata)


class AdsClient:
    def __init__(self, port: int, delta: bool = False, node: Any = None) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.delta = delta
        self.call = stub.DeltaAggregatedResources() if delta else stub.StreamAggregatedResources()
        self.node = node if node is not None else make_node()
        self._node_sent = False
        # Cancelling a pending grpc.aio read cancels the whole call, so one task reads for us.
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            response = await self.call.read()
            self.responses.put_nowait(response)
            if response is grpc.aio.EOF:
                return

    async def close(self) -> None:
        self._reader.cancel()
        self.call.cancel()
        await self.channel.close()

    def _with_node(self, request: Any) -> Any:
        if not self._node_sent:
            request.node.CopyFrom(self.node)
            self._node_sent = True
        return request

    async def send(
        self,
        type_url: str,
        names: list[str] | None = None,
        nonce: str = "",
        version: str = "",
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=names or [],
            response_nonce=nonce,
            version_info=version,
        )
        if error is not None:
            request.error_detail.message = error
            request.error_detail.code = 3
        await self.call.write(self._with_node(request))

    async def send_delta(
        self,
        type_url: str,
        subscribe: list[str] | None = None,
        unsubscribe: list[str] | None = None,
        nonce: str = "",
        error: str | None = None,
        initial: dict[str, str] | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=subscribe or [],
            resource_names_unsubscribe=unsubscribe or [],
            response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        if error is not None:
            request.error_detail.message = error
            request.error_detail.code = 3
        await self.call.write(self._with_node(request))

    async def expect_response(self, type_url: str | None = None, within: float = 5.0) -> Any:
        async with asyncio.timeout(within):
            response = await self.responses.get()
        assert response is not grpc.aio.EOF, "stream closed"
        if type_url is not None:
            assert response.type_url == type_url, f"got {response.type_url}, want {type_url}"
        return response

    async def expect_no_response(self, within: float = 0.3) -> None:
        try:
            async with asyncio.timeout(within):
                response = await self.responses.get()
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response: {response.type_url}")

    async def request(self, type_url: str, names: list[str] | None = None) -> Any:
        """First request for a type, returning the response."""
        if self.delta:
            await self.send_delta(type_url, subscribe=names)
        else:
            await self.send(type_url, names)
        return await self.expect_response(type_url)

    async def ack(self, response: Any, names: list[str] | None = None) -> None:
        if self.delta:
            await self.send_delta(response.type_url, nonce=response.nonce)
        else:
            await self.send(
                response.type_url, names, nonce=response.nonce, version=response.version_info
            )

    async def nack(self, response: Any, error: str, names: list[str] | None = None) -> None:
        if self.delta:
            await self.send_delta(response.type_url, nonce=response.nonce, error=error)
        else:
            await self.send(response.type_url, names, nonce=response.nonce, error=error)


_MESSAGES = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
}


def unpack(response: Any) -> list[Any]:
    """The resources of a SotW or Delta response as Envoy messages."""
    packed = (
        [r.resource for r in response.resources]
        if isinstance(response, discovery_pb2.DeltaDiscoveryResponse)
        else list(response.resources)
    )
    out = []
    for body in packed:
        message = _MESSAGES[response.type_url]()
        body.Unpack(message)
        out.append(message)
    return out


def resource_names(response: Any) -> list[str]:
    return [
        m.cluster_name if response.type_url == ENDPOINT else m.name for m in unpack(response)
    ]
