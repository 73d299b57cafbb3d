"""Debug topics over the ADS stream, as istiod serves them to istioctl.

A client (`meshpilot proxy-status`, istioctl) opens an ordinary ADS stream and asks for one of
two pseudo types instead of Envoy resources:

    istio.io/debug/syncz   CSDS `ClientConfig` per connected proxy (resource names: proxy ids
                           to keep; none means every proxy)
    istio.io/debug         any debug HTTP topic by path, e.g. `syncz`, `configz`,
                           `config_dump?proxyID=…`; the resource is that topic's JSON, as bytes

Such a stream is answered and never registered as a proxy, so it shows up in no status. Every
response names the server in `control_plane.identifier` the way istiod does (component, id,
version), which istioctl prints in its ISTIOD column.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from meshpilot import __version__
from meshpilot.debug import syncz
from meshpilot.debug.topics import TopicError, render_topic
from meshpilot.xds.discovery import DiscoveryServer

DEBUG_TYPE = "istio.io/debug"
SYNCZ_TYPE = syncz.SYNCZ_TYPE
CLIENT_CONFIG_TYPE = "type.googleapis.com/envoy.service.status.v3.ClientConfig"


def is_debug_type(type_url: str) -> bool:
    return type_url == DEBUG_TYPE or type_url.startswith(DEBUG_TYPE + "/")


def is_debug_request(request: Any) -> bool:
    return is_debug_type(str(getattr(request, "type_url", "")))


def control_plane_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def control_plane_identifier() -> str:
    return json.dumps(
        {"Component": "meshpilot", "ID": control_plane_id(), "Info": {"version": __version__}}
    )


def answer(server: DiscoveryServer, request: Any) -> Any:
    """The DiscoveryResponse for a debug request (an empty one for an unknown debug type)."""
    response = discovery_pb2.DiscoveryResponse(
        type_url=request.type_url,
        version_info=server.snapshot.version if server.snapshot is not None else "",
        nonce=uuid.uuid4().hex[:12],
    )
    response.control_plane.identifier = control_plane_identifier()
    if request.type_url == SYNCZ_TYPE:
        for connection in syncz.connections(
            server.connections.values(), proxies=request.resource_names
        ):
            packed = response.resources.add()
            packed.Pack(syncz.client_config(connection))
    elif request.type_url == DEBUG_TYPE:
        for name in request.resource_names:
            response.resources.append(_topic_resource(server, name))
    return response


def _topic_resource(server: DiscoveryServer, name: str) -> any_pb2.Any:
    parts = urlsplit(name if name.startswith("/") else f"/debug/{name}")
    try:
        data = render_topic(server, parts.path, dict(parse_qsl(parts.query)))
    except TopicError as error:
        data = {"error": str(error), "status": error.status}
    return any_pb2.Any(type_url=DEBUG_TYPE, value=json.dumps(data, indent=2, default=str).encode())
