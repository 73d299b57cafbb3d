"""`proxy-status` rows from the server's CSDS answer (`istio.io/debug/syncz`).

One row per proxy: `NAME CLUSTER CDS LDS EDS RDS ECDS ISTIOD VERSION`, each type's status with
the age of that status (`SYNCED (2m5s)`), so "did my change reach the proxies?" is one glance.
JSON and YAML print the CSDS `ClientConfig` messages themselves, as istioctl does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from envoy.service.status.v3 import csds_pb2
from google.protobuf import json_format

from meshpilot.debug.syncz import DEFAULT_CLUSTER_ID, TYPES
from meshpilot.diagnostics.durations import human_duration
from meshpilot.diagnostics.output import Report, Table
from meshpilot.diagnostics.xdsclient import SyncReport

COLUMNS = ("NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION")

_WORDS = {
    csds_pb2.SYNCED: "SYNCED",
    csds_pb2.STALE: "STALE",
    csds_pb2.NOT_SENT: "NOT SENT",
    csds_pb2.ERROR: "ERROR",
    csds_pb2.UNKNOWN: "IGNORED",
}


@dataclass(frozen=True, slots=True)
class TypeCell:
    status: str
    since: float
    error: str

    def render(self, now: float) -> str:
        if not self.since:
            return self.status
        return f"{self.status} ({human_duration(now - self.since)})"


def metadata(config: csds_pb2.ClientConfig) -> dict[str, Any]:
    data: dict[str, Any] = json_format.MessageToDict(config.node.metadata)
    return data


def short_name(config: csds_pb2.ClientConfig) -> str:
    meta = metadata(config)
    workload, namespace = meta.get("WORKLOAD_NAME", ""), meta.get("NAMESPACE", "")
    return f"{workload}.{namespace}" if workload and namespace else ""


def type_cells(config: csds_pb2.ClientConfig) -> dict[str, TypeCell]:
    by_url = {g.type_url: g for g in config.generic_xds_configs}
    cells = {}
    for short, url in TYPES.items():
        entry = by_url.get(url)
        if entry is None:
            cells[short] = TypeCell("IGNORED", 0.0, "")
            continue
        since = entry.last_updated.ToNanoseconds() / 1e9 if entry.HasField("last_updated") else 0.0
        cells[short] = TypeCell(
            _WORDS.get(entry.config_status, "UNKNOWN"), since, entry.error_state.details
        )
    return cells


def select(report: SyncReport, namespace: str = "", proxy: str = "") -> list[csds_pb2.ClientConfig]:
    """Proxies in a namespace and/or named by node id, `workload.namespace` or a node-id part."""
    configs = [
        c for c in report.proxies if not namespace or metadata(c).get("NAMESPACE") == namespace
    ]
    if proxy:
        exact = [c for c in configs if proxy in (c.node.id, short_name(c))]
        configs = exact or [c for c in configs if proxy in c.node.id]
    return sorted(configs, key=lambda c: c.node.id)


def status_report(
    report: SyncReport, configs: list[csds_pb2.ClientConfig], now: float | None = None
) -> Report:
    now = time.time() if now is None else now
    rows = []
    for config in configs:
        meta = metadata(config)
        cells = type_cells(config)
        rows.append(
            [
                config.node.id,
                meta.get("CLUSTER_ID") or DEFAULT_CLUSTER_ID,
                *(cells[short].render(now) for short in ("CDS", "LDS", "EDS", "RDS", "ECDS")),
                report.control_plane.id,
                meta.get("ISTIO_VERSION") or report.control_plane.version,
            ]
        )
    data = [json_format.MessageToDict(c, preserving_proto_field_name=False) for c in configs]
    return Report(Table(COLUMNS, rows, padding=5), data)


def errors(configs: list[csds_pb2.ClientConfig]) -> list[str]:
    """`proxy TYPE: Envoy's text` for every rejected type, printed under the table."""
    out = []
    for config in configs:
        for short, cell in type_cells(config).items():
            if cell.error:
                out.append(f"{config.node.id} {short}: {cell.error}")
    return out
