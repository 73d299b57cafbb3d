"""Per-kind validation: what Istio accepts passes, what Istio rejects is named by field path."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml

from meshpilot.config.kinds import document_to_config
from meshpilot.config.validation import (
    KNOWN_SPEC_FIELDS,
    Problem,
    dns_name_error,
    label_key_error,
    validate_config,
    validate_spec,
    wildcard_domain_error,
)
from meshpilot.config.yamlsource import parse_text
from meshpilot.model import Config, ConfigKey, Kind

SE, WE = Kind.SERVICE_ENTRY, Kind.WORKLOAD_ENTRY
VS, DR = Kind.VIRTUAL_SERVICE, Kind.DESTINATION_RULE


def spec_of(text: str) -> dict[str, Any]:
    spec = yaml.safe_load(textwrap.dedent(text))
    assert isinstance(spec, dict)
    return spec


def problems(kind: str, text: str) -> list[Problem]:
    return validate_spec(kind, spec_of(text))


VALID_SPECS = {
    "service entry, DNS": (SE, """
        hosts: [api.example.com, "*.cdn.example.com"]
        addresses: [240.0.0.1, "2001:db8::1"]
        ports:
        - {number: 443, name: https, protocol: HTTPS}
        - {number: 80, name: http-web, protocol: http, targetPort: 8080}
        location: MESH_EXTERNAL
        resolution: DNS
        endpoints:
        - address: api-1.example.com
          ports: {https: 8443}
          labels: {zone: a}
          locality: us-east1/b
          weight: 3
        - address: 10.1.2.3
        exportTo: [".", istio-system]
        subjectAltNames: [spiffe://cluster.local/ns/a/sa/b]
    """),
    "service entry, STATIC with workload selector": (SE, """
        hosts: [db.internal]
        ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
        location: MESH_INTERNAL
        resolution: STATIC
        workloadSelector:
          labels: {app: db}
    """),
    "service entry, STATIC unix socket": (SE, """
        hosts: [local.sock]
        ports: [{number: 80, name: http, protocol: HTTP}]
        resolution: STATIC
        endpoints: [{address: "unix:///var/run/app.sock"}]
    """),
    "service entry, NONE with wildcard": (SE, """
        hosts: ["*.example.com"]
        ports: [{number: 443, name: tls, protocol: TLS}]
        resolution: NONE
    """),
    "workload entry": (WE, """
        address: vm-1.example.com
        ports: {http: 8080, grpc: 9090}
        labels: {app: reviews, app.kubernetes.io/version: v1}
        network: net-1
        locality: us-east1/b
        weight: 10
        serviceAccount: reviews
    """),
    "virtual service": (VS, """
        hosts: [reviews, reviews.example.com]
        gateways: [mesh, istio-system/public-gw]
        exportTo: ["*"]
        http:
        - name: canary
          match:
          - uri: {prefix: /api}
            headers:
              x-user: {exact: jason}
              x-trace: {}
            queryParams:
              debug: {regex: "^(1|true)$"}
            port: 9080
            ignoreUriCase: true
            sourceLabels: {app: productpage}
          route:
          - destination: {host: reviews, subset: v2, port: {number: 9080}}
            weight: 90
            headers: {request: {set: {x-canary: "1"}}}
          - destination: {host: reviews, subset: v1}
            weight: 10
          timeout: 2s
          retries: {attempts: 3, perTryTimeout: 1s}
          mirror: {host: shadow}
          mirrorPercentage: {value: 12.5}
        - redirect: {uri: /v2}
          match: [{uri: {exact: /old}}]
        - directResponse: {status: 503, body: {string: down}}
        tcp:
        - match: [{port: 3306, destinationSubnets: [10.0.0.0/8]}]
          route: [{destination: {host: mysql}}]
        tls:
        - match: [{sniHosts: [reviews.example.com], port: 443}]
          route: [{destination: {host: reviews}}]
    """),
    "virtual service, single destination without weight": (VS, """
        hosts: [ratings]
        http: [{route: [{destination: {host: ratings}}]}]
    """),
    "destination rule": (DR, """
        host: reviews.bookinfo.svc.cluster.local
        exportTo: ["."]
        workloadSelector: {matchLabels: {app: frontend}}
        trafficPolicy:
          loadBalancer: {simple: LEAST_REQUEST}
          connectionPool: {tcp: {maxConnections: 100}}
          outlierDetection: {consecutive5xxErrors: 7}
          tls: {mode: ISTIO_MUTUAL}
          portLevelSettings:
          - port: {number: 9080}
            loadBalancer: {simple: ROUND_ROBIN}
        subsets:
        - name: v1
          labels: {version: v1}
        - name: v2
          labels: {version: v2}
          trafficPolicy:
            loadBalancer: {consistentHash: {httpHeaderName: x-user}}
    """),
}


@pytest.mark.parametrize("case", list(VALID_SPECS))
def test_valid_specs_have_no_problems(case: str) -> None:
    kind, text = VALID_SPECS[case]
    assert problems(kind, text) == []


INVALID_SPECS = [
    # ServiceEntry
    (SE, "ports: []", "spec.hosts", "at least one host"),
    (SE, "hosts: ['*']", "spec.hosts[0]", "invalid host '*'"),
    (SE, "hosts: [bad_host.example.com]", "spec.hosts[0]", "label 'bad_host' invalid"),
    (SE, "hosts: [a.example.123]", "spec.hosts[0]", "all-numeric"),
    (SE, "hosts: a.example.com", "spec.hosts", "must be a list"),
    (SE, "hosts: [a.com]\nports: [{number: 0, name: http}]", "spec.ports[0].number",
     "between 1 and 65535"),
    (SE, "hosts: [a.com]\nports: [{number: 70000, name: http}]", "spec.ports[0].number",
     "between 1 and 65535"),
    (SE, "hosts: [a.com]\nports: [{number: '80', name: http}]", "spec.ports[0].number",
     "must be an integer"),
    (SE, "hosts: [a.com]\nports: [{name: http}]", "spec.ports[0].number", "required"),
    (SE, "hosts: [a.com]\nports: [{number: 80, name: a}, {number: 80, name: b}]",
     "spec.ports[1].number", "already defined"),
    (SE, "hosts: [a.com]\nports: [{number: 80, name: a}, {number: 81, name: a}]",
     "spec.ports[1].name", "already defined"),
    (SE, "hosts: [a.com]\nports: [{number: 80}]", "spec.ports[0].name", "required"),
    (SE, "hosts: [a.com]\nports: [{number: 80, name: http_web}]", "spec.ports[0].name",
     "invalid port name"),
    (SE, "hosts: [a.com]\nports: [{number: 80, name: x, protocol: SMTP}]",
     "spec.ports[0].protocol", "unsupported protocol"),
    (SE, "hosts: [a.com]\nports: [{number: 80, name: x, targetPort: 0}]",
     "spec.ports[0].targetPort", "between 1 and 65535"),
    (SE, "hosts: [a.com]\nports: [{number: 80, name: x, nmae: y}]", "spec.ports[0].nmae",
     "unknown field"),
    (SE, "hosts: [a.com]\nresolution: DYNAMIC", "spec.resolution", "unknown value"),
    (SE, "hosts: [a.com]\nlocation: OUTSIDE", "spec.location", "unknown value"),
    (SE, "hosts: [a.com]\naddresses: [not-an-ip]", "spec.addresses[0]", "IP address or CIDR"),
    (SE, "hosts: [a.com]\nresolution: DNS\naddresses: [10.0.0.0/8]", "spec.addresses[0]",
     "CIDR"),
    (SE, "hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: 1.1.1.1}]\n"
         "workloadSelector: {labels: {app: a}}", "spec.endpoints", "only one of"),
    (SE, "hosts: [a.com]\nresolution: STATIC", "spec.resolution", "endpoints"),
    (SE, "hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: db.example.com}]",
     "spec.endpoints[0].address", "not a valid IP"),
    (SE, "hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: 'unix://sock'}]",
     "spec.endpoints[0].address", "absolute path"),
    (SE, "hosts: [a.com]\nresolution: NONE\nendpoints: [{address: 1.1.1.1}]",
     "spec.endpoints", "resolution NONE"),
    (SE, "hosts: ['*.a.com']\nresolution: DNS", "spec.hosts[0]", "no wildcard"),
    (SE, "hosts: [a.com]\nresolution: DNS\nendpoints: [{address: 'bad host'}]",
     "spec.endpoints[0].address", "not a valid IP address or hostname"),
    (SE, "hosts: [a.com]\nresolution: DNS_ROUND_ROBIN\n"
         "endpoints: [{address: a.com}, {address: b.com}]", "spec.endpoints", "at most one"),
    (SE, "hosts: [a.com]\nports: [{number: 80, name: http}]\nresolution: STATIC\n"
         "endpoints: [{address: 1.1.1.1, ports: {http: 0}}]",
     "spec.endpoints[0].ports.http", "between 1 and 65535"),
    (SE, "hosts: [a.com]\nports: [{number: 80, name: http}]\nresolution: STATIC\n"
         "endpoints: [{address: 1.1.1.1, ports: {grpc: 90}}]",
     "spec.endpoints[0].ports.grpc", "not defined by the service entry"),
    (SE, "hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: 1.1.1.1, weight: -1}]",
     "spec.endpoints[0].weight", "between 0"),
    (SE, "hosts: [a.com]\nexportTo: ['*', '.']", "spec.exportTo[0]", "cannot be combined"),
    (SE, "hosts: [a.com]\nexportTo: [Bad_NS]", "spec.exportTo[0]", "invalid exportTo"),
    (SE, "hosts: [a.com]\nworkloadSelector: {labels: {app: '*'}}",
     "spec.workloadSelector.labels.app", "wildcard"),
    (SE, "hosts: [a.com]\nsubject_alt_names: [x]", "spec.subject_alt_names",
     "did you mean 'subjectAltNames'"),
    # WorkloadEntry
    (WE, "ports: {http: 80}", "spec.address", "address is required"),
    (WE, "address: 'not valid!'", "spec.address", "not a valid IP address or hostname"),
    (WE, "address: 10.0.0.1\nports: {http: 0}", "spec.ports.http", "between 1 and 65535"),
    (WE, "address: 10.0.0.1\nports: {http: x}", "spec.ports.http", "must be an integer"),
    (WE, "address: 10.0.0.1\nweight: -5", "spec.weight", "between 0"),
    (WE, "address: 10.0.0.1\nlabels: {version: 1}", "spec.labels.version", "strings"),
    (WE, "address: 10.0.0.1\nlabels: {'-bad': x}", "spec.labels.-bad", "invalid label key"),
    (WE, "address: 'unix:///s.sock'\nports: {http: 80}", "spec.address", "must not include"),
    (WE, "address: 10.0.0.1\nserviceaccount: x", "spec.serviceaccount", "unknown field"),
    # VirtualService
    (VS, "gateways: [gw]\nhttp: [{route: [{destination: {host: a}}]}]", "spec.gateways",
     "delegate virtual service must have no gateways"),
    (VS, "http: [{delegate: {name: b}}]", "spec.http[0].delegate", "cannot delegate"),
    (VS, "hosts: [a]", "spec", "http, tcp or tls must be provided"),
    (VS, "hosts: ['*']\nhttp: [{route: [{destination: {host: a}}]}]", "spec.hosts[0]",
     "mesh gateway"),
    (VS, "hosts: [a, a]\nhttp: [{route: [{destination: {host: a}}]}]", "spec.hosts[1]",
     "duplicate hosts"),
    (VS, "hosts: ['*.a.com', b.a.com]\nhttp: [{route: [{destination: {host: a}}]}]",
     "spec.hosts[1]", "duplicate hosts"),
    (VS, "hosts: [a]\nhttp: [{match: [{uri: {prefix: /}}]}]", "spec.http[0]",
     "route, redirect or directResponse"),
    (VS, "hosts: [a]\nhttp: [{route: [{weight: 100}]}]", "spec.http[0].route[0].destination",
     "destination is required"),
    (VS, "hosts: [a]\nhttp: [{route: [{destination: {subset: v1}}]}]",
     "spec.http[0].route[0].destination.host", "host is required"),
    (VS, "hosts: [a]\nhttp: [{route: [{destination: {host: a, subset: V_1}}]}]",
     "spec.http[0].route[0].destination.subset", "invalid subset name"),
    (VS, "hosts: [a]\nhttp: [{route: [{destination: {host: a, port: {number: 0}}}]}]",
     "spec.http[0].route[0].destination.port.number", "between 1 and 65535"),
    (VS, "hosts: [a]\nhttp: [{route: [{destination: {host: a}, weight: -1}]}]",
     "spec.http[0].route[0].weight", "weight -1 < 0"),
    (VS, "hosts: [a]\nhttp: [{route: [{destination: {host: a}, weight: 50.5}]}]",
     "spec.http[0].route[0].weight", "must be an integer"),
    (VS, "hosts: [a]\nhttp: [{route: [{destination: {host: a}},"
         " {destination: {host: b}, weight: 0}]}]", "spec.http[0].route",
     "total destination weight = 0"),
    (VS, "hosts: [a]\nhttp: [{route: [{destination: {host: a}}, {destination: {host: b}}]}]",
     "spec.http[0].route", "total destination weight = 0"),
    (VS, "hosts: [a]\nhttp: [{route: [{destination: {host: a}, wieght: 100}]}]",
     "spec.http[0].route[0].wieght", "unknown field"),
    (VS, "hosts: [a]\nhttp: [{redirect: {uri: /x}, route: [{destination: {host: a}}]}]",
     "spec.http[0].redirect", "both route and redirect"),
    (VS, "hosts: [a]\nhttp: [{directResponse: {status: 700}}]",
     "spec.http[0].directResponse.status", "between 200 and 599"),
    (VS, "hosts: [a]\nhttp: [{match: [{uri: {exact: /a, prefix: /b}}],"
         " route: [{destination: {host: a}}]}]", "spec.http[0].match[0].uri", "only one of"),
    (VS, "hosts: [a]\nhttp: [{match: [{uri: {}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].uri", "one of exact, prefix or regex"),
    (VS, "hosts: [a]\nhttp: [{match: [{uri: {regex: '(unclosed'}}],"
         " route: [{destination: {host: a}}]}]", "spec.http[0].match[0].uri.regex",
     "invalid regex"),
    (VS, "hosts: [a]\nhttp: [{match: [{uri: {regex: '/(?!admin)'}}],"
         " route: [{destination: {host: a}}]}]", "spec.http[0].match[0].uri.regex", "RE2"),
    (VS, "hosts: [a]\nhttp: [{match: [{headers: {x-env: {exact: a, regex: b}}}],"
         " route: [{destination: {host: a}}]}]", "spec.http[0].match[0].headers.x-env",
     "only one of"),
    (VS, "hosts: [a]\nhttp: [{match: [{headers: {x-env: exact}}],"
         " route: [{destination: {host: a}}]}]", "spec.http[0].match[0].headers.x-env",
     "must be a mapping"),
    (VS, "hosts: [a]\nhttp: [{match: [{headers: {'bad header': {exact: a}}}],"
         " route: [{destination: {host: a}}]}]", "spec.http[0].match[0].headers.bad header",
     "invalid header name"),
    (VS, "hosts: [a]\nhttp: [{match: [{port: 99999}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].port", "between 1 and 65535"),
    (VS, "hosts: [a]\nhttp: [{match: [{url: {prefix: /}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].url", "unknown field"),
    (VS, "hosts: [a]\ntcp: [{match: [{port: 3306}]}]", "spec.tcp[0].route",
     "at least one destination"),
    (VS, "hosts: [a]\ntcp: [{route: [{destination: {host: a}, weight: 0},"
         " {destination: {host: b}, weight: 0}]}]", "spec.tcp[0].route",
     "total destination weight = 0"),
    (VS, "hosts: [a]\ntls: [{route: [{destination: {host: a}}]}]", "spec.tls[0].match",
     "at least one match"),
    (VS, "hosts: [a]\ntls: [{match: [{port: 443}], route: [{destination: {host: a}}]}]",
     "spec.tls[0].match[0].sniHosts", "at least one SNI host"),
    (VS, "hosts: [a]\ngateways: ['bad ns/gw']\nhttp: [{route: [{destination: {host: a}}]}]",
     "spec.gateways[0]", "invalid gateway"),
    (VS, "hosts: [a]\nhttp: [{route: [{destination: {host: a}}]}]\nrouting: {}",
     "spec.routing", "unknown field"),
    # DestinationRule
    (DR, "subsets: []", "spec.host", "host is required"),
    # Its selector is the shared WorkloadSelector (matchLabels), not networking's (labels).
    (DR, "host: a\nworkloadSelector: {labels: {app: x}}", "spec.workloadSelector.labels",
     "unknown field"),
    (DR, "host: a\nworkloadSelector: {matchLabels: {app: '*'}}",
     "spec.workloadSelector.matchLabels.app", "wildcard"),
    (DR, "host: 'bad host'", "spec.host", "invalid"),
    (DR, "host: a\nsubsets: [{labels: {v: '1'}}]", "spec.subsets[0].name", "required"),
    (DR, "host: a\nsubsets: [{name: v1}, {name: v1}]", "spec.subsets[1].name",
     "duplicate subset name"),
    (DR, "host: a\nsubsets: [{name: V.1}]", "spec.subsets[0].name", "invalid subset name"),
    (DR, "host: a\nsubsets: [{name: v1, labels: {version: 1}}]",
     "spec.subsets[0].labels.version", "strings"),
    (DR, "host: a\ntrafficPolicy: {loadBalancer: {simple: FASTEST}}",
     "spec.trafficPolicy.loadBalancer.simple", "unknown value 'FASTEST'"),
    (DR, "host: a\nsubsets: [{name: v1, trafficPolicy: {loadBalancer: {simple: nope}}}]",
     "spec.subsets[0].trafficPolicy.loadBalancer.simple", "unknown value"),
    (DR, "host: a\ntrafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {}}}",
     "spec.trafficPolicy.loadBalancer.consistentHash", "only one of"),
    (DR, "host: a\ntrafficPolicy: {}", "spec.trafficPolicy", "at least one field"),
    (DR, "host: a\ntrafficPolicy: {tls: {mode: STRICT}}", "spec.trafficPolicy.tls.mode",
     "unknown value"),
    (DR, "host: a\ntrafficPolicy: {portLevelSettings: [{port: {number: 0},"
         " loadBalancer: {simple: RANDOM}}]}",
     "spec.trafficPolicy.portLevelSettings[0].port.number", "between 1 and 65535"),
    (DR, "host: a\ntrafficPolicy: {loadbalancer: {}}", "spec.trafficPolicy.loadbalancer",
     "unknown field"),
    (DR, "host: a\nsubset: []", "spec.subset", "unknown field"),
]


@pytest.mark.parametrize(
    ("kind", "text", "field", "fragment"),
    INVALID_SPECS,
    ids=[f"{kind}:{field}:{fragment}" for kind, _, field, fragment in INVALID_SPECS],
)
def test_invalid_specs_name_the_field(kind: str, text: str, field: str, fragment: str) -> None:
    found = problems(kind, text)
    assert any(p.field == field and fragment in p.message for p in found), found


def test_known_field_sets_cover_istio_api_fields() -> None:
    assert {"exportTo", "workloadSelector", "subjectAltNames"} <= KNOWN_SPEC_FIELDS[SE]
    assert {"http", "tls", "tcp", "gateways", "exportTo"} <= KNOWN_SPEC_FIELDS[VS]
    assert {"trafficPolicy", "subsets", "workloadSelector"} <= KNOWN_SPEC_FIELDS[DR]
    assert {"serviceAccount", "locality", "network"} <= KNOWN_SPEC_FIELDS[WE]


def test_http_route_delegate_is_a_known_field() -> None:
    found = problems(VS, "hosts: [a]\nhttp: [{delegate: {name: reviews, namespace: ns}}]")
    assert found == []


def test_malformed_data_is_reported_not_raised() -> None:
    for kind in (SE, WE, VS, DR):
        for text in ("hosts: 5\nports: x\nendpoints: {}\nhttp: 3\nsubsets: [1, null]\n",
                     "address: [1]\nports: [1]\nlabels: x\nweight: true\n",
                     "http: [null, 1, {route: 5, match: [{uri: 3, headers: []}]}]\n",
                     "trafficPolicy: 1\nhost: [x]\n"):
            assert isinstance(problems(kind, text), list)


def test_unknown_kind_has_no_validator() -> None:
    assert validate_spec("ProxyConfig", {"anything": 1}) == []


def test_name_helpers() -> None:
    assert dns_name_error("reviews") is None
    assert dns_name_error("istio.io.") is None
    assert dns_name_error("*.istio.io") is not None
    assert wildcard_domain_error("*.istio.io") is None
    assert wildcard_domain_error("*") is None
    assert wildcard_domain_error("a.*.io") is not None
    assert wildcard_domain_error("-a.io") is not None
    assert label_key_error("app.kubernetes.io/name") is None
    assert label_key_error("/name") is not None


def test_validate_config_reports_each_problem_at_its_line() -> None:
    text = textwrap.dedent("""\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: reviews
        spec:
          hosts:
          - reviews
          http:
          - route:
            - destination:
                host: reviews
                subset: v1
              weight: 50
            - destination:
                host: reviews
                subset: v2
              weight: -150
          tcp: []
          bogus: true
    """)
    [doc] = parse_text(text, "vs.yaml").documents
    config = document_to_config(doc, "vs.yaml")
    assert isinstance(config, Config)
    errors = validate_config(config)
    by_field = {e.field: e for e in errors}
    weight = by_field["spec.http[0].route[1].weight"]
    assert weight.line == 17
    assert weight.file == "vs.yaml"
    assert weight.key == ConfigKey(VS, "default", "reviews")
    assert "-150" in weight.message
    assert by_field["spec.bogus"].line == 19
    assert by_field["spec.bogus"].message == "unknown field 'bogus'"
    # A bad weight is reported on its own, not again as a wrong total.
    assert "spec.http[0].route" not in by_field
