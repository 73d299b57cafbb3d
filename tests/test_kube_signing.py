"""The leader's rotation of the workload-signing intermediate through a Kubernetes Secret
(`kube.signing`), with in-process replicas on the fake API server."""

from __future__ import annotations

import asyncio
import base64
import datetime
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography import x509

from meshpilot.cli.discovery import _check_lease
from meshpilot.kube.client import KubeClient, KubeOptions
from meshpilot.kube.leader import LeaderElector, micro_time
from meshpilot.kube.signing import (
    BY,
    CREATED,
    DEFAULT_SIGNING_SECRET,
    KubeSigningRotation,
    kube_signing_rotation,
    material_of,
    secret_data,
)
from meshpilot.security.ca import CertificateAuthority, create_intermediate
from meshpilot.security.certificates import WorkloadCertificates
from meshpilot.signing import SigningMaterial, make_material
from tests.fakes.kube_api import KubeApiFake, running_api
from tests.registry_helpers import eventually
from tests.signing_replica import SigningReplica

NAMESPACE = "istio-system"
SECRET = "signing"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[KubeApiFake]:
    async with running_api(tmp_path) as fake:
        yield fake


@pytest.fixture
def root(tmp_path: Path) -> Path:
    CertificateAuthority.load_or_create(tmp_path / "root", "cluster.local")
    return tmp_path / "root"


class _Elector(LeaderElector):
    crash = False
    """Die without releasing the Lease (as with SIGKILL)."""

    async def _release(self, client: KubeClient) -> None:
        if not self.crash:
            await super()._release(client)


class Replica(SigningReplica):
    def __init__(self, api: KubeApiFake, identity: str, root: Path,
                 period: float = 1.5) -> None:
        super().__init__(root)
        self.elector = _Elector(KubeOptions(kubeconfig=api.kubeconfig), name="lock",
                                     namespace=NAMESPACE, identity=identity, lease_duration=2.0,
                                     renew_deadline=1.5, retry_period=0.2)
        self.rotation = KubeSigningRotation(self.elector, self.certificates, root,
                                            period=period, cert_ttl=3600,
                                            changed=self._pushed, secret=SECRET)


@pytest.fixture
async def replicas(api: KubeApiFake, root: Path) -> AsyncIterator[dict[str, Replica]]:
    made = {name: Replica(api, name, root) for name in ("a", "b")}
    yield made
    for replica in made.values():
        await replica.stop()


def published(api: KubeApiFake) -> dict[str, Any] | None:
    return api.get("v1", "Secret", NAMESPACE, SECRET)


def lease_held_by(api: KubeApiFake, identity: str) -> None:
    api.create("coordination.k8s.io/v1", "Lease", {
        "metadata": {"name": "lock", "namespace": NAMESPACE},
        "spec": {"holderIdentity": identity, "leaseDurationSeconds": 60,
                 "renewTime": micro_time(), "acquireTime": micro_time()}})


def secret_of(material: SigningMaterial) -> dict[str, Any]:
    return {"metadata": {"name": SECRET, "namespace": NAMESPACE,
                         "annotations": {CREATED: micro_time(material.created), BY: material.by}},
            "type": "Opaque", "data": secret_data(material)}


