"""The security parts of a running discovery server, wired to its pushes.

`SecurityRuntime.create` loads (or creates) the CA from `--ca-dir` and builds the
`MeshSecurity` every snapshot carries; `run` rotates workload certificates. A rotated
certificate and a changed JWKS both ask the server for a full push with reason SECRET: the
snapshot is rebuilt, and since every other resource keeps its version only the changed secret
(or listener, for a key set) reaches the proxies.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from meshpilot.model import PushRequest, TriggerReason
from meshpilot.model.security import Identity, MeshSecurity
from meshpilot.security.ca import CertificateAuthority
from meshpilot.security.certificates import DEFAULT_TTL, WorkloadCertificates
from meshpilot.security.jwks import JwksResolver

log = logging.getLogger("meshpilot.security")


class Pusher(Protocol):
    def config_update(self, request: PushRequest) -> None: ...


@dataclass
class SecurityRuntime:
    pusher: Pusher
    security: MeshSecurity
    certificates: WorkloadCertificates | None
    jwks: JwksResolver

    @classmethod
    def create(
        cls,
        pusher: Pusher,
        trust_domain: str,
        ca_dir: Path | None = None,
        cert_ttl: datetime.timedelta = DEFAULT_TTL,
    ) -> SecurityRuntime:
        jwks = JwksResolver(lambda: _push(pusher))
        certificates = None
        root = b""
        if ca_dir is not None:
            ca = CertificateAuthority.load_or_create(ca_dir, trust_domain)
            certificates = WorkloadCertificates(ca, cert_ttl)
            root = ca.root
            log.info("mesh CA from %s (%s), trust domain %s, workload certificates for %s",
                     ca_dir, "self-signed" if ca.self_signed else "plug-in", trust_domain,
                     cert_ttl)
        security = MeshSecurity(trust_domain, root, certificates, jwks)
        return cls(pusher, security, certificates, jwks)

    async def run(self) -> None:
        """Rotate certificates until cancelled; stop the JWKS fetchers then."""

        def rotated(identities: list[Identity]) -> None:
            log.info("rotated %d workload certificate(s)", len(identities))
            _push(self.pusher)

        try:
            if self.certificates is not None:
                await self.certificates.run(rotated)
            else:
                await asyncio.Event().wait()  # the JWKS fetchers run until the server stops
        finally:
            self.jwks.stop()


def _push(pusher: Pusher) -> None:
    pusher.config_update(PushRequest(full=True, reasons=frozenset({TriggerReason.SECRET})))
