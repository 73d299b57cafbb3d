"""Sync status: per connected proxy and per xDS type, did the proxy take what was sent?

The server keeps a `WatchState` per connection and type (nonces and versions sent and acked,
the last NACK's text). From it:

    SYNCED    the proxy acknowledged the last nonce sent
    STALE     something was sent and not acknowledged yet
    NOT SENT  the proxy watches the type but nothing was sent yet
    ERROR     the proxy rejected the last response (NACK), with Envoy's text
    IGNORED   the proxy never asked for the type (e.g. ECDS, which meshpilot does not serve)

Each status carries the time it began (last ACK for SYNCED, last send otherwise), so tools show
its age. The same facts are served two ways: Istio's `/debug/syncz` JSON (one `SyncStatus` per
proxy, with nonces, which istioctl's older reader understands) and CSDS `ClientConfig` messages
for the `istio.io/debug/syncz` xDS type, which `meshpilot proxy-status` and istioctl read.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import timestamp_pb2

from meshpilot import __version__
from meshpilot.envoy.names import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshpilot.xds.connection import Connection
from meshpilot.xds.watch import WatchState

EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
SYNCZ_TYPE = "istio.io/debug/syncz"
DEFAULT_CLUSTER_ID = "Kubernetes"
"""Istio's name for the cluster of a proxy that reports none."""

TYPES = {"CDS": CLUSTER, "LDS": LISTENER, "EDS": ENDPOINT, "RDS": ROUTE, "ECDS": EXTENSION_CONFIG}
"""Short name → type URL, in istioctl's column order."""
_ISTIO_FIELDS = {
    CLUSTER: "cluster",
    LISTENER: "listener",
    ROUTE: "route",
    ENDPOINT: "endpoint",
    EXTENSION_CONFIG: "extensionconfig",
}


class Sync(enum.StrEnum):
    SYNCED = "SYNCED"
    STALE = "STALE"
    NOT_SENT = "NOT SENT"
    ERROR = "ERROR"
    IGNORED = "IGNORED"


_CONFIG_STATUS = {
    Sync.SYNCED: csds_pb2.SYNCED,
    Sync.STALE: csds_pb2.STALE,
    Sync.NOT_SENT: csds_pb2.NOT_SENT,
    Sync.ERROR: csds_pb2.ERROR,
    Sync.IGNORED: csds_pb2.UNKNOWN,
}
_CLIENT_STATUS = {
    Sync.SYNCED: dump_pb2.ACKED,
    Sync.STALE: dump_pb2.REQUESTED,
    Sync.NOT_SENT: dump_pb2.REQUESTED,
    Sync.ERROR: dump_pb2.NACKED,
    Sync.IGNORED: dump_pb2.UNKNOWN,
}


@dataclass(frozen=True, slots=True)
class TypeStatus:
    status: Sync
    since: float
    """Unix time the status began; 0 when unknown (NOT SENT, IGNORED)."""
    error: str = ""
    version_sent: str = ""
    version_acked: str = ""


def type_status(state: WatchState | None) -> TypeStatus:
    if state is None:
        return TypeStatus(Sync.IGNORED, 0.0)
    versions = {"version_sent": state.version_sent, "version_acked": state.version_acked}
    if state.last_error:
        # The rejected response is the last one sent: its send time is when the error began.
        return TypeStatus(Sync.ERROR, state.last_send_time, state.last_error, **versions)
    if not state.nonce_sent:
        return TypeStatus(Sync.NOT_SENT, 0.0, **versions)
    if state.nonce_acked == state.nonce_sent:
        return TypeStatus(Sync.SYNCED, state.last_ack_time, **versions)
    return TypeStatus(Sync.STALE, state.last_send_time, **versions)


def proxy_statuses(connection: Connection) -> dict[str, TypeStatus]:
    """Short type name (CDS, LDS, …) → status, for every type istioctl shows."""
    return {short: type_status(connection.watches.get(url)) for short, url in TYPES.items()}


def connections(
    all_connections: Iterable[Connection], namespace: str = "", proxies: Iterable[str] = ()
) -> list[Connection]:
    """Connections sorted by proxy id, optionally only one namespace or some proxy ids."""
    wanted = set(proxies)
    return sorted(
        (
            c
            for c in all_connections
            if (not namespace or c.proxy.namespace == namespace)
            and (not wanted or c.proxy.id in wanted)
        ),
        key=lambda c: (c.proxy.id, c.connected_at),
    )


def cluster_id(connection: Connection) -> str:
    return connection.proxy.cluster_id or DEFAULT_CLUSTER_ID


def proxy_version(connection: Connection) -> str:
    version = connection.proxy.metadata.get("ISTIO_VERSION")
    return version if isinstance(version, str) else ""


# Istio's /debug/syncz JSON ------------------------------------------------------------------


def sync_status_json(connection: Connection) -> dict[str, Any]:
    """One entry of `/debug/syncz`: Istio's `SyncStatus` fields, then meshpilot's per-type view.

    The nonce pairs (`cluster_sent`/`cluster_acked`, …) are what istioctl's JSON reader
    compares; the per-type objects (`CDS`, …) add the status word, its start and Envoy's error.
    """
    proxy = connection.proxy
    out: dict[str, Any] = {
        "cluster_id": cluster_id(connection),
        "proxy": proxy.id,
        "proxy_type": str(proxy.type),
        "proxy_version": proxy_version(connection),
        "istio_version": __version__,
        "namespace": proxy.namespace,
        "connection": connection.id,
        "variant": "delta" if connection.delta else "sotw",
    }
    for url, field in _ISTIO_FIELDS.items():
        state = connection.watches.get(url)
        if state is not None and state.nonce_sent:
            out[f"{field}_sent"] = state.nonce_sent
            out[f"{field}_acked"] = state.nonce_acked
    for short, status in proxy_statuses(connection).items():
        out[short] = {
            "status": str(status.status),
            "since": status.since or None,
            "error": status.error,
            "version_sent": status.version_sent,
            "version_acked": status.version_acked,
        }
    return out


# CSDS ClientConfig for `istio.io/debug/syncz` ----------------------------------------------


def client_config(connection: Connection) -> csds_pb2.ClientConfig:
    """The proxy's node and one `GenericXdsConfig` per type, as Istio's status generator sends."""
    config = csds_pb2.ClientConfig()
    config.node.id = connection.proxy.id
    config.node.cluster = connection.proxy.cluster
    config.node.metadata.update(_metadata(connection))
    for short, status in proxy_statuses(connection).items():
        entry = config.generic_xds_configs.add(type_url=TYPES[short])
        entry.config_status = _CONFIG_STATUS[status.status]
        entry.client_status = _CLIENT_STATUS[status.status]
        entry.version_info = status.version_acked or status.version_sent
        if status.since:
            entry.last_updated.CopyFrom(_timestamp(status.since))
        if status.error:
            entry.error_state.details = status.error
            entry.error_state.version_info = status.version_sent
            entry.error_state.last_update_attempt.CopyFrom(_timestamp(status.since))
    return config


def _metadata(connection: Connection) -> dict[str, Any]:
    metadata = dict(connection.proxy.metadata)
    # Readers need the cluster and namespace even when the agent left them out.
    metadata.setdefault("CLUSTER_ID", cluster_id(connection))
    metadata["CLUSTER_ID"] = metadata["CLUSTER_ID"] or cluster_id(connection)
    metadata.setdefault("NAMESPACE", connection.proxy.namespace)
    return json.loads(json.dumps(metadata, default=str))  # type: ignore[no-any-return]


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
