"""Registry addresses as users write them: `scheme://host:port[,host:port…]/path?key=value`.

    consul://127.0.0.1:8500?datacenter=dc1
    eureka://127.0.0.1:8761/eureka
    nacos://127.0.0.1:8848?namespace=public&group=DEFAULT_GROUP
    zookeeper://127.0.0.1:2181/dubbo
    etcd://127.0.0.1:2379?prefix=/micro/registry&layout=go-micro

Query parameters are shared by every scheme for the mapping rules (see `mapping`) and the
common behaviour (see `catalog`); each adapter documents its own extra ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

HOSTLESS_SCHEMES = frozenset({"file", "kube"})
"""Schemes whose URL names a path or a kubeconfig, not a server (`file:///etc/mesh/x.yaml`,
`kube://?kubeconfig=PATH`)."""


class RegistryUrlError(ValueError):
    """A registry URL that cannot be used, with the reason."""


@dataclass(frozen=True, slots=True)
class RegistryUrl:
    scheme: str
    hosts: tuple[tuple[str, int], ...]
    path: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    text: str = ""
    """The URL as given, for messages."""

    @property
    def name(self) -> str:
        """A short identity for logs, metrics and debug pages: `scheme@host:port`."""
        if not self.hosts:
            return self.params.get("name") or f"{self.scheme}:{self.path}"
        host, port = self.hosts[0]
        return self.params.get("name") or f"{self.scheme}@{host}:{port}"

    def param(self, key: str, default: str = "") -> str:
        return self.params.get(key, default)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.params.get(key)
        if value is None:
            return default
        return value.lower() in ("1", "true", "yes", "on")

    def number(self, key: str, default: float) -> float:
        value = self.params.get(key)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError as error:
            raise RegistryUrlError(f"{self.text}: {key}={value!r} is not a number") from error


def parse_registry_url(text: str, default_ports: Mapping[str, int] | None = None) -> RegistryUrl:
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if not scheme or "://" not in text:
        raise RegistryUrlError(f"{text!r}: expected scheme://host:port, e.g. consul://127.0.0.1:8500")
    hosts = []
    for item in parts.netloc.split(","):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, ""
        if not port:
            default = (default_ports or {}).get(scheme)
            if default is None:
                raise RegistryUrlError(f"{text!r}: {item!r} needs a port")
            port = str(default)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise RegistryUrlError(f"{text!r}: {item!r} has no valid port")
        hosts.append((host.strip("[]"), int(port)))
    if not hosts and scheme not in HOSTLESS_SCHEMES:
        raise RegistryUrlError(f"{text!r}: no host given")
    return RegistryUrl(
        scheme=scheme,
        hosts=tuple(hosts),
        path=parts.path,
        params=dict(parse_qsl(parts.query, keep_blank_values=True)),
        text=text,
    )
