"""The secured xDS port (Istio's 15012) and the CA port for bootstrap tokens.

Both are TLS with a server certificate from the mesh CA (SANs: the discovery service's names
and the addresses it listens on). They differ in what they ask of the client, because gRPC's
TLS either requires a client certificate or does not ask for one at all:

    secure xDS   (--secure-xds-address, 15012)  mutual TLS: a client certificate from the mesh CA
                                                is required. ADS and certificate renewals.
    CA           (--ca-address, 15013)          server TLS only: certificate requests proven by a
                                                bootstrap token (an agent's first certificate).

On the secure port a proxy's identity is the SPIFFE id of its client certificate, and it gets
config only for that identity: a node whose metadata claims another namespace or service
account — or a workload the registry gives another account — is refused with
PERMISSION_DENIED before anything is sent, and so is any request for a workload secret. Its
secrets come from its own agent (SDS on a local socket); the server never holds its key and
serves it `ROOTCA` only. The plaintext port (15010) keeps the trusted-local behaviour.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshpilot.agent.node import NAMESPACE, SERVICE_ACCOUNT, proxy_from_node
from meshpilot.envoy import names
from meshpilot.envoy.sds import AGENT_SDS, AGENT_SDS_VALUE, ROOTCA
from meshpilot.model.security import Identity
from meshpilot.model.snapshot import Snapshot
from meshpilot.security.ca import BACKDATE, CertificateAuthority
from meshpilot.security.csr_service import CertificateService, certificate_handler, peer_identity
from meshpilot.security.identity import DEFAULT_SERVICE_ACCOUNT, proxy_identity
from meshpilot.security.tokens import load_or_create_key
from meshpilot.settings import DiscoverySettings
from meshpilot.xds.discovery import DiscoveryServer
from meshpilot.xds.secure_names import (
    DEFAULT_CA_ADDRESS,
    DEFAULT_SECURE_XDS_ADDRESS,
    DISCOVERY_NAMES,
)
from meshpilot.xds.server import AdsService, ads_handler

log = logging.getLogger("meshpilot.xds")

SERVER_CERT_LIFETIME = datetime.timedelta(days=365)


class Refused(Exception):
    """A request the proven identity may not make; the message goes back on the stream."""


def server_certificate(
    ca: CertificateAuthority, addresses: Sequence[str]
) -> tuple[bytes, bytes]:
    """(PEM key, PEM chain) for the discovery server, made in memory at every start."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in DISCOVERY_NAMES]
    for host in {*addresses, "127.0.0.1"}:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if host and host not in DISCOVERY_NAMES:
                sans.append(x509.DNSName(host))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + SERVER_CERT_LIFETIME, ca.certificate.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.key, None if isinstance(ca.key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM) + ca.chain


def check_node(node: Any, identity: Identity, snapshot: Snapshot | None) -> None:
    """Refuse a node that claims to be someone other than `identity`."""
    metadata = node.metadata.fields
    namespace = metadata[NAMESPACE].string_value if NAMESPACE in metadata else ""
    account = (metadata[SERVICE_ACCOUNT].string_value if SERVICE_ACCOUNT in metadata else "")
    claimed = Identity(identity.trust_domain, proxy_from_node(node).namespace,
                       account or DEFAULT_SERVICE_ACCOUNT)
    if (namespace and namespace != identity.namespace) or claimed != identity:
        raise Refused(f"node {node.id!r} claims {claimed.spiffe_id} but its certificate is "
                      f"{identity.spiffe_id}")
    if snapshot is not None and snapshot.security is not None:
        # The registry's account for the workload overrides the node's own claim.
        registered = proxy_identity(snapshot, proxy_from_node(node))
        if registered != identity:
            raise Refused(f"node {node.id!r} is workload {registered.spiffe_id} in the "
                          f"registry but its certificate is {identity.spiffe_id}")


def check_secrets(wanted: Sequence[str], identity: Identity) -> None:
    for name in wanted:
        if name == ROOTCA:
            continue
        raise Refused(f"secret {name!r} refused for {identity.spiffe_id}: on the secure port "
                      "workload keys and certificates come from the proxy's own agent (CSR), "
                      "and no proxy may have another identity's")


