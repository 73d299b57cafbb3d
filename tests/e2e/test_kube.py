"""End to end with Kubernetes as the source of everything: objects in the fake API server →
`meshpilot discovery --registry kube://… --config-source kube://…` → a real Envoy sidecar.

The fake (tests/fakes/kube_api.py) runs in a thread of the test process; discovery servers
and sidecars are real processes. A Service and its EndpointSlice point at two echo apps
(`python -m meshpilot.demo.echo`) whose Pods carry `version` labels; a DestinationRule and a
VirtualService (custom resources) split traffic between the versions. Changing the
VirtualService object moves live traffic. With two discovery replicas on one Lease, both serve
Envoys, and when the leader is killed the other one takes over writing `status` — and, with
`signingRotation=`, publishing the workload-signing intermediate in a Secret.
"""

from __future__ import annotations

import collections
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshpilot.demo.mesh import Mesh, Workload, free_port, http_request, wait_until
from meshpilot.security.ca import CertificateAuthority
from tests.fakes.base import ThreadedFake
from tests.fakes.kube_api import (
    KubeApiFake,
    endpoint,
    endpoint_slice_object,
    istio_object,
    pod_object,
    service_object,
)

pytestmark = pytest.mark.e2e

HOST = "reviews.default.svc.cluster.local"
NET = "networking.istio.io/v1"
APP_PORT = free_port()


def split(v1: int, v2: int) -> dict[str, Any]:
    return {"hosts": ["reviews"], "http": [{"route": [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": v1},
        {"destination": {"host": "reviews", "subset": "v2"}, "weight": v2}]}]}


