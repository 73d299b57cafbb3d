"""Run analyzers over a set of resources and collect their messages.

Each analyzer gets a fresh Context over the same resources; a crash in one analyzer becomes
an IST0001 InternalError message instead of ending the whole analysis. Identical messages
(same code, resource, line and text) are reported once, in istioctl's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from meshpilot.analysis.analyzer import Analyzer
from meshpilot.analysis.context import Context, ResourceSet
from meshpilot.analysis.meshconfig import MeshConfig
from meshpilot.analysis.message import Message
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.registries import RegistryService

INTERNAL_ERROR = message_type("InternalError")


def run_analyzers(
    analyzers: Sequence[Analyzer],
    resources: ResourceSet,
    mesh: MeshConfig | None = None,
    registries: Sequence[RegistryService] = (),
) -> list[Message]:
    mesh = mesh or MeshConfig()
    messages: list[Message] = []
    for analyzer in analyzers:
        ctx = Context(resources, mesh, tuple(registries))
        try:
            analyzer.analyze(ctx)
        except Exception as error:  # one broken analyzer must not stop the rest
            ctx.report(None, INTERNAL_ERROR, f"analyzer {analyzer.name} failed: {error!r}")
        messages.extend(ctx.messages)
    return deduplicate(messages)


def deduplicate(messages: Iterable[Message]) -> list[Message]:
    seen: set[tuple[str, str, str, str]] = set()
    unique = []
    for message in sorted(messages, key=Message.sort_key):
        key = (message.code, message.origin, message.reference, message.text)
        if key not in seen:
            seen.add(key)
            unique.append(message)
    return unique
