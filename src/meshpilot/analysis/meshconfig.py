"""The mesh-wide settings analyzers read: Istio's MeshConfig and MeshNetworks, with defaults.

A `--meshConfigFile` is merged over Istio's defaults the way Istio applies a user MeshConfig:
top-level fields replace the default, and `defaultConfig` (ProxyConfig) is merged one level
deep so setting `defaultConfig.image` keeps the default `defaultConfig.tracing`. Only the
fields some analyzer reads have defaults here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

INGRESS_MODE_OFF = "OFF"

_DEFAULTS: Mapping[str, Any] = {
    "rootNamespace": "istio-system",
    "ingressService": "istio-ingressgateway",
    "ingressSelector": "ingressgateway",
    "ingressControllerMode": "STRICT",
    "ingressClass": "istio",
    "defaultConfig": {},
    "extensionProviders": [],
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
