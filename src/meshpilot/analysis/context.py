"""What an analyzer sees: the resources under analysis, the mesh config, the services of a
running server's external registries (live analysis only), and a place to report.

Resources are indexed by collection and by (namespace, name), so `find` is a dictionary lookup
and `for_each` walks one collection in the order the resources were read. `report` turns a
message type, its arguments and an optional field path into a `Message` carrying the line of
that field; when the path is not in the document (the field is absent), the nearest recorded
parent's line is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from meshpilot.analysis.meshconfig import MeshConfig
from meshpilot.analysis.message import Message
from meshpilot.analysis.messages import MessageType
from meshpilot.analysis.registries import RegistryService
from meshpilot.analysis.resource import Collection, Resource


class ResourceSet:
    """Resources keyed by collection, then (namespace, name); a later duplicate replaces."""

    def __init__(self, resources: Iterable[Resource] = ()) -> None:
        self._by_collection: dict[Collection, dict[tuple[str, str], Resource]] = {}
        for resource in resources:
            self.add(resource)

    def add(self, resource: Resource) -> None:
        index = self._by_collection.setdefault(resource.collection, {})
        index[(resource.namespace, resource.name)] = resource

    def get(self, collection: Collection, namespace: str, name: str) -> Resource | None:
        return self._by_collection.get(collection, {}).get((namespace, name))

    def of(self, collection: Collection) -> Iterator[Resource]:
        yield from list(self._by_collection.get(collection, {}).values())

    def __iter__(self) -> Iterator[Resource]:
        for index in self._by_collection.values():
            yield from index.values()

    def __len__(self) -> int:
        return sum(len(index) for index in self._by_collection.values())


@dataclass
class Context:
    resources: ResourceSet
    mesh: MeshConfig = field(default_factory=MeshConfig)
    registries: tuple[RegistryService, ...] = ()
    """Services of registries that config does not define (Consul, Eureka, …): known only to
    a running server, so empty offline. Registry-aware analyzers read them."""
    messages: list[Message] = field(default_factory=list)

    def find(self, collection: Collection, namespace: str, name: str) -> Resource | None:
        return self.resources.get(collection, namespace, name)

    def exists(self, collection: Collection, namespace: str, name: str) -> bool:
        return self.resources.get(collection, namespace, name) is not None

    def for_each(self, collection: Collection) -> Iterator[Resource]:
        return self.resources.of(collection)

    def report(
        self, resource: Resource | None, message: MessageType, *args: object, field: str = ""
    ) -> None:
        line = resource.line_of(field) if resource is not None else 0
        self.messages.append(Message(message, tuple(args), resource, line))
