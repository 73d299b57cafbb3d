"""`schema.ValidationAnalyzer.<Kind>`: Istio's validation of each resource, as messages.

Istio runs its admission validation during analysis, one analyzer per kind. Here the four
networking kinds that meshpilot validates (`meshpilot.config.validation`) are checked: each
problem becomes IST0106 at the line of its field. For VirtualServices, Istio's validation
also warns about rules that can never match; those warnings are reproduced:

- a rule whose every match already appeared (ignoring `name`) in an earlier rule, or a rule
  without matches after another rule without matches, is unreachable (IST0130);
- a match equal to an earlier one is ineffective (IST0131), and so is an HTTP match whose URI
  prefix extends an earlier match's prefix when that earlier match asks nothing else this one
  does not also ask (it already takes every request this one would).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from meshpilot.analysis.analyzers.common import mapping, mappings, text
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import (
    DESTINATION_RULE,
    SERVICE_ENTRY,
    VIRTUAL_SERVICE,
    WORKLOAD_ENTRY,
    Collection,
    Resource,
)
from meshpilot.config.validation import validate_spec

SCHEMA_ERROR = message_type("SchemaValidationError")
UNREACHABLE_RULE = message_type("VirtualServiceUnreachableRule")
INEFFECTIVE_MATCH = message_type("VirtualServiceIneffectiveMatch")


class ValidationAnalyzer:
    """One instance per kind; its name is `schema.ValidationAnalyzer.<Kind>` as in Istio."""

    description = "Runs schema validation as an analyzer and reports any violations"

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.name = f"schema.ValidationAnalyzer.{collection.kind}"
        self.inputs: tuple[Collection, ...] = (collection,)

    def analyze(self, ctx: Context) -> None:
        for resource in ctx.for_each(self.collection):
            for problem in validate_spec(resource.kind, resource.spec):
                ctx.report(resource, SCHEMA_ERROR, problem.message, field=problem.field)
            if self.collection == VIRTUAL_SERVICE:
                check_unreachable_rules(ctx, resource)


VALIDATED = (VIRTUAL_SERVICE, DESTINATION_RULE, SERVICE_ENTRY, WORKLOAD_ENTRY)


def check_unreachable_rules(ctx: Context, vs: Resource) -> None:
    for section in ("http", "tcp", "tls"):
        rules = list(mappings(vs.spec.get(section)))
        _check_section(ctx, vs, section, rules, overlap=_prefix_covers if section == "http"
                       else None)


def _check_section(
    ctx: Context, vs: Resource, section: str, rules: list[tuple[int, Mapping[str, Any]]],
    overlap: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] | None,
) -> None:
    seen: dict[str, int] = {}
    earlier: list[tuple[int, Mapping[str, Any]]] = []
    empty_rule = -1
    for index, rule in rules:
        matches = list(mappings(rule.get("match")))
        where = f"spec.{section}[{index}]"
        if not matches:
            if empty_rule >= 0:
                ctx.report(vs, UNREACHABLE_RULE, _name(rule, index),
                           "only the last rule can have no matches", field=where)
            empty_rule = index
            continue
        duplicates = 0
        for match_index, match in matches:
            key = _match_key(match)
            match_where = f"{where}.match[{match_index}]"
            if key in seen:
                duplicates += 1
                ctx.report(vs, INEFFECTIVE_MATCH, _name(rule, index), _name(match, match_index),
                           _name(dict(rules)[seen[key]], seen[key]), field=match_where)
                continue
            seen[key] = index
            if overlap is not None:
                for rule_index, previous in earlier:
                    if overlap(previous, match):
                        ctx.report(vs, INEFFECTIVE_MATCH, _name(rule, index),
                                   _name(match, match_index),
                                   _name(dict(rules)[rule_index], rule_index), field=match_where)
                        break
            earlier.append((index, match))
        if duplicates == len(matches):
            ctx.report(vs, UNREACHABLE_RULE, _name(rule, index),
                       "all matches used by prior rules", field=where)


def _match_key(match: Mapping[str, Any]) -> str:
    """A match's identity: its content without the `name`, which does not affect matching."""
    return json.dumps({k: v for k, v in match.items() if k != "name"}, sort_keys=True,
                      default=str)


def _name(item: Mapping[str, Any], index: int) -> str:
    return text(item.get("name")) or f"#{index}"


def _prefix_covers(previous: Mapping[str, Any], match: Mapping[str, Any]) -> bool:
    """`previous` takes every request `match` takes, judged on a URI prefix extension."""
    previous_prefix = text(mapping(previous.get("uri")).get("prefix"))
    prefix = text(mapping(match.get("uri")).get("prefix"))
    if not previous_prefix or not prefix or not prefix.startswith(previous_prefix):
        return False
    for key, value in previous.items():
        if key in ("name", "uri"):
            continue
        if json.dumps(match.get(key), sort_keys=True, default=str) != json.dumps(
                value, sort_keys=True, default=str):
            return False
    return True
