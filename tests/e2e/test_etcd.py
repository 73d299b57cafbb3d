"""End to end with etcd as the config store and the lease: real etcd, real processes.

1. Two `meshpilot discovery` replicas read `--config-source etcd://…` and elect a leader with
   `--replicas-lease etcd://…`; each serves a real Envoy sidecar. Config written into etcd (by
   the test and by `meshpilot config put`) shifts traffic through both. SIGKILL of the leader:
   its lease expires, the survivor holds the key within seconds and keeps following etcd.
2. Two `meshpilot registry-sync --to dir: --leader-election --lease etcd://…` replicas: only
   the leader writes; after SIGKILL of the leader the follower takes over and rewrites nothing
   that is already up to date (the file keeps its inode), then writes the next change once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aetcd
import pytest
import yaml

from meshpilot.config.etcd_source import config_key
from meshpilot.demo.mesh import Mesh, Workload, free_port, get_json, http_request, wait_until
from meshpilot.security.ca import CertificateAuthority
from tests.registry_servers import EtcdServer

pytestmark = pytest.mark.e2e

HOST = "reviews.mesh"


class Etcd:
    """Synchronous reads and writes for the test's side of etcd."""

    def __init__(self, server: EtcdServer) -> None:
        self.port = server.port

    def _call(self, work: Any) -> Any:
        async def main() -> Any:
            client = aetcd.Client("127.0.0.1", self.port, timeout=5)
            try:
                return await work(client)
            finally:
                await client.close()

        return asyncio.run(main())

    def put(self, key: str, value: str) -> None:
        self._call(lambda c: c.put(key.encode(), value.encode()))

    def get(self, key: str) -> str:
        found = self._call(lambda c: c.get(key.encode()))
        return "" if found is None else bytes(found.value).decode()


def resources(prefix: str, app_port: int) -> dict[str, dict[str, Any]]:
    entry = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
             "metadata": {"name": "reviews", "namespace": "default"},
             "spec": {"hosts": [HOST], "location": "MESH_INTERNAL", "resolution": "STATIC",
                      "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
                      "endpoints": [{"address": f"{prefix}{last}", "ports": {"http": app_port},
                                     "labels": {"version": version}}
                                    for version, last in (("v1", 21), ("v2", 22))]}}
    rule = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"host": HOST, "subsets": [{"name": v, "labels": {"version": v}}
                                                for v in ("v1", "v2")]}}
    return {"ServiceEntry": entry, "DestinationRule": rule}


def route(v1: int, v2: int) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"hosts": [HOST], "http": [{"route": [
                {"destination": {"host": HOST, "subset": "v1"}, "weight": v1},
                {"destination": {"host": HOST, "subset": "v2"}, "weight": v2}]}]}}


def tally(mesh: Mesh, client: str, n: int = 30) -> collections.Counter[str]:
    address = f"{mesh.workloads[client].outbound_bind}:9080"
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        status, headers, _ = http_request(address, HOST)
        counts[headers.get("x-workload", str(status))] += 1
    return counts


