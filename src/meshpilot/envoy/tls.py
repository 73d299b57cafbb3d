"""Downstream TLS for Gateway servers: certificates, client verification, protocol limits.

A Gateway server's `tls` block becomes a `DownstreamTlsContext` carried inline in the listener's
filter chain (SDS is not used yet). Where its certificates come from decides how they travel:

* `serverCertificate`, `privateKey`, `caCertificates` (and `caCrl`, `tlsCertificates`) are paths
  on the router's machine, as in Istio, where they are files mounted into the gateway pod. Envoy
  reads them itself (`DataSource.filename`); the control plane never opens them.
* `credentialName` (and `credentialNames`) names a credential the control plane holds in its
  secrets directory (see `meshpilot.config.secrets`). Its PEM bytes are put into the listener
  (`DataSource.inline_bytes`). As in Istio, the CA for MUTUAL comes from the credential's own
  `ca.crt`, else from a credential named `<credentialName>-cacert`.

Modes: SIMPLE presents the certificate; MUTUAL also demands and verifies a client certificate;
OPTIONAL_MUTUAL verifies one when offered. PASSTHROUGH has no context at all (the router never
terminates; AUTO_PASSTHROUGH routes mesh mTLS by SNI, see gateway.py), and ISTIO_MUTUAL on a
server is reported, never half-applied. A server whose credential is
missing is reported the same way, so Envoy never receives a listener it would reject.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from meshpilot.envoy.protos import pack
from meshpilot.model.credential import CA_SUFFIX, Credential, find_credential

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
HTTPS_ALPN = ("h2", "http/1.1")
"""What an HTTPS gateway offers, as Istio does: HTTP/2 when the client can, else HTTP/1.1."""

TERMINATING_MODES = frozenset({"SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL"})
PASSTHROUGH_MODES = frozenset({"PASSTHROUGH", "AUTO_PASSTHROUGH"})

_VERSIONS = {
    "TLS_AUTO": common_pb2.TlsParameters.TLS_AUTO,
    "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1,
    "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}
# Istio's gateway default: nothing older than TLS 1.2 unless the server asks for it.
DEFAULT_MIN_VERSION = common_pb2.TlsParameters.TLSv1_2


class TlsConfigError(ValueError):
    """A server's TLS settings cannot be applied; `field` is relative to the server's `tls`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def tls_mode(tls: Mapping[str, Any]) -> str:
    """The server's mode; Istio's default is PASSTHROUGH."""
    return str(tls.get("mode") or "PASSTHROUGH").upper()


def downstream_tls_context(
    tls: Mapping[str, Any],
    *,
    http: bool,
    namespace: str,
    secrets: Mapping[str, Credential],
) -> tls_pb2.DownstreamTlsContext:
    """The context for a terminating server (`tls_mode` in TERMINATING_MODES).

    `namespace` is the router's: credentials are looked up there first. Raises TlsConfigError
    naming the field when the settings cannot be honoured.
    """
    mode = tls_mode(tls)
    if mode not in TERMINATING_MODES:
        raise TlsConfigError("mode", f"TLS mode {mode} is not supported on gateways by meshpilot")
    context = tls_pb2.DownstreamTlsContext()
    common = context.common_tls_context
    credentials = _credential_names(tls)
    if credentials:
        ca = _from_credentials(common, credentials, namespace, secrets)
    else:
        ca = _from_files(common, tls)
    if mode in ("MUTUAL", "OPTIONAL_MUTUAL"):
        if ca is None:
            raise TlsConfigError(
                "caCertificates" if not credentials else "credentialName",
                f"{mode} TLS needs a CA to verify clients: caCertificates, a ca.crt in the "
                f"credential, or a credential named {credentials[0] if credentials else '…'}"
                f"{CA_SUFFIX}",
            )
        _validation(common.validation_context, tls, ca)
        context.require_client_certificate.value = mode == "MUTUAL"
    _parameters(common.tls_params, tls)
    if http:
        common.alpn_protocols.extend(HTTPS_ALPN)
    return context


def transport_socket(context: tls_pb2.DownstreamTlsContext) -> base_pb2.TransportSocket:
    socket = base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET)
    socket.typed_config.CopyFrom(pack(context))
    return socket


