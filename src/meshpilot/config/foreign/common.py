"""What the translators share: derived configs, reference errors, service host names."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshpilot.model import Config, ConfigError, ConfigKey
from meshpilot.model.hosts import resolve_short_name

DERIVED_FROM = "meshpilot.io/derived-from"
"""Annotation on a derived Istio config naming the foreign object it came from."""


@dataclass
class Translation:
    configs: list[Config] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)
    status: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    """`Kind ns/name` → conditions (type, status, reason, message), for route status."""

    def error(self, source: Config, message: str, path: str = "") -> None:
        self.errors.append(ConfigError(source.source_file, source.line_of(path) if path else
                                       source.source_line, message, path, source.key))


def service_host(name: str, namespace: str) -> str:
    """A Kubernetes-style service reference: a bare name is `name.ns.svc.cluster.local`;
    anything with a dot (a ServiceEntry host such as `shop.default.file`) is taken as is."""
    return resolve_short_name(name, namespace)


def derived(kind: str, name: str, source: Config, spec: dict[str, object]) -> Config:
    return Config(
        kind=kind,
        name=name,
        namespace=source.namespace,
        spec=spec,
        annotations={DERIVED_FROM: f"{source.group}/{source.version} {source.key}"},
        source_file=source.source_file,
        source_line=source.source_line,
        field_lines=source.field_lines,
    )


def key_of(kind: str, namespace: str, name: str) -> ConfigKey:
    return ConfigKey(kind, namespace, name)