async def test_the_leader_publishes_and_every_replica_signs_with_it(
    api: KubeApiFake, replicas: dict[str, Replica], root: Path
) -> None:
    for replica in replicas.values():
        replica.start()
    await eventually(lambda: all(r.rotation.current for r in replicas.values()),
                     what="both replicas on an intermediate")
    a, b = replicas["a"], replicas["b"]
    leader, follower = (a, b) if a.elector.is_leader else (b, a)
    first = leader.rotation.current
    assert first is not None and first.by == leader.elector.identity
    # Published as Istio's cacerts, by the leader alone.
    secret = published(api)
    assert secret is not None
    assert set(secret["data"]) == {"ca-cert.pem", "ca-key.pem", "cert-chain.pem",
                                   "root-cert.pem"}
    assert base64.b64decode(secret["data"]["ca-cert.pem"]).decode() == first.certificate
    assert secret["metadata"]["annotations"][BY] == leader.elector.identity
    writers = {w.user_agent for w in api.writes_of("Secret")}
    assert writers == {leader.elector.identity}
    intermediate = x509.load_pem_x509_certificate(first.certificate.encode())
    intermediate.verify_directly_issued_by(CertificateAuthority.load(root).certificate)
    assert leader.issuer() == follower.issuer() == intermediate.subject
    assert follower.rotation.rotations == 0 and follower.pushes >= 1
    # The follower dropped what it had issued under the root: re-issued under the intermediate.
    assert follower.certificates.ca.certificate.subject == intermediate.subject
    # The period passes: a new intermediate, adopted by both.
    await eventually(lambda: all(r.rotation.current not in (None, first)
                                 for r in replicas.values()), what="the second rotation")
    # Counted once the leader's write returns, which can be after the watches delivered it.
    await eventually(lambda: leader.rotation.rotations >= 2, what="the leader's second count")
    assert follower.rotation.rotations == 0
    assert leader.issuer() == follower.issuer() != intermediate.subject
    # The leader dies without releasing its Lease: the other one takes the duty over.
    leader.elector.crash = True
    await leader.stop()
    done = leader.rotation.rotations
    await eventually(lambda: follower.rotation.current is not None and
                     follower.rotation.current.by == follower.elector.identity, 15,
                     "a rotation by the new leader")
    assert leader.rotation.rotations == done


async def test_a_replica_that_does_not_hold_the_lease_cannot_publish(
    api: KubeApiFake, root: Path
) -> None:
    stale = Replica(api, "stale", root)
    lease_held_by(api, "someone-else")
    # It still believes it leads (it has not read the Lease since): the Lease decides.
    stale.elector.is_leader = True
    assert await stale.rotation._rotate_if_due() == 0.5
    assert published(api) is None and stale.rotation.rotations == 0


async def test_a_write_against_a_stale_version_is_refused(api: KubeApiFake, root: Path) -> None:
    replica = Replica(api, "a", root)
    lease_held_by(api, "a")
    replica.elector.is_leader = True
    store = replica.rotation.kube_store
    old = make_material(root, "old", datetime.timedelta(hours=1), "other")
    created = api.create("v1", "Secret", secret_of(old))
    version = created["metadata"]["resourceVersion"]
    newer = make_material(root, "newer", datetime.timedelta(hours=1), "other")
    api.update("v1", "Secret", {**secret_of(newer), "metadata": {
        **secret_of(newer)["metadata"], "resourceVersion": version}})
    mine = make_material(root, "mine", datetime.timedelta(hours=1), "a")
    assert await store.write(mine, version) is False  # 409: written since it was read
    assert await store.write(mine, "") is False  # 409: it exists already
    secret = published(api)
    assert secret is not None and material_of(secret).certificate == newer.certificate
    assert await store.write(mine, secret["metadata"]["resourceVersion"]) is True
    secret = published(api)
    assert secret is not None and material_of(secret).certificate == mine.certificate


async def test_the_period_is_judged_by_the_creation_time_published(
    api: KubeApiFake, root: Path
) -> None:
    replica = Replica(api, "a", root, period=600)
    lease_held_by(api, "a")
    replica.elector.is_leader = True
    recent = make_material(root, "recent", datetime.timedelta(hours=1), "other")
    recent = SigningMaterial(**{**recent.__dict__, "created": time.time() - 500})
    api.create("v1", "Secret", secret_of(recent))
    wait = await replica.rotation._rotate_if_due()
    assert 0 < wait <= 100  # due in about 100 s, not now
    assert len(api.writes_of("Secret")) == 1 and replica.rotation.rotations == 0
    # Older than the period: replaced at once.
    secret = published(api)
    assert secret is not None
    secret["metadata"]["annotations"][CREATED] = micro_time(time.time() - 700)
    api.update("v1", "Secret", secret)
    assert await replica.rotation._rotate_if_due() == 600
    secret = published(api)
    assert secret is not None and material_of(secret).by == "a"
    assert replica.rotation.rotations == 1


