"""Where a sync writes: a directory of YAML, or an MCP server (and Kubernetes, later).

Every target takes the complete desired set of configs on each `apply` and makes its output
match it, touching only what changed and only what the sync owns.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import yaml

from meshpilot.mcp.server import McpServer
from meshpilot.model import Config
from meshpilot.sync.convert import MANAGED_BY, MANAGER, Groups, flatten

log = logging.getLogger("meshpilot.sync")

HEADER = f"# Written by {MANAGER}; edits are overwritten. Source: {{source}}\n"


class Target(Protocol):
    async def apply(self, groups: Groups) -> dict[str, int]:
        """Make the output match `groups`; returns counts of created/updated/deleted."""
        ...


def manifest(config: Config) -> dict[str, Any]:
    """The Kubernetes-style document for a config."""
    metadata: dict[str, Any] = {"name": config.name, "namespace": config.namespace}
    if config.labels:
        metadata["labels"] = dict(config.labels)
    if config.annotations:
        metadata["annotations"] = dict(config.annotations)
    return {
        "apiVersion": f"{config.group}/{config.version}",
        "kind": config.kind,
        "metadata": metadata,
        "spec": dict(config.spec),
    }


class DirectoryTarget:
    """One file per service, `<namespace>.<name>.yaml`, written atomically.

    A reader (`meshpilot discovery --config-dir`, istiod's file source) never sees a half-written
    file: each is written beside its final name and renamed over it. Files this sync did not
    write (no header) are never touched.
    """

    def __init__(self, directory: Path, source: str) -> None:
        self.directory = directory
        self.source = source

    def owns(self, path: Path) -> bool:
        try:
            with path.open() as handle:
                return handle.readline().startswith(f"# Written by {MANAGER}")
        except OSError:
            return False

    def render(self, configs: list[Config]) -> str:
        header = HEADER.format(source=self.source)
        body = yaml.safe_dump_all([manifest(c) for c in configs], sort_keys=False)
        return header + body

    async def apply(self, groups: Groups) -> dict[str, int]:
        # Small files, but still disk I/O: keep it off the event loop.
        return await asyncio.to_thread(self._apply, groups)

    def _apply(self, groups: Groups) -> dict[str, int]:
        self.directory.mkdir(parents=True, exist_ok=True)
        counts = {"created": 0, "updated": 0, "deleted": 0, "unchanged": 0}
        wanted: dict[Path, str] = {
            self.directory / f"{ns}.{name}.yaml": self.render(group)
            for (ns, name), group in groups.items()
        }
        for path, text in sorted(wanted.items()):
            current = path.read_text() if path.exists() else None
            if current == text:
                counts["unchanged"] += 1
                continue
            if current is not None and not self.owns(path):
                log.warning("%s exists and was not written by %s; leaving it alone", path,
                            MANAGER)
                continue
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_text(text)
            os.replace(temporary, path)
            counts["updated" if current is not None else "created"] += 1
        for path in sorted(self.directory.glob("*.yaml")):
            if path not in wanted and self.owns(path):
                path.unlink()
                counts["deleted"] += 1
        return counts


def is_owned(config: Config) -> bool:
    return config.labels.get(MANAGED_BY) == MANAGER


class McpTarget:
    """Serves the configs over MCP-over-xDS (see `meshpilot.mcp.server`)."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self._last: dict[tuple[str, str], list[Config]] = {}

    async def apply(self, groups: Groups) -> dict[str, int]:
        before, self._last = self._last, dict(groups)
        self.server.update(flatten(groups))
        return {
            "created": len(groups.keys() - before.keys()),
            "updated": sum(1 for k in groups.keys() & before.keys() if groups[k] != before[k]),
            "deleted": len(before.keys() - groups.keys()),
            "unchanged": sum(1 for k in groups.keys() & before.keys() if groups[k] == before[k]),
        }


def plan(directory: Path, groups: Groups, source: str) -> list[tuple[str, Path]]:
    """What a DirectoryTarget would do, without doing it (for --dry-run)."""
    target = DirectoryTarget(directory, source)
    actions: list[tuple[str, Path]] = []
    wanted = {
        directory / f"{ns}.{name}.yaml": target.render(g) for (ns, name), g in groups.items()
    }
    for path, text in sorted(wanted.items()):
        if not path.exists():
            actions.append(("create", path))
        elif path.read_text() != text:
            actions.append(("update" if target.owns(path) else "skip (not ours)", path))
    if directory.is_dir():
        for path in sorted(directory.glob("*.yaml")):
            if path not in wanted and target.owns(path):
                actions.append(("delete", path))
    return actions
