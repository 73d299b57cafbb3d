"""A reported finding: a catalog message type, its arguments, and the resource it concerns."""

from __future__ import annotations

from dataclasses import dataclass

from meshpilot.analysis.messages import Level, MessageType
from meshpilot.analysis.resource import Resource


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    args: tuple[object, ...]
    resource: Resource | None
    line: int = 0
    """Line of the offending field in the resource's file (0 when unknown)."""

    @property
    def code(self) -> str:
        return self.type.code

    @property
    def level(self) -> Level:
        return self.type.level

    @property
    def text(self) -> str:
        return self.type.render(self.args)

    @property
    def origin(self) -> str:
        """The resource as istioctl names it: `Kind namespace/name`."""
        return self.resource.ref if self.resource is not None else ""

    @property
    def reference(self) -> str:
        """`file:line` of the offending field, or '' for resources not read from a file."""
        if self.resource is None or not self.resource.file:
            return ""
        line = self.line or self.resource.line
        return f"{self.resource.file}:{line}" if line else self.resource.file

    def sort_key(self) -> tuple[int, str, str, str, int, str]:
        """istioctl's order: most severe first, then code, resource, place, text."""
        return (-self.level.rank, self.code, self.origin, self.reference.rpartition(":")[0],
                self.line, self.text)

    def __str__(self) -> str:
        where = " ".join(part for part in (self.origin, self.reference) if part)
        scope = f" ({where})" if where else ""
        return f"{self.level.label} [{self.code}]{scope} {self.text}"
