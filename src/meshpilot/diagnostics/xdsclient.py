"""Ask the discovery server over ADS, the way istioctl asks istiod (`--xds-address`).

One request per stream: open `StreamAggregatedResources`, send a DiscoveryRequest for a debug
type, read the one response, close. The server answers debug types without registering the
stream as a proxy (see `meshpilot.debug.xds`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2

from meshpilot.debug.xds import CLIENT_CONFIG_TYPE, DEBUG_TYPE, SYNCZ_TYPE

DEFAULT_XDS_ADDRESS = "127.0.0.1:15010"
CLIENT_NODE_ID = "meshpilot-cli"


class ServerError(Exception):
    """The server could not be asked, or refused; the message is for the user."""


@dataclass(frozen=True, slots=True)
class ControlPlane:
    id: str
    version: str


@dataclass(frozen=True, slots=True)
class SyncReport:
    control_plane: ControlPlane
    proxies: list[csds_pb2.ClientConfig]


def request(address: str, type_url: str, names: Iterable[str] = (), timeout: float = 10.0) -> Any:
    """Send one DiscoveryRequest and return the DiscoveryResponse."""
    message = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names))
    message.node.CopyFrom(base_pb2.Node(id=CLIENT_NODE_ID))
    with grpc.insecure_channel(address) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        try:
            # wait_for_ready: a server that is still starting gets the whole timeout.
            stream = stub.StreamAggregatedResources(
                iter([message]), timeout=timeout, wait_for_ready=True
            )
            return next(stream)
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ServerError(
                    f"no answer from the discovery server at {address} within {timeout:g}s "
                    "(is it running, and has it synced its config?)"
                ) from error
            details = error.details() if hasattr(error, "details") else str(error)
            raise ServerError(f"discovery server at {address}: {details}") from error
        except StopIteration as error:
            raise ServerError(f"discovery server at {address} closed the stream") from error


def control_plane(response: Any) -> ControlPlane:
    try:
        info = json.loads(response.control_plane.identifier or "{}")
    except ValueError:
        info = {}
    return ControlPlane(str(info.get("ID", "")), str((info.get("Info") or {}).get("version", "")))


def sync_report(address: str, proxies: Iterable[str] = (), timeout: float = 10.0) -> SyncReport:
    response = request(address, SYNCZ_TYPE, proxies, timeout)
    configs = []
    for packed in response.resources:
        if packed.type_url != CLIENT_CONFIG_TYPE:
            continue
        config = csds_pb2.ClientConfig()
        packed.Unpack(config)
        configs.append(config)
    return SyncReport(control_plane(response), configs)


def topic(address: str, name: str, timeout: float = 10.0) -> Any:
    """A debug topic's JSON by name, e.g. `configz` or `config_dump?proxyID=…`."""
    response = request(address, DEBUG_TYPE, [name], timeout)
    if not response.resources:
        raise ServerError(f"discovery server at {address} sent nothing for {name!r}")
    data = json.loads(response.resources[0].value)
    if isinstance(data, dict) and set(data) == {"error", "status"}:
        raise ServerError(str(data["error"]))
    return data
