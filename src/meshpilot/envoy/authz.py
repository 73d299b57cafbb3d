"""AuthorizationPolicy → Envoy RBAC filters on a sidecar's inbound listeners.

Every policy that applies to the workload (security/policies.py) is translated; per action one
filter, in Istio's order of evaluation:

    CUSTOM   → an RBAC DENY filter for the requests its rules match (see below)
    AUDIT    → RBAC action LOG (marks matching requests for access logs; never denies)
    DENY     → RBAC action DENY: a request any DENY rule matches gets 403
    ALLOW    → RBAC action ALLOW: present as soon as one ALLOW policy applies; a request no
               ALLOW rule matches gets 403. A policy without rules matches nothing, so
               `spec: {action: ALLOW}` alone denies everything, and `rules: [{}]` allows all

A rule is one RBAC policy named Istio's way, `ns[<ns>]-policy[<name>]-rule[<i>]`: its `from`
entries become OR'ed principals (each an AND of its fields, values OR'ed within a field, `not…`
fields negated), its `to` entries OR'ed permissions, and each `when` condition is ANDed into
every principal (`source.*`, `remote.ip`, `request.headers`, `request.auth.*`) or permission
(`destination.*`, `connection.sni`). Values take Istio's wildcards: `*` (present), `prefix*`,
`*suffix`.

Identities are the peer certificate's URI SAN (`principals: [cluster.local/ns/a/sa/b]` matches
`spiffe://cluster.local/ns/a/sa/b`; `namespaces` the `/ns/<ns>/` part), so both need mTLS: a
plaintext request has no principal. `requestPrincipals` (`<iss>/<sub>`, split at the last `/`)
and `request.auth.*` conditions read the JWT payload jwt.py has Envoy's jwt_authn write into
dynamic metadata — Istio's combination: RequestAuthentication only rejects *invalid* tokens,
and it is an AuthorizationPolicy asking for a request principal that rejects requests without
one (403).

The `istio.io/dry-run: "true"` annotation puts a policy into the filter's `shadow_rules`: it is
evaluated and counted (`…rbac.istio_dry_run_allow_shadow_denied` and the like) but never
enforced.

TCP ports get the RBAC network filter. HTTP-only fields (hosts, methods, paths, request
principals, `request.*` conditions) cannot apply there: as in Istio, an ALLOW rule using them is
dropped (it matches nothing), while a DENY rule is kept without them (it denies more).

CUSTOM delegates to the external authorizer its `provider.name` names in MeshConfig's
`extensionProviders` (`envoyExtAuthzHttp` or `envoyExtAuthzGrpc`, ext_authz.py). As in Istio the
authorizer is asked only about the requests the policy's rules match: a shadow RBAC filter
(policies named `istio-ext-authz-…`) writes the matching policy's id into dynamic metadata, and
the ext_authz filter after it is enabled only by that marker. An unknown provider (or a second
one on the same workload, which Istio refuses) keeps the safe answer: an RBAC filter denies what
the policy's rules match rather than let it through unchecked. On TCP ports only a gRPC provider
can be asked (the network ext_authz filter); with an HTTP provider the rules' matches are denied.
Dry-run CUSTOM policies are counted by a shadow RBAC filter and never call the authorizer.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2
from google.protobuf.message import Message

from meshpilot.envoy import ext_authz
from meshpilot.envoy.jwt import FILTER as JWT_FILTER
from meshpilot.envoy.jwt import PAYLOAD_KEY, jwt_filter
from meshpilot.model import Config, Proxy
from meshpilot.model.snapshot import Snapshot
from meshpilot.security.identity import proxy_identity
from meshpilot.security.policies import authorization_policies

log = logging.getLogger("meshpilot.envoy")

HTTP_FILTER = "envoy.filters.http.rbac"
NETWORK_FILTER = "envoy.filters.network.rbac"
DRY_RUN_ANNOTATION = "istio.io/dry-run"

ALLOW, DENY, AUDIT, CUSTOM = "ALLOW", "DENY", "AUDIT", "CUSTOM"
_ORDER = (CUSTOM, AUDIT, DENY, ALLOW)
_ENVOY_ACTION = {
    ALLOW: rbac_pb2.RBAC.ALLOW, DENY: rbac_pb2.RBAC.DENY, AUDIT: rbac_pb2.RBAC.LOG,
    CUSTOM: rbac_pb2.RBAC.DENY,
}

_HTTP_OPERATION_FIELDS = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
_HTTP_SOURCE_FIELDS = ("requestPrincipals", "notRequestPrincipals")
_PRINCIPAL_KEYS = ("source.", "remote.ip", "request.headers", "request.auth.")
_HTTP_KEYS = ("request.",)


def action(policy: Config) -> str:
    return str(policy.spec.get("action") or ALLOW).upper()


def dry_run(policy: Config) -> bool:
    return str(policy.annotations.get(DRY_RUN_ANNOTATION, "")).lower() == "true"


def http_filters(snapshot: Snapshot, proxy: Proxy) -> list[tuple[str, Message]]:
    """The RBAC (and ext_authz) HTTP filters for the proxy's inbound HTTP ports, in
    evaluation order."""
    out: list[tuple[str, Message]] = []
    for _, rules, shadow, prefix in _filters(snapshot, proxy, tcp=False):
        if isinstance(rules, _External):
            marker = http_rbac_pb2.RBAC(shadow_rules_stat_prefix=ext_authz.STAT_PREFIX)
            marker.shadow_rules.CopyFrom(rules.rules)
            out.append((HTTP_FILTER, marker))
            out.append((ext_authz.HTTP_FILTER, ext_authz.http_filter(rules.provider)))
            continue
        config = http_rbac_pb2.RBAC()
        if rules is not None:
            config.rules.CopyFrom(rules)
        if shadow is not None:
            config.shadow_rules.CopyFrom(shadow)
            config.shadow_rules_stat_prefix = prefix
        out.append((HTTP_FILTER, config))
    return out


def network_filters(snapshot: Snapshot, proxy: Proxy, port: int) -> list[tuple[str, Message]]:
    """The RBAC network filters for one inbound TCP port, in evaluation order."""
    out: list[tuple[str, Message]] = []
    for name, rules, shadow, prefix in _filters(snapshot, proxy, tcp=True):
        if isinstance(rules, _External):
            marker = network_rbac_pb2.RBAC(stat_prefix=f"inbound_{port}.{name}.",
                                           shadow_rules_stat_prefix=ext_authz.STAT_PREFIX)
            marker.shadow_rules.CopyFrom(rules.rules)
            out.append((NETWORK_FILTER, marker))
            out.append((ext_authz.NETWORK_FILTER,
                         ext_authz.network_filter(rules.provider, f"inbound_{port}.")))
            continue
        config = network_rbac_pb2.RBAC(stat_prefix=f"inbound_{port}.{name}.")
        if rules is not None:
            config.rules.CopyFrom(rules)
        if shadow is not None:
            config.shadow_rules.CopyFrom(shadow)
            config.shadow_rules_stat_prefix = prefix
        out.append((NETWORK_FILTER, config))
    return out


@dataclass(frozen=True)
class _External:
    """CUSTOM policies handed to an external authorizer: the shadow rules that mark the
    requests to ask it about, and the provider."""

    rules: rbac_pb2.RBAC
    provider: ext_authz.Provider


def _filters(
    snapshot: Snapshot, proxy: Proxy, tcp: bool
) -> list[tuple[str, rbac_pb2.RBAC | _External | None, rbac_pb2.RBAC | None, str]]:
    """(name, enforced rules, dry-run rules, dry-run stat prefix) per action present; CUSTOM
    policies with a usable provider come first as one `_External`."""
    by_action: dict[str, list[Config]] = {}
    account = proxy_identity(snapshot, proxy).service_account
    for policy in authorization_policies(snapshot, proxy.namespace, proxy.labels, account):
        by_action.setdefault(action(policy), []).append(policy)
    out: list[tuple[str, rbac_pb2.RBAC | _External | None, rbac_pb2.RBAC | None, str]] = []
    for name in _ORDER:
        policies = by_action.get(name)
        if not policies:
            continue
        enforced = [p for p in policies if not dry_run(p)]
        shadow = [p for p in policies if dry_run(p)]
        if name == CUSTOM:
            external, enforced = _external(snapshot, enforced, tcp)
            if external is not None:
                out.append(("ext_authz", external, None, ""))
            if not enforced and not shadow:
                continue
        rules = _rbac(name, enforced, tcp) if enforced else None
        shadow_rules = _rbac(name, shadow, tcp) if shadow else None
        verb = "deny" if name in (DENY, CUSTOM) else name.lower()
        out.append((name.lower(), rules, shadow_rules, f"istio_dry_run_{verb}_"))
    return out


def _external(
    snapshot: Snapshot, policies: Sequence[Config], tcp: bool
) -> tuple[_External | None, list[Config]]:
    """The CUSTOM policies one external authorizer decides on, and those left to deny (unknown
    provider, a second provider, an HTTP provider on a TCP port)."""
    chosen: ext_authz.Provider | None = None
    delegated: list[Config] = []
    denied: list[Config] = []
    for policy in policies:
        name = str((policy.spec.get("provider") or {}).get("name", ""))
        provider = ext_authz.provider(snapshot, name)
        if provider is None:
            _warn_custom(snapshot, policy, name, "is not an envoyExtAuthzHttp or "
                         "envoyExtAuthzGrpc provider with a known service in MeshConfig "
                         "extensionProviders")
        elif chosen is not None and provider.name != chosen.name:
            _warn_custom(snapshot, policy, name, f"differs from {chosen.name!r}, already used "
                         "for this workload (one CUSTOM provider per workload)")
            provider = None
        elif tcp and not provider.grpc:
            _warn_custom(snapshot, policy, name, "is an HTTP provider, which cannot check TCP "
                         "connections (only envoyExtAuthzGrpc can)")
            provider = None
        if provider is None:
            denied.append(policy)
        else:
            chosen = provider
            delegated.append(policy)
    if chosen is None:
        return None, denied
    rules = _rbac(CUSTOM, delegated, tcp, prefix=ext_authz.POLICY_PREFIX)
    return _External(rules, chosen), denied


def _warn_custom(snapshot: Snapshot, policy: Config, provider: str, why: str) -> None:
    key = ("custom-warned", policy.key, provider, why)
    if key not in snapshot.cache:
        snapshot.cache[key] = True
        log.warning("%s: CUSTOM provider %r %s; requests its rules match are denied",
                    policy.key, provider, why)


def _rbac(name: str, policies: Sequence[Config], tcp: bool, prefix: str = "") -> rbac_pb2.RBAC:
    rbac = rbac_pb2.RBAC(action=_ENVOY_ACTION[name])
    for policy in policies:
        for index, rule in enumerate(policy.spec.get("rules") or ()):
            built = _policy(rule or {}, deny=name != ALLOW, tcp=tcp)
            if built is not None:
                rbac.policies[
                    f"{prefix}ns[{policy.namespace}]-policy[{policy.name}]-rule[{index}]"
                ].CopyFrom(built)
    return rbac


def _policy(rule: Mapping[str, Any], deny: bool, tcp: bool) -> rbac_pb2.Policy | None:
    """One rule as an RBAC policy; None when it can never match on this listener (an ALLOW
    rule with HTTP-only fields on a TCP port)."""
    sources = [s.get("source") or {} for s in rule.get("from") or ()]
    operations = [t.get("operation") or {} for t in rule.get("to") or ()]
    conditions = list(rule.get("when") or ())
    if tcp:
        http_only = any(k in s for s in sources for k in _HTTP_SOURCE_FIELDS) or any(
            k in o for o in operations for k in _HTTP_OPERATION_FIELDS
        ) or any(str(c.get("key", "")).startswith(_HTTP_KEYS) for c in conditions)
        if http_only and not deny:
            return None
        # DENY keeps the rule without what the TCP listener cannot see: it denies more.
        sources = [{k: v for k, v in s.items() if k not in _HTTP_SOURCE_FIELDS} for s in sources]
        operations = [
            {k: v for k, v in o.items() if k not in _HTTP_OPERATION_FIELDS} for o in operations
        ]
        conditions = [c for c in conditions if not str(c.get("key", "")).startswith(_HTTP_KEYS)]
    principal_conditions = [c for c in conditions if _is_principal_key(str(c.get("key", "")))]
    permission_conditions = [c for c in conditions if c not in principal_conditions]
    policy = rbac_pb2.Policy()
    for source in sources or [{}]:
        ids = [*_source_ids(source), *(_condition_id(c) for c in principal_conditions)]
        policy.principals.append(_and_ids(ids))
    for operation in operations or [{}]:
        rules = [*_operation_rules(operation),
                 *(_condition_rule(c) for c in permission_conditions)]
        policy.permissions.append(_and_rules(rules))
    return policy


def _is_principal_key(key: str) -> bool:
    return key.startswith(_PRINCIPAL_KEYS)


# --- Principals (who) --------------------------------------------------------------------------


def _and_ids(ids: list[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if not ids:
        return rbac_pb2.Principal(any=True)
    if len(ids) == 1:
        return ids[0]
    principal = rbac_pb2.Principal()
    principal.and_ids.ids.extend(ids)
    return principal


def _or_ids(ids: list[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if len(ids) == 1:
        return ids[0]
    principal = rbac_pb2.Principal()
    principal.or_ids.ids.extend(ids)
    return principal


def _not_id(principal: rbac_pb2.Principal) -> rbac_pb2.Principal:
    negated = rbac_pb2.Principal()
    negated.not_id.CopyFrom(principal)
    return negated


def _source_ids(source: Mapping[str, Any]) -> list[rbac_pb2.Principal]:
    ids = []
    for field, build in (
        ("principals", _principal_id),
        ("namespaces", _namespace_id),
        ("ipBlocks", _direct_ip_id),
        ("remoteIpBlocks", _remote_ip_id),
        ("requestPrincipals", _request_principal_id),
    ):
        negated = "not" + field[0].upper() + field[1:]
        if source.get(field):
            ids.append(_or_ids([build(str(v)) for v in source[field]]))
        if source.get(negated):
            ids.append(_not_id(_or_ids([build(str(v)) for v in source[negated]])))
    return ids


def _principal_id(value: str) -> rbac_pb2.Principal:
    principal = rbac_pb2.Principal()
    # `*` means any authenticated peer; the others match the SAN with its `spiffe://`.
    matcher = _regex(".+") if value == "*" else string_matcher(value, prefix="spiffe://")
    principal.authenticated.principal_name.CopyFrom(matcher)
    return principal


def _namespace_id(value: str) -> rbac_pb2.Principal:
    principal = rbac_pb2.Principal()
    if value == "*":
        pattern = r".*/ns/[^/]+/.*"
    elif value.endswith("*"):
        pattern = rf".*/ns/{re.escape(value[:-1])}[^/]*/.*"
    elif value.startswith("*"):
        pattern = rf".*/ns/[^/]*{re.escape(value[1:])}/.*"
    else:
        pattern = rf".*/ns/{re.escape(value)}/.*"
    principal.authenticated.principal_name.CopyFrom(_regex(pattern))
    return principal


def _cidr(value: str) -> address_pb2.CidrRange:
    network = ipaddress.ip_network(value, strict=False)
    cidr = address_pb2.CidrRange(address_prefix=str(network.network_address))
    cidr.prefix_len.value = network.prefixlen
    return cidr


def _direct_ip_id(value: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(direct_remote_ip=_cidr(value))


def _remote_ip_id(value: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(remote_ip=_cidr(value))


def _payload(path: Sequence[str], value: metadata_pb2.MetadataMatcher) -> rbac_pb2.Principal:
    value.filter = JWT_FILTER
    for key in (PAYLOAD_KEY, *path):
        value.path.add(key=key)
    return rbac_pb2.Principal(metadata=value)


def _claim_string(path: Sequence[str], matcher: string_pb2.StringMatcher) -> rbac_pb2.Principal:
    found = metadata_pb2.MetadataMatcher()
    found.value.string_match.CopyFrom(matcher)
    return _payload(path, found)


def _claim_present(path: Sequence[str]) -> rbac_pb2.Principal:
    found = metadata_pb2.MetadataMatcher()
    found.value.present_match = True
    return _payload(path, found)


def _request_principal_id(value: str) -> rbac_pb2.Principal:
    """`<iss>/<sub>` against the verified JWT's claims; `*` means any verified token."""
    if value == "*":
        return _claim_present(["iss"])
    if value.endswith("*"):
        head = value[:-1]
        if "/" in head:
            issuer, _, subject = head.rpartition("/")
            return _and_ids([_claim_string(["iss"], _exact(issuer)),
                             _claim_string(["sub"], string_matcher(subject + "*"))
                             if subject else _claim_present(["sub"])])
        return _claim_string(["iss"], string_pb2.StringMatcher(prefix=head))
    if value.startswith("*"):
        tail = value[1:]
        if "/" in tail:
            issuer, _, subject = tail.rpartition("/")
            return _and_ids([_claim_string(["iss"], string_matcher("*" + issuer))
                             if issuer else _claim_present(["iss"]),
                             _claim_string(["sub"], _exact(subject))])
        return _claim_string(["sub"], string_pb2.StringMatcher(suffix=tail))
    issuer, _, subject = value.rpartition("/")
    return _and_ids([_claim_string(["iss"], _exact(issuer)),
                     _claim_string(["sub"], _exact(subject))])


