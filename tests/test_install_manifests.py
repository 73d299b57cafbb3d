"""`meshpilot install manifests`: the YAML parses, every object is well-formed, the CRDs cover
every admitted kind, and the RBAC allows every call meshpilot's Kubernetes parts make — taken
from the fake API server's request log while the registry, config store, leader election and
status writer run against it — and nothing more than those verbs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from meshpilot.cli.main import app
from meshpilot.config.kinds import SUPPORTED_KINDS
from meshpilot.config.kube_source import KubeConfigStore
from meshpilot.config.sources import config_source
from meshpilot.kube.client import KubeOptions, plural_of
from meshpilot.kube.leader import LeaderElector
from meshpilot.kube.manifests import InstallOptions, manifests
from meshpilot.kube.replicas import DEFAULT_LEASE
from meshpilot.kube.signing import KubeSigningRotation
from meshpilot.kube.status import StatusWriter
from meshpilot.registry.kube import KubeRegistry
from meshpilot.registry.plugins import create_registry
from meshpilot.security.ca import CertificateAuthority
from meshpilot.security.certificates import WorkloadCertificates
from tests.fakes.base import Seen
from tests.fakes.kube_api import (
    KubeApiFake,
    endpoint,
    endpoint_slice_object,
    istio_object,
    pod_object,
    running_api,
    service_object,
)
from tests.registry_helpers import Pushes, eventually, running

Object = dict[str, Any]
NAMESPACED = {"ServiceAccount", "Role", "RoleBinding", "Service", "Deployment"}


def printed(*args: str) -> list[Object]:
    result = CliRunner().invoke(app, ["install", "manifests", *args])
    assert result.exit_code == 0, result.output
    assert "&id0" not in result.stdout  # no YAML aliases
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def by_kind(objects: list[Object], kind: str) -> list[Object]:
    return [o for o in objects if o["kind"] == kind]


def test_every_object_is_well_formed() -> None:
    objects = printed("--namespace", "mesh", "--replicas", "3", "--image", "reg/meshpilot:1")
    for obj in objects:
        assert set(obj) >= {"apiVersion", "kind", "metadata"}, obj
        assert obj["metadata"]["name"]
        assert ("namespace" in obj["metadata"]) == (obj["kind"] in NAMESPACED), obj
        if obj["kind"] in NAMESPACED:
            assert obj["metadata"]["namespace"] == "mesh"
    kinds = [o["kind"] for o in objects]
    crds = kinds.count("CustomResourceDefinition")
    # CRDs first, then the Namespace before anything in it.
    assert kinds[crds:] == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                            "Role", "RoleBinding", "Service", "Deployment"]

    (deployment,) = by_kind(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "reg/meshpilot:1"
    assert pod["serviceAccountName"] == by_kind(objects, "ServiceAccount")[0]["metadata"]["name"]
    args = container["args"]
    assert args[0] == "discovery"
    assert "--config-source=kube://" in args and "--registry=kube://" in args
    assert not any(a.startswith("--secure-xds-address") for a in args)  # no CA, no secure xDS
    # Every argument is one `meshpilot discovery` accepts.
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    discovery = command.commands["discovery"]
    discovery.make_context("discovery", args[1:])
    # Several replicas share a Lease in the install namespace; POD_NAME is their identity.
    assert f"--replicas-lease=kube://?namespace=mesh&name={DEFAULT_LEASE}" in args
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} \
        in container["env"]
    ports = {p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 15014}
    assert container["readinessProbe"]["httpGet"]["port"] in ports

    (service,) = by_kind(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [15010, 15012, 15014]
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports

    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"),
                                    ("RoleBinding", "Role")):
        (binding,) = by_kind(objects, binding_kind)
        (role,) = by_kind(objects, role_kind)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                      "kind": role_kind, "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "meshpilot",
                                        "namespace": "mesh"}]


def test_one_replica_needs_no_lease_and_options_reach_the_server() -> None:
    objects = printed("--no-crds", "--no-write-status", "--ca-secret", "cacerts",
                      "--registry", "consul://consul:8500")
    assert [o["kind"] for o in objects] == ["Namespace", "ServiceAccount", "ClusterRole",
                                            "ClusterRoleBinding", "Service", "Deployment"]
    (container,) = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert not any(a.startswith("--replicas-lease") for a in container["args"])
    assert {"--no-write-status", "--ca-dir=/etc/meshpilot/ca",
            "--secure-xds-address=0.0.0.0:15012",
            "--registry=consul://consul:8500"} <= set(container["args"])
    assert container["volumeMounts"][0]["mountPath"] == "/etc/meshpilot/ca"
    # No Kubernetes registry and no status: the role only lists and watches config.
    (role,) = by_kind(objects, "ClusterRole")
    assert {v for rule in role["rules"] for v in rule["verbs"]} == {"list", "watch"}
    assert not any(g in ("", "discovery.k8s.io") for r in role["rules"] for g in r["apiGroups"])


def test_crds_cover_every_admitted_kind() -> None:
    crds = by_kind(printed(), "CustomResourceDefinition")
    found = {(c["spec"]["group"], c["spec"]["names"]["kind"]): c for c in crds}
    assert set(found) == {(k.group, k.kind) for k in SUPPORTED_KINDS}
    for spec in SUPPORTED_KINDS:
        crd = found[(spec.group, spec.kind)]
        assert crd["metadata"]["name"] == f"{plural_of(spec.kind)}.{spec.group}"
        assert crd["spec"]["names"]["plural"] == plural_of(spec.kind)
        assert crd["spec"]["scope"] == "Namespaced"
        versions = crd["spec"]["versions"]
        assert [v["name"] for v in versions] == list(spec.versions)
        assert all(v["served"] for v in versions)
        assert [v["name"] for v in versions if v["storage"]] == [spec.versions[0]]
        for version in versions:
            assert version["subresources"] == {"status": {}}
            fields = version["schema"]["openAPIV3Schema"]["properties"]
            assert fields["spec"]["x-kubernetes-preserve-unknown-fields"] is True
            assert fields["status"]["x-kubernetes-preserve-unknown-fields"] is True


# RBAC against what the code actually calls ------------------------------------------------------


def _verb(seen: Seen) -> tuple[str, str, str, str]:
    """(namespace, API group, resource[/subresource], verb) of one request, as RBAC sees it."""
    parts = [p for p in seen.path.split("/") if p]
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = "/".join([rest[0], *rest[2:3]])
    named = len(rest) > 1
    verb = {"GET": "get" if named else ("watch" if seen.query.get("watch") in ("1", "true")
                                        else "list"),
            "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    return namespace, group, resource, verb[seen.method]


def _allows(rules: list[Object], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for r in rules)


def _rules(objects: list[Object], kind: str) -> list[Object]:
    return [rule for o in by_kind(objects, kind) for rule in o["rules"]]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[KubeApiFake]:
    async with running_api(tmp_path) as fake:
        yield fake


async def test_rbac_allows_every_call_the_code_makes(api: KubeApiFake) -> None:
    api.create("v1", "Pod", pod_object("reviews-v1", "10.0.0.1", {"app": "reviews"}))
    api.create("v1", "Service", service_object("reviews", ports=[
        {"name": "http", "port": 9080, "targetPort": 8080}]))
    api.create("discovery.k8s.io/v1", "EndpointSlice", endpoint_slice_object(
        "reviews", [endpoint("10.0.0.1", "reviews-v1")], [("http", 8080)]))
    api.create(*istio_object("VirtualService", "reviews", {
        "hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}))
    source = f"kube://?kubeconfig={api.kubeconfig}&watchTimeout=2"
    store = config_source(source)
    assert isinstance(store, KubeConfigStore)
    pushes = Pushes()
    registry = create_registry(source, pushes)
    assert isinstance(registry, KubeRegistry)
    elector = LeaderElector(KubeOptions(kubeconfig=api.kubeconfig), name=DEFAULT_LEASE,
                            namespace="mesh-system", identity="replica-a",
                            lease_duration=3, renew_deadline=2, retry_period=0.2)
    api.create("v1", "Namespace", {"metadata": {"name": "mesh-system"}})
    writer = StatusWriter(store, None, elector=elector, resync=0.5)
    tasks = [asyncio.create_task(t) for t in (store.run(), elector.run(), writer.run())]
    try:
        async with running(registry):
            await eventually(lambda: elector.is_leader, 10, "the Lease")
            await eventually(lambda: api.writes_of("VirtualService", "update/status"), 5,
                             "status written")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # the leader releases its Lease
        pushes.close()

    objects = manifests(InstallOptions(namespace="mesh-system", replicas=2))
    cluster, local = _rules(objects, "ClusterRole"), _rules(objects, "Role")
    calls = {_verb(seen) for seen in api.requests}
    # Every part showed up in the log: registry, config store, status, Lease.
    assert {(g, r, v) for _, g, r, v in calls} >= {
        ("", "services", "watch"), ("discovery.k8s.io", "endpointslices", "list"),
        ("networking.istio.io", "virtualservices/status", "update"),
        ("coordination.k8s.io", "leases", "create"), ("coordination.k8s.io", "leases", "update"),
    }
    denied = [call for call in sorted(calls)
              if not _allows(cluster, *call[1:])
              and not (call[0] == "mesh-system" and _allows(local, *call[1:]))]
    assert denied == []
    # And nothing beyond what the code uses: no write verb other than the Lease's and status.
    granted = {v for rule in cluster + local for v in rule["verbs"]}
    assert granted == {"list", "watch", "get", "create", "update"}
    assert {r for rule in local for r in rule["resources"]} == {"leases"}


async def test_rbac_for_signing_rotation_is_what_the_rotation_uses(
    api: KubeApiFake, tmp_path: Path
) -> None:
    api.create("v1", "Namespace", {"metadata": {"name": "mesh-system"}})
    CertificateAuthority.load_or_create(tmp_path / "root", "cluster.local")
    rotations = []
    for identity in ("replica-a", "replica-b"):
        elector = LeaderElector(KubeOptions(kubeconfig=api.kubeconfig), name=DEFAULT_LEASE,
                                namespace="mesh-system", identity=identity,
                                lease_duration=3, renew_deadline=2, retry_period=0.2)
        rotations.append(KubeSigningRotation(
            elector, WorkloadCertificates(CertificateAuthority.load(tmp_path / "root")),
            tmp_path / "root", period=1.0, cert_ttl=60, changed=lambda: None))
    tasks = [asyncio.create_task(t) for r in rotations for t in (r.elector.run(), r.run())]
    try:
        # Created, then replaced on the period; both replicas follow.
        await eventually(lambda: len(api.writes_of("Secret")) >= 2
                         and all(r.current for r in rotations), 10, "two rotations")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    objects = manifests(InstallOptions(namespace="mesh-system", replicas=2, ca_secret="cacerts",
                                       signing_rotation=86400))
    (container,) = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert (f"--replicas-lease=kube://?namespace=mesh-system&name={DEFAULT_LEASE}"
            "&signingRotation=86400") in container["args"]
    cluster, local = _rules(objects, "ClusterRole"), _rules(objects, "Role")
    calls = {_verb(seen) for seen in api.requests}
    secret_calls = {(ns, v) for ns, g, r, v in calls if (g, r) == ("", "secrets")}
    assert {ns for ns, _ in secret_calls} == {"mesh-system"}
    denied = [call for call in sorted(calls)
              if not (call[0] == "mesh-system" and _allows(local, *call[1:]))]
    assert denied == []
    # Exactly the verbs used on secrets, only in the install namespace, nothing cluster-wide.
    assert not any("secrets" in rule["resources"] for rule in cluster)
    granted = {v for rule in local if "secrets" in rule["resources"] for v in rule["verbs"]}
    assert granted == {v for _, v in secret_calls} == {"get", "list", "watch", "create",
                                                       "update"}
    # Without rotation (or with one replica) no Secret verb is granted.
    for options in (InstallOptions(namespace="mesh-system", replicas=2, ca_secret="cacerts"),
                    InstallOptions(namespace="mesh-system", replicas=1)):
        assert not any("secrets" in rule["resources"]
                       for rule in _rules(manifests(options), "Role"))
    with pytest.raises(ValueError, match="--ca-secret"):
        manifests(InstallOptions(replicas=2, signing_rotation=60))


# The systemd examples for VMs ---------------------------------------------------------------------

SYSTEMD = Path(__file__).parent.parent / "examples" / "systemd"


def _exec_start(unit: Path, env_file: Path, instance: str) -> list[str]:
    """ExecStart's argv as systemd builds it: `${VAR}` one word, `$VAR` split on whitespace
    (dropped when empty), `%i` the instance, `%S` and `%t` the state and runtime roots."""
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
               if line and not line.startswith("#"))
    text = unit.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    specifiers = {"%i": instance, "%S": "/var/lib", "%t": "/run"}
    argv = []
    for word in line.removeprefix("ExecStart=").split():
        for key, value in specifiers.items():
            word = word.replace(key, value)
        if word.startswith("${"):
            argv.append(env[word[2:-1]])
        elif word.startswith("$"):
            argv += env[word[1:]].split()
        else:
            argv.append(word)
    return argv


@pytest.mark.parametrize(("unit", "env_file", "path"), [
    ("meshpilot-discovery.service", "discovery.env", ["discovery"]),
    ("meshpilot-sidecar@.service", "sidecar-reviews.env", ["proxy", "sidecar"]),
])
def test_systemd_units_run_commands_meshpilot_accepts(unit: str, env_file: str,
                                                       path: list[str], tmp_path: Path) -> None:
    argv = _exec_start(SYSTEMD / unit, SYSTEMD / env_file, "reviews")
    # The config directory must exist to be accepted; this machine has none in /etc.
    argv = [str(tmp_path) if a == "/etc/meshpilot/config" else a for a in argv]
    assert argv[0] == "/opt/meshpilot/.venv/bin/meshpilot"
    assert argv[1:1 + len(path)] == path
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    context = command.make_context(" ".join(path), argv[1 + len(path):])  # raises on a bad option
    if path == ["proxy", "sidecar"]:
        assert context.params["workload_name"] == "reviews"
        assert context.params["config_path"] == Path("/run/meshpilot-reviews")