async def test_an_unreadable_secret_is_replaced_and_never_used(
    api: KubeApiFake, root: Path
) -> None:
    replica = Replica(api, "a", root, period=600)
    lease_held_by(api, "a")
    replica.elector.is_leader = True
    api.create("v1", "Secret", {"metadata": {"name": SECRET, "namespace": NAMESPACE},
                                "data": {"ca-cert.pem": base64.b64encode(b"junk").decode()}})
    follow = asyncio.create_task(replica.rotation._follow())
    try:
        assert await replica.rotation._rotate_if_due() == 600
        await eventually(lambda: replica.rotation.current is not None, 5, "the replacement")
        assert replica.rotation.current is not None and replica.rotation.current.by == "a"
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)


async def test_a_restarted_replica_picks_up_the_published_secret(
    api: KubeApiFake, root: Path
) -> None:
    existing = make_material(root, "existing", datetime.timedelta(hours=1), "earlier")
    existing = SigningMaterial(**{**existing.__dict__, "created": round(time.time(), 6)})
    api.create("v1", "Secret", secret_of(existing))
    replica = Replica(api, "a", root, period=600)
    replica.start()
    try:
        await eventually(lambda: replica.rotation.current is not None, 5, "the Secret adopted")
        await eventually(lambda: replica.elector.is_leader, 5, "leading")
        current = replica.rotation.current
        assert current is not None and current.certificate == existing.certificate
        assert current.by == "earlier"
        assert abs(current.created - existing.created) < 1e-3
        assert replica.pushes == 1
        # Leading, but the published intermediate is not due: nothing new is written.
        await asyncio.sleep(0.5)
        assert replica.rotation.rotations == 0 and len(api.writes_of("Secret")) == 1
    finally:
        await replica.stop()


def test_configuration_is_checked(root: Path, tmp_path: Path) -> None:
    elector = LeaderElector.from_url(
        "kube://?namespace=mesh&name=lock&signingRotation=60", "unused")
    certificates = WorkloadCertificates(CertificateAuthority.load(root))
    with pytest.raises(ValueError, match="needs --ca-dir"):
        kube_signing_rotation(elector, None, None, 60, lambda: None)
    create_intermediate(root, tmp_path / "plug-in", "x", datetime.timedelta(days=1))
    plug_in = WorkloadCertificates(CertificateAuthority.load(tmp_path / "plug-in"))
    with pytest.raises(ValueError, match="self-signed root"):
        kube_signing_rotation(elector, plug_in, tmp_path / "plug-in", 60, lambda: None)
    rotation = kube_signing_rotation(elector, certificates, root, 60, lambda: None)
    assert rotation.period == 60
    assert rotation.kube_store.where == f"secret mesh/{DEFAULT_SIGNING_SECRET}"
    named = LeaderElector.from_url(
        "kube://?namespace=mesh&signingRotation=60&signingSecret=cacerts-rotated", "unused")
    assert kube_signing_rotation(named, certificates, root, 60, lambda: None
                                 ).kube_store.name == "cacerts-rotated"


def test_the_command_line_needs_a_ca_dir_for_rotation(root: Path) -> None:
    with pytest.raises(typer.BadParameter, match="needs --ca-dir"):
        _check_lease("kube://?namespace=mesh&signingRotation=60")
    lease = "kube://?namespace=mesh&signingRotation=60"
    assert _check_lease(lease, root) == lease


def test_material_round_trips_through_a_secret(root: Path) -> None:
    material = make_material(root, "x", datetime.timedelta(hours=1), "me")
    material = SigningMaterial(**{**material.__dict__, "created": 1764129600.25})
    secret = {**secret_of(material), "metadata": {**secret_of(material)["metadata"],
                                                  "resourceVersion": "7"}}
    assert material_of(secret) == material
