"""The floor: a bare grpc.aio ADS server (SotW) that pushes pre-serialized bytes.

It does what any Python ADS server must do and nothing more: accept streams, answer each
type's first request with the current resources, parse every request to tell an ACK from a
new subscription, and on a push write one response per stream per type. The resources come
already serialized (the `resources` field of the responses meshpilot sent to one simulated
proxy, captured by the benchmark), and a response is those bytes with the version, type and a
fresh nonce appended, written through grpc's raw-bytes path. Its CPU, latency and memory are
what the same Python/grpc stack costs with no control plane at all; meshpilot's figures are
reported as ratios to it.

Driven over a pipe: `("state", {type_url: body})` sets the answers to first requests,
`("push", [(type_url, body), ...])` writes those responses to every stream in order.
"""

from __future__ import annotations

import asyncio
import multiprocessing.connection
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from meshpilot.xds.encoding import Outgoing, serialize

_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def _field(number: int, value: str) -> bytes:
    data = value.encode()
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def response(body: bytes, type_url: str, version: str) -> tuple[bytes, str]:
    """A serialized DiscoveryResponse: `body` holds its resources (field 2) already."""
    nonce = uuid.uuid4().hex[:12]
    return _field(1, version) + body + _field(4, type_url) + _field(5, nonce), nonce


class Reference:
    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.streams: set[asyncio.Queue[tuple[str, bytes] | None]] = set()
        self.version = 0

    async def stream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Outgoing]:
        outbox: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self.streams.add(outbox)
        reader = asyncio.create_task(self._read(requests, outbox))
        sent: dict[str, str] = {}
        try:
            while (item := await outbox.get()) is not None:
                type_url, body = item
                if not body:  # a first request: answer with the current state
                    if type_url in sent:
                        continue  # a subscription change: the floor only pushes
                    body = self.state.get(type_url, b"")
                data, sent[type_url] = response(body, type_url, str(self.version))
                # As meshpilot does: grpc keeps the last message a stream wrote, so it gets a
                # holder that serializing empties, and no local keeps the bytes either.
                held = Outgoing(data)
                del data
                yield held
        finally:
            reader.cancel()
            self.streams.discard(outbox)

    async def _read(
        self, requests: AsyncIterator[Any], outbox: asyncio.Queue[tuple[str, bytes] | None]
    ) -> None:
        try:
            async for request in requests:
                if not request.response_nonce:
                    outbox.put_nowait((request.type_url, b""))
                # An ACK needs nothing: the floor keeps no per-stream status.
        except (asyncio.CancelledError, grpc.RpcError):
            pass
        finally:
            outbox.put_nowait(None)

    def push(self, items: list[tuple[str, bytes]]) -> None:
        self.version += 1
        for type_url, body in items:
            self.state[type_url] = body
        for outbox in self.streams:
            for item in items:
                outbox.put_nowait(item)


def main(conn: multiprocessing.connection.Connection, address: str) -> None:
    asyncio.run(_serve(conn, address))


async def _serve(conn: multiprocessing.connection.Connection, address: str) -> None:
    reference = Reference()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    handler = grpc.method_handlers_generic_handler(
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                reference.stream,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=serialize,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(address)
    await server.start()
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    conn.send((os.getpid(), port))
    while True:
        command, *params = await commands.get()
        if command == "state":
            reference.state = dict(params[0])
        elif command == "push":
            reference.push(params[0])
        elif command == "stop":
            break
        conn.send("ok")
    loop.remove_reader(conn.fileno())
    await server.stop(grace=None)
    conn.send("stopped")
