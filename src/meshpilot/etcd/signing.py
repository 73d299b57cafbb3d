"""Rotation of the workload-signing CA by the leader among discovery replicas, through etcd.

    meshpilot discovery --ca-dir ROOT_DIR \
        --replicas-lease 'etcd://…?key=/meshpilot/leader&signingRotation=86400'

With `signingRotation=SECONDS` on an etcd lease, replicas do not sign workload certificates with
the root in `--ca-dir` but with an intermediate that the *leader* creates, signed by that root,
and publishes at `signingKey=` (default `/meshpilot/ca/signing`) as JSON: the intermediate's
certificate, its private key, the chain and the root, who made it and when. Every replica
watches the key and, on a new intermediate, signs with it from then on: it drops the workload
certificates it issued so far, so the next push re-issues them under the new intermediate.
The root does not change, so certificates issued before (by the previous intermediate, which
stays valid for two rotation periods plus `--cert-ttl`) keep verifying and connections in flight
are not cut.

Once: the leader rotates when the published intermediate is older than the period (judged by the
creation time written in it) or missing. Its write is one transaction conditioned on the key's
revision *and* on the leader key still holding this replica's identity, so a former leader that
has not yet noticed its loss cannot publish, and two rotations never overwrite each other.

Requirements and limits: `--ca-dir` must hold a self-signed root with its key (a plug-in
intermediate cannot sign further CAs) on every replica that may lead — shared disk, or the same
root copied to each machine; the intermediate's private key is stored in etcd, so that etcd must
be reachable only by the control plane (client TLS and authentication, as for Istio's `cacerts`
Secret).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aetcd import rpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from meshpilot.etcd.client import ERRORS, describe
from meshpilot.etcd.leader import EtcdLeaderElector
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

DEFAULT_SIGNING_KEY = "/meshpilot/ca/signing"


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


class SigningRotation:
    def __init__(
        self,
        elector: EtcdLeaderElector,
        certificates: WorkloadCertificates,
        root_dir: Path,
        *,
        period: float,
        cert_ttl: float,
        changed: Callable[[], None],
        key: str = DEFAULT_SIGNING_KEY,
    ) -> None:
        self.elector = elector
        self.address = elector.address
        self.certificates = certificates
        self.root_dir = root_dir
        self.period = period
        self.lifetime = datetime.timedelta(seconds=2 * period + cert_ttl)
        self.changed = changed
        self.key = key
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
        attempt = 0
        while True:
            client = self.address.client(attempt)
            attempt += 1
            try:
                await client.connect()
                response = await client.kvstub.Range(rpc.RangeRequest(key=self.key.encode()),
                                                     metadata=client.metadata)
                for kv in response.kvs:
                    self._use(kv.value)
                await self._watch(client, int(response.header.revision) + 1)
            except ERRORS as error:
                log.debug("signing CA %s: %s", self.key, describe(error))
            finally:
                await client.close()
            await asyncio.sleep(1.0)

    async def _watch(self, client: Any, start: int) -> None:
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=self.key.encode(), start_revision=start))
            await stop.wait()

        call = rpc.WatchStub(client.channel).Watch(requests(), metadata=client.metadata)
        try:
            async for response in call:
                if response.compact_revision or response.canceled:
                    return  # read the key again
                for event in response.events:
                    if event.type == rpc.Event.PUT:
                        self._use(event.kv.value)
        finally:
            stop.set()
            call.cancel()

    def _use(self, value: bytes) -> None:
        try:
            material = SigningMaterial.from_json(value)
            if self.current is not None and material == self.current:
                return
            authority = material.authority()
        except (ValueError, KeyError, TypeError) as error:
            log.warning("signing CA %s: unusable value (%s); signing as before", self.key, error)
            return
        self.current = material
        self.certificates.ca = authority
        # Re-issued under the new intermediate at the next push (same root: old ones still
        # verify, so connections in flight are not affected).
        self.certificates.issued.clear()
        log.info("signing workload certificates with %s (made by %s)",
                 authority.certificate.subject.rfc4514_string(), material.by or "?")
        self.changed()

    # The leader: publish a new intermediate when due -------------------------------------------

    async def _lead(self) -> None:
        while True:
            try:
                wait = await self._rotate_if_due()
            except ERRORS as error:
                log.warning("signing CA %s: %s; retrying", self.key, describe(error))
                wait = 1.0
            await asyncio.sleep(wait)

    async def _rotate_if_due(self) -> float:
        client = self.address.client()
        try:
            await client.connect()
            response = await client.kvstub.Range(rpc.RangeRequest(key=self.key.encode()),
                                                 metadata=client.metadata)
            revision, published = 0, None
            if response.kvs:
                revision = int(response.kvs[0].mod_revision)
                try:
                    published = SigningMaterial.from_json(response.kvs[0].value)
                except (ValueError, KeyError, TypeError):
                    published = None  # unreadable: replace it
            due_at = published.created + self.period if published else 0.0
            if time.time() < due_at:
                return due_at - time.time()
            name = f"{self.elector.identity} {datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}"
            material = await asyncio.to_thread(make_material, self.root_dir, name,
                                               self.lifetime, self.elector.identity)
            committed = await client.kvstub.Txn(rpc.TxnRequest(
                compare=[
                    rpc.Compare(key=self.key.encode(), target=rpc.Compare.MOD,
                                result=rpc.Compare.EQUAL, mod_revision=revision),
                    # Fencing: only while the leader key still names this replica.
                    rpc.Compare(key=self.elector.key.encode(), target=rpc.Compare.VALUE,
                                result=rpc.Compare.EQUAL,
                                value=self.elector.identity.encode()),
                ],
                success=[rpc.RequestOp(request_put=rpc.PutRequest(
                    key=self.key.encode(), value=material.to_json()))],
            ), metadata=client.metadata)
            if committed.succeeded:
                self.rotations += 1
                log.info("signing CA %s: published a new intermediate (%s)", self.key, name)
                return self.period
            return 0.5  # someone else wrote, or we no longer lead: look again
        finally:
            await client.close()


def signing_rotation(
    elector: EtcdLeaderElector,
    certificates: WorkloadCertificates | None,
    ca_dir: Path | None,
    cert_ttl: float,
    changed: Callable[[], None],
) -> SigningRotation:
    """The rotation the lease address asks for (`signingRotation=`, `signingKey=`), checked."""
    period = elector.address.seconds("signingRotation", 0.0)
    if certificates is None or ca_dir is None:
        raise ValueError("signingRotation= on --replicas-lease needs --ca-dir (a root CA)")
    if not certificates.ca.self_signed:
        raise ValueError(f"signingRotation= needs a self-signed root in {ca_dir} to sign "
                         "intermediates with; it holds a plug-in intermediate")
    if period <= 0:
        raise ValueError(f"signingRotation={period} must be a positive number of seconds")
    return SigningRotation(elector, certificates, ca_dir, period=period, cert_ttl=cert_ttl,
                           changed=changed,
                           key=elector.address.param("signingKey") or DEFAULT_SIGNING_KEY)
