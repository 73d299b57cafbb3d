"""RequestAuthentication → Envoy's jwt_authn filter on a sidecar's inbound HTTP listeners.

Every RequestAuthentication that applies to the workload (security/policies.py) contributes its
`jwtRules`, one jwt_authn provider each:

    issuer, audiences              → issuer, audiences
    jwks                           → local_jwks (inline)
    jwksUri                        → local_jwks with the key set the control plane fetched
                                     (security/jwks.py; istiod's default), never fetched by Envoy
    fromHeaders / fromParams /     → where the token is looked for (default: `Authorization:
    fromCookies                      Bearer …` and the `access_token` query parameter)
    forwardOriginalToken           → forward (Envoy otherwise strips the token, as Istio does)
    outputPayloadToHeader          → forward_payload_header
    outputClaimToHeaders           → claim_to_headers

The requirement is Istio's: any one provider, or no token at all. A request with a token that
no provider accepts (bad signature, expired, wrong issuer or audience) is rejected with 401; a
request without a token passes, and it is AuthorizationPolicy (`requestPrincipals`,
`request.auth.*`) that can then refuse it with 403. For that every provider writes the verified
payload into dynamic metadata under `payload`, which authz.py's matchers read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2

from meshpilot.model import Proxy
from meshpilot.model.snapshot import Snapshot
from meshpilot.security.jwks import UNMATCHABLE_JWKS
from meshpilot.security.policies import request_authentications

FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD_KEY = "payload"


def jwt_filter(snapshot: Snapshot, proxy: Proxy) -> config_pb2.JwtAuthentication | None:
    """The filter for the proxy's inbound HTTP ports; None when no RequestAuthentication
    applies to it."""
    rules = [
        rule
        for policy in request_authentications(snapshot, proxy.namespace, proxy.labels)
        for rule in policy.spec.get("jwtRules") or ()
    ]
    if not rules:
        return None
    config = config_pb2.JwtAuthentication()
    requirement = config_pb2.JwtRequirement()
    for index, rule in enumerate(rules):
        name = f"origins-{index}"
        config.providers[name].CopyFrom(_provider(snapshot, rule))
        requirement.requires_any.requirements.add(provider_name=name)
    requirement.requires_any.requirements.add().allow_missing.SetInParent()
    route_rule = config.rules.add()
    route_rule.match.prefix = "/"
    route_rule.requires.CopyFrom(requirement)
    return config


def _provider(snapshot: Snapshot, rule: Mapping[str, Any]) -> config_pb2.JwtProvider:
    provider = config_pb2.JwtProvider(issuer=str(rule.get("issuer", "")))
    provider.audiences.extend(str(a) for a in rule.get("audiences") or ())
    provider.local_jwks.inline_string = _jwks(snapshot, rule)
    provider.forward = bool(rule.get("forwardOriginalToken"))
    for header in rule.get("fromHeaders") or ():
        provider.from_headers.add(name=str(header["name"]), value_prefix=str(
            header.get("prefix") or ""
        ))
    provider.from_params.extend(str(p) for p in rule.get("fromParams") or ())
    provider.from_cookies.extend(str(c) for c in rule.get("fromCookies") or ())
    if rule.get("outputPayloadToHeader"):
        provider.forward_payload_header = str(rule["outputPayloadToHeader"])
    for claim in rule.get("outputClaimToHeaders") or ():
        provider.claim_to_headers.add(header_name=str(claim["header"]),
                                      claim_name=str(claim["claim"]))
    provider.payload_in_metadata = PAYLOAD_KEY
    return provider


def _jwks(snapshot: Snapshot, rule: Mapping[str, Any]) -> str:
    if rule.get("jwks"):
        inline = str(rule["jwks"])
        # Envoy rejects the whole listener for a key set without a usable key: refuse tokens
        # instead, for this provider only.
        return inline if _has_keys(inline) else UNMATCHABLE_JWKS
    uri = str(rule.get("jwksUri") or "")
    jwks = snapshot.security.jwks if snapshot.security is not None else None
    if not uri or jwks is None:
        # Istio finds the key set by OpenID discovery from the issuer; without a fetcher or a
        # URI there is no key set, and tokens must fail rather than pass unchecked.
        return UNMATCHABLE_JWKS
    return jwks.jwks(uri)


def _has_keys(text: str) -> bool:
    try:
        keys = json.loads(text).get("keys")
    except (ValueError, AttributeError):
        return False
    return isinstance(keys, list) and any(isinstance(k, dict) and k.get("kty") for k in keys)
