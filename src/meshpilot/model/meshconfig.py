"""Mesh-wide settings: Istio's MeshConfig and MeshNetworks, with Istio's defaults.

Read from `meshpilot discovery --mesh-config FILE` and `meshpilot analyze --meshConfigFile`. A
user file is merged over the defaults the way Istio applies one: top-level fields replace the
default, and `defaultConfig` (ProxyConfig) is merged one level deep so setting
`defaultConfig.image` keeps the default `defaultConfig.tracing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

INGRESS_MODE_OFF = "OFF"

_DEFAULTS: Mapping[str, Any] = {
    "rootNamespace": "istio-system",
    "ingressService": "istio-ingressgateway",
    "ingressSelector": "ingressgateway",
    "ingressControllerMode": "STRICT",
    "ingressClass": "istio",
    "defaultConfig": {},
    "extensionProviders": [],
    "outboundTrafficPolicy": {"mode": "ALLOW_ANY"},
    "enableTracing": True,
    "trustDomain": "cluster.local",
}


@dataclass(frozen=True, slots=True)
class MeshConfig:
    data: Mapping[str, Any] = field(default_factory=lambda: dict(_DEFAULTS))
    networks: Mapping[str, Any] = field(default_factory=dict)
    """MeshNetworks `networks`: network name → {endpoints, gateways}."""
    networks_file: str = ""
    """Where the MeshNetworks came from, so messages about it can point there."""

    @classmethod
    def from_user(
        cls,
        mesh: Mapping[str, Any] | None = None,
        networks: Mapping[str, Any] | None = None,
        networks_file: str = "",
    ) -> MeshConfig:
        data = dict(_DEFAULTS)
        for key, value in (mesh or {}).items():
            if key == "defaultConfig" and isinstance(value, Mapping):
                data[key] = {**data.get(key, {}), **value}
            else:
                data[key] = value
        nets = (networks or {}).get("networks", {})
        return cls(data, nets if isinstance(nets, Mapping) else {}, networks_file)

    @property
    def root_namespace(self) -> str:
        return str(self.data.get("rootNamespace") or "istio-system")

    @property
    def ingress_service(self) -> str:
        return str(self.data.get("ingressService") or "istio-ingressgateway")

    @property
    def ingress_selector(self) -> str:
        return str(self.data.get("ingressSelector") or "ingressgateway")

    @property
    def ingress_controller_mode(self) -> str:
        return str(self.data.get("ingressControllerMode") or "STRICT").upper()

    @property
    def default_config(self) -> Mapping[str, Any]:
        value = self.data.get("defaultConfig")
        return value if isinstance(value, Mapping) else {}

    @property
    def proxy_metadata(self) -> Mapping[str, str]:
        value = self.default_config.get("proxyMetadata")
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}

    @property
    def extension_providers(self) -> list[Mapping[str, Any]]:
        value = self.data.get("extensionProviders")
        if not isinstance(value, list):
            return []
        return [p for p in value if isinstance(p, Mapping)]

    @property
    def outbound_traffic_policy(self) -> str:
        value = self.data.get("outboundTrafficPolicy")
        mode = value.get("mode") if isinstance(value, Mapping) else None
        return str(mode or "ALLOW_ANY").upper()

    def cluster_local(self, host: str) -> bool:
        """Whether `serviceSettings` make `host` cluster-local: clients reach only the
        endpoints in their own cluster."""
        from meshpilot.model.hosts import host_matches

        for entry in self.data.get("serviceSettings") or ():
            if (entry.get("settings") or {}).get("clusterLocal") and any(
                host_matches(str(pattern), host) for pattern in entry.get("hosts") or ()
            ):
                return True
        return False

    @property
    def trust_domain(self) -> str:
        return str(self.data.get("trustDomain") or "cluster.local")

    @property
    def enable_tracing(self) -> bool:
        return bool(self.data.get("enableTracing", True))

    @property
    def default_providers(self) -> Mapping[str, list[str]]:
        value = self.data.get("defaultProviders")
        if not isinstance(value, Mapping):
            return {}
        return {str(k): [str(n) for n in v] for k, v in value.items() if isinstance(v, list)}

    def provider(self, name: str) -> Mapping[str, Any] | None:
        return next((p for p in self.extension_providers if p.get("name") == name), None)

    @property
    def tracing_sampling(self) -> float:
        """`defaultConfig.tracing.sampling`, a percentage; Istio's default is 1%."""
        tracing = self.default_config.get("tracing")
        value = tracing.get("sampling") if isinstance(tracing, Mapping) else None
        return float(value) if value is not None else 1.0

    @property
    def access_log_file(self) -> str:
        return str(self.data.get("accessLogFile") or "")

    @property
    def access_log_format(self) -> str:
        return str(self.data.get("accessLogFormat") or "")

    @property
    def access_log_encoding(self) -> str:
        return str(self.data.get("accessLogEncoding") or "TEXT").upper()


def load_mesh_config(path: str | None, networks_path: str | None = None) -> MeshConfig:
    """MeshConfig and MeshNetworks files (YAML or JSON); an error names the file."""
    return MeshConfig.from_user(
        _load(path, "MeshConfig") if path else {},
        _load(networks_path, "MeshNetworks") if networks_path else None,
        networks_path or "",
    )


def _load(path: str, what: str) -> Mapping[str, Any]:
    with open(path) as handle:
        try:
            data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: {error}") from error
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: a {what} must be a mapping")
    return data
