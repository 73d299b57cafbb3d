"""A registry kept in a file: `file:///path/instances.yaml` (YAML or JSON), watched.

For services that live in no registry at all, or that a script maintains:

    services:
      orders:                       # the service name (host: orders.<namespace>.file)
      - address: 10.0.0.1
        ports: {http: 8080}         # port name → number (a bare number is an unnamed port)
        metadata: {version: v1}     # labels; also `locality`, `network`, `protocol`
        healthy: true               # default true
        weight: 1
      - {address: 10.0.0.2, ports: 8080}

The file is re-read when it changes. A file that cannot be read or parsed is reported and the
last good contents keep serving (the registry shows as stale), as with every other registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import watchfiles
import yaml

from meshpilot.model import Protocol
from meshpilot.registry.base import ServiceRegistry, Updater
from meshpilot.registry.catalog import ExternalRegistry, RegistryError
from meshpilot.registry.mapping import Instance, MappingRules
from meshpilot.registry.urls import RegistryUrl


def parse_instances(text: str, source: str) -> dict[str, list[Instance]]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise RegistryError(f"{source}: {error}") from error
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict):
        raise RegistryError(f"{source}: expected a mapping `services: {{name: [instances]}}`")
    out: dict[str, list[Instance]] = {}
    for name, items in services.items():
        if not isinstance(items, list):
            raise RegistryError(f"{source}: services.{name} must be a list of instances")
        out[str(name)] = [_instance(str(name), i, item, source) for i, item in enumerate(items)]
    return out


def _instance(service: str, index: int, item: Any, source: str) -> Instance:
    where = f"{source}: services.{service}[{index}]"
    if not isinstance(item, dict) or not item.get("address"):
        raise RegistryError(f"{where}: an instance needs an address")
    raw_ports = item.get("ports", {})
    ports = {"": raw_ports} if isinstance(raw_ports, int) else raw_ports
    if not isinstance(ports, dict) or not all(isinstance(p, int) for p in ports.values()):
        raise RegistryError(f"{where}: ports must be a number or a mapping name → number")
    metadata = {str(k): str(v) for k, v in (item.get("metadata") or {}).items()}
    return Instance(
        service=service,
        id=str(item.get("id") or f"{service}-{item['address']}"),
        address=str(item["address"]),
        ports={str(k): int(v) for k, v in ports.items()},
        metadata=metadata,
        healthy=bool(item.get("healthy", True)),
        weight=int(item.get("weight", 1)),
    )


RECHECK_MS = 1000


class FileRegistry(ExternalRegistry):
    def __init__(self, url: RegistryUrl, updater: Updater) -> None:
        super().__init__(url, updater, MappingRules.from_url(url, Protocol.HTTP))
        self.path = Path(url.path)
        self._loaded: tuple[int, int, int] | None = None

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _load(self) -> None:
        signature = self._signature()
        try:
            text = self.path.read_text()
        except OSError as error:
            raise RegistryError(f"{self.path}: {error.strerror or error}") from error
        self.catalog.replace_all(parse_instances(text, str(self.path)))
        self._loaded = signature
        self.synced()

    async def watch(self) -> None:
        self._load()
        # The watch starts after that first read, so a write in between would go unseen until
        # the next one: every quiet second the file's stat is compared with what was read.
        async for changes in watchfiles.awatch(
            self.path.parent, debounce=50, step=20, rust_timeout=RECHECK_MS,
            yield_on_timeout=True, watch_filter=lambda _, p: Path(p) == self.path,
        ):
            if changes or self._signature() != self._loaded:
                self._load()


def create(url: RegistryUrl, updater: Updater) -> ServiceRegistry:
    return FileRegistry(url, updater)
