"""Message suppression: `--suppress "CODE=Kind ns/name"` and the per-resource annotation.

A `-S` rule names one code and a resource pattern where `*` matches any run of characters
(`IST0101=VirtualService default/*`, `IST0107=Pod *`). The pattern is matched against the
resource as messages name it (`Kind namespace/name`) and, for compatibility with istioctl's
documented examples, against `Kind name.namespace` too. A resource annotated
`galley.istio.io/analyze-suppress: "IST0108,IST0103"` (or `"*"`) drops those codes itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from meshpilot.analysis.message import Message

SUPPRESS_ANNOTATION = "galley.istio.io/analyze-suppress"
_CODE = re.compile(r"^(?:IST|MP)\d{4}$")


@dataclass(frozen=True, slots=True)
class Suppression:
    code: str
    pattern: re.Pattern[str]

    @classmethod
    def parse(cls, rule: str) -> Suppression:
        code, sep, resource = rule.partition("=")
        code = code.strip().upper()
        if not sep or not resource.strip():
            raise ValueError(f"suppression {rule!r} must look like CODE=Kind namespace/name")
        if not _CODE.match(code):
            raise ValueError(f"suppression {rule!r}: {code!r} is not a message code")
        parts = (re.escape(part) for part in resource.strip().split("*"))
        return cls(code, re.compile("^" + ".*".join(parts) + "$"))

    def matches(self, message: Message) -> bool:
        if message.code != self.code or message.resource is None:
            return False
        resource = message.resource
        dotted = f"{resource.kind} {resource.dotted_name}"
        return bool(self.pattern.match(resource.ref) or self.pattern.match(dotted))


def suppressed_by_annotation(message: Message) -> bool:
    if message.resource is None:
        return False
    value = message.resource.annotations.get(SUPPRESS_ANNOTATION, "")
    codes = {code.strip().upper() for code in value.split(",") if code.strip()}
    return "*" in codes or message.code in codes


def apply(messages: Iterable[Message], suppressions: Iterable[Suppression]) -> list[Message]:
    rules = list(suppressions)
    return [
        m for m in messages
        if not suppressed_by_annotation(m) and not any(rule.matches(m) for rule in rules)
    ]