class Cluster:
    """The fake API server with the bookinfo-like objects, read and written on its loop."""

    def __init__(self, workdir: Path, prefix: str) -> None:
        self.api = KubeApiFake(bookmark_interval=0.5)
        self.runner = ThreadedFake(self.api)
        self.runner.start()
        self.kubeconfig = str(self.api.write_kubeconfig(workdir / "kubeconfig"))
        self.prefix = prefix

    def populate(self) -> None:
        def create() -> None:
            api = self.api
            for version, last in (("v1", 21), ("v2", 22)):
                api.create("v1", "Pod", pod_object(
                    f"reviews-{version}", f"{self.prefix}{last}",
                    {"app": "reviews", "version": version}, service_account="reviews"))
            api.create("v1", "Service", service_object("reviews", ports=[
                {"name": "http", "port": 9080, "targetPort": APP_PORT}]))
            api.create("discovery.k8s.io/v1", "EndpointSlice", endpoint_slice_object(
                "reviews", [endpoint(f"{self.prefix}21", "reviews-v1"),
                            endpoint(f"{self.prefix}22", "reviews-v2")],
                [("http", APP_PORT)]))
            api.create(*istio_object("DestinationRule", "reviews", {
                "host": "reviews", "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}}]}))
            api.create(*istio_object("VirtualService", "reviews", split(80, 20)))

        self.runner.call(create)

    def route(self, v1: int, v2: int) -> None:
        def update() -> None:
            current = self.api.get(NET, "VirtualService", "default", "reviews")
            assert current is not None
            self.api.update(NET, "VirtualService", {**current, "spec": split(v1, v2)})

        self.runner.call(update)

    def status(self) -> dict[str, Any]:
        obj = self.runner.call(lambda: self.api.get(NET, "VirtualService", "default", "reviews"))
        return dict((obj or {}).get("status") or {})

    def generation(self) -> int:
        obj = self.runner.call(lambda: self.api.get(NET, "VirtualService", "default", "reviews"))
        return int((obj or {})["metadata"]["generation"])

    def status_writers(self) -> list[str]:
        return [w.user_agent for w in self.runner.call(
            lambda: self.api.writes_of("VirtualService", "update/status"))]

    def holder(self) -> str:
        lease = self.runner.call(lambda: self.api.get(
            "coordination.k8s.io/v1", "Lease", "istio-system", "meshpilot-discovery"))
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    def close(self) -> None:
        self.runner.close()


def tally(mesh: Mesh, client: str, n: int) -> collections.Counter[str]:
    address = f"{mesh.workloads[client].outbound_bind}:9080"
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        status, headers, _ = http_request(address, HOST)
        counts[headers.get("x-workload", str(status))] += 1
    return counts


def discovery_args(cluster: Cluster, *extra: str) -> list[str]:
    source = f"kube://?kubeconfig={cluster.kubeconfig}&watchTimeout=30"
    return ["--registry", source, "--config-source", source, "--debounce-after", "0.05",
            "--controlz-address", f"127.0.0.1:{free_port()}", *extra]


@pytest.fixture(scope="module")
def kube_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Cluster]]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    workdir = tmp_path_factory.mktemp("kube")
    mesh = Mesh(workdir, prefix=prefix)
    mesh.config_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(workdir, prefix)
    try:
        for version, last in (("v1", 21), ("v2", 22)):
            mesh.start_app(Workload(f"reviews-{version}", mesh.address(last), {}, "",
                                    app_port=APP_PORT, app_host=mesh.address(last)))
        cluster.populate()
        mesh.start_discovery(discovery_args(cluster))
        mesh.wait_ready()
        mesh.start_sidecar(Workload("client", mesh.address(10), {"app": "client"},
                                    mesh.address(1)))
        mesh.wait_envoy_ready("client")
        yield mesh, cluster
    finally:
        mesh.stop()
        cluster.close()


def test_the_virtual_service_object_splits_real_traffic(kube_mesh: tuple[Mesh, Cluster]
                                                        ) -> None:
    mesh, _ = kube_mesh
    wait_until(lambda: set(tally(mesh, "client", 40)) == {"reviews-v1", "reviews-v2"}, 30,
               "traffic to both versions")
    counts = tally(mesh, "client", 400)
    share = counts["reviews-v2"] / 400
    assert set(counts) == {"reviews-v1", "reviews-v2"}, counts
    assert 0.13 <= share <= 0.27, counts  # 20% ± 7 points: over 3.5 standard deviations


def test_updating_the_object_shifts_live_traffic(kube_mesh: tuple[Mesh, Cluster]) -> None:
    mesh, cluster = kube_mesh
    try:
        cluster.route(0, 100)
        wait_until(lambda: set(tally(mesh, "client", 40)) == {"reviews-v2"}, 20,
                   "all traffic on v2")
        cluster.route(100, 0)
        wait_until(lambda: set(tally(mesh, "client", 40)) == {"reviews-v1"}, 20,
                   "all traffic on v1")
    finally:
        cluster.route(80, 20)


def test_status_is_written_back(kube_mesh: tuple[Mesh, Cluster]) -> None:
    _, cluster = kube_mesh

    def reconciled() -> bool:
        status = cluster.status()
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        return conditions.get("Reconciled") == "True" and \
            status.get("observedGeneration") == cluster.generation()

    wait_until(reconciled, 20, "Reconciled with the current generation")


def test_two_replicas_serve_and_the_survivor_takes_over_status(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    workdir = tmp_path_factory.mktemp("kube-replicas")
    cluster = Cluster(workdir, prefix)
    meshes = {name: Mesh(workdir / name, prefix=prefix) for name in ("a", "b")}
    try:
        for mesh in meshes.values():
            mesh.config_dir.mkdir(parents=True, exist_ok=True)
        first = meshes["a"]
        for version, last in (("v1", 21), ("v2", 22)):
            first.start_app(Workload(f"reviews-{version}", first.address(last), {}, "",
                                     app_port=APP_PORT, app_host=first.address(last)))
        cluster.populate()
        lease = (f"kube://?kubeconfig={cluster.kubeconfig}&namespace=istio-system"
                 "&leaseDuration=3&renewDeadline=2&retryPeriod=0.3")
        for name, mesh in meshes.items():
            mesh.start_discovery(discovery_args(
                cluster, "--replicas-lease", f"{lease}&identity=replica-{name}"))
        for index, (name, mesh) in enumerate(meshes.items()):
            mesh.wait_ready()
            mesh.start_sidecar(Workload(f"client-{name}", mesh.address(10 + index),
                                        {"app": "client"}, mesh.address(1 + index)))
            mesh.wait_envoy_ready(f"client-{name}")
        # Both replicas serve their Envoys from the same watched state.
        for name, mesh in meshes.items():
            wait_until(lambda m=mesh, n=name: set(tally(m, f"client-{n}", 40)) == {
                "reviews-v1", "reviews-v2"}, 30, f"traffic through replica {name}")
        leader = wait_until(cluster.holder, 20, "a leader")
        wait_until(lambda: cluster.status_writers(), 20, "status written")
        assert set(cluster.status_writers()) == {f"meshpilot-discovery/{leader}"}
        # Kill the leader outright: no release, the Lease must expire.
        dead = leader.removeprefix("replica-")
        survivor = "b" if dead == "a" else "a"
        process = meshes[dead].processes["discovery"]
        process.send_signal(signal.SIGKILL)
        process.wait()
        wait_until(lambda: cluster.holder() == f"replica-{survivor}", 20, "the takeover")
        cluster.route(0, 100)
        wait_until(lambda: cluster.status().get("observedGeneration") == cluster.generation(),
                   20, "status of the new generation")
        assert cluster.status_writers()[-1] == f"meshpilot-discovery/replica-{survivor}"
        # The survivor's Envoy follows the change too.
        wait_until(lambda: set(tally(meshes[survivor], f"client-{survivor}", 40)) == {
            "reviews-v2"}, 20, "traffic through the survivor")
    finally:
        for mesh in meshes.values():
            mesh.stop()
        cluster.close()


def test_the_survivor_takes_over_rotating_the_signing_ca(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    workdir = tmp_path_factory.mktemp("kube-signing")
    cluster = Cluster(workdir, prefix)
    meshes = {name: Mesh(workdir / name, prefix=prefix) for name in ("a", "b")}

    def signing() -> dict[str, str]:
        secret = cluster.runner.call(lambda: cluster.api.get(
            "v1", "Secret", "istio-system", "meshpilot-signing-ca"))
        return dict(((secret or {}).get("metadata") or {}).get("annotations") or {})

    try:
        # One root for both replicas (shared disk): the leader signs intermediates with it.
        CertificateAuthority.load_or_create(workdir / "root", "cluster.local")
        lease = (f"kube://?kubeconfig={cluster.kubeconfig}&namespace=istio-system"
                 "&leaseDuration=3&renewDeadline=2&retryPeriod=0.3&signingRotation=2")
        for name, mesh in meshes.items():
            mesh.config_dir.mkdir(parents=True, exist_ok=True)
            mesh.start_discovery(discovery_args(
                cluster, "--replicas-lease", f"{lease}&identity=replica-{name}",
                # Two replicas on one machine: no second mTLS xDS / CA port to bind.
                "--ca-dir", str(workdir / "root"), "--secure-xds-address", "",
                "--ca-address", ""))
        for mesh in meshes.values():
            mesh.wait_ready()
        leader = wait_until(cluster.holder, 20, "a leader")
        assert wait_until(lambda: signing().get("meshpilot.io/signing-by"), 20,
                          "an intermediate") == leader
        # Every replica signs with what the leader published.
        for name, mesh in meshes.items():
            wait_until(lambda m=mesh: f"(made by {leader})" in m.log("discovery"), 20,
                       f"replica {name} on the intermediate")
        dead = leader.removeprefix("replica-")
        survivor = "b" if dead == "a" else "a"
        process = meshes[dead].processes["discovery"]
        process.send_signal(signal.SIGKILL)
        process.wait()
        # No release: the Lease expires (3 s), then the survivor rotates on the period.
        wait_until(lambda: cluster.holder() == f"replica-{survivor}", 20, "the takeover")
        wait_until(lambda: signing().get("meshpilot.io/signing-by") == f"replica-{survivor}",
                   20, "a signing intermediate from the survivor")
        wait_until(lambda: f"(made by replica-{survivor})" in meshes[survivor].log("discovery"),
                   20, "the survivor signing with its own intermediate")
        # One writer at a time: the dead leader's rotations, then only the survivor's.
        writers = [w.user_agent for w in cluster.runner.call(
            lambda: cluster.api.writes_of("Secret"))]
        assert [w for i, w in enumerate(writers) if i == 0 or writers[i - 1] != w] == [
            leader, f"replica-{survivor}"]
    finally:
        for mesh in meshes.values():
            mesh.stop()
        cluster.close()
