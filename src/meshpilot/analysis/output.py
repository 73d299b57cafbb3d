"""Render messages in istioctl's three shapes.

- `log`: one line per message, `Error [IST0101] (VirtualService default/reviews
  file.yaml:12) Referenced host not found: "x"`; on a terminal the level is coloured.
- `json` / `yaml`: a list of objects with istioctl's keys: `code`, `documentationUrl`,
  `level`, `message`, `origin` (the resource) and `reference` (`file:line`, when known).
  `documentationUrl` is `https://istio.io/latest/docs/reference/config/analysis/<code>/` for
  IST codes; meshpilot's MP codes have no page yet and omit it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml
from rich.text import Text

from meshpilot.analysis.message import Message
from meshpilot.analysis.messages import Level

FORMATS = ("log", "json", "yaml")
LEVEL_STYLES = {Level.ERROR: "bold red", Level.WARNING: "yellow", Level.INFO: "cyan"}


def as_dict(message: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "code": message.code,
        "level": message.level.label,
        "message": message.text,
    }
    if message.type.documentation_url:
        entry["documentationUrl"] = message.type.documentation_url
    if message.origin:
        entry["origin"] = message.origin
    if message.reference:
        entry["reference"] = message.reference
    return dict(sorted(entry.items()))


def render_json(messages: Sequence[Message]) -> str:
    return json.dumps([as_dict(m) for m in messages], indent=2)


def render_yaml(messages: Sequence[Message]) -> str:
    return yaml.safe_dump([as_dict(m) for m in messages], sort_keys=True, allow_unicode=True)


def log_line(message: Message) -> Text:
    """One log line; the level carries a style that a terminal console shows as colour."""
    line = Text(message.level.label, style=LEVEL_STYLES[message.level])
    line.append(str(message)[len(message.level.label):])
    return line
