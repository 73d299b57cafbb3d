"""What translation needs to know about the mesh's security, independent of how it is provided.

The certificate authority and the JWKS fetcher live in `meshpilot.security`; generators see them
only through these small interfaces, carried by every snapshot as `Snapshot.security`. A
snapshot without it (no `--ca-dir`) describes a mesh without workload certificates: no mTLS is
configured anywhere, while authorization and JWT policies still apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Identity:
    """A workload identity: Istio's `spiffe://<trust domain>/ns/<namespace>/sa/<account>`."""

    trust_domain: str
    namespace: str
    service_account: str

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        """As AuthorizationPolicy writes it: the SPIFFE id without `spiffe://`."""
        return self.spiffe_id.removeprefix("spiffe://")


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    identity: Identity
    certificate_chain: bytes
    """PEM: the workload certificate, then any intermediates up to (not including) the root."""
    private_key: bytes
    """PEM PKCS#8 private key."""
    serial: int
    not_after: float
    """Expiry, in seconds since the epoch."""


class CertificateSource(Protocol):
    """Workload certificates by identity, rotated by their owner before they expire."""

    def certificate(self, identity: Identity) -> IssuedCertificate:
        """The current certificate for `identity`, issued on first use."""
        ...


class JwksSource(Protocol):
    def jwks(self, uri: str) -> str:
        """The JSON Web Key Set at `uri` as last fetched; a key set no token can match while
        it has not been fetched (or cannot be), so tokens are refused rather than trusted."""
        ...


@dataclass(frozen=True, slots=True)
class MeshSecurity:
    trust_domain: str
    root_certificates: bytes
    """PEM trust bundle workloads verify their peers against (SDS `ROOTCA`)."""
    certificates: CertificateSource | None
    """None when the mesh has no certificate authority: no mTLS anywhere."""
    jwks: JwksSource | None = None
