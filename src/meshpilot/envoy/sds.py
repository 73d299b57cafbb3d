"""SDS: workload certificates and the mesh root, as Envoy `Secret`s over the ADS stream.

Envoy names the secrets it needs in the transport sockets meshpilot generates (see mtls.py) and
asks for them by name, as Istio's proxies do:

    default   the proxy's own certificate chain and private key (`tls_certificate`)
    ROOTCA    the trust bundle that verifies peers (`validation_context`)

`default` is the certificate of the proxy's identity (security/identity.py) from the mesh CA.
It is shared by the proxies of an identity and cached per snapshot by (identity, serial): a
rotation issues a new serial, and the push that follows sends only this secret, since every
other resource is unchanged. `ROOTCA` is the same for every proxy.

Two sources, chosen per proxy:

* **the ADS stream** (the default, plaintext port): the server generates the key pair;
* **the proxy's agent** (node metadata `MESHPILOT_SDS: agent`, always on the secure port): the
  agent made the key and got it signed by CSR, and serves both secrets over SDS on a local Unix
  socket, the bootstrap's `sds-grpc` cluster, as istio-agent does. The TLS contexts then name
  that cluster instead of ADS.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Collection, Iterator, Mapping
from contextvars import ContextVar
from functools import partial

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2

from meshpilot.envoy.protos import ads_source
from meshpilot.model import Proxy
from meshpilot.model.security import IssuedCertificate
from meshpilot.model.snapshot import Snapshot
from meshpilot.security.identity import proxy_identity

DEFAULT = "default"
ROOTCA = "ROOTCA"
AGENT_SDS = "MESHPILOT_SDS"
AGENT_SDS_VALUE = "agent"
SDS_CLUSTER = "sds-grpc"

_from_agent: ContextVar[bool] = ContextVar("meshpilot_sds_from_agent", default=False)
"""Whether the TLS contexts being built name the agent's SDS rather than ADS. Set around a
proxy's generation (generators.py, which also keys its shared caches by it) so the many
builders between a generator and these functions need no extra parameter."""


def from_agent(metadata: object) -> bool:
    return isinstance(metadata, dict | Mapping) and metadata.get(AGENT_SDS) == AGENT_SDS_VALUE


@contextlib.contextmanager
def secrets_source(agent: bool) -> Iterator[None]:
    token = _from_agent.set(agent)
    try:
        yield
    finally:
        _from_agent.reset(token)


def _source() -> config_source_pb2.ConfigSource:
    if not _from_agent.get():
        source: config_source_pb2.ConfigSource = ads_source()
        return source
    return config_source_pb2.ConfigSource(
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.GRPC,
            transport_api_version=config_source_pb2.V3,
            grpc_services=[grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER))],
            set_node_on_first_message_only=True,
        ),
        resource_api_version=config_source_pb2.V3,
    )


def certificate_sds() -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=DEFAULT, sds_config=_source())


def validation_sds() -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=ROOTCA, sds_config=_source())


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
