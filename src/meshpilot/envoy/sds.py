"""SDS: workload certificates and the mesh root, as Envoy `Secret`s over the ADS stream.

Envoy names the secrets it needs in the transport sockets meshpilot generates (see mtls.py) and
asks for them by name, as Istio's proxies do:

    default   the proxy's own certificate chain and private key (`tls_certificate`)
    ROOTCA    the trust bundle that verifies peers (`validation_context`)

`default` is the certificate of the proxy's identity (security/identity.py) from the mesh CA.
It is shared by the proxies of an identity and cached per snapshot by (identity, serial): a
rotation issues a new serial, and the push that follows sends only this secret, since every
other resource is unchanged. `ROOTCA` is the same for every proxy.

Secrets travel in the ADS stream rather than from a local agent: the server generates the key
pair (see the README's Security section for why, and what a CSR flow would change).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from functools import partial

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2

from meshpilot.envoy.protos import ads_source
from meshpilot.model import Proxy
from meshpilot.model.security import IssuedCertificate
from meshpilot.model.snapshot import Snapshot
from meshpilot.security.identity import proxy_identity

DEFAULT = "default"
ROOTCA = "ROOTCA"


def certificate_sds() -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=DEFAULT, sds_config=ads_source())


def validation_sds() -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=ROOTCA, sds_config=ads_source())


def mesh_common_context() -> tls_pb2.CommonTlsContext:
    """The certificate and trust bundle of every mesh mTLS context, both from SDS."""
    common = tls_pb2.CommonTlsContext()
    common.tls_certificate_sds_secret_configs.append(certificate_sds())
    combined = common.combined_validation_context
    combined.default_validation_context.SetInParent()  # required, even with nothing to add
    combined.validation_context_sds_secret_config.CopyFrom(validation_sds())
    common.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2
    return common


def secrets(
    snapshot: Snapshot, proxy: Proxy, wanted: Collection[str]
) -> list[tuple[tuple[object, ...], str, Callable[[], secret_pb2.Secret]]]:
    """(cache key, name, build) for each requested secret meshpilot holds; the generator in
    generators.py caches the built resources per snapshot under the key."""
    security = snapshot.security
    if security is None or security.certificates is None:
        return []
    out: list[tuple[tuple[object, ...], str, Callable[[], secret_pb2.Secret]]] = []
    for name in sorted(wanted):
        if name == ROOTCA:
            bundle = security.root_certificates
            digest = hashlib.blake2b(bundle, digest_size=8).hexdigest()
            out.append((("sds", ROOTCA, digest), name, partial(_root, bundle)))
        elif name == DEFAULT:
            issued = security.certificates.certificate(proxy_identity(snapshot, proxy))
            out.append((("sds", DEFAULT, issued.identity, issued.serial), name,
                        partial(_certificate, issued)))
        # Other names are not secrets meshpilot holds: Envoy keeps waiting for them, and the
        # context naming them never becomes active, which is what an unknown name deserves.
    return out


def _certificate(issued: IssuedCertificate) -> secret_pb2.Secret:
    secret = secret_pb2.Secret(name=DEFAULT)
    secret.tls_certificate.certificate_chain.inline_bytes = issued.certificate_chain
    secret.tls_certificate.private_key.inline_bytes = issued.private_key
    return secret


def _root(bundle: bytes) -> secret_pb2.Secret:
    secret = secret_pb2.Secret(name=ROOTCA)
    secret.validation_context.trusted_ca.inline_bytes = bundle
    return secret
