"""One discovery replica's signing side, in-process: its elector and signing rotation over one
WorkloadCertificates, for the etcd and Kubernetes rotation tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cryptography import x509

from meshpilot.model.security import Identity
from meshpilot.security.ca import CertificateAuthority
from meshpilot.security.certificates import WorkloadCertificates


class SigningReplica:
    elector: Any
    rotation: Any
    """Set by the backend's subclass after `__init__`."""

    def __init__(self, root: Path) -> None:
        self.certificates = WorkloadCertificates(CertificateAuthority.load(root))
        self.pushes = 0
        self.tasks: list[asyncio.Task[None]] = []

    def _pushed(self) -> None:
        self.pushes += 1

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self.elector.run()),
                      asyncio.create_task(self.rotation.run())]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def issuer(self) -> x509.Name:
        issued = self.certificates.certificate(Identity("cluster.local", "default", "app"))
        return x509.load_pem_x509_certificate(issued.certificate_chain).issuer
