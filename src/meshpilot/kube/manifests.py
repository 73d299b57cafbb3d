"""The Kubernetes objects that run `meshpilot discovery` in a cluster (`meshpilot install
manifests`).

Printed in the order `kubectl apply -f` needs them: the custom resource definitions, the
Namespace, the ServiceAccount, RBAC, the Service and the Deployment.

RBAC is derived from the code, not written by hand: the resources the Kubernetes registry
(`registry/kube.py`) and config store (`config/kube_source.py`) list and watch, the status
subresource the status writer (`kube/status.py`) replaces, the Lease the leader elector
(`kube/leader.py`) gets, creates and updates, and — with `--signing-rotation` — the Secret the
signing-CA rotation (`kube/signing.py`) reads, lists, watches, creates and replaces. Reads are
cluster-wide (a ClusterRole, since both watch every namespace); the Lease and the Secret live
in the install namespace, so their verbs are a Role there.

CRDs: Istio's published CRDs carry full OpenAPI schemas, far too large to generate here. These
are minimal — every version meshpilot reads, served, one stored, the spec and status kept as
given (`x-kubernetes-preserve-unknown-fields`) and a status subresource — which is all the
config store needs, since it validates every object itself as it validates files. Where the
real CRDs are installed (Istio's, Gateway API's, SMI's) leave these out: `--no-crds`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import yaml

from meshpilot import __version__
from meshpilot.config.kinds import SUPPORTED_KINDS, KindSpec
from meshpilot.kube.client import (
    ENDPOINT_SLICES,
    LEASES,
    NODES,
    PODS,
    SECRETS,
    SERVICES,
    Resource,
    plural_of,
)
from meshpilot.kube.replicas import DEFAULT_LEASE

Object = dict[str, Any]

XDS_PORT = 15010
SECURE_XDS_PORT = 15012
MONITORING_PORT = 15014
DEFAULT_IMAGE = f"meshpilot:{__version__}"
LIST_WATCH = ["list", "watch"]
LEASE_VERBS = ["get", "create", "update"]
"""Leader election: read the Lease, create it when absent, renew or take it over (PUT)."""
SIGNING_VERBS = ["get", "list", "watch", "create", "update"]
"""Signing-CA rotation: every replica lists and watches the Secret; the leader reads it, creates
it when absent and replaces it (PUT with the resourceVersion read)."""
STATUS_VERBS = ["update"]
"""The status writer replaces the status subresource (PUT with the resourceVersion read)."""


@dataclass(frozen=True, slots=True)
class InstallOptions:
    namespace: str = "istio-system"
    name: str = "meshpilot"
    replicas: int = 1
    image: str = DEFAULT_IMAGE
    config_sources: Sequence[str] = ("kube://",)
    registries: Sequence[str] = ("kube://",)
    write_status: bool = True
    crds: bool = True
    ca_secret: str = ""
    """A Secret holding a plug-in CA (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
    `cert-chain.pem`), mounted as `--ca-dir`; '' runs without a mesh CA."""
    signing_rotation: float = 0.0
    """With several replicas and a self-signed root in `ca_secret`: the leader rotates a
    signing intermediate every this many seconds, kept in a Secret (`kube/signing.py`)."""
    extra_args: Sequence[str] = field(default_factory=tuple)

    @property
    def lease(self) -> str:
        """`--replicas-lease` when several replicas run: only one may write status."""
        if self.replicas <= 1:
            return ""
        lease = f"kube://?namespace={quote(self.namespace)}&name={DEFAULT_LEASE}"
        if self.rotates:
            lease += f"&signingRotation={self.signing_rotation:g}"
        return lease

    @property
    def rotates(self) -> bool:
        return self.replicas > 1 and self.signing_rotation > 0


def _uses_kube(addresses: Iterable[str]) -> bool:
    return any(a.startswith("kube://") for a in addresses)


def _labels(options: InstallOptions) -> dict[str, str]:
    return {"app": options.name, "app.kubernetes.io/name": options.name,
            "app.kubernetes.io/component": "discovery"}


# CRDs -----------------------------------------------------------------------------------------


def _by_group_kind() -> dict[tuple[str, str], KindSpec]:
    return {(spec.group, spec.kind): spec for spec in SUPPORTED_KINDS}


def crd(spec: KindSpec) -> Object:
    plural = plural_of(spec.kind)
    loose = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    versions = [
        {
            "name": version,
            "served": True,
            "storage": index == 0,  # the preferred version, which the config store reads
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": loose, "status": loose}}},
            "subresources": {"status": {}},
        }
        for index, version in enumerate(spec.versions)
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{spec.group}"},
        "spec": {
            "group": spec.group,
            "names": {"kind": spec.kind, "plural": plural, "singular": spec.kind.lower(),
                      "listKind": f"{spec.kind}List"},
            "scope": "Namespaced",
            "versions": versions,
        },
    }


# RBAC -----------------------------------------------------------------------------------------


def _rule(resources: Iterable[Resource], verbs: list[str], subresource: str = "") -> list[Object]:
    """One rule per API group, resources sorted, as `kubectl describe` groups them."""
    groups: dict[str, set[str]] = {}
    for r in resources:
        groups.setdefault(r.group, set()).add(f"{r.plural}/{subresource}" if subresource
                                              else r.plural)
    return [{"apiGroups": [group], "resources": sorted(plurals), "verbs": verbs}
            for group, plurals in sorted(groups.items())]


def config_resources() -> list[Resource]:
    return [Resource(spec.group, spec.versions[0], plural_of(spec.kind), spec.kind)
            for spec in _by_group_kind().values()]


def cluster_rules(options: InstallOptions) -> list[Object]:
    rules: list[Object] = []
    if _uses_kube(options.registries):
        rules += _rule((SERVICES, PODS, ENDPOINT_SLICES, NODES), LIST_WATCH)
    if _uses_kube(options.config_sources):
        rules += _rule(config_resources(), LIST_WATCH)
        if options.write_status:
            rules += _rule(config_resources(), STATUS_VERBS, "status")
    return rules


def namespace_rules(options: InstallOptions) -> list[Object]:
    if not options.lease:
        return []
    rules = _rule((LEASES,), LEASE_VERBS)
    if options.rotates:
        rules += _rule((SECRETS,), SIGNING_VERBS)
    return rules


def _rbac(options: InstallOptions) -> list[Object]:
    subject = [{"kind": "ServiceAccount", "name": options.name, "namespace": options.namespace}]
    objects: list[Object] = []
    if cluster_rules(options):
        objects += [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": options.name, "labels": _labels(options)},
             "rules": cluster_rules(options)},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": options.name, "labels": _labels(options)},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": options.name},
             "subjects": subject},
        ]
    if namespace_rules(options):
        meta = {"name": options.name, "namespace": options.namespace, "labels": _labels(options)}
        objects += [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
             "rules": namespace_rules(options)},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": meta,
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": options.name},
             "subjects": subject},
        ]
    return objects


# Workload -------------------------------------------------------------------------------------


def discovery_args(options: InstallOptions) -> list[str]:
    # The console stays off: it would keep a generated credential in a state directory the
    # pod does not persist, and the Service does not expose it.
    args = ["discovery", f"--xds-address=0.0.0.0:{XDS_PORT}",
            f"--debug-address=0.0.0.0:{MONITORING_PORT}", "--console-address="]
    args += [f"--config-source={s}" for s in options.config_sources]
    args += [f"--registry={r}" for r in options.registries]
    if options.lease:
        args.append(f"--replicas-lease={options.lease}")
    if not options.write_status:
        args.append("--no-write-status")
    if options.ca_secret:
        # Secure xDS (mutual TLS, 15012) needs the mesh CA; without it only 15010 serves.
        args += ["--ca-dir=/etc/meshpilot/ca", f"--secure-xds-address=0.0.0.0:{SECURE_XDS_PORT}"]
    return args + list(options.extra_args)


def _deployment(options: InstallOptions) -> Object:
    labels = _labels(options)
    ready = {"httpGet": {"path": "/ready", "port": MONITORING_PORT},
             "periodSeconds": 3, "failureThreshold": 2}
    container: Object = {
        "name": "discovery",
        "image": options.image,
        "args": discovery_args(options),
        "ports": [
            {"name": "grpc-xds", "containerPort": XDS_PORT, "protocol": "TCP"},
            {"name": "https-xds", "containerPort": SECURE_XDS_PORT, "protocol": "TCP"},
            {"name": "http-monitoring", "containerPort": MONITORING_PORT, "protocol": "TCP"},
        ],
        # POD_NAME is the leader election identity (kube/leader.py) and the status writer's
        # User-Agent, so the Lease and the objects' writes name the pod.
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        # Ready only once every source has synced: a new replica takes no proxies before it
        # holds the whole mesh. Liveness does not use /ready, so an unreachable API server
        # (the server keeps serving its last config) does not restart the pod.
        "readinessProbe": ready,
        "startupProbe": {**ready, "failureThreshold": 60},
        "livenessProbe": {"tcpSocket": {"port": MONITORING_PORT}, "periodSeconds": 10},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1337,
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    pod: Object = {"serviceAccountName": options.name, "containers": [container]}
    if options.ca_secret:
        container["volumeMounts"] = [{"name": "ca", "mountPath": "/etc/meshpilot/ca",
                                      "readOnly": True}]
        pod["volumes"] = [{"name": "ca", "secret": {"secretName": options.ca_secret}}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": options.name, "namespace": options.namespace, "labels": labels},
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": {"app": options.name}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def _service(options: InstallOptions) -> Object:
    ports = [("grpc-xds", XDS_PORT), ("https-xds", SECURE_XDS_PORT),
             ("http-monitoring", MONITORING_PORT)]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": options.name, "namespace": options.namespace,
                     "labels": _labels(options)},
        "spec": {
            "selector": {"app": options.name},
            "ports": [{"name": n, "port": p, "targetPort": p, "protocol": "TCP"}
                      for n, p in ports],
        },
    }


def manifests(options: InstallOptions) -> list[Object]:
    if options.replicas < 1:
        raise ValueError("--replicas must be at least 1")
    if options.signing_rotation > 0 and not options.ca_secret:
        raise ValueError("--signing-rotation needs --ca-secret (a self-signed root and its key)")
    if options.signing_rotation > 0 and options.replicas < 2:
        raise ValueError("--signing-rotation is done by the leader of several replicas: "
                         "--replicas 2 or more")
    objects: list[Object] = []
    if options.crds and _uses_kube(options.config_sources):
        objects += [crd(spec) for spec in _by_group_kind().values()]
    meta = {"name": options.name, "namespace": options.namespace, "labels": _labels(options)}
    objects += [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": options.namespace}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        *_rbac(options),
        _service(options),
        _deployment(options),
    ]
    return objects


class _PlainDumper(yaml.SafeDumper):
    """Writes a dict used twice in full both times: anchors and aliases (`&id001`) are valid
    YAML but hard to read and edit in manifests."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(objects: Sequence[Object]) -> str:
    return yaml.dump_all(objects, Dumper=_PlainDumper, sort_keys=False)
