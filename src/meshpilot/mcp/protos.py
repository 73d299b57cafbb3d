"""The Istio protobuf messages MCP needs, declared here from Istio's published API definitions.

Only field names, numbers and types are taken from the definitions (istio/api
`networking/v1alpha3/service_entry.proto`, `workload_entry.proto`, `sidecar.proto`
(WorkloadSelector), `mcp/v1alpha1/metadata.proto`, `resource.proto`); the messages are built
from descriptors at import, so no generated code is kept in the repository.

    istio.networking.v1alpha3.ServiceEntry   hosts=1 addresses=2 ports=3 location=4 resolution=5
                                             endpoints=6 export_to=7 subject_alt_names=8
                                             workload_selector=9
    istio.networking.v1alpha3.ServicePort    number=1 protocol=2 name=3 target_port=4
    istio.networking.v1alpha3.WorkloadEntry  address=1 ports=2 labels=3 network=4 locality=5
                                             weight=6 service_account=7
    istio.networking.v1alpha3.WorkloadSelector  labels=1
    istio.mcp.v1alpha1.Metadata              name=1 create_time=2 version=3 labels=4
                                             annotations=5
    istio.mcp.v1alpha1.Resource              metadata=1 body=2
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2  # noqa: F401 (the messages depend on them)

F = descriptor_pb2.FieldDescriptorProto

# The default pool, so the messages share Any and Timestamp with every other protobuf user.
# (No other package defines these Istio names here; Istio's own Go protos are not in Python.)
_pool = descriptor_pool.Default()


def _field(name: str, number: int, kind: F.Type.ValueType,
           label: F.Label.ValueType = F.LABEL_OPTIONAL, type_name: str = "",
           json: str = "") -> F:
    field = F(name=name, number=number, type=kind, label=label, json_name=json or _camel(name))
    if type_name:
        field.type_name = type_name
    return field


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _map_entry(name: str, value_kind: F.Type.ValueType) -> descriptor_pb2.DescriptorProto:
    entry = descriptor_pb2.DescriptorProto(name=name)
    entry.field.append(_field("key", 1, F.TYPE_STRING))
    entry.field.append(_field("value", 2, value_kind))
    entry.options.map_entry = True
    return entry


def _networking() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="meshpilot/istio/networking/v1alpha3.proto",
        package="istio.networking.v1alpha3",
        syntax="proto3",
    )
    rep = F.LABEL_REPEATED
    port = file.message_type.add(name="ServicePort")
    port.field.extend([
        _field("number", 1, F.TYPE_UINT32), _field("protocol", 2, F.TYPE_STRING),
        _field("name", 3, F.TYPE_STRING), _field("target_port", 4, F.TYPE_UINT32),
    ])
    selector = file.message_type.add(name="WorkloadSelector")
    selector.nested_type.append(_map_entry("LabelsEntry", F.TYPE_STRING))
    selector.field.append(_field("labels", 1, F.TYPE_MESSAGE, rep,
                                 ".istio.networking.v1alpha3.WorkloadSelector.LabelsEntry"))
    workload = file.message_type.add(name="WorkloadEntry")
    workload.nested_type.append(_map_entry("PortsEntry", F.TYPE_UINT32))
    workload.nested_type.append(_map_entry("LabelsEntry", F.TYPE_STRING))
    workload.field.extend([
        _field("address", 1, F.TYPE_STRING),
        _field("ports", 2, F.TYPE_MESSAGE, rep,
               ".istio.networking.v1alpha3.WorkloadEntry.PortsEntry"),
        _field("labels", 3, F.TYPE_MESSAGE, rep,
               ".istio.networking.v1alpha3.WorkloadEntry.LabelsEntry"),
        _field("network", 4, F.TYPE_STRING), _field("locality", 5, F.TYPE_STRING),
        _field("weight", 6, F.TYPE_UINT32), _field("service_account", 7, F.TYPE_STRING),
    ])
    entry = file.message_type.add(name="ServiceEntry")
    location = entry.enum_type.add(name="Location")
    location.value.add(name="MESH_EXTERNAL", number=0)
    location.value.add(name="MESH_INTERNAL", number=1)
    resolution = entry.enum_type.add(name="Resolution")
    for number, name in enumerate(("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS")):
        resolution.value.add(name=name, number=number)
    entry.field.extend([
        _field("hosts", 1, F.TYPE_STRING, rep), _field("addresses", 2, F.TYPE_STRING, rep),
        _field("ports", 3, F.TYPE_MESSAGE, rep, ".istio.networking.v1alpha3.ServicePort"),
        _field("location", 4, F.TYPE_ENUM, type_name=(
            ".istio.networking.v1alpha3.ServiceEntry.Location")),
        _field("resolution", 5, F.TYPE_ENUM, type_name=(
            ".istio.networking.v1alpha3.ServiceEntry.Resolution")),
        _field("endpoints", 6, F.TYPE_MESSAGE, rep, ".istio.networking.v1alpha3.WorkloadEntry"),
        _field("export_to", 7, F.TYPE_STRING, rep),
        _field("subject_alt_names", 8, F.TYPE_STRING, rep),
        _field("workload_selector", 9, F.TYPE_MESSAGE, type_name=(
            ".istio.networking.v1alpha3.WorkloadSelector")),
    ])
    return file


def _mcp() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="meshpilot/istio/mcp/v1alpha1.proto",
        package="istio.mcp.v1alpha1",
        syntax="proto3",
        dependency=["google/protobuf/any.proto", "google/protobuf/timestamp.proto"],
    )
    rep = F.LABEL_REPEATED
    meta = file.message_type.add(name="Metadata")
    meta.nested_type.append(_map_entry("LabelsEntry", F.TYPE_STRING))
    meta.nested_type.append(_map_entry("AnnotationsEntry", F.TYPE_STRING))
    meta.field.extend([
        _field("name", 1, F.TYPE_STRING),
        _field("create_time", 2, F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp"),
        _field("version", 3, F.TYPE_STRING),
        _field("labels", 4, F.TYPE_MESSAGE, rep, ".istio.mcp.v1alpha1.Metadata.LabelsEntry"),
        _field("annotations", 5, F.TYPE_MESSAGE, rep,
               ".istio.mcp.v1alpha1.Metadata.AnnotationsEntry"),
    ])
    resource = file.message_type.add(name="Resource")
    resource.field.extend([
        _field("metadata", 1, F.TYPE_MESSAGE, type_name=".istio.mcp.v1alpha1.Metadata"),
        _field("body", 2, F.TYPE_MESSAGE, type_name=".google.protobuf.Any"),
    ])
    return file


_pool.Add(_networking())
_pool.Add(_mcp())


def _message(full_name: str) -> Any:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(full_name))


ServiceEntry: Any = _message("istio.networking.v1alpha3.ServiceEntry")
WorkloadEntry: Any = _message("istio.networking.v1alpha3.WorkloadEntry")
Metadata: Any = _message("istio.mcp.v1alpha1.Metadata")
Resource: Any = _message("istio.mcp.v1alpha1.Resource")

BODY_TYPES: dict[str, Any] = {
    "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry": ServiceEntry,
    "type.googleapis.com/istio.networking.v1alpha3.WorkloadEntry": WorkloadEntry,
}
RESOURCE_TYPE_URL = "type.googleapis.com/istio.mcp.v1alpha1.Resource"
POOL = _pool
