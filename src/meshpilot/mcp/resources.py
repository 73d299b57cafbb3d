"""Configs as MCP resources and back.

A config travels as an `istio.mcp.v1alpha1.Resource`: metadata (name `namespace/name`, a
creation time, a version, labels, annotations) and the spec as a typed Istio message in an
`Any`. The xDS type URL of a collection is its group/version/kind, as Istio's config sources
ask for it: `networking.istio.io/v1alpha3/ServiceEntry`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from meshpilot.mcp import protos
from meshpilot.model import Config, Kind

BODY_MESSAGES: dict[str, Any] = {
    Kind.SERVICE_ENTRY: protos.ServiceEntry,
    Kind.WORKLOAD_ENTRY: protos.WorkloadEntry,
}
"""The kinds meshpilot can carry over MCP (what registry-sync produces)."""

VERSIONS = ("v1alpha3", "v1beta1", "v1")


def collection(kind: str, version: str = "v1alpha3", group: str = "networking.istio.io") -> str:
    return f"{group}/{version}/{kind}"


def kind_of(type_url: str) -> str | None:
    """The kind a collection type URL names, when it is one meshpilot carries."""
    parts = type_url.split("/")
    if len(parts) == 3 and parts[0] == "networking.istio.io" and parts[1] in VERSIONS \
            and parts[2] in BODY_MESSAGES:
        return parts[2]
    return None


def to_resource(config: Config, created: timestamp_pb2.Timestamp) -> Any:
    body = json_format.ParseDict(dict(config.spec), BODY_MESSAGES[config.kind]())
    resource = protos.Resource()
    resource.metadata.name = f"{config.namespace}/{config.name}"
    resource.metadata.create_time.CopyFrom(created)
    resource.metadata.labels.update(dict(config.labels))
    resource.metadata.annotations.update(dict(config.annotations))
    resource.body.Pack(body)
    resource.metadata.version = hashlib.sha1(resource.SerializeToString()).hexdigest()[:16]
    return resource


def from_resource(kind: str, resource: Any, source: str) -> Config:
    namespace, _, name = resource.metadata.name.rpartition("/")
    message = BODY_MESSAGES[kind]()
    if not resource.body.Unpack(message):
        raise ValueError(f"{resource.metadata.name}: body is {resource.body.type_url}, "
                         f"not a {kind}")
    spec = json_format.MessageToDict(message)
    return Config(
        kind=kind,
        name=name,
        namespace=namespace.strip("/") or "default",
        spec=spec,
        labels=dict(resource.metadata.labels),
        annotations=dict(resource.metadata.annotations),
        resource_version=resource.metadata.version,
        source_file=source,
    )
