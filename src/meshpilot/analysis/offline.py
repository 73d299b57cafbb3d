"""Offline analysis, as `istioctl analyze --use-kube=false` does it: files only.

The files are read (namespaced objects without a namespace take the selected namespace), the
default ingress gateway is added unless the mesh config turns ingress off, the chosen
analyzers run, and the messages are filtered the way istioctl filters them: with a selected
namespace only messages about resources in it (or about cluster-scoped resources) are kept,
then suppressions apply. Thresholds are the caller's business.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from meshpilot.analysis.analyzer import Analyzer
from meshpilot.analysis.analyzers import ALL
from meshpilot.analysis.context import ResourceSet
from meshpilot.analysis.ingress import default_ingress_gateway
from meshpilot.analysis.loader import LoadError, load_paths
from meshpilot.analysis.meshconfig import MeshConfig
from meshpilot.analysis.message import Message
from meshpilot.analysis.run import run_analyzers
from meshpilot.analysis.suppress import Suppression, apply


@dataclass
class AnalysisResult:
    messages: list[Message] = field(default_factory=list)
    errors: list[LoadError] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def analyze_paths(
    paths: Iterable[str],
    *,
    namespace: str | None = "default",
    analyzers: Sequence[Analyzer] = ALL,
    mesh: MeshConfig | None = None,
    suppressions: Iterable[Suppression] = (),
    recursive: bool = True,
) -> AnalysisResult:
    """Analyze files; `namespace=None` means all namespaces (`-A`)."""
    mesh = mesh or MeshConfig()
    loaded = load_paths(paths, default_namespace=namespace or "", recursive=recursive)
    resources = ResourceSet([*default_ingress_gateway(mesh), *loaded.resources])
    messages = run_analyzers(analyzers, resources, mesh)
    if namespace:
        messages = [m for m in messages if in_namespace(m, namespace)]
    return AnalysisResult(apply(messages, suppressions), loaded.errors, loaded.files)


def in_namespace(message: Message, namespace: str) -> bool:
    """Kept under `-n`: messages about the namespace's resources, or not about a namespace."""
    return message.resource is None or message.resource.namespace in ("", namespace)
