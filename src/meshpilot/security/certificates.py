"""Workload certificates issued by the mesh CA, one per identity, rotated before expiry.

A certificate is issued the first time a proxy of an identity asks for it over SDS and shared by
every proxy of that identity, as one Kubernetes service account's pods share an identity. Once
`rotate_after` of its lifetime has passed (Istio's grace ratio: half) it is replaced by a new
key pair and certificate, and `run` tells the discovery server to push: Envoy applies a new SDS
secret to new connections only, so connections in flight finish on the old certificate, which
stays valid for the other half of its life.

Keys are generated here, on the server: the delivery for proxies on the plaintext port (see the
README's Security section for the trade-off). Agents on the secure port make their own keys and
send a CSR instead (agent/certificates.py, security/csr_service.py).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable

from meshpilot.model.security import Identity, IssuedCertificate
from meshpilot.security.ca import CertificateAuthority

log = logging.getLogger("meshpilot.security")

DEFAULT_TTL = datetime.timedelta(hours=24)
ROTATE_AFTER = 0.5
"""Fraction of a certificate's lifetime after which it is replaced."""


class WorkloadCertificates:
    def __init__(
        self,
        ca: CertificateAuthority,
        ttl: datetime.timedelta = DEFAULT_TTL,
        rotate_after: float = ROTATE_AFTER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ca = ca
        self.ttl = ttl
        self.rotate_after = rotate_after
        self.clock = clock
        self.issued: dict[Identity, IssuedCertificate] = {}
        self._rotate_at: dict[Identity, float] = {}
        self._changed = asyncio.Event()

    def certificate(self, identity: Identity) -> IssuedCertificate:
        found = self.issued.get(identity)
        if found is None:
            found = self._issue(identity)
            self._changed.set()
        return found

    def _issue(self, identity: Identity) -> IssuedCertificate:
        issued = self.ca.issue(identity, self.ttl)
        now = self.clock()
        self.issued[identity] = issued
        self._rotate_at[identity] = now + (issued.not_after - now) * self.rotate_after
        log.info("issued a certificate for %s (serial %x, expires %s)", identity.spiffe_id,
                 issued.serial, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued.not_after)))
        return issued

    def rotate_due(self) -> list[Identity]:
        """Replace every certificate past its rotation time; returns their identities."""
        now = self.clock()
        due = [identity for identity, at in self._rotate_at.items() if at <= now]
        for identity in due:
            self._issue(identity)
        return due

    def next_rotation(self) -> float | None:
        return min(self._rotate_at.values(), default=None)

    async def run(self, rotated: Callable[[list[Identity]], None]) -> None:
        """Rotate certificates when due, calling `rotated` so the new ones are pushed."""
        while True:
            self._changed.clear()
            due_at = self.next_rotation()
            wait = None if due_at is None else max(0.0, due_at - self.clock())
            try:
                # Woken early when a first certificate is issued: it may be due sooner.
                await asyncio.wait_for(self._changed.wait(), wait)
                continue
            except TimeoutError:
                pass
            identities = self.rotate_due()
            if identities:
                rotated(identities)
