"""The one output writer of the diagnostic commands: a table, JSON or YAML.

A command builds a `Report`: the rows of its short table and the structured data behind them.
`write` prints whichever the user chose with `-o`. Tables are aligned like Go's tabwriter,
which istioctl uses, so column positions match what people are used to reading.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml


class Format(enum.StrEnum):
    SHORT = "short"
    JSON = "json"
    YAML = "yaml"


@dataclass(frozen=True, slots=True)
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[object]] = ()
    padding: int = 3


@dataclass(frozen=True, slots=True)
class Report:
    table: Table | None
    """What `-o short` prints; None when the data has no table form (e.g. bootstrap)."""
    data: Any = field(default=None)
    """What `-o json` and `-o yaml` print."""


def render_table(table: Table) -> str:
    cells = [[str(c) for c in table.columns], *([str(c) for c in row] for row in table.rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    lines = []
    for row in cells:
        padded = [
            cell.ljust(width + table.padding) for cell, width in zip(row, widths, strict=True)
        ]
        # tabwriter pads every column but the last, and trailing blanks are noise.
        lines.append("".join(padded[:-1]) + row[-1])
    return "\n".join(lines) + "\n"


def render(report: Report, fmt: Format) -> str:
    if fmt is Format.SHORT and report.table is not None:
        return render_table(report.table)
    if fmt is Format.YAML:
        return str(yaml.safe_dump(report.data, sort_keys=False, default_flow_style=False))
    return json.dumps(report.data, indent=2, default=str) + "\n"


def write(out: TextIO, report: Report, fmt: Format) -> None:
    out.write(render(report, fmt))
