"""Rotation of the workload-signing CA by the leader among discovery replicas, whatever the
intermediate is published in: an etcd key (`etcd.signing`) or a Kubernetes Secret
(`kube.signing`).

With `signingRotation=SECONDS` on `--replicas-lease`, replicas do not sign workload certificates
with the root in `--ca-dir` but with an intermediate that the *leader* creates, signed by that
root, and publishes: the intermediate's certificate, its private key, the chain and the root,
who made it and when. Every replica watches what is published and, on a new intermediate, signs
with it from then on: it drops the workload certificates it issued so far, so the next push
re-issues them under the new intermediate. The root does not change, so certificates issued
before (by the previous intermediate, which stays valid for two rotation periods plus
`--cert-ttl`) keep verifying and connections in flight are not cut.

Once: the leader rotates when the published intermediate is older than the period (judged by the
creation time written with it) or missing. Its write is a compare-and-write against the version
it read, fenced by its leadership (how strictly depends on the backend), so a former leader
that has not yet noticed its loss does not publish, and two rotations never overwrite each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import tempfile
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from meshpilot.election import Elector
from meshpilot.security.ca import (
    CA_CERT,
    CA_KEY,
    CERT_CHAIN,
    ROOT_CERT,
    CertificateAuthority,
    create_intermediate,
)
from meshpilot.security.certificates import WorkloadCertificates

log = logging.getLogger("meshpilot.security")


@dataclass(frozen=True)
class SigningMaterial:
    certificate: str
    key: str
    chain: str
    root: str
    created: float
    by: str

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def from_json(cls, value: bytes) -> SigningMaterial:
        data = json.loads(value)
        return cls(**{k: data[k] for k in ("certificate", "key", "chain", "root")},
                   created=float(data["created"]), by=str(data.get("by", "")))

    def authority(self) -> CertificateAuthority:
        certificate = x509.load_pem_x509_certificate(self.certificate.encode())
        key = serialization.load_pem_private_key(self.key.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                          | ed25519.Ed25519PrivateKey):
            raise ValueError(f"unsupported key type {type(key).__name__}")
        return CertificateAuthority(certificate, key, self.chain.encode(), self.root.encode(),
                                    self_signed=False)


def make_material(root_dir: Path, name: str, lifetime: datetime.timedelta,
                  by: str) -> SigningMaterial:
    """A new intermediate under the root in `root_dir` (created in a private temporary dir)."""
    with tempfile.TemporaryDirectory(prefix="meshpilot-signing-") as scratch:
        out = Path(scratch)
        create_intermediate(root_dir, out, name, lifetime)
        return SigningMaterial(
            certificate=(out / CA_CERT).read_text(), key=(out / CA_KEY).read_text(),
            chain=(out / CERT_CHAIN).read_text(), root=(out / ROOT_CERT).read_text(),
            created=time.time(), by=by)


class Unreadable(ValueError):
    """What is published (at `version`) cannot be decoded into signing material."""

    def __init__(self, reason: str, version: str = "") -> None:
        super().__init__(reason)
        self.version = version


class SigningStore(Protocol):
    """Where the intermediate is published: one value, read, watched and compare-and-written."""

    where: str
    """For logs: the etcd key, the Secret's namespace/name."""
    errors: tuple[type[BaseException], ...]
    """Failures to retry after (the store is away, a request was refused)."""

    async def read(self) -> tuple[str, SigningMaterial | None]:
        """(version, material): the version to write against ('' when nothing is published);
        raises `Unreadable` with the version when the value cannot be decoded."""
        ...

    def watch(self) -> AsyncGenerator[SigningMaterial | Unreadable, None]:
        """What is published now, then each new value, until the stream ends or fails."""
        ...

    async def write(self, material: SigningMaterial, version: str) -> bool:
        """Publish if the value is still at `version` and this replica still leads."""
        ...


class SigningRotation:
    def __init__(
        self,
        elector: Elector,
        store: SigningStore,
        certificates: WorkloadCertificates,
        root_dir: Path,
        *,
        period: float,
        cert_ttl: float,
        changed: Callable[[], None],
    ) -> None:
        self.elector = elector
        self.store = store
        self.certificates = certificates
        self.root_dir = root_dir
        self.period = period
        self.lifetime = datetime.timedelta(seconds=2 * period + cert_ttl)
        self.changed = changed
        self.current: SigningMaterial | None = None
        """The intermediate this replica signs with (None: still the root of --ca-dir)."""
        self.rotations = 0
        """Intermediates this replica published as the leader."""

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow(), name="signing-follow")
            group.create_task(self.elector.while_leading(self._lead), name="signing-rotate")

    # Every replica: sign with what is published -------------------------------------------------

    async def _follow(self) -> None:
        while True:
            try:
                # Closed here, not by the garbage collector, when cancelled or failing.
                async with contextlib.aclosing(self.store.watch()) as stream:
                    async for published in stream:
                        self._use(published)
            except self.store.errors as error:
                log.debug("signing CA %s: %s", self.store.where, error)
            await asyncio.sleep(1.0)

    def _use(self, published: SigningMaterial | Unreadable) -> None:
        try:
            if isinstance(published, Unreadable):
                raise published
            if self.current is not None and published == self.current:
                return
            authority = published.authority()
        except (ValueError, KeyError, TypeError) as error:
            log.warning("signing CA %s: unusable value (%s); signing as before",
                        self.store.where, error)
            return
        self.current = published
        self.certificates.ca = authority
        # Re-issued under the new intermediate at the next push (same root: old ones still
        # verify, so connections in flight are not affected).
        self.certificates.issued.clear()
        log.info("signing workload certificates with %s (made by %s)",
                 authority.certificate.subject.rfc4514_string(), published.by or "?")
        self.changed()

    # The leader: publish a new intermediate when due -------------------------------------------

    async def _lead(self) -> None:
        while True:
            try:
                wait = await self._rotate_if_due()
            except self.store.errors as error:
                log.warning("signing CA %s: %s; retrying", self.store.where, error)
                wait = 1.0
            await asyncio.sleep(wait)

    async def _rotate_if_due(self) -> float:
        try:
            version, published = await self.store.read()
        except Unreadable as unreadable:
            version, published = unreadable.version, None  # replace it
        due_at = published.created + self.period if published else 0.0
        if time.time() < due_at:
            return due_at - time.time()
        name = f"{self.elector.identity} {datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}"
        material = await asyncio.to_thread(make_material, self.root_dir, name,
                                           self.lifetime, self.elector.identity)
        if await self.store.write(material, version):
            self.rotations += 1
            log.info("signing CA %s: published a new intermediate (%s)", self.store.where, name)
            return self.period
        return 0.5  # someone else wrote, or we no longer lead: look again


def check_rotation(period: float, certificates: WorkloadCertificates | None,
                   ca_dir: Path | None) -> tuple[WorkloadCertificates, Path]:
    """What `signingRotation=` needs: a self-signed root in `--ca-dir`, a positive period."""
    if certificates is None or ca_dir is None:
        raise ValueError("signingRotation= on --replicas-lease needs --ca-dir (a root CA)")
    if not certificates.ca.self_signed:
        raise ValueError(f"signingRotation= needs a self-signed root in {ca_dir} to sign "
                         "intermediates with; it holds a plug-in intermediate")
    if period <= 0:
        raise ValueError(f"signingRotation={period} must be a positive number of seconds")
    return certificates, ca_dir
