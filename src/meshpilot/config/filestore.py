"""A config store fed by directories of YAML/JSON files, kept current by a file watcher.

Every file is read on its own into a `_FileContents`: the resources it contributes and the
errors it has. The store's contents are derived from all files: for each resource key the
first file (by sorted path) that defines it wins; later definitions are reported as duplicates.
A change therefore re-reads only the changed files and re-derives only the keys those files
define or used to define, firing the minimal add/update/delete events through MemoryStore.

A bad edit never takes traffic down:
- a rejected document keeps the last good version of the same resource (same kind, namespace
  and name, from the same file) serving, and records the error until the document is fixed;
- when a file can't be understood well enough to tell which resources it defines (a YAML
  syntax error, a document without kind or name, an unreadable file), every resource it
  previously defined keeps serving;
- other files are never affected.

The watcher (`watchfiles.awatch`) reports changed paths in small debounced batches. Files are
read in a worker thread; applying the result, and so every handler, runs on the event loop. If
a watched directory disappears or reappears the watch is restarted and the store resynced from
a full scan, because inotify cannot follow a directory that was replaced.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import watchfiles

from meshpilot.config.kinds import document_to_config
from meshpilot.config.store import MemoryStore
from meshpilot.config.validation import validate_config
from meshpilot.config.yamlsource import JSON_SUFFIXES, YAML_SUFFIXES, read_config_file
from meshpilot.model import Config, ConfigError, ConfigKey

log = logging.getLogger("meshpilot.config")

CONFIG_SUFFIXES = YAML_SUFFIXES | JSON_SUFFIXES


def is_config_name(name: str) -> bool:
    """A file name worth reading: YAML/JSON, not hidden, not an editor's temporary file."""
    if name.startswith((".", "#")) or name.endswith("~"):
        return False
    return os.path.splitext(name)[1].lower() in CONFIG_SUFFIXES


def format_error(error: ConfigError) -> str:
    """`path:line: Kind ns/name: field: message`, leaving out the parts that are unknown."""
    parts = [f"{error.file}:{error.line}" if error.line else error.file]
    if error.key is not None:
        parts.append(str(error.key))
    if error.field:
        parts.append(error.field)
    parts.append(error.message)
    return ": ".join(parts)


def _error_order(error: ConfigError) -> tuple[str, int, str, str]:
    return (error.file, error.line, error.field, error.message)


@dataclass(frozen=True, slots=True)
class _Reading:
    """What a fresh read of one file found."""

    configs: dict[ConfigKey, Config]
    """Accepted documents; the first one wins when a file repeats a key."""
    errors: tuple[ConfigError, ...]
    rejected: frozenset[ConfigKey]
    """Resources whose document was rejected: their last good version keeps serving."""
    unidentified: bool = False
    """Something in the file could not be tied to a resource: keep everything it had."""


@dataclass(frozen=True, slots=True)
class _FileContents:
    """What one file currently contributes to the store."""

    configs: dict[ConfigKey, Config]
    errors: tuple[ConfigError, ...]


