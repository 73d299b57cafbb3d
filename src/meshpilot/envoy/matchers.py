"""Istio StringMatch → Envoy StringMatcher, shared by routes, CORS and headers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.type.matcher.v3 import regex_pb2, string_pb2


def string_matcher(spec: Mapping[str, Any], ignore_case: bool = False) -> string_pb2.StringMatcher:
    m = string_pb2.StringMatcher(ignore_case=ignore_case)
    if "exact" in spec:
        m.exact = str(spec["exact"])
    elif "prefix" in spec:
        m.prefix = str(spec["prefix"])
    elif "regex" in spec:
        m.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=str(spec["regex"])))
    return m
