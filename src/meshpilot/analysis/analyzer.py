"""The analyzer contract: a name (Istio's, where Istio has the analyzer), a description, the
collections it reads, and one `analyze` call that reports through the context."""

from __future__ import annotations

from typing import Protocol

from meshpilot.analysis.context import Context
from meshpilot.analysis.resource import Collection


class Analyzer(Protocol):
    name: str
    """e.g. `virtualservice.DestinationHostAnalyzer`; meshpilot's own start with `meshpilot.`."""
    description: str
    inputs: tuple[Collection, ...]

    def analyze(self, ctx: Context) -> None: ...
