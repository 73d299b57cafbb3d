"""The benchmark mesh as files, and the churn scenarios as edits to those files.

    <dir>/services/svc-<i>.yaml   one ServiceEntry and its K WorkloadEntries
    <dir>/routing/svc-<i>.yaml    a DestinationRule (subsets v0, v1) and a 90/10 VirtualService,
                                  for every tenth service

One file per service keeps every change small, as it is in a real mesh: the file store re-reads
only the file written, and an edited WorkloadEntry becomes an endpoint-only (EDS) push. Files are
written to a hidden temporary name and renamed, so the watcher never reads half a file.

Every service listens on one of twenty ports (8000-8019), so sidecars get twenty outbound
listeners and twenty route configurations of about fifty virtual hosts each, as a mesh with
many services per port does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

NAMESPACE = "bench"
PORTS = 20


def host(i: int) -> str:
    return f"svc-{i}.{NAMESPACE}.svc.cluster.local"


def port_of(i: int) -> int:
    return 8000 + i % PORTS


def _address(i: int, e: int, generation: int = 0) -> str:
    # 10.<service high>.<service low>.<endpoint>; the generation moves an endpoint elsewhere.
    return f"10.{(i // 250) % 250 + generation}.{i % 250}.{e + 1}"


def service_docs(i: int, endpoints: int, generation: int = 0) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [{
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": f"svc-{i}", "namespace": NAMESPACE},
        "spec": {
            "hosts": [host(i)],
            "ports": [{"number": port_of(i), "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "location": "MESH_INTERNAL",
            "workloadSelector": {"labels": {"app": f"svc-{i}"}},
        },
    }]
    for e in range(endpoints):
        docs.append({
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": f"svc-{i}-{e}", "namespace": NAMESPACE},
            "spec": {
                # Only the first endpoint moves between generations: an endpoint change.
                "address": _address(i, e, generation if e == 0 else 0),
                "labels": {"app": f"svc-{i}", "version": f"v{e % 2}"},
            },
        })
    return docs


def routing_docs(i: int, v1_weight: int = 10) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": f"svc-{i}", "namespace": NAMESPACE},
            "spec": {
                "host": host(i),
                "subsets": [
                    {"name": "v0", "labels": {"version": "v0"}},
                    {"name": "v1", "labels": {"version": "v1"}},
                ],
            },
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": f"svc-{i}", "namespace": NAMESPACE},
            "spec": {
                "hosts": [host(i)],
                "http": [{"route": [
                    {"destination": {"host": host(i), "subset": "v0"}, "weight": 100 - v1_weight},
                    {"destination": {"host": host(i), "subset": "v1"}, "weight": v1_weight},
                ]}],
            },
        },
    ]


def sidecar_docs(visible: int, added: range = range(0)) -> list[dict[str, Any]]:
    """A namespace-wide Sidecar letting proxies reach the first `visible` services only (and
    the services the *service* scenario added)."""
    hosts = [f"./{host(i)}" for i in [*range(visible), *added]]
    return [{
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": NAMESPACE},
        "spec": {"egress": [{"hosts": hosts}]},
    }]


def write_docs(path: Path, docs: list[dict[str, Any]]) -> None:
    """Write a multi-document file atomically (JSON is YAML; the store reads `kind: List`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    os.replace(temporary, path)


class Mesh:
    """N services x K endpoints under `root`, and the edits each churn scenario makes."""

    def __init__(self, root: Path, services: int, endpoints: int, sidecar_visible: int = 0):
        self.root = root
        self.services = services
        self.endpoints = endpoints
        self.sidecar_visible = sidecar_visible
        self._generation = 0
        self._added = 0

    def write(self) -> None:
        for i in range(self.services):
            write_docs(self._service_file(i), service_docs(i, self.endpoints))
            if i % 10 == 0:
                write_docs(self._routing_file(i), routing_docs(i))
        if self.sidecar_visible:
            write_docs(self.root / "routing" / "sidecar.yaml", sidecar_docs(self.sidecar_visible))

    def _service_file(self, i: int) -> Path:
        return self.root / "services" / f"svc-{i}.json"

    def _routing_file(self, i: int) -> Path:
        return self.root / "routing" / f"svc-{i}.json"

    # Scenarios: each call makes one change, on a different service each time, and returns the
    # host it touched.

    def change_endpoint(self) -> str:
        self._generation += 1
        # Within the Sidecar's visible services when there is one, so every proxy gets it.
        span = min(self.sidecar_visible or self.services, self.services)
        i = (self._generation * 7) % span
        write_docs(self._service_file(i), service_docs(i, self.endpoints, self._generation))
        return host(i)

    def change_virtual_service(self) -> str:
        self._generation += 1
        routed = list(range(0, min(self.sidecar_visible or self.services, self.services), 10))
        i = routed[self._generation % len(routed)]
        write_docs(self._routing_file(i), routing_docs(i, v1_weight=10 + self._generation % 80))
        return host(i)

    def add_service(self) -> str:
        i = self.services + self._added
        self._added += 1
        write_docs(self._service_file(i), service_docs(i, self.endpoints))
        if self.sidecar_visible:
            # A service no Sidecar exposes reaches no proxy (correctly: nothing to push), so the
            # scoped mesh exposes each new service, as an operator adding one would.
            write_docs(self.root / "routing" / "sidecar.yaml", sidecar_docs(
                self.sidecar_visible, range(self.services, self.services + self._added)))
        return host(i)
