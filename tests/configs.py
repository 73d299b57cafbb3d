"""Builders for Istio config used across tests."""

from __future__ import annotations

from typing import Any

from meshpilot.model import Config, Kind


def service_entry(
    name: str,
    hosts: list[str],
    ports: list[dict[str, Any]] | None = None,
    namespace: str = "default",
    selector: dict[str, str] | None = None,
    endpoints: list[dict[str, Any]] | None = None,
    resolution: str = "STATIC",
) -> Config:
    spec: dict[str, Any] = {
        "hosts": hosts,
        "ports": ports or [{"number": 9080, "name": "http", "protocol": "HTTP"}],
        "resolution": resolution,
        "location": "MESH_INTERNAL",
    }
    if selector is not None:
        spec["workloadSelector"] = {"labels": selector}
    if endpoints is not None:
        spec["endpoints"] = endpoints
    return Config(kind=Kind.SERVICE_ENTRY, name=name, namespace=namespace, spec=spec)


def workload_entry(
    name: str,
    address: str,
    labels: dict[str, str],
    ports: dict[str, int] | None = None,
    namespace: str = "default",
) -> Config:
    spec: dict[str, Any] = {"address": address, "labels": labels}
    if ports:
        spec["ports"] = ports
    return Config(kind=Kind.WORKLOAD_ENTRY, name=name, namespace=namespace, spec=spec)


def virtual_service(
    name: str, hosts: list[str], http: list[dict[str, Any]], namespace: str = "default"
) -> Config:
    return Config(
        kind=Kind.VIRTUAL_SERVICE,
        name=name,
        namespace=namespace,
        spec={"hosts": hosts, "http": http},
    )


def destination_rule(
    name: str, host: str, subsets: list[dict[str, Any]], namespace: str = "default"
) -> Config:
    return Config(
        kind=Kind.DESTINATION_RULE,
        name=name,
        namespace=namespace,
        spec={"host": host, "subsets": subsets},
    )
