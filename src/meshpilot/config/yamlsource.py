"""Turn the text of a config file into documents that remember where every field was written.

PyYAML's composer yields one node tree per `---` document; every node carries the mark where
it starts. Each tree is walked once to record a line for every field path
(`metadata.name`, `spec.http[0].route[1].weight`, …) and then handed to PyYAML's
`SafeConstructor` to build plain Python data (dicts, lists, scalars resolved the YAML way).
The walk happens before construction because construction flattens `<<` merge keys in place,
which would make an explicit override look like a duplicate key.

A JSON file is parsed by the same loader (JSON is, near enough, YAML flow syntax) so it gets
line numbers too. A `kind: List` document is unwrapped into one document per item, with the
item's own start line and paths relative to the item.

A syntax error stops the whole file: the result carries no documents and one ConfigError at
the line PyYAML points at. Problems that only concern one document (a duplicate key, a
recursive alias) travel with that document so the caller can reject it alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from meshpilot.model import ConfigError

JSON_SUFFIXES = frozenset({".json"})
YAML_SUFFIXES = frozenset({".yaml", ".yml"})

_MAX_FIELD_LINES = 100_000
"""Cap on recorded paths per document: aliases can make a small text describe a huge tree."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DocumentProblem(NamedTuple):
    """A defect of one document found while reading it (not a schema violation)."""

    field: str
    line: int
    message: str


@dataclass(frozen=True, slots=True)
class Document:
    """One resource-shaped document: its data, where it starts and where each field is."""

    data: Any
    line: int
    """1-based line where the document (or List item) starts."""
    field_lines: Mapping[str, int] = field(default_factory=dict)
    """Dotted field path relative to the document → 1-based line of the field's key."""
    problems: tuple[DocumentProblem, ...] = ()


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """What one file holds: its documents, or the error that made it unreadable."""

    path: str
    documents: tuple[Document, ...] = ()
    error: ConfigError | None = None


def field_path(parent: str, key: object) -> str:
    """Path of a mapping entry: `spec` + `hosts` → `spec.hosts`."""
    name = str(key)
    return f"{parent}.{name}" if parent else name


def index_path(parent: str, index: int) -> str:
    """Path of a sequence item: `spec.hosts` + 0 → `spec.hosts[0]`."""
    return f"{parent}[{index}]"


try:
    # libyaml's parser (same SafeConstructor, same node marks): the pure-Python scanner was
    # three quarters of loading a 1,000-service mesh.
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]


class _JsonLoader(_SafeLoader):
    """SafeLoader that also reads JSON's exponent floats (`1e3`), which YAML 1.1 reads as text."""


_JsonLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?[eE][-+]?[0-9]+$"),
    list("-0123456789"),
)


def read_config_file(path: Path) -> ParsedFile:
    """Read and parse one file. Bad bytes or syntax become `error`; OSError propagates."""
    name = str(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return ParsedFile(name, error=ConfigError(name, line, "file is not valid UTF-8"))
    return parse_text(text, name, json_input=path.suffix.lower() in JSON_SUFFIXES)


def parse_text(text: str, file: str, *, json_input: bool = False) -> ParsedFile:
    """Parse multi-document YAML (or JSON) text into documents with field lines."""
    if json_input:
        # Raw tabs can only occur between JSON tokens (inside strings they must be escaped),
        # and YAML refuses tabs in some of those places; spaces keep every line where it is.
        text = text.replace("\t", " ")
    loader = (_JsonLoader if json_input else _SafeLoader)(text)
    documents: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            lines, problems = _walk(node)
            data = loader.construct_document(node)
            if data is None:
                continue  # `---` followed by nothing (or only comments)
            documents.extend(_split_list(data, node, lines, problems))
    except yaml.YAMLError as exc:
        return ParsedFile(file, error=_syntax_error(exc, file, text))
    finally:
        loader.dispose()
    return ParsedFile(file, tuple(documents))


def _syntax_error(exc: yaml.YAMLError, file: str, text: str) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        # An error at the end of the text: libyaml marks the position after the last line
        # break; name the last line there is instead.
        line = min(line, max(len(text.splitlines()), 1))
        parts = [p for p in (exc.context, exc.problem) if p]
        detail = ": ".join(parts) if parts else "invalid YAML"
        return ConfigError(file, line, f"YAML syntax error: {detail}")
    if isinstance(exc, ReaderError):
        line = text[: exc.position].count("\n") + 1
        return ConfigError(file, line, f"YAML syntax error: {exc.reason}")
    return ConfigError(file, 0, f"YAML syntax error: {exc}")


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _walk(root: Node) -> tuple[dict[str, int], list[DocumentProblem]]:
    """Record the line of every field path under `root` and note duplicate keys."""
    lines: dict[str, int] = {}
    problems: list[DocumentProblem] = []
    on_path: set[int] = set()

    def visit(node: Node, path: str) -> None:
        if id(node) in on_path:
            problems.append(DocumentProblem(path, _line(node), "recursive YAML alias"))
            return
        on_path.add(id(node))
        if isinstance(node, MappingNode):
            visit_mapping(node, path)
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                record(index_path(path, index), item, item)
        on_path.discard(id(node))

    def visit_mapping(node: MappingNode, path: str) -> None:
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            child = field_path(path, key_node.value)
            if key_node.value in seen:
                problems.append(DocumentProblem(
                    child, _line(key_node),
                    f"duplicate key {key_node.value!r} (first defined on line "
                    f"{seen[key_node.value]})",
                ))
                continue
            seen[key_node.value] = _line(key_node)
            record(child, key_node, value_node)

    def record(path: str, where: Node, node: Node) -> None:
        if len(lines) < _MAX_FIELD_LINES:
            lines[path] = _line(where)
            visit(node, path)

    visit(root, "")
    return lines, problems


def _split_list(
    data: Any, node: Node, lines: dict[str, int], problems: list[DocumentProblem]
) -> list[Document]:
    """One document, or one per item when the document is a `kind: List`."""
    if not (isinstance(data, dict) and data.get("kind") == "List"
            and isinstance(data.get("items"), list)):
        return [Document(data, _line(node), lines, tuple(problems))]
    documents = []
    outside = [p for p in problems if not p.field.startswith("items[")]
    for index, item in enumerate(data["items"]):
        prefix = index_path("items", index)
        own = [
            p._replace(field=p.field[len(prefix) + 1:])
            for p in problems if p.field.startswith(prefix + ".")
        ]
        documents.append(Document(
            item, lines.get(prefix, _line(node)), _relative(lines, prefix), (*outside, *own)
        ))
    return documents


def _relative(lines: Mapping[str, int], prefix: str) -> dict[str, int]:
    start = prefix + "."
    return {path[len(start):]: line for path, line in lines.items() if path.startswith(start)}
