"""The agent's SDS server: Envoy's `default` certificate and `ROOTCA` bundle on a Unix socket.

Envoy's TLS contexts name the bootstrap's `sds-grpc` cluster (a pipe to this socket) for both
secrets, so the key never leaves the machine. This is State-of-the-World SDS
(`SecretDiscoveryService/StreamSecrets`): a request with new names (or a first one) is answered
with the current secrets; an ACK or NACK of what was sent needs no answer; a renewed
certificate is pushed to every open stream, and Envoy applies it to new connections while those
in flight finish on the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshpilot.agent.certificates import WorkloadSecret
from meshpilot.envoy.sds import DEFAULT, ROOTCA

log = logging.getLogger("meshpilot.agent")

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SOCKET_NAME = "sds.sock"


def secret_resource(name: str, secret: WorkloadSecret) -> secret_pb2.Secret | None:
    out = secret_pb2.Secret(name=name)
    if name == DEFAULT:
        out.tls_certificate.certificate_chain.inline_bytes = secret.chain
        out.tls_certificate.private_key.inline_bytes = secret.key
    elif name == ROOTCA:
        out.validation_context.trusted_ca.inline_bytes = secret.root
    else:
        return None
    return out


class SdsServer:
    def __init__(self, secret: WorkloadSecret) -> None:
        self.secret = secret
        self._streams: set[asyncio.Queue[None]] = set()
        self._nonce = 0
        self.server: grpc.aio.Server | None = None

    def update(self, secret: WorkloadSecret) -> None:
        self.secret = secret
        for queue in self._streams:
            queue.put_nowait(None)

    def _response(self, names: list[str]) -> Any:
        self._nonce += 1
        secret = self.secret
        response = discovery_pb2.DiscoveryResponse(
            version_info=f"{secret.serial:x}", type_url=SECRET_TYPE, nonce=str(self._nonce))
        for name in names:
            resource = secret_resource(name, secret)
            if resource is not None:  # an unknown name is left unanswered: Envoy keeps waiting
                response.resources.add().Pack(resource)
        return response

    async def StreamSecrets(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        events: asyncio.Queue[Any] = asyncio.Queue()
        self._streams.add(events)

        async def read() -> None:
            with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
                async for request in requests:
                    events.put_nowait(request)
            events.put_nowait(StopAsyncIteration)

        reader = asyncio.create_task(read())
        names: list[str] | None = None
        nonce = ""
        try:
            while True:
                event = await events.get()
                if event is StopAsyncIteration:
                    return
                if event is None:  # a renewal
                    if names is not None:
                        response = self._response(names)
                        nonce = response.nonce
                        yield response
                    continue
                wanted = sorted(event.resource_names)
                if event.response_nonce and event.response_nonce != nonce:
                    continue  # about an older response: the newer one is on its way
                if event.HasField("error_detail"):
                    log.warning("envoy rejected secrets: %s", event.error_detail.message)
                if names == wanted and event.response_nonce:
                    continue  # the ACK (or NACK) of what was sent
                names = wanted
                response = self._response(names)
                nonce = response.nonce
                yield response
        finally:
            self._streams.discard(events)
            reader.cancel()

    async def start(self, socket: Path) -> None:
        _unlink(socket)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "envoy.service.secret.v3.SecretDiscoveryService",
            {"StreamSecrets": grpc.stream_stream_rpc_method_handler(
                self.StreamSecrets,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
            )},
        ),))
        if server.add_insecure_port(f"unix:{socket}") == 0:
            raise OSError(f"cannot listen for SDS on {socket}")
        await server.start()
        os.chmod(socket, 0o600)  # only this user's Envoy may fetch the key
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=0.5)


def _unlink(path: Path) -> None:
    """A socket left by an earlier run would make the bind fail."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
