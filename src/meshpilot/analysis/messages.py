"""The message catalog: every code an analyzer can report, built at import from package data.

`messages.json` is Istio's message table (istio/istio `pkg/config/analysis/msg/messages.yaml`,
converted to JSON): code, name, level, description and a Go `fmt` template with its argument
names and types. `mp_messages.json` holds meshpilot's own codes (`MP0001`…) in the same shape,
for analyses only meshpilot can make (its service registries).

Analyzers look message types up by name at import (`message_type("ReferencedResourceNotFound")`),
so a name missing from the catalog fails loudly when the analyzer module loads, not when the
message would be reported. Templates are rendered with Go's verbs (`%s`, `%q`, `%v`, `%d`) so
the text is the same as istioctl's for the same arguments.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

ISTIO_CATALOG = "messages.json"
MESHPILOT_CATALOG = "mp_messages.json"

DOC_URL_TEMPLATE = "https://istio.io/latest/docs/reference/config/analysis/{code}/"
"""Where istio.io documents each IST code. istioctl pins the minor version (`/v1.24/`); the
`latest` form is stable across releases and redirects to the current page."""


class Level(enum.Enum):
    """Message severity; `rank` orders them for thresholds (higher is more severe)."""

    INFO = ("Info", 0)
    WARNING = ("Warning", 1)
    ERROR = ("Error", 2)

    def __init__(self, label: str, rank: int) -> None:
        self.label = label
        self.rank = rank

    @classmethod
    def parse(cls, text: str) -> Level:
        for level in cls:
            if level.label.lower() == text.strip().lower():
                return level
        raise ValueError(f"unknown level {text!r}; expected Info, Warning or Error")


@dataclass(frozen=True, slots=True)
class MessageType:
    code: str
    name: str
    level: Level
    description: str
    template: str
    arg_names: tuple[str, ...]

    @property
    def documentation_url(self) -> str:
        """istio.io page for IST codes; meshpilot's own codes have none yet."""
        if not self.code.startswith("IST"):
            return ""
        return DOC_URL_TEMPLATE.format(code=self.code.lower())

    def render(self, args: Sequence[object]) -> str:
        return go_format(self.template, args)


def _load(filename: str) -> list[MessageType]:
    text = resources.files(__package__ or "meshpilot.analysis").joinpath(filename).read_text(
        encoding="utf-8"
    )
    entries: list[dict[str, Any]] = json.loads(text)
    return [
        MessageType(
            code=entry["code"],
            name=entry["name"],
            level=Level.parse(entry["level"]),
            description=entry.get("description", ""),
            template=entry["template"],
            arg_names=tuple(arg["name"] for arg in entry.get("args", ())),
        )
        for entry in entries
    ]


CATALOG: tuple[MessageType, ...] = (*_load(ISTIO_CATALOG), *_load(MESHPILOT_CATALOG))
_BY_NAME: Mapping[str, MessageType] = {m.name: m for m in CATALOG}
_BY_CODE: Mapping[str, MessageType] = {m.code: m for m in CATALOG}


def message_type(name: str) -> MessageType:
    """The catalog entry with this name (`ReferencedResourceNotFound`); KeyError if none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"message {name!r} is not in the analysis catalog") from None


def by_code(code: str) -> MessageType | None:
    return _BY_CODE.get(code.upper())


# --- Go fmt verbs ---------------------------------------------------------------------------

_VERB = re.compile(r"%([%sqvd])")


def go_format(template: str, args: Sequence[object]) -> str:
    """Render a Go fmt template with the verbs Istio's table uses.

    Missing arguments render as Go does (`%!s(MISSING)`), so a wrong call shows in the text
    instead of raising in the middle of an analysis.
    """
    remaining = iter(args)

    def substitute(match: re.Match[str]) -> str:
        verb = match.group(1)
        if verb == "%":
            return "%"
        try:
            value = next(remaining)
        except StopIteration:
            return f"%!{verb}(MISSING)"
        return _render(verb, value)

    return _VERB.sub(substitute, template)


def _render(verb: str, value: object) -> str:
    if isinstance(value, list | tuple):
        return "[" + " ".join(_render(verb, item) for item in value) + "]"
    if verb == "q":
        return _go_quote(str(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _go_quote(text: str) -> str:
    """Go's `%q`: a double-quoted string with Go escapes."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f'"{escaped}"'
