"""The `file://` registry: a watched file of instances."""

from __future__ import annotations

import json
from pathlib import Path

from meshpilot.registry.filesource import FileRegistry
from meshpilot.registry.plugins import create_registry
from tests.registry_helpers import Pushes, addresses, eventually, running

HOST = "orders.default.file"


def instances(*addresses: str) -> str:
    return json.dumps({"services": {"orders": [{"address": a, "ports": {"http": 8080}}
                                               for a in addresses]}})


async def test_edits_are_followed(tmp_path: Path) -> None:
    path = tmp_path / "instances.yaml"
    path.write_text(instances("10.0.0.1"))
    pushes = Pushes()
    registry = create_registry(f"file://{path}", pushes)
    async with running(registry):
        assert addresses(registry, HOST) == ["10.0.0.1:8080"]
        path.write_text(instances("10.0.0.1", "10.0.0.2"))
        await eventually(lambda: addresses(registry, HOST) == ["10.0.0.1:8080", "10.0.0.2:8080"],
                         what="the second instance")
    pushes.close()


async def test_a_write_between_first_read_and_watch_start_is_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "instances.yaml"
    path.write_text(instances("10.0.0.1"))

    class Racing(FileRegistry):
        """Writes the file right after its first read, before the watch is running."""

        raced = False

        def _load(self) -> None:
            super()._load()
            if not self.raced:
                self.raced = True
                path.write_text(instances("10.0.0.9"))

    pushes = Pushes()
    registry = create_registry(f"file://{path}", pushes)
    assert isinstance(registry, FileRegistry)
    registry.__class__ = Racing
    async with running(registry):
        await eventually(lambda: addresses(registry, HOST) == ["10.0.0.9:8080"], seconds=5,
                         what="the write made before the watch started")
    pushes.close()