def test_discovery_replicas_on_etcd_config_and_lease(
    etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    etcd = Etcd(etcd_server)
    run = uuid.uuid4().hex[:8]
    config_prefix, leader_key = f"/e2e-{run}/config", f"/e2e-{run}/leader"
    signing_key = f"/e2e-{run}/signing"
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    app_port = free_port()
    workdir = tmp_path_factory.mktemp("etcd-replicas")
    meshes = {name: Mesh(workdir / name, prefix=prefix) for name in ("a", "b")}
    vs_key = config_key(config_prefix, "VirtualService", "default", "reviews")
    try:
        first = meshes["a"]
        for version, last in (("v1", 21), ("v2", 22)):
            first.start_app(Workload(f"reviews-{version}", first.address(last), {}, "",
                                     app_port=app_port, app_host=first.address(last)))
        for kind, doc in resources(prefix, app_port).items():
            etcd.put(config_key(config_prefix, kind, "default", "reviews"), json.dumps(doc))
        etcd.put(vs_key, yaml.safe_dump(route(100, 0)))
        source = f"etcd://{etcd_server.address}?prefix={config_prefix}"
        lease = (f"etcd://{etcd_server.address}?key={leader_key}"
                 "&leaseDuration=3&renewDeadline=2&retryPeriod=0.3"
                 f"&signingRotation=2&signingKey={signing_key}")
        # One root for both replicas (shared disk): the leader signs intermediates with it.
        CertificateAuthority.load_or_create(workdir / "root", "cluster.local")
        for name, mesh in meshes.items():
            mesh.config_dir.mkdir(parents=True, exist_ok=True)
            mesh.start_discovery([
                "--config-source", source, "--replicas-lease", f"{lease}&identity=replica-{name}",
                # Two replicas on one machine: no second mTLS xDS / CA port to bind.
                "--ca-dir", str(workdir / "root"), "--secure-xds-address", "", "--ca-address", "",
                "--debounce-after", "0.05", "--controlz-address", f"127.0.0.1:{free_port()}"])
        for index, (name, mesh) in enumerate(meshes.items()):
            mesh.wait_ready()
            mesh.start_sidecar(Workload(f"client-{name}", mesh.address(10 + index),
                                        {"app": "client"}, mesh.address(1 + index)))
            mesh.wait_envoy_ready(f"client-{name}")
        for name, mesh in meshes.items():
            wait_until(lambda m=mesh, n=name: set(tally(m, f"client-{n}")) == {"reviews-v1"},
                       30, f"v1 through replica {name}")
        # Written with the CLI (validated first): both replicas' Envoys move to v2.
        document = workdir / "vs.yaml"
        document.write_text(yaml.safe_dump(route(0, 100)))
        subprocess.run([sys.executable, "-m", "meshpilot.cli.main", "config", "put",
                        str(document), "--etcd", source], check=True, capture_output=True)
        for name, mesh in meshes.items():
            wait_until(lambda m=mesh, n=name: set(tally(m, f"client-{n}")) == {"reviews-v2"},
                       20, f"v2 through replica {name}")
        # An invalid value changes nothing: both keep serving the last good one.
        etcd.put(vs_key, yaml.safe_dump(route(-1, 100)))
        for name, mesh in meshes.items():
            wait_until(lambda m=mesh: any(vs_key in json.dumps(e) for e in get_json(
                f"{m.debug_url}/debug/config_errors") or []), 20, f"error on replica {name}")
            assert set(tally(mesh, f"client-{name}")) == {"reviews-v2"}
        leader = wait_until(lambda: etcd.get(leader_key), 20, "a leader")
        assert json.loads(wait_until(lambda: etcd.get(signing_key), 20, "an intermediate"))[
            "by"] == leader
        dead = leader.removeprefix("replica-")
        survivor = "b" if dead == "a" else "a"
        process = meshes[dead].processes["discovery"]
        process.send_signal(signal.SIGKILL)
        process.wait()
        # No release: the lease runs out (3 s) and the survivor's watch sees the key go.
        wait_until(lambda: etcd.get(leader_key) == f"replica-{survivor}", 15, "the takeover")
        assert "now leading" in meshes[survivor].log("discovery")
        # Its duty moved too: the next signing intermediate is the survivor's.
        wait_until(lambda: json.loads(etcd.get(signing_key))["by"] == f"replica-{survivor}",
                   15, "a signing intermediate from the survivor")
        etcd.put(vs_key, yaml.safe_dump(route(100, 0)))
        wait_until(lambda: set(tally(meshes[survivor], f"client-{survivor}")) == {
            "reviews-v1"}, 20, "traffic through the survivor")
    finally:
        for mesh in meshes.values():
            mesh.stop()


def write_instances(path: Path, addresses: list[str]) -> None:
    doc = {"services": {"shop": [{"address": a, "ports": {"http": 8080}} for a in addresses]}}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(doc))
    temporary.replace(path)


def test_registry_sync_replicas_hand_over_on_an_etcd_lease_without_duplicate_writes(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    etcd = Etcd(etcd_server)
    key = f"/e2e-{uuid.uuid4().hex[:8]}/registry-sync"
    instances, out = tmp_path / "instances.yaml", tmp_path / "out"
    write_instances(instances, ["10.0.0.1"])
    mesh = Mesh(tmp_path / "procs")
    ports = {name: free_port() for name in ("a", "b")}
    lease = f"etcd://{etcd_server.address}?key={key}"
    for name, port in ports.items():
        mesh.start_meshpilot(f"sync-{name}", [
            "registry-sync", "--from", f"file://{instances}?meshNamespace=default",
            "--to", f"dir:{out}", "--leader-election", "--lease", lease, "--identity", name,
            "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.3",
            "--status-address", f"127.0.0.1:{port}"])

    def status(name: str) -> dict[str, Any]:
        try:
            return dict(get_json(f"http://127.0.0.1:{ports[name]}/status"))
        except OSError:
            return {}

    def synced_lines(name: str) -> list[str]:
        return [line for line in mesh.log(f"sync-{name}").splitlines() if "synced" in line]

    written = out / "default.shop.default.file.yaml"
    try:
        leader = wait_until(lambda: etcd.get(key), 20, "a leader")
        follower = "b" if leader == "a" else "a"
        wait_until(lambda: written.exists(), 20, "the leader's first write")
        wait_until(lambda: status(follower).get("registries"), 20, "the follower running")
        inode = written.stat().st_ino
        assert status(follower)["leaderElection"]["leader"] is False
        assert status(follower)["syncs"] == 0  # a follower never writes
        assert len(synced_lines(leader)) == 1 and synced_lines(follower) == []
        process = mesh.processes[f"sync-{leader}"]
        process.send_signal(signal.SIGKILL)
        process.wait()
        wait_until(lambda: etcd.get(key) == follower, 15, "the takeover")
        wait_until(lambda: status(follower).get("syncs", 0) >= 1, 10, "the new leader's sync")
        # Everything was already written: the new leader rewrites nothing.
        assert status(follower)["lastChanges"] == {
            "created": 0, "updated": 0, "deleted": 0, "unchanged": 1}
        assert written.stat().st_ino == inode and synced_lines(follower) == []
        write_instances(instances, ["10.0.0.1", "10.0.0.2"])
        wait_until(lambda: "10.0.0.2" in written.read_text(), 20, "the new leader's write")
        assert written.stat().st_ino != inode
        assert len(synced_lines(follower)) == 1 and "'updated': 1" in synced_lines(follower)[0]
    finally:
        mesh.stop()
