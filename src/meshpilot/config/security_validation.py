"""Schema checks for `security.istio.io` PeerAuthentication, AuthorizationPolicy and
RequestAuthentication, after Istio's `pkg/config/validation` rules for them.

Registered in `validation.VALIDATORS` and built on its type-checking `_Checker`, so problems
carry the exact field path (`spec.rules[0].from[1].source.ipBlocks[0]`) like every other kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from meshpilot.config.validation import (
    Problem,
    _check_labels,
    _Checker,
    is_ip_or_cidr,
)
from meshpilot.config.yamlsource import field_path, index_path

PEER_AUTHENTICATION_FIELDS = frozenset({"selector", "mtls", "portLevelMtls"})
AUTHORIZATION_POLICY_FIELDS = frozenset({
    "selector", "targetRef", "targetRefs", "rules", "action", "provider",
})
REQUEST_AUTHENTICATION_FIELDS = frozenset({"selector", "targetRef", "targetRefs", "jwtRules"})

MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")

_SOURCE_FIELDS = frozenset({
    "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
    "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
    "serviceAccounts", "notServiceAccounts",
})
_OPERATION_FIELDS = frozenset({
    "hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths",
})
_CONDITION_KEYS = (
    "request.headers", "source.ip", "remote.ip", "source.namespace", "source.principal",
    "request.auth.principal", "request.auth.audiences", "request.auth.presenter",
    "request.auth.claims", "destination.ip", "destination.port", "connection.sni",
)
_BRACKETED = re.compile(r"^(request\.headers|request\.auth\.claims)((?:\[[^\[\]]+\])+)$")
_JWT_RULE_FIELDS = frozenset({
    "issuer", "audiences", "jwksUri", "jwks", "fromHeaders", "fromParams", "fromCookies",
    "outputPayloadToHeader", "forwardOriginalToken", "outputClaimToHeaders", "timeout",
})


def _check_selector(c: _Checker, spec: Mapping[str, Any]) -> None:
    selector = c.mapping(spec.get("selector"), "spec.selector")
    if selector is not None:
        c.known_fields(selector, "spec.selector", frozenset({"matchLabels"}))
        _check_labels(c, selector.get("matchLabels"), "spec.selector.matchLabels",
                      selector=True)
    if selector is not None and (spec.get("targetRef") or spec.get("targetRefs")):
        c.add("spec.selector", "only one of selector or targetRef(s) may be set")


def validate_peer_authentication(spec: Mapping[str, Any]) -> list[Problem]:
    c = _Checker()
    c.known_fields(spec, "spec", PEER_AUTHENTICATION_FIELDS)
    _check_selector(c, spec)
    mtls = c.mapping(spec.get("mtls"), "spec.mtls")
    if mtls is not None:
        c.known_fields(mtls, "spec.mtls", frozenset({"mode"}))
        c.enum(mtls.get("mode"), "spec.mtls.mode", MTLS_MODES)
    ports = c.mapping(spec.get("portLevelMtls"), "spec.portLevelMtls")
    if ports:
        if not (spec.get("selector") or {}).get("matchLabels"):
            c.add("spec.portLevelMtls", "portLevelMtls requires a selector")
        for key, value in ports.items():
            path = field_path("spec.portLevelMtls", str(key))
            if not str(key).isdigit() or not 1 <= int(key) <= 65535:
                c.add(path, f"port {key!r} must be a number between 1 and 65535")
            setting = c.mapping(value, path)
            if setting is not None:
                c.known_fields(setting, path, frozenset({"mode"}))
                c.enum(setting.get("mode"), field_path(path, "mode"), MTLS_MODES)
    return c.problems


def _check_values(c: _Checker, value: Any, path: str, *, check: Any = None) -> None:
    for item_path, item in c.strings(value, path):
        if not item:
            c.add(item_path, "empty value is not allowed")
        elif "*" in item[1:-1] or (item.count("*") > 1 and item != "*"):
            c.add(item_path, f"{item!r}: '*' is only allowed as a prefix or suffix")
        elif check is not None and (message := check(item)):
            c.add(item_path, message)


def _ip(value: str) -> str | None:
    return None if is_ip_or_cidr(value) else f"{value!r} is not an IP address or CIDR range"


def _port(value: str) -> str | None:
    if value.isdigit() and 0 < int(value) <= 65535:
        return None
    return f"{value!r} is not a port number between 1 and 65535"


_SOURCE_CHECKS = {"ipBlocks": _ip, "notIpBlocks": _ip, "remoteIpBlocks": _ip,
                  "notRemoteIpBlocks": _ip}
_OPERATION_CHECKS = {"ports": _port, "notPorts": _port}


def validate_authorization_policy(spec: Mapping[str, Any]) -> list[Problem]:
    c = _Checker()
    c.known_fields(spec, "spec", AUTHORIZATION_POLICY_FIELDS)
    _check_selector(c, spec)
    action = c.enum(spec.get("action"), "spec.action", ACTIONS) or "ALLOW"
    provider = c.mapping(spec.get("provider"), "spec.provider")
    if action == "CUSTOM":
        if provider is None or not provider.get("name"):
            c.add("spec.provider", "CUSTOM action requires provider.name")
    elif provider is not None:
        c.add("spec.provider", "provider is only allowed with the CUSTOM action")
    if provider is not None:
        c.known_fields(provider, "spec.provider", frozenset({"name"}))
    for path, rule in c.mappings(spec.get("rules"), "spec.rules"):
        c.known_fields(rule, path, frozenset({"from", "to", "when"}))
        for from_path, item in c.mappings(rule.get("from"), field_path(path, "from")):
            c.known_fields(item, from_path, frozenset({"source"}))
            source = c.mapping(item.get("source"), field_path(from_path, "source"))
            if source is None:
                c.add(field_path(from_path, "source"), "`from.source` must not be null")
                continue
            _check_section(c, source, field_path(from_path, "source"), _SOURCE_FIELDS,
                           _SOURCE_CHECKS, "from.source")
        for to_path, item in c.mappings(rule.get("to"), field_path(path, "to")):
            c.known_fields(item, to_path, frozenset({"operation"}))
            operation = c.mapping(item.get("operation"), field_path(to_path, "operation"))
            if operation is None:
                c.add(field_path(to_path, "operation"), "`to.operation` must not be null")
                continue
            _check_section(c, operation, field_path(to_path, "operation"), _OPERATION_FIELDS,
                           _OPERATION_CHECKS, "to.operation")
        for when_path, condition in c.mappings(rule.get("when"), field_path(path, "when")):
            _check_condition(c, condition, when_path)
    return c.problems


def _check_section(
    c: _Checker, section: Mapping[str, Any], path: str, known: frozenset[str],
    checks: Mapping[str, Any], what: str,
) -> None:
    c.known_fields(section, path, known)
    if not any(section.get(f) for f in known):
        c.add(path, f"`{what}` must not be empty")
    for name in sorted(known & set(section)):
        _check_values(c, section.get(name), field_path(path, name), check=checks.get(name))


def _check_condition(c: _Checker, condition: Mapping[str, Any], path: str) -> None:
    c.known_fields(condition, path, frozenset({"key", "values", "notValues"}))
    key = c.string(condition.get("key"), field_path(path, "key"))
    if not key:
        c.add(field_path(path, "key"), "`key` is required")
        return
    base = _BRACKETED.match(key)
    if base is None and key not in _CONDITION_KEYS:
        if key.startswith("experimental.envoy.filters."):
            c.add(field_path(path, "key"), f"{key!r}: experimental keys are not supported by "
                                           "meshpilot")
        else:
            c.add(field_path(path, "key"), f"unknown attribute {key!r}")
        return
    if key in ("request.headers", "request.auth.claims"):
        c.add(field_path(path, "key"), f"{key!r} needs a name in brackets, e.g. {key}[name]")
        return
    if not condition.get("values") and not condition.get("notValues"):
        c.add(path, "at least one of values or notValues must be set")
    check = {"source.ip": _ip, "remote.ip": _ip, "destination.ip": _ip,
             "destination.port": _port}.get(key)
    for field in ("values", "notValues"):
        _check_values(c, condition.get(field), field_path(path, field), check=check)


def validate_request_authentication(spec: Mapping[str, Any]) -> list[Problem]:
    c = _Checker()
    c.known_fields(spec, "spec", REQUEST_AUTHENTICATION_FIELDS)
    _check_selector(c, spec)
    issuers: set[str] = set()
    for path, rule in c.mappings(spec.get("jwtRules"), "spec.jwtRules"):
        c.known_fields(rule, path, _JWT_RULE_FIELDS)
        issuer = c.string(rule.get("issuer"), field_path(path, "issuer"))
        if not issuer:
            c.add(field_path(path, "issuer"), "issuer must be set")
        elif issuer in issuers:
            c.add(field_path(path, "issuer"), f"duplicate issuer {issuer!r}")
        else:
            issuers.add(issuer)
        for audience_path, audience in c.strings(rule.get("audiences"),
                                                  field_path(path, "audiences")):
            if not audience:
                c.add(audience_path, "audience must be non-empty")
        uri = c.string(rule.get("jwksUri"), field_path(path, "jwksUri"))
        if uri:
            parsed = urlparse(uri)
            if parsed.scheme not in ("http", "https", "file") or not (parsed.netloc
                                                                    or parsed.path):
                c.add(field_path(path, "jwksUri"), f"{uri!r} must be an http(s):// or file:// "
                                                   "URL")
        c.string(rule.get("jwks"), field_path(path, "jwks"))
        for header_path, header in c.mappings(rule.get("fromHeaders"),
                                              field_path(path, "fromHeaders")):
            c.known_fields(header, header_path, frozenset({"name", "prefix"}))
            if not c.string(header.get("name"), field_path(header_path, "name")):
                c.add(field_path(header_path, "name"), "header name must be set")
            c.string(header.get("prefix"), field_path(header_path, "prefix"))
        for field in ("fromParams", "fromCookies"):
            for item_path, item in c.strings(rule.get(field), field_path(path, field)):
                if not item:
                    c.add(item_path, "must be non-empty")
        c.string(rule.get("outputPayloadToHeader"), field_path(path, "outputPayloadToHeader"))
        c.boolean(rule.get("forwardOriginalToken"), field_path(path, "forwardOriginalToken"))
        for index, claim in enumerate(c.sequence(rule.get("outputClaimToHeaders"),
                                                 field_path(path, "outputClaimToHeaders"))
                                      or []):
            claim_path = index_path(field_path(path, "outputClaimToHeaders"), index)
            mapping = c.mapping(claim, claim_path)
            if mapping is None:
                continue
            c.known_fields(mapping, claim_path, frozenset({"header", "claim"}))
            for field in ("header", "claim"):
                if not c.string(mapping.get(field), field_path(claim_path, field)):
                    c.add(field_path(claim_path, field), f"{field} must be set")
    return c.problems
