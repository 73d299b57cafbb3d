"""The leader's rotation of the workload-signing intermediate through etcd (`etcd.signing`),
with two in-process replicas on a real etcd server."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aetcd
import pytest
from cryptography import x509

from meshpilot.etcd.leader import EtcdLeaderElector
from meshpilot.etcd.signing import EtcdSigningRotation, SigningMaterial, signing_rotation
from meshpilot.security.ca import CertificateAuthority, create_intermediate
from meshpilot.security.certificates import WorkloadCertificates
from tests.registry_servers import EtcdServer, eventually
from tests.signing_replica import SigningReplica


class Replica(SigningReplica):
    def __init__(self, server: EtcdServer, run: str, identity: str, root: Path) -> None:
        super().__init__(root)
        self.elector = EtcdLeaderElector.from_url(
            f"etcd://{server.address}?key=/{run}/leader&identity={identity}"
            "&leaseDuration=3&renewDeadline=2&retryPeriod=0.3", "/unused")
        self.rotation = EtcdSigningRotation(self.elector, self.certificates, root, period=1.5,
                                        cert_ttl=3600, changed=self._pushed,
                                        key=f"/{run}/signing")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    CertificateAuthority.load_or_create(tmp_path / "root", "cluster.local")
    return tmp_path / "root"


@pytest.fixture
async def replicas(etcd_server: EtcdServer, root: Path) -> AsyncIterator[dict[str, Replica]]:
    run = f"test-signing-{uuid.uuid4().hex[:8]}"
    made = {name: Replica(etcd_server, run, name, root) for name in ("a", "b")}
    yield made
    for replica in made.values():
        await replica.stop()


async def test_the_leader_publishes_and_every_replica_signs_with_it(
    replicas: dict[str, Replica], root: Path
) -> None:
    for replica in replicas.values():
        replica.start()
    await eventually(lambda: all(r.rotation.current for r in replicas.values()),
                     what="both replicas on an intermediate")
    a, b = replicas["a"], replicas["b"]
    leader, follower = (a, b) if a.elector.is_leader else (b, a)
    first = leader.rotation.current
    assert first is not None and first.by == leader.elector.identity
    intermediate = x509.load_pem_x509_certificate(first.certificate.encode())
    intermediate.verify_directly_issued_by(CertificateAuthority.load(root).certificate)
    assert leader.issuer() == follower.issuer() == intermediate.subject
    assert follower.rotation.rotations == 0 and follower.pushes >= 1
    # The period passes: a new intermediate, used by both, made by the leader alone.
    await eventually(lambda: all(r.rotation.current not in (None, first)
                                 for r in replicas.values()), what="the second rotation")
    # The leader counts a rotation once its write returns, which can be after the replicas'
    # watches delivered it.
    await eventually(lambda: leader.rotation.rotations >= 2, what="the leader's second count")
    assert follower.rotation.rotations == 0
    assert leader.issuer() == follower.issuer() != intermediate.subject
    # The leader goes: the other one takes the duty over.
    await leader.stop()
    done = leader.rotation.rotations
    await eventually(lambda: follower.rotation.current is not None and
                     follower.rotation.current.by == follower.elector.identity, within=10,
                     what="a rotation by the new leader")
    assert leader.rotation.rotations == done


async def test_a_replica_that_does_not_hold_the_leader_key_cannot_publish(
    etcd_server: EtcdServer, root: Path
) -> None:
    run = f"test-signing-{uuid.uuid4().hex[:8]}"
    stale = Replica(etcd_server, run, "stale", root)
    client = aetcd.Client("127.0.0.1", etcd_server.port, timeout=5)
    try:
        await client.put(f"/{run}/leader".encode(), b"someone-else")
        assert await stale.rotation._rotate_if_due() == 0.5
        assert await client.get(f"/{run}/signing".encode()) is None
        assert stale.rotation.rotations == 0
    finally:
        await client.close()


def test_configuration_is_checked(etcd_server: EtcdServer, root: Path, tmp_path: Path) -> None:
    elector = EtcdLeaderElector.from_url(
        f"etcd://{etcd_server.address}?key=/k&signingRotation=60", "/unused")
    certificates = WorkloadCertificates(CertificateAuthority.load(root))
    with pytest.raises(ValueError, match="needs --ca-dir"):
        signing_rotation(elector, None, None, 60, lambda: None)
    create_intermediate(root, tmp_path / "plug-in", "x", datetime.timedelta(days=1))
    plug_in = WorkloadCertificates(CertificateAuthority.load(tmp_path / "plug-in"))
    with pytest.raises(ValueError, match="self-signed root"):
        signing_rotation(elector, plug_in, tmp_path / "plug-in", 60, lambda: None)
    rotation = signing_rotation(elector, certificates, root, 60, lambda: None)
    assert rotation.period == 60 and rotation.key == "/meshpilot/ca/signing"


def test_material_round_trips() -> None:
    material = SigningMaterial("c", "k", "ch", "r", 1.5, "me")
    assert SigningMaterial.from_json(material.to_json()) == material