class SecureAdsService(AdsService):
    """ADS for proxies authenticated by their client certificate."""

    async def _stream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, delta: bool
    ) -> AsyncGenerator[Any, None]:
        identity = peer_identity(context)
        if identity is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "no SPIFFE identity in the client certificate")
            return
        checked = self._checked(requests, context, identity, delta)
        async with contextlib.aclosing(super()._stream(checked, context, delta)) as stream:
            async for response in stream:
                yield response
                del response

    async def _checked(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
        identity: Identity, delta: bool,
    ) -> AsyncIterator[Any]:
        """The requests, each checked before the stream sees it; a refused one ends the
        stream with PERMISSION_DENIED and its reason."""
        async for request in requests:
            try:
                if request.HasField("node") and request.node.id:
                    check_node(request.node, identity, self.discovery.snapshot)
                    # This proxy's secrets come from its agent: have its TLS contexts say so.
                    request.node.metadata.fields[AGENT_SDS].string_value = AGENT_SDS_VALUE
                if request.type_url == names.SECRET:
                    check_secrets(
                        list(request.resource_names_subscribe if delta
                             else request.resource_names), identity)
            except Refused as refused:
                log.warning("refused %s on the secure xDS port: %s", context.peer(), refused)
                with contextlib.suppress(grpc.aio.AbortError):
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(refused))
                return
            yield request


@dataclass
class SecureServer:
    server: grpc.aio.Server
    secure_port: int
    ca_port: int


async def start_secure(
    settings: DiscoverySettings, discovery: DiscoveryServer
) -> SecureServer | None:
    """The secure ports of `meshpilot discovery --ca-dir`; None without a CA."""
    runtime = discovery.security_runtime
    if settings.ca_dir is None or runtime is None or runtime.certificates is None:
        return None
    if not settings.secure_xds_address and not settings.ca_address:
        return None
    certificates = runtime.certificates
    service = CertificateService(
        lambda: certificates.ca, load_or_create_key(settings.ca_dir),
        runtime.security.trust_domain, datetime.timedelta(seconds=settings.cert_ttl),
    )
    try:
        secure = await start_secure_server(discovery, service, settings.secure_xds_address,
                                           settings.ca_address)
    except OSError as error:
        if (settings.secure_xds_address, settings.ca_address) != (
                DEFAULT_SECURE_XDS_ADDRESS, DEFAULT_CA_ADDRESS):
            raise  # an address asked for explicitly must be served
        # The defaults come with --ca-dir alone: a busy port (another server on the machine)
        # must not keep the control plane down; the plaintext port works as before.
        log.warning("secure xDS and CA ports not started: %s", error)
        return None
    log.info("secure xDS (mutual TLS) on %s (port %d), certificate requests with bootstrap "
             "tokens on %s (port %d)", settings.secure_xds_address or "-", secure.secure_port,
             settings.ca_address or "-", secure.ca_port)
    return secure


async def start_secure_server(
    discovery: DiscoveryServer, certificates: CertificateService, secure_address: str,
    ca_address: str,
) -> SecureServer:
    hosts = [a.rpartition(":")[0].strip("[]") for a in (secure_address, ca_address) if a]
    key, chain = server_certificate(certificates.ca, hosts)
    server = grpc.aio.server(options=[
        # Never share a port with another server: clients would reach either at random.
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ])
    server.add_generic_rpc_handlers((ads_handler(SecureAdsService(discovery)),
                                     certificate_handler(certificates)))
    secure_port = ca_port = 0
    try:
        if secure_address:
            mutual = grpc.ssl_server_credentials(
                [(key, chain)], root_certificates=certificates.ca.root, require_client_auth=True)
            secure_port = server.add_secure_port(secure_address, mutual)
        if ca_address:
            # No client certificate asked (none exists yet): only token-proven CSRs succeed
            # here, since ADS refuses a stream without a certificate identity.
            ca_port = server.add_secure_port(ca_address,
                                             grpc.ssl_server_credentials([(key, chain)]))
    except RuntimeError as error:  # grpc's "Failed to bind"
        raise OSError(str(error)) from None
    if (secure_address and not secure_port) or (ca_address and not ca_port):
        raise OSError(f"cannot listen on {secure_address} / {ca_address}")
    await server.start()
    return SecureServer(server, secure_port, ca_port)
