"""Analysis of a running server's state: what the server analyzes, and live `meshpilot analyze`.

A running discovery server knows two things files alone do not: the config it actually serves
(each resource with the file and line it came from, the last good version of a document that
is now rejected) and what its registries publish. `server_inputs` captures both as JSON, served
as the debug topic `/debug/analysis_inputs` (over HTTP, and over xDS as `istio.io/debug`, which
is how `meshpilot analyze --use-kube=true` fetches it, as istioctl reads a live cluster).

`analyze_inputs` is the one analysis both users run: the server's resources, overlaid by files
(a file's resource replaces the server's one of the same kind, namespace and name, so an edit
can be checked against the live mesh before it is written to the config dir), plus the
default ingress gateway as offline analysis adds it (meshpilot has no Kubernetes API to ask
for the real one), analyzed with the external registries' services in the context.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshpilot.analysis.analyzer import Analyzer
from meshpilot.analysis.analyzers import ALL
from meshpilot.analysis.context import ResourceSet
from meshpilot.analysis.ingress import default_ingress_gateway
from meshpilot.analysis.loader import LoadError, load_paths
from meshpilot.analysis.meshconfig import MeshConfig
from meshpilot.analysis.message import Message
from meshpilot.analysis.offline import AnalysisResult, in_namespace
from meshpilot.analysis.registries import (
    RegistryService,
    external_services,
    from_json,
    read_registries,
    to_json,
)
from meshpilot.analysis.resource import Collection, Resource
from meshpilot.analysis.run import run_analyzers
from meshpilot.analysis.suppress import Suppression, apply
from meshpilot.model import Config

DEFAULT_NAMESPACE = "default"
"""The namespace the config store gives documents without one, so file overlays match."""


@dataclass
class ServerInputs:
    resources: list[Resource] = field(default_factory=list)
    registries: list[RegistryService] = field(default_factory=list)
    mesh: MeshConfig | None = None
    """The mesh config the server runs with (None from a server that does not say)."""


def resource_from_config(config: Config) -> Resource:
    """A stored Config as an analysis Resource: the document rebuilt, its origin kept."""
    metadata: dict[str, Any] = {"name": config.name, "namespace": config.namespace}
    if config.labels:
        metadata["labels"] = dict(config.labels)
    if config.annotations:
        metadata["annotations"] = dict(config.annotations)
    body = {
        "apiVersion": f"{config.group}/{config.version}" if config.group else config.version,
        "kind": config.kind,
        "metadata": metadata,
        "spec": config.spec,
    }
    return Resource(
        collection=Collection(config.group, config.kind),
        version=config.version,
        name=config.name,
        namespace=config.namespace,
        body=body,
        file=config.source_file,
        line=config.source_line,
        field_lines=config.field_lines,
    )


# --- The server's side ----------------------------------------------------------------------


def capture(configs: Iterable[Config], registry: Any) -> ServerInputs:
    """The server's current inputs; call on the event loop thread (stores and registries are
    mutated there), then analyze anywhere: everything captured is immutable."""
    return ServerInputs(
        [resource_from_config(c) for c in sorted(configs, key=lambda c: c.key)],
        read_registries(registry, config_derived=False),
    )


def server_inputs(
    configs: Iterable[Config], registry: Any, mesh: MeshConfig | None = None
) -> dict[str, Any]:
    """The `/debug/analysis_inputs` topic: resources with origin and field lines, registries,
    and the server's mesh config (so live analysis judges with the server's settings)."""
    # Every registry service, config-derived ones too: the topic shows all the server knows.
    resources = [resource_from_config(c) for c in sorted(configs, key=lambda c: c.key)]
    return {
        "resources": [
            {
                "body": dict(r.body),
                "file": r.file,
                "line": r.line,
                "fieldLines": dict(r.field_lines),
            }
            for r in resources
        ],
        "registries": [to_json(s) for s in read_registries(registry)],
        "meshConfig": dict(mesh.data) if mesh is not None else None,
        "meshNetworks": {"networks": dict(mesh.networks)} if mesh is not None else None,
    }


# --- The client's side ----------------------------------------------------------------------


def parse_server_inputs(data: Any) -> ServerInputs:
    """Read the topic's JSON back; ValueError when it is not the topic's shape."""
    if not isinstance(data, Mapping):
        raise ValueError("the server's analysis inputs are not a JSON object")
    out = ServerInputs()
    for entry in data.get("resources") or ():
        body = entry.get("body") if isinstance(entry, Mapping) else None
        if not isinstance(body, Mapping):
            raise ValueError("a resource in the server's analysis inputs has no body")
        resource = _resource_from_body(body, str(entry.get("file") or ""),
                                       int(entry.get("line") or 0),
                                       entry.get("fieldLines") or {})
        if resource is not None:
            out.resources.append(resource)
    out.registries = [from_json(s) for s in data.get("registries") or ()]
    mesh, networks = data.get("meshConfig"), data.get("meshNetworks")
    if isinstance(mesh, Mapping):
        out.mesh = MeshConfig.from_user(mesh, networks if isinstance(networks, Mapping) else None)
    return out


def _resource_from_body(
    body: Mapping[str, Any], file: str, line: int, field_lines: Mapping[str, Any]
) -> Resource | None:
    metadata = body.get("metadata")
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if not (isinstance(metadata, Mapping) and isinstance(kind, str)
            and isinstance(api_version, str)):
        return None
    group, _, version = api_version.rpartition("/")
    return Resource(
        collection=Collection(group, kind),
        version=version,
        name=str(metadata.get("name") or ""),
        namespace=str(metadata.get("namespace") or ""),
        body=body,
        file=file,
        line=line,
        field_lines={str(k): int(v) for k, v in field_lines.items()},
    )


def analyze_inputs(
    inputs: ServerInputs,
    overlay: Sequence[Resource] = (),
    *,
    namespace: str | None = None,
    analyzers: Sequence[Analyzer] = ALL,
    mesh: MeshConfig | None = None,
    suppressions: Iterable[Suppression] = (),
) -> list[Message]:
    """Analyze the server's inputs with `overlay` resources replacing theirs by identity."""
    mesh = mesh or MeshConfig()
    resources = ResourceSet([*default_ingress_gateway(mesh), *inputs.resources, *overlay])
    messages = run_analyzers(analyzers, resources, mesh, external_services(inputs.registries))
    if namespace:
        messages = [m for m in messages if in_namespace(m, namespace)]
    return apply(messages, suppressions)


def analyze_live(
    inputs: ServerInputs,
    paths: Iterable[str],
    *,
    namespace: str | None = None,
    analyzers: Sequence[Analyzer] = ALL,
    mesh: MeshConfig | None = None,
    suppressions: Iterable[Suppression] = (),
    recursive: bool = True,
) -> AnalysisResult:
    """`meshpilot analyze --use-kube=true FILES`: the server's state with the files on top.

    Files' objects without a namespace take the selected one, else `default` as the server
    does, so they replace the server's resource they mean to replace. Without a `mesh` of the
    caller's, the server's own mesh config is used.
    """
    loaded = load_paths(paths, default_namespace=namespace or DEFAULT_NAMESPACE,
                        recursive=recursive)
    messages = analyze_inputs(inputs, loaded.resources, namespace=namespace,
                              analyzers=analyzers, mesh=mesh or inputs.mesh,
                              suppressions=suppressions)
    errors: list[LoadError] = loaded.errors
    return AnalysisResult(messages, errors, loaded.files)