def _credential_names(tls: Mapping[str, Any]) -> list[str]:
    names = [str(n) for n in tls.get("credentialNames") or ()]
    if tls.get("credentialName"):
        names.insert(0, str(tls["credentialName"]))
    return names


def _from_credentials(
    common: tls_pb2.CommonTlsContext,
    names: list[str],
    namespace: str,
    secrets: Mapping[str, Credential],
) -> base_pb2.DataSource | None:
    """Inline key pairs from the secrets directory; returns the CA bundle if one was found."""
    ca: bytes = b""
    for name in names:
        field = "credentialName" if name == names[0] else "credentialNames"
        credential = find_credential(secrets, name, namespace)
        if credential is None:
            raise TlsConfigError(field, f"credential {name!r} is not in the secrets directory "
                                        f"(looked for {namespace}/{name} and {name})")
        if not credential.has_key_pair:
            raise TlsConfigError(field, f"credential {name!r} ({credential.source}) has no "
                                        "tls.crt/tls.key pair")
        certificate = common.tls_certificates.add()
        certificate.certificate_chain.inline_bytes = credential.certificate_chain
        certificate.private_key.inline_bytes = credential.private_key
        if not ca:
            ca = credential.ca_certificates
    if not ca:
        separate = find_credential(secrets, names[0] + CA_SUFFIX, namespace)
        ca = separate.ca_certificates if separate is not None else b""
    return base_pb2.DataSource(inline_bytes=ca) if ca else None


def _from_files(
    common: tls_pb2.CommonTlsContext, tls: Mapping[str, Any]
) -> base_pb2.DataSource | None:
    """Key pairs by path, read by Envoy on the router; returns the CA source if one is named."""
    pairs: list[tuple[str, Mapping[str, Any]]] = []
    if tls.get("serverCertificate") or tls.get("privateKey"):
        pairs.append(("", tls))
    pairs.extend(
        (f"tlsCertificates[{i}].", item) for i, item in enumerate(tls.get("tlsCertificates") or ())
    )
    if not pairs:
        raise TlsConfigError("serverCertificate", "a terminating server needs serverCertificate "
                                                  "and privateKey, or a credentialName")
    ca_path = str(tls.get("caCertificates") or "")
    for prefix, item in pairs:
        for field in ("serverCertificate", "privateKey"):
            if not item.get(field):
                raise TlsConfigError(prefix + field, f"{field} is required with file certificates")
        certificate = common.tls_certificates.add()
        certificate.certificate_chain.filename = str(item["serverCertificate"])
        certificate.private_key.filename = str(item["privateKey"])
        ca_path = ca_path or str(item.get("caCertificates") or "")
    return base_pb2.DataSource(filename=ca_path) if ca_path else None


def _validation(
    validation: common_pb2.CertificateValidationContext,
    tls: Mapping[str, Any],
    ca: base_pb2.DataSource,
) -> None:
    validation.trusted_ca.CopyFrom(ca)
    if tls.get("caCrl"):
        validation.crl.filename = str(tls["caCrl"])
    # Istio matches each subjectAltName as either a DNS or a URI SAN (SPIFFE ids are URIs).
    san = common_pb2.SubjectAltNameMatcher
    for name in tls.get("subjectAltNames") or ():
        for san_type in (san.DNS, san.URI):
            validation.match_typed_subject_alt_names.add(
                san_type=san_type, matcher=string_pb2.StringMatcher(exact=str(name))
            )
    spki, digests = tls.get("verifyCertificateSpki") or (), tls.get("verifyCertificateHash") or ()
    validation.verify_certificate_spki.extend(str(v) for v in spki)
    validation.verify_certificate_hash.extend(str(v) for v in digests)


def _parameters(params: common_pb2.TlsParameters, tls: Mapping[str, Any]) -> None:
    minimum = str(tls.get("minProtocolVersion") or "").upper()
    maximum = str(tls.get("maxProtocolVersion") or "").upper()
    params.tls_minimum_protocol_version = (
        _VERSIONS[minimum] if minimum and minimum != "TLS_AUTO" else DEFAULT_MIN_VERSION
    )
    if maximum:
        params.tls_maximum_protocol_version = _VERSIONS[maximum]
    params.cipher_suites.extend(str(c) for c in tls.get("cipherSuites") or ())