def _read_file(path: Path) -> _Reading | None:
    """Read, convert and validate one file; None when the file no longer exists."""
    file = str(path)
    try:
        parsed = read_config_file(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if not path.is_file():
            return None
        error = ConfigError(file, 0, f"cannot read file: {exc.strerror or exc}")
        return _Reading({}, (error,), frozenset(), unidentified=True)
    if parsed.error is not None:
        return _Reading({}, (parsed.error,), frozenset(), unidentified=True)
    configs: dict[ConfigKey, Config] = {}
    errors: list[ConfigError] = []
    rejected: set[ConfigKey] = set()
    unidentified = False
    for document in parsed.documents:
        result = document_to_config(document, file)
        if isinstance(result, ConfigError):
            errors.append(result)
            unidentified = unidentified or result.key is None
            if result.key is not None:
                rejected.add(result.key)
            continue
        problems = validate_config(result) or _repeat_error(result, configs)
        if problems:
            errors.extend(problems)
            rejected.add(result.key)
        else:
            configs[result.key] = result
    return _Reading(configs, tuple(errors), frozenset(rejected), unidentified)


def _repeat_error(config: Config, accepted: Mapping[ConfigKey, Config]) -> list[ConfigError]:
    first = accepted.get(config.key)
    if first is None:
        return []
    message = f"duplicate: already defined in this file at line {first.source_line}"
    return [ConfigError(config.source_file, config.source_line, message, "", config.key)]


def _read_files(paths: Iterable[Path]) -> dict[Path, _Reading | None]:
    return {path: _read_file(path) for path in paths}


def _retain(previous: _FileContents | None, reading: _Reading) -> _FileContents:
    """The file's new contributions, keeping last good versions where the read fell short."""
    configs = dict(reading.configs)
    if previous is not None:
        keep = previous.configs.keys() if reading.unidentified else reading.rejected
        for key in keep:
            if key not in configs and key in previous.configs:
                configs[key] = previous.configs[key]
    return _FileContents(configs, reading.errors)


def _scan_directory(directory: Path) -> list[Path]:
    """Config files under `directory`, skipping hidden directories (`.git`, `..data`, …)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, name) for name in sorted(filenames) if is_config_name(name))
    return found


class _Root(NamedTuple):
    """A watched directory as it exists now; a recreated directory has a new inode."""

    path: Path
    device: int
    inode: int


async def _sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class FileConfigStore(MemoryStore):
    """Istio config read from directories of `.yaml`/`.yml`/`.json` files, watched for changes."""

    DEBOUNCE_MS = 50
    """How long the watcher groups changes before reporting them."""
    WATCH_TIMEOUT_MS = 500
    """How often the watcher wakes without changes, to notice directories (re)appearing."""
    RETRY_SECONDS = 1.0
    """Back-off after the watcher fails, or while no directory exists."""

    def __init__(self, directories: list[Path], *, name: str = "file") -> None:
        super().__init__(name)
        self._directories = [Path(d).absolute() for d in directories]
        self._files: dict[Path, _FileContents] = {}
        self._reported: set[ConfigError] = set()

    @property
    def directories(self) -> list[Path]:
        return list(self._directories)

    # --- Loading. -----------------------------------------------------------------------------

    def load(self) -> None:
        """Read every file now and make the store match them exactly (a full resync)."""
        self._commit_all(_read_files(self._scan()))
        self.mark_synced()

    def reload_paths(self, paths: Iterable[Path | str]) -> None:
        """Re-read what changed at `paths` (files or directories, existing or deleted)."""
        self._commit(_read_files(self._expand(paths)))

    async def run(self) -> None:
        """Load, then apply changes as files change, until cancelled."""
        await self._load_async()
        stop = asyncio.Event()
        watcher = asyncio.create_task(self._watch(stop), name=f"{self.name}-config-watch")
        try:
            await asyncio.shield(watcher)
        finally:
            # The watcher thread only notices cancellation through the stop event.
            stop.set()
            await asyncio.wait({watcher})

    async def _load_async(self) -> None:
        paths = await asyncio.to_thread(self._scan)
        self._commit_all(await asyncio.to_thread(_read_files, paths))
        self.mark_synced()

    async def _reload_async(self, paths: Iterable[Path | str]) -> None:
        changed = self._expand(paths)
        if changed:
            self._commit(await asyncio.to_thread(_read_files, changed))

    def _scan(self) -> list[Path]:
        found: list[Path] = []
        for directory in self._directories:
            found.extend(_scan_directory(directory))
        return found

    def _expand(self, paths: Iterable[Path | str]) -> set[Path]:
        """The files to re-read for a batch of changed paths."""
        files: set[Path] = set()
        for raw in paths:
            path = Path(raw).absolute()
            root = next((d for d in self._directories if path.is_relative_to(d)), None)
            if root is None:
                continue
            scope = self._change_scope(path, root)
            if scope is None:
                continue
            if scope.is_dir():
                files.update(_scan_directory(scope))
            elif scope == path and is_config_name(path.name) and path.is_file():
                files.add(path)
            # Whatever was tracked there is re-read too, which notices deletions.
            files.update(f for f in self._files if f.is_relative_to(scope))
        return files

    @staticmethod
    def _change_scope(path: Path, root: Path) -> Path | None:
        """Where a change at `path` can matter: the path itself, or None to ignore it.

        Hidden entries are ignored, except Kubernetes' atomic-writer directories (`..data`,
        `..2024_…`): a mounted ConfigMap changes by swapping those, so the visible files
        beside them must be re-read.
        """
        parts = path.relative_to(root).parts
        for index, part in enumerate(parts):
            if part.startswith(".."):
                return root.joinpath(*parts[:index])
            if part.startswith("."):
                return None
        return path

    # --- Applying. ----------------------------------------------------------------------------

    def _commit(self, readings: Mapping[Path, _Reading | None]) -> None:
        affected: set[ConfigKey] = set()
        for path, reading in readings.items():
            previous = self._files.pop(path, None)
            if previous is not None:
                affected.update(previous.configs)
            if reading is not None:
                contents = _retain(previous, reading)
                self._files[path] = contents
                affected.update(contents.configs)
        winners = self._winners()
        for key in sorted(k for k in affected if k not in winners):
            self.delete(key)
        for key in sorted(k for k in affected if k in winners):
            self.apply(winners[key])
        self._report_new_errors()

    def _commit_all(self, readings: Mapping[Path, _Reading | None]) -> None:
        self._files = {
            path: _retain(self._files.get(path), reading)
            for path, reading in readings.items()
            if reading is not None
        }
        self.replace_all(self._winners().values())
        self._report_new_errors()

    def _winners(self) -> dict[ConfigKey, Config]:
        """Each key's config from the first file, by sorted path, that defines it."""
        winners: dict[ConfigKey, Config] = {}
        for path in sorted(self._files):
            for key, config in self._files[path].configs.items():
                winners.setdefault(key, config)
        return winners

    # --- Errors. ------------------------------------------------------------------------------

    def errors(self) -> builtins.list[ConfigError]:
        errors = [e for contents in self._files.values() for e in contents.errors]
        errors.extend(self._duplicate_errors())
        return sorted(errors, key=_error_order)

    def _duplicate_errors(self) -> builtins.list[ConfigError]:
        winners = self._winners()
        duplicates: list[ConfigError] = []
        for contents in self._files.values():
            for key, config in contents.configs.items():
                winner = winners[key]
                if winner.source_file != config.source_file:
                    message = (f"duplicate: already defined at {winner.origin}, which wins "
                               "(the first file by path)")
                    duplicates.append(ConfigError(
                        config.source_file, config.source_line, message, "", key
                    ))
        return duplicates

    def _report_new_errors(self) -> None:
        current = set(self.errors())
        for error in sorted(current - self._reported, key=_error_order):
            log.warning("%s", format_error(error))
        self._reported = current

    # --- Watching. ----------------------------------------------------------------------------

    def _existing_roots(self) -> tuple[_Root, ...]:
        roots = []
        for directory in self._directories:
            with contextlib.suppress(OSError):
                stat = directory.stat()
                if directory.is_dir():
                    roots.append(_Root(directory, stat.st_dev, stat.st_ino))
        return tuple(roots)

    async def _watch(self, stop: asyncio.Event) -> None:
        watched = self._existing_roots()
        while not stop.is_set():
            if watched:
                await self._watch_roots(watched, stop)
            else:
                await _sleep_unless_stopped(stop, self.RETRY_SECONDS)
            current = self._existing_roots()
            if current != watched and not stop.is_set():
                # A directory vanished, appeared or was replaced: start over from a full scan.
                await self._load_async()
            watched = current

    async def _watch_roots(self, roots: tuple[_Root, ...], stop: asyncio.Event) -> None:
        """Apply changes under `roots` until stopped or until the set of roots changes."""
        try:
            async for changes in watchfiles.awatch(
                *(root.path for root in roots),
                watch_filter=None,
                debounce=self.DEBOUNCE_MS,
                step=20,
                stop_event=stop,
                rust_timeout=self.WATCH_TIMEOUT_MS,
                yield_on_timeout=True,
                recursive=True,
            ):
                if changes:
                    await self._reload_async(path for _, path in changes)
                if self._existing_roots() != roots:
                    return
        except (OSError, RuntimeError) as exc:
            log.warning("watching %s failed (%s); retrying",
                        ", ".join(str(r.path) for r in roots), exc)
            await _sleep_unless_stopped(stop, self.RETRY_SECONDS)
