"""Config from an MCP-over-xDS server: `meshpilot discovery --config-source xds://HOST:PORT`.

The store subscribes (State of the World) to the ServiceEntry and WorkloadEntry collections,
turns each MCP resource back into a config, and ACKs every response it could read (NACKs the
others with the reason). It has synced once every collection has answered once. When the
server goes away the last received config keeps serving — the store says so in its errors —
and it reconnects with backoff; only the server, once back, can change or delete config.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshpilot.config.store import MemoryStore
from meshpilot.mcp import protos
from meshpilot.mcp.resources import BODY_MESSAGES, collection, from_resource
from meshpilot.model import Config, ConfigError

log = logging.getLogger("meshpilot.config")


class McpConfigStore(MemoryStore):
    def __init__(self, address: str, node_id: str = "meshpilot-discovery") -> None:
        super().__init__(f"xds://{address}")
        self.address = address
        self.node_id = node_id
        self._by_collection: dict[str, list[Config]] = {}
        self._problems: list[ConfigError] = []
        self.connected = False

    def errors(self) -> list[ConfigError]:
        return list(self._problems)

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._stream()
            except (grpc.aio.AioRpcError, OSError) as error:
                reason = error.details() if isinstance(error, grpc.aio.AioRpcError) else error
                self._unreachable(str(reason))
            delay = 0.5 if self.connected else min(delay * 2, 30.0)
            self.connected = False
            await asyncio.sleep(delay)

    def _unreachable(self, reason: str) -> None:
        if not any(e.message.startswith("MCP server") for e in self._problems):
            log.warning("MCP server %s unreachable (%s); keeping the last config it sent",
                        self.address, reason)
        self._problems = [ConfigError(self.name, 0, f"MCP server unreachable: {reason}; "
                                      "serving the last config it sent")]

    async def _stream(self) -> None:
        collections = [collection(kind) for kind in BODY_MESSAGES]
        async with grpc.aio.insecure_channel(self.address) as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            for index, type_url in enumerate(collections):
                request = discovery_pb2.DiscoveryRequest(type_url=type_url)
                if index == 0:
                    request.node.CopyFrom(base_pb2.Node(id=self.node_id))
                await call.write(request)
            answered: set[str] = set()
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise OSError("stream closed by the MCP server")
                self.connected = True
                error = self._receive(response)
                reply = discovery_pb2.DiscoveryRequest(
                    type_url=response.type_url, response_nonce=response.nonce,
                    version_info="" if error else response.version_info,
                )
                if error:
                    reply.error_detail.message = error
                await call.write(reply)
                answered.add(response.type_url)
                if answered >= set(collections):
                    self._problems = []
                    self.mark_synced()

    def _receive(self, response: Any) -> str:
        """Apply a response; returns '' or the reason it was rejected."""
        kind = response.type_url.rsplit("/", 1)[-1]
        configs = []
        try:
            for packed in response.resources:
                resource = protos.Resource()
                if not packed.Unpack(resource):
                    raise ValueError(f"resource of type {packed.type_url}, not an MCP Resource")
                configs.append(from_resource(kind, resource, self.name))
        except ValueError as error:
            log.warning("rejected %s from %s: %s", response.type_url, self.address, error)
            return str(error)
        self._by_collection[response.type_url] = configs
        self.replace_all(c for group in self._by_collection.values() for c in group)
        return ""
