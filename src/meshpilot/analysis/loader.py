"""Read files, directories or stdin into resources for analysis.

Every document that looks like a Kubernetes object (a mapping with `apiVersion`, `kind` and
`metadata.name`) becomes a Resource, whatever its kind; `kind: List` is unwrapped by the YAML
reader. Documents that are not objects (a bare scalar, a list, an object without a name) are
skipped, as istioctl's file source skips what it cannot identify. A file that cannot be
parsed at all is reported as a `LoadError` and contributes nothing; the caller decides what
that means for the exit code.

Namespaced objects written without a namespace take `default_namespace` (istioctl uses the
`--namespace` value, or none with `--all-namespaces`); cluster-scoped kinds never get one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshpilot.analysis.resource import CLUSTER_SCOPED_KINDS, Collection, Resource
from meshpilot.config.yamlsource import (
    JSON_SUFFIXES,
    YAML_SUFFIXES,
    Document,
    parse_text,
)

STDIN = "-"


@dataclass(frozen=True, slots=True)
class LoadError:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


@dataclass
class Loaded:
    resources: list[Resource] = field(default_factory=list)
    errors: list[LoadError] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def expand_paths(paths: Iterable[str], *, recursive: bool = True) -> Iterator[Path | str]:
    """Files as given, directories walked (recursively) for YAML/JSON files, `-` for stdin."""
    for raw in paths:
        if raw == STDIN:
            yield STDIN
            continue
        path = Path(raw)
        if path.is_dir():
            yield from sorted(
                p for p in (path.rglob("*") if recursive else path.glob("*"))
                if p.is_file() and p.suffix.lower() in YAML_SUFFIXES | JSON_SUFFIXES
            )
        else:
            yield path


def load_paths(
    paths: Iterable[str], default_namespace: str = "", *, recursive: bool = True
) -> Loaded:
    loaded = Loaded()
    for item in expand_paths(paths, recursive=recursive):
        if item == STDIN:
            load_text(loaded, sys.stdin.read(), STDIN, default_namespace)
            continue
        assert isinstance(item, Path)
        name = str(item)
        try:
            raw = item.read_bytes()
        except OSError as error:
            loaded.errors.append(LoadError(name, 0, error.strerror or str(error)))
            continue
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            line = raw[: error.start].count(b"\n") + 1
            loaded.errors.append(LoadError(name, line, "file is not valid UTF-8"))
            continue
        load_text(loaded, text, name, default_namespace,
                  json_input=item.suffix.lower() in JSON_SUFFIXES)
    return loaded


def load_text(
    loaded: Loaded, text: str, file: str, default_namespace: str = "", *, json_input: bool = False
) -> None:
    """Parse one file's text and add its resources (or its error) to `loaded`."""
    parsed = parse_text(text, file, json_input=json_input)
    loaded.files.append(file)
    if parsed.error is not None:
        loaded.errors.append(LoadError(file, parsed.error.line, parsed.error.message))
        return
    for document in parsed.documents:
        resource = to_resource(document, file, default_namespace)
        if resource is not None:
            loaded.resources.append(resource)


def to_resource(document: Document, file: str, default_namespace: str = "") -> Resource | None:
    data = document.data
    if not isinstance(data, Mapping):
        return None
    api_version, kind, metadata = data.get("apiVersion"), data.get("kind"), data.get("metadata")
    if not (isinstance(api_version, str) and isinstance(kind, str) and kind
            and isinstance(metadata, Mapping)):
        return None
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        return None
    group, _, version = api_version.rpartition("/")
    namespace = metadata.get("namespace")
    if kind in CLUSTER_SCOPED_KINDS:
        namespace = ""
    elif not isinstance(namespace, str) or not namespace:
        namespace = default_namespace
    return Resource(
        collection=Collection(group, kind),
        version=version,
        name=name,
        namespace=namespace,
        body=data,
        file=file,
        line=document.line,
        field_lines=document.field_lines,
    )


def load_mapping_file(path: str) -> Mapping[str, Any]:
    """Read a YAML mapping (a MeshConfig or MeshNetworks file); ValueError if it is not one."""
    text = Path(path).read_text(encoding="utf-8")
    parsed = parse_text(text, path)
    if parsed.error is not None:
        raise ValueError(str(parsed.error))
    documents = [d.data for d in parsed.documents]
    if not documents:
        return {}
    if len(documents) > 1 or not isinstance(documents[0], Mapping):
        raise ValueError(f"{path}: expected one YAML mapping")
    result: Mapping[str, Any] = documents[0]
    return result
