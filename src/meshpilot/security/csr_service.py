"""Istio's `IstioCertificateService/CreateCertificate`: sign a workload's own key for the
identity it proved.

Two proofs are accepted, as Istio's CA accepts a token or the current certificate:

* the **client certificate** of the TLS connection (the secure xDS port requires one from the
  mesh CA): the SPIFFE id in it; this is how an agent renews;
* a **bootstrap token** (security/tokens.py) in the `authorization: Bearer …` metadata; this is
  how an agent gets its first certificate, on the CA port that does not ask for a client
  certificate.

The certificate is for that identity and nothing else: the names the CSR asks for are ignored
(`CertificateAuthority.sign_csr`). The server only ever sees the public key: it logs what it
signed, never holds a workload's private key.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meshpilot.model.security import Identity
from meshpilot.security import csr_protos
from meshpilot.security.ca import CaError, CertificateAuthority
from meshpilot.security.tokens import TokenError, verify_token

log = logging.getLogger("meshpilot.security")

AUTHORIZATION = "authorization"
BEARER = "Bearer "
MIN_TTL = datetime.timedelta(seconds=1)


class AuthenticationError(Exception):
    pass


def parse_spiffe(uri: str) -> Identity | None:
    """`spiffe://<td>/ns/<ns>/sa/<sa>` as an Identity; None for any other form."""
    if not uri.startswith("spiffe://"):
        return None
    trust_domain, _, path = uri.removeprefix("spiffe://").partition("/")
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa" or not all(parts):
        return None
    return Identity(trust_domain, parts[1], parts[3])


def certificate_identity(pem: bytes) -> Identity | None:
    """The SPIFFE identity of a (verified) peer certificate."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return None
    uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    found = [identity for uri in uris if (identity := parse_spiffe(uri)) is not None]
    return found[0] if len(found) == 1 else None


def peer_identity(context: grpc.aio.ServicerContext) -> Identity | None:
    """The identity of the peer's client certificate; gRPC has verified it against the mesh
    root before the call reaches us (the port requires client certificates)."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    return certificate_identity(pems[0]) if pems else None


class CertificateService:
    def __init__(self, ca: CertificateAuthority | Callable[[], CertificateAuthority],
                 token_key: bytes, trust_domain: str, max_ttl: datetime.timedelta) -> None:
        # A callable gives the signing CA of the moment: replicas rotating their intermediate
        # (signing.py) swap it while this service runs.
        self._ca = ca if callable(ca) else lambda: ca
        self.token_key = token_key
        self.trust_domain = trust_domain
        self.max_ttl = max_ttl

    @property
    def ca(self) -> CertificateAuthority:
        return self._ca()

    def authenticate(self, peer: Identity | None, metadata: dict[str, str]) -> Identity:
        """The identity the caller proved: its certificate's, else its bootstrap token's."""
        if peer is not None:
            identity = peer
        else:
            value = metadata.get(AUTHORIZATION, "")
            if not value.startswith(BEARER):
                raise AuthenticationError("no client certificate and no bootstrap token "
                                          f"({AUTHORIZATION}: {BEARER.strip()} …)")
            try:
                identity = verify_token(self.token_key, value.removeprefix(BEARER))
            except TokenError as error:
                raise AuthenticationError(str(error)) from None
        if identity.trust_domain != self.trust_domain:
            raise AuthenticationError(f"{identity.spiffe_id} is not of trust domain "
                                      f"{self.trust_domain}")
        return identity

    def sign(self, identity: Identity, csr_pem: str, validity_seconds: int) -> list[str]:
        """The chain Istio returns: the workload certificate, intermediates, the root last."""
        ttl = self.max_ttl
        if validity_seconds > 0:
            ttl = max(MIN_TTL, min(ttl, datetime.timedelta(seconds=validity_seconds)))
        ca = self.ca  # one CA for the whole answer, even if a rotation lands meanwhile
        chain, serial, not_after = ca.sign_csr(csr_pem.encode(), identity, ttl)
        log.info("signed a certificate request for %s (serial %x, expires %s)",
                 identity.spiffe_id, serial,
                 datetime.datetime.fromtimestamp(not_after, datetime.UTC).isoformat())
        pems = [c.public_bytes(Encoding.PEM).decode()
                for c in x509.load_pem_x509_certificates(chain)]
        root = ca.root.decode()
        return [*pems, root] if root.strip() not in {p.strip() for p in pems} else pems

    async def CreateCertificate(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())
                    if isinstance(v, str)}
        try:
            identity = self.authenticate(peer_identity(context), metadata)
        except AuthenticationError as error:
            log.warning("certificate request from %s refused: %s", context.peer(), error)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(error))
        try:
            chain = self.sign(identity, request.csr, int(request.validity_duration))
        except (CaError, ValueError) as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"bad certificate request: {error}")
        return csr_protos.IstioCertificateResponse(cert_chain=chain)


def certificate_handler(service: CertificateService) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        csr_protos.SERVICE,
        {
            "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                service.CreateCertificate,
                request_deserializer=csr_protos.IstioCertificateRequest.FromString,
                response_serializer=csr_protos.IstioCertificateResponse.SerializeToString,
            ),
        },
    )
