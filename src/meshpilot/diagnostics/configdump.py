"""Reading an Envoy `/config_dump` (live or saved to a file) as plain JSON.

A dump is a list of sections, each tagged with its message type (`…ClustersConfigDump`,
`…ListenersConfigDump`, …). `EnvoyDump` finds the sections by type and hands out the resources
inside them, static and dynamic alike, in the JSON form Envoy printed them. The dump may also
be the JSON of `/clusters?format=json`, which is what `proxy-config endpoint` reads from a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class EnvoyDump:
    data: JsonDict

    @classmethod
    def load(cls, path: Path) -> EnvoyDump:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable JSON config dump: {error}") from error
        if not isinstance(data, dict) or not ("configs" in data or "cluster_statuses" in data):
            raise ValueError(f"{path}: not an Envoy config dump (no 'configs')")
        return cls(data)

    def section(self, name: str) -> JsonDict:
        """The section whose type ends with `name`, e.g. `ClustersConfigDump`; {} if absent."""
        for config in self.data.get("configs") or ():
            if str(config.get("@type", "")).endswith("." + name):
                section: JsonDict = config
                return section
        return {}

    # Clusters -----------------------------------------------------------------------------------

    def dynamic_clusters(self) -> list[JsonDict]:
        section = self.section("ClustersConfigDump")
        return [c["cluster"] for c in section.get("dynamic_active_clusters") or ()]

    def clusters(self) -> list[JsonDict]:
        section = self.section("ClustersConfigDump")
        static = [c["cluster"] for c in section.get("static_clusters") or ()]
        return static + self.dynamic_clusters()

    # Listeners ----------------------------------------------------------------------------------

    def dynamic_listeners(self) -> list[JsonDict]:
        section = self.section("ListenersConfigDump")
        return [
            entry["active_state"]["listener"]
            for entry in section.get("dynamic_listeners") or ()
            if "active_state" in entry
        ]

    def listeners(self) -> list[JsonDict]:
        section = self.section("ListenersConfigDump")
        static = [entry["listener"] for entry in section.get("static_listeners") or ()]
        return static + self.dynamic_listeners()

    def listener_errors(self) -> list[JsonDict]:
        """Dynamic listeners Envoy could not apply, with its error text."""
        section = self.section("ListenersConfigDump")
        return [
            {"name": entry.get("name", ""), **entry["error_state"]}
            for entry in section.get("dynamic_listeners") or ()
            if "error_state" in entry
        ]

    # Routes -------------------------------------------------------------------------------------

    def dynamic_route_configs(self) -> list[JsonDict]:
        section = self.section("RoutesConfigDump")
        return [r["route_config"] for r in section.get("dynamic_route_configs") or ()]

    def route_configs(self) -> list[JsonDict]:
        section = self.section("RoutesConfigDump")
        static = [r["route_config"] for r in section.get("static_route_configs") or ()]
        return static + self.dynamic_route_configs()

    def routes_last_updated(self) -> str:
        """The newest `last_updated` of the dynamic route configurations ('' if none)."""
        section = self.section("RoutesConfigDump")
        stamps = [r.get("last_updated", "") for r in section.get("dynamic_route_configs") or ()]
        return max((s for s in stamps if s), default="")

    # Endpoints, bootstrap, secrets --------------------------------------------------------------

    def endpoint_configs(self) -> list[JsonDict]:
        section = self.section("EndpointsConfigDump")
        return [
            *(e["endpoint_config"] for e in section.get("static_endpoint_configs") or ()),
            *(e["endpoint_config"] for e in section.get("dynamic_endpoint_configs") or ()),
        ]

    def bootstrap(self) -> JsonDict:
        section = self.section("BootstrapConfigDump")
        bootstrap: JsonDict = section.get("bootstrap") or {}
        return bootstrap

    def secrets(self) -> list[JsonDict]:
        """Static and dynamic (active and warming) secrets, each with a `state` field added."""
        section = self.section("SecretsConfigDump")
        out: list[JsonDict] = []
        for entry in section.get("static_secrets") or ():
            out.append({"state": "STATIC", **entry})
        for key, state in (
            ("dynamic_active_secrets", "ACTIVE"),
            ("dynamic_warming_secrets", "WARMING"),
        ):
            for entry in section.get(key) or ():
                out.append({"state": state, **entry})
        return out

    def node(self) -> JsonDict:
        node: JsonDict = self.bootstrap().get("node") or {}
        return node