def _claim_id(path: Sequence[str], value: str) -> rbac_pb2.Principal:
    """A claim equal to `value`, or (for list claims such as groups) containing it."""
    matcher = string_matcher(value)
    as_list = metadata_pb2.MetadataMatcher()
    as_list.value.list_match.one_of.string_match.CopyFrom(matcher)
    return _or_ids([_claim_string(path, matcher), _payload(path, as_list)])


def _header_id(name: str, value: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(header=_header(name, string_matcher(value)))


# --- Permissions (what) ------------------------------------------------------------------------


def _and_rules(rules: list[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if not rules:
        return rbac_pb2.Permission(any=True)
    if len(rules) == 1:
        return rules[0]
    permission = rbac_pb2.Permission()
    permission.and_rules.rules.extend(rules)
    return permission


def _or_rules(rules: list[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if len(rules) == 1:
        return rules[0]
    permission = rbac_pb2.Permission()
    permission.or_rules.rules.extend(rules)
    return permission


def _not_rule(rule: rbac_pb2.Permission) -> rbac_pb2.Permission:
    negated = rbac_pb2.Permission()
    negated.not_rule.CopyFrom(rule)
    return negated


def _operation_rules(operation: Mapping[str, Any]) -> list[rbac_pb2.Permission]:
    rules = []
    for field, build in (
        ("hosts", _host_rule),
        ("ports", _port_rule),
        ("methods", _method_rule),
        ("paths", _path_rule),
    ):
        negated = "not" + field[0].upper() + field[1:]
        if operation.get(field):
            rules.append(_or_rules([build(str(v)) for v in operation[field]]))
        if operation.get(negated):
            rules.append(_not_rule(_or_rules([build(str(v)) for v in operation[negated]])))
    return rules


def _host_rule(value: str) -> rbac_pb2.Permission:
    """`Host` as written or with any port, case-insensitively, as Istio matches hosts."""
    bare = rbac_pb2.Permission(
        header=_header(":authority", string_matcher(value, ignore_case=True))
    )
    if value.endswith("*"):
        return bare  # a prefix match covers any port already
    if value.startswith("*"):
        with_port = _regex(f"(?i).*{re.escape(value[1:])}:[0-9]+")
    else:
        with_port = string_pb2.StringMatcher(prefix=value + ":", ignore_case=True)
    return _or_rules([bare, rbac_pb2.Permission(header=_header(":authority", with_port))])


def _port_rule(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(destination_port=int(value))


def _method_rule(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(header=_header(":method", string_matcher(value)))


def _path_rule(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=string_matcher(value)))


# --- Conditions (when) -------------------------------------------------------------------------

_CLAIM = re.compile(r"^request\.auth\.claims((?:\[[^\]]+\])+)$")
_HEADER_KEY = re.compile(r"^request\.headers\[([^\]]+)\]$")


def _condition_values(condition: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    return ([str(v) for v in condition.get("values") or ()],
            [str(v) for v in condition.get("notValues") or ()])


def _condition_id(condition: Mapping[str, Any]) -> rbac_pb2.Principal:
    key = str(condition.get("key", ""))
    values, not_values = _condition_values(condition)

    def build(value: str) -> rbac_pb2.Principal:
        if key == "source.ip":
            return _direct_ip_id(value)
        if key == "remote.ip":
            return _remote_ip_id(value)
        if key == "source.namespace":
            return _namespace_id(value)
        if key == "source.principal":
            return _principal_id(value)
        if key == "request.auth.principal":
            return _request_principal_id(value)
        if key == "request.auth.audiences":
            return _claim_id(["aud"], value)
        if key == "request.auth.presenter":
            return _claim_id(["azp"], value)
        if claim := _CLAIM.match(key):
            return _claim_id(re.findall(r"\[([^\]]+)\]", claim.group(1)), value)
        if header := _HEADER_KEY.match(key):
            return _header_id(header.group(1), value)
        raise ValueError(f"unsupported condition key {key!r}")

    return _combine_ids([build(v) for v in values], [build(v) for v in not_values])


def _combine_ids(
    positive: list[rbac_pb2.Principal], negative: list[rbac_pb2.Principal]
) -> rbac_pb2.Principal:
    parts = []
    if positive:
        parts.append(_or_ids(positive))
    if negative:
        parts.append(_not_id(_or_ids(negative)))
    return _and_ids(parts)


def _condition_rule(condition: Mapping[str, Any]) -> rbac_pb2.Permission:
    key = str(condition.get("key", ""))
    values, not_values = _condition_values(condition)

    def build(value: str) -> rbac_pb2.Permission:
        if key == "destination.ip":
            return rbac_pb2.Permission(destination_ip=_cidr(value))
        if key == "destination.port":
            return _port_rule(value)
        if key == "connection.sni":
            return rbac_pb2.Permission(requested_server_name=string_matcher(value))
        raise ValueError(f"unsupported condition key {key!r}")

    parts = []
    if values:
        parts.append(_or_rules([build(v) for v in values]))
    if not_values:
        parts.append(_not_rule(_or_rules([build(v) for v in not_values])))
    return _and_rules(parts)


# --- Matchers ----------------------------------------------------------------------------------


def _exact(value: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(exact=value)


def _regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def string_matcher(
    value: str, prefix: str = "", ignore_case: bool = False
) -> string_pb2.StringMatcher:
    """Istio's value syntax: `*` (present, non-empty), `prefix*`, `*suffix` or exact. `prefix`
    is prepended to what is matched from the start (e.g. `spiffe://` for principals)."""
    if value == "*":
        matcher = _regex(".+")
    elif value.endswith("*"):
        matcher = string_pb2.StringMatcher(prefix=prefix + value[:-1])
    elif value.startswith("*"):
        matcher = string_pb2.StringMatcher(suffix=value[1:])
    else:
        matcher = string_pb2.StringMatcher(exact=prefix + value)
    if ignore_case and not matcher.HasField("safe_regex"):
        matcher.ignore_case = True
    return matcher


def _header(name: str, matcher: string_pb2.StringMatcher) -> route_components_pb2.HeaderMatcher:
    return route_components_pb2.HeaderMatcher(name=name, string_match=matcher)


def inbound_http_filters(snapshot: Snapshot, proxy: Proxy) -> list[tuple[str, Message]]:
    """Security filters that go first in an inbound HTTP connection manager: jwt_authn (so
    its verified payload is there for RBAC), then the RBAC filters."""
    out: list[tuple[str, Message]] = []
    jwt = jwt_filter(snapshot, proxy)
    if jwt is not None:
        out.append((JWT_FILTER, jwt))
    out.extend(http_filters(snapshot, proxy))
    return out
