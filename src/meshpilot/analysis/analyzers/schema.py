"""`schema.ValidationAnalyzer.<Kind>`: Istio's validation of each resource, as messages.

Istio runs its admission validation during analysis, one analyzer per kind. Here the
networking kinds that meshpilot validates (`meshpilot.config.validation`: ServiceEntry,
WorkloadEntry, VirtualService, DestinationRule, Gateway, Sidecar) are checked: each problem
becomes IST0106 at the line of its field.

Regular expressions are judged by RE2 itself (the `google-re2` binding), the engine Envoy
matches with and whose syntax Istio's validation enforces: a pattern RE2 rejects (`\\Z`,
lookaround, backreferences, …) is IST0106 at its line, and a pattern RE2 accepts is never
reported, whatever Python's `re` would say of it. The config store admits some patterns that
RE2 refuses (Envoy then rejects the route); this is where a running server says so.

For VirtualServices, Istio's validation also warns about rules that can never match; those
warnings are reproduced:

- a rule whose every match already appeared (ignoring `name`) in an earlier rule, or a rule
  without matches after another rule without matches, is unreachable (IST0130);
- a match equal to an earlier one is ineffective (IST0131), and so is an HTTP match whose URI
  prefix extends an earlier match's prefix when that earlier match asks nothing else this one
  does not also ask (it already takes every request this one would).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import re2

from meshpilot.analysis.analyzers.common import mapping, mappings, text
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import (
    DESTINATION_RULE,
    GATEWAY,
    SERVICE_ENTRY,
    SIDECAR,
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
            regexes = dict(regex_fields(resource)) if self.collection == VIRTUAL_SERVICE else {}
            for problem in validate_spec(resource.kind, resource.spec):
                if problem.field in regexes:
                    continue  # RE2 decides below
                ctx.report(resource, SCHEMA_ERROR, problem.message, field=problem.field)
            for path, pattern in regexes.items():
                error = re2_error(pattern)
                if error is not None:
                    ctx.report(resource, SCHEMA_ERROR,
                               f"{path}: invalid regex `{pattern}`: {error}; Istio uses RE2 "
                               "style regex-based match (https://github.com/google/re2/wiki/"
                               "Syntax)", field=path)
            if self.collection == VIRTUAL_SERVICE:
                check_unreachable_rules(ctx, resource)


VALIDATED = (VIRTUAL_SERVICE, DESTINATION_RULE, SERVICE_ENTRY, WORKLOAD_ENTRY, GATEWAY, SIDECAR)

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would also print every rejected pattern to stderr


def re2_error(pattern: str) -> str | None:
    """RE2's reason for rejecting a pattern, or None when it compiles."""
    if not pattern:
        return "regex must not be empty"
    try:
        re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as error:
        reason = error.args[0] if error.args else error
        return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
    return None


def regex_fields(vs: Resource) -> Iterator[tuple[str, str]]:
    """(field path, pattern) of every regular expression in a VirtualService."""
    for index, route in mappings(vs.spec.get("http")):
        base = f"spec.http[{index}]"
        for match_index, match in mappings(route.get("match")):
            where = f"{base}.match[{match_index}]"
            for name in ("uri", "scheme", "method", "authority"):
                yield from _string_match_regex(match.get(name), f"{where}.{name}")
            for name in ("headers", "queryParams", "withoutHeaders"):
                for key, value in mapping(match.get(name)).items():
                    yield from _string_match_regex(value, f"{where}.{name}.{key}")
        cors = mapping(route.get("corsPolicy"))
        for origin_index, origin in mappings(cors.get("allowOrigins")):
            yield from _string_match_regex(origin, f"{base}.corsPolicy.allowOrigins"
                                                   f"[{origin_index}]")
        rewrite = mapping(mapping(route.get("rewrite")).get("uriRegexRewrite"))
        if isinstance(rewrite.get("match"), str):
            yield f"{base}.rewrite.uriRegexRewrite.match", rewrite["match"]


def _string_match_regex(value: object, path: str) -> Iterator[tuple[str, str]]:
    pattern = mapping(value).get("regex")
    if isinstance(pattern, str):
        yield f"{path}.regex", pattern


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
