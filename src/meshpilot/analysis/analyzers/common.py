"""Shared vocabulary for analyzers: safe access to YAML data, label selectors, Istio host names.

Resources come from files, so every field may be missing or of the wrong type; the accessors
here return empty values instead of raising, and analyzers treat "empty" as "not set" — the
same as Istio's generated getters do for a proto field that was not written.

Host helpers follow istio/istio `pkg/config/host` and the analyzers' `util` package: a short
name is qualified with the referring resource's namespace (`reviews` in `default` is
`reviews.default.svc.cluster.local`), and two host names *match* when one wildcard covers the
other, in either direction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from meshpilot.analysis.resource import Resource

CLUSTER_DOMAIN = "svc.cluster.local"
MESH_GATEWAY = "mesh"
EXPORT_ALL = "*"
EXPORT_LOCAL = "."
ISTIO_PROXY = "istio-proxy"
INJECTION_LABEL = "istio-injection"
REVISION_LABEL = "istio.io/rev"
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
SIDECAR_INJECT = "sidecar.istio.io/inject"
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease",
                               "local-path-storage", "istio-system"})

_FQDN = re.compile(r"^(.+)\.(.+)\.svc\.cluster\.local$")


# --- Typed access to YAML data ---------------------------------------------------------------

def mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def items(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def mappings(value: object) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(index, item) for the mapping items of a list; other items are skipped."""
    for index, item in enumerate(items(value)):
        if isinstance(item, Mapping):
            yield index, item


def text(value: object) -> str:
    if value is None or isinstance(value, Mapping | list):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def strings(value: object) -> list[str]:
    return [text(v) for v in items(value) if text(v)]


def string_map(value: object) -> dict[str, str]:
    return {str(k): text(v) for k, v in mapping(value).items()}


def number(value: object) -> int | None:
    """An integer field (a port), accepting numeric strings; None when absent or not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


# --- Label selectors (Kubernetes `SelectorFromSet`) ------------------------------------------

def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Every selector label is present with the same value; an empty selector selects all."""
    return all(labels.get(key) == value for key, value in selector.items())


class LabelIndex:
    """Label maps indexed by label pair, to ask whether any of them matches a selector without
    testing each one: subsets against every workload of a namespace was quadratic (4 s of a
    1,000-service mesh's analysis)."""

    def __init__(self, label_maps: Iterable[Mapping[str, str]]) -> None:
        self.size = 0
        self._by_pair: dict[tuple[str, str], set[int]] = {}
        for i, labels in enumerate(label_maps):
            self.size += 1
            for pair in labels.items():
                self._by_pair.setdefault(pair, set()).add(i)

    def any_match(self, selector: Mapping[str, str]) -> bool:
        """Whether some label map has every selector label (an empty selector: any map)."""
        if not selector:
            return self.size > 0
        holders = []
        for pair in selector.items():
            found = self._by_pair.get(pair)
            if not found:
                return False
            holders.append(found)
        holders.sort(key=len)
        first, *others = holders
        return any(all(i in other for other in others) for i in first)


def selector_string(selector: Mapping[str, str]) -> str:
    """`k1=v1,k2=v2` in key order, as Kubernetes prints a selector."""
    return ",".join(f"{key}={selector[key]}" for key in sorted(selector))


def is_subset(smaller: Mapping[str, str], larger: Mapping[str, str]) -> bool:
    """Every label of `smaller` is in `larger`: what `larger` selects, `smaller` selects too."""
    return all(larger.get(key) == value for key, value in smaller.items())


# --- Host names ----------------------------------------------------------------------------

def fqdn(namespace: str, host: str) -> str:
    """Qualify a short name with the namespace; wildcards and dotted names stay as written."""
    if host.startswith("*") or "." in host:
        return host
    return f"{host}.{namespace}.{CLUSTER_DOMAIN}"


def service_name_of(namespace: str, host: str) -> tuple[str, str]:
    """(namespace, name) of the Kubernetes Service a host names, or (namespace, host)."""
    found = _FQDN.match(host)
    if found:
        return found.group(2), found.group(1)
    return namespace, host


def hosts_match(a: str, b: str) -> bool:
    """Istio's `host.Name.Matches`: equal, or one wildcard covers the other."""
    a_wild, b_wild = a.startswith("*"), b.startswith("*")
    if a_wild and b_wild:
        shorter, longer = sorted((a[1:], b[1:]), key=len)
        return longer.endswith(shorter)
    if a_wild:
        return b.endswith(a[1:])
    if b_wild:
        return a.endswith(b[1:])
    return a == b


def export_scopes(export_to: list[str], namespace: str) -> set[str]:
    """Namespaces a resource is visible in; `{"*"}` for everywhere (the default)."""
    if not export_to or EXPORT_ALL in export_to:
        return {EXPORT_ALL}
    return {namespace if e == EXPORT_LOCAL else e for e in export_to}


def scopes_overlap(a: set[str], b: set[str]) -> bool:
    return EXPORT_ALL in a or EXPORT_ALL in b or bool(a & b)


def reference(namespace: str, name: str) -> tuple[str, str]:
    """A `name` or `namespace/name` reference, resolved against the referrer's namespace."""
    if "/" in name:
        ns, _, local = name.partition("/")
        return ns, local
    return namespace, name


# --- Workloads -----------------------------------------------------------------------------

def pod_template(resource: Resource) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(metadata, spec) of the pods a Pod or workload controller runs."""
    if resource.kind == "Pod":
        return resource.metadata, resource.spec
    template = mapping(resource.spec.get("template"))
    if resource.kind == "CronJob":
        job = mapping(mapping(resource.spec.get("jobTemplate")).get("spec"))
        template = mapping(job.get("template"))
    return mapping(template.get("metadata")), mapping(template.get("spec"))


def containers(spec: Mapping[str, Any], *, init: bool = True) -> Iterator[Mapping[str, Any]]:
    for _, container in mappings(spec.get("containers")):
        yield container
    if init:
        for _, container in mappings(spec.get("initContainers")):
            yield container


def proxy_image(spec: Mapping[str, Any]) -> str:
    """Image of the `istio-proxy` container (a native sidecar counts too), or ''."""
    for container in containers(spec):
        if container.get("name") == ISTIO_PROXY:
            return text(container.get("image"))
    return ""


def label_selector_matches(selector: object, labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector (`matchLabels` and `matchExpressions`); absent matches all."""
    if selector is None:
        return True
    data = mapping(selector)
    if not selector_matches(string_map(data.get("matchLabels")), labels):
        return False
    for _, expression in mappings(data.get("matchExpressions")):
        key, operator = text(expression.get("key")), text(expression.get("operator"))
        values = strings(expression.get("values"))
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True
