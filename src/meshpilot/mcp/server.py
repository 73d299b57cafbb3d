"""An MCP-over-xDS server: what Istio's `configSources: - address: xds://…` consumes.

It serves the ServiceEntry and WorkloadEntry collections (in every API version Istio asks
for) and answers every other Istio collection with an empty list, because istiod waits for an
answer to each type it requests before it is ready. State of the World only, as Istio's config
sources use; ACKs, NACKs and stale nonces follow the same rules as the discovery server.
Resources keep their creation time across updates, so consumers see an update, not a
re-creation.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, timestamp_pb2

from meshpilot.mcp.resources import kind_of, to_resource
from meshpilot.model import Config, ConfigKey
from meshpilot.xds.watch import RESPOND, Decision, WatchState, decide

log = logging.getLogger("meshpilot.mcp")

_PUSH = object()
_END = object()


class McpServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self._by_kind: dict[str, list[Any]] = {}
        self._created: dict[ConfigKey, timestamp_pb2.Timestamp] = {}
        self._version = 0
        self._streams: set[asyncio.Queue[object]] = set()
        self.ready = asyncio.Event()

    @property
    def version(self) -> str:
        return str(self._version)

    def update(self, configs: list[Config]) -> None:
        """Serve exactly these configs from now on, and push to every client."""
        by_kind: dict[str, list[Any]] = {}
        seen = set()
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        for config in sorted(configs, key=lambda c: c.key):
            created = self._created.setdefault(config.key, now)
            seen.add(config.key)
            packed = any_pb2.Any()
            packed.Pack(to_resource(config, created))
            by_kind.setdefault(config.kind, []).append(packed)
        for key in set(self._created) - seen:
            del self._created[key]
        if by_kind != self._by_kind or not self.ready.is_set():
            self._by_kind = by_kind
            self._version += 1
            for queue in self._streams:
                queue.put_nowait(_PUSH)
        self.ready.set()

    def resources(self, type_url: str) -> list[Any]:
        kind = kind_of(type_url)
        return list(self._by_kind.get(kind, [])) if kind else []

    async def StreamAggregatedResources(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        events: asyncio.Queue[object] = asyncio.Queue()
        self._streams.add(events)

        async def read() -> None:
            try:
                async for request in requests:
                    events.put_nowait(request)
            except (asyncio.CancelledError, grpc.RpcError):
                pass
            finally:
                events.put_nowait(_END)

        reader = asyncio.create_task(read())
        watches: dict[str, WatchState] = {}
        try:
            await self.ready.wait()
            while True:
                event = await events.get()
                if event is _END:
                    return
                if event is _PUSH:
                    for watch in watches.values():
                        yield self._respond(watch)
                    continue
                request: Any = event
                state = watches.get(request.type_url)
                error = request.error_detail.message if request.HasField("error_detail") else None
                decision = decide(state, request.response_nonce, error,
                                  frozenset(request.resource_names))
                if decision is Decision.NACK:
                    log.warning("MCP client %s rejected %s: %s", context.peer(),
                                request.type_url, error)
                    if state is not None:
                        state.last_error = error or ""
                    continue
                if decision is Decision.ACK and state is not None:
                    state.nonce_acked = request.response_nonce
                if decision in RESPOND:
                    state = watches.setdefault(request.type_url, WatchState(request.type_url))
                    state.wildcard = True
                    yield self._respond(state)
        finally:
            reader.cancel()
            self._streams.discard(events)

    def _respond(self, state: WatchState) -> Any:
        response = discovery_pb2.DiscoveryResponse(
            version_info=self.version, type_url=state.type_url, nonce=uuid.uuid4().hex[:12]
        )
        response.resources.extend(self.resources(state.type_url))
        state.nonce_sent = response.nonce
        state.version_sent = response.version_info
        state.last_send_time = time.time()
        return response


async def start_mcp_server(server: McpServer, address: str) -> tuple[grpc.aio.Server, int]:
    grpc_server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(server, grpc_server)
    port = grpc_server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen for MCP on {address}")
    await grpc_server.start()
    return grpc_server, port

