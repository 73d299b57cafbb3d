"""Istio's certificate API (`istio.v1.auth`, istio/api `security/v1alpha1/ca.proto`), declared
from its descriptors at import like the MCP messages (mcp/protos.py): only names, numbers and
types are taken from the definition.

    istio.v1.auth.IstioCertificateRequest   csr=1 validity_duration=3 metadata=4 (Struct)
    istio.v1.auth.IstioCertificateResponse  cert_chain=1 (repeated)
    istio.v1.auth.IstioCertificateService   CreateCertificate(request) returns (response)
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2  # noqa: F401 (the request depends on Struct)

F = descriptor_pb2.FieldDescriptorProto

SERVICE = "istio.v1.auth.IstioCertificateService"
CREATE_CERTIFICATE = f"/{SERVICE}/CreateCertificate"

_pool = descriptor_pool.Default()


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="meshpilot/istio/security/v1alpha1/ca.proto", package="istio.v1.auth",
        syntax="proto3", dependency=["google/protobuf/struct.proto"],
    )
    request = file.message_type.add(name="IstioCertificateRequest")
    request.field.extend([
        F(name="csr", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, json_name="csr"),
        F(name="validity_duration", number=3, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL,
          json_name="validityDuration"),
        F(name="metadata", number=4, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
          type_name=".google.protobuf.Struct", json_name="metadata"),
    ])
    response = file.message_type.add(name="IstioCertificateResponse")
    response.field.append(F(name="cert_chain", number=1, type=F.TYPE_STRING,
                            label=F.LABEL_REPEATED, json_name="certChain"))
    service = file.service.add(name="IstioCertificateService")
    service.method.add(name="CreateCertificate",
                       input_type=".istio.v1.auth.IstioCertificateRequest",
                       output_type=".istio.v1.auth.IstioCertificateResponse")
    return file


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(name))


try:
    _pool.FindFileByName("meshpilot/istio/security/v1alpha1/ca.proto")
except KeyError:
    _pool.Add(_file())

IstioCertificateRequest: Any = _message("istio.v1.auth.IstioCertificateRequest")
IstioCertificateResponse: Any = _message("istio.v1.auth.IstioCertificateResponse")
