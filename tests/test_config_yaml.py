"""Parsing config text into documents with line numbers, and documents into Configs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from meshpilot.config.kinds import (
    SUPPORTED_KINDS,
    document_to_config,
    identify,
    lookup,
    parse_api_version,
)
from meshpilot.config.yamlsource import Document, parse_text, read_config_file
from meshpilot.model import Config, ConfigError, ConfigKey, Kind


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def only_config(text: str, file: str = "f.yaml") -> Config:
    parsed = parse_text(dedent(text), file)
    assert parsed.error is None
    assert len(parsed.documents) == 1
    result = document_to_config(parsed.documents[0], file)
    assert isinstance(result, Config), result
    return result


def only_error(text: str, file: str = "f.yaml") -> ConfigError:
    parsed = parse_text(dedent(text), file)
    assert parsed.error is None
    assert len(parsed.documents) == 1
    result = document_to_config(parsed.documents[0], file)
    assert isinstance(result, ConfigError), result
    return result


VIRTUAL_SERVICE = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata:
      name: reviews
      namespace: bookinfo
      labels:
        app: reviews
      annotations:
        owner: team-a
    spec:
      hosts:
      - reviews
      http:
      - route:
        - destination:
            host: reviews
            subset: v1
          weight: 75
        - destination:
            host: reviews
            subset: v2
          weight: 25
"""


class TestFieldLines:
    def test_every_field_path_maps_to_its_line(self) -> None:
        parsed = parse_text(dedent(VIRTUAL_SERVICE), "vs.yaml")
        [doc] = parsed.documents
        assert doc.line == 1
        lines = doc.field_lines
        assert lines["metadata.name"] == 4
        assert lines["spec.hosts"] == 11
        assert lines["spec.hosts[0]"] == 12
        assert lines["spec.http[0]"] == 14
        assert lines["spec.http[0].route[0].destination.subset"] == 17
        assert lines["spec.http[0].route[1]"] == 19
        assert lines["spec.http[0].route[1].weight"] == 22

    def test_documents_start_where_their_content_starts(self) -> None:
        text = dedent("""
            a: 1
            ---
            # a comment before the content
            b: 2
            ---
            c: 3
        """)
        docs = parse_text(text, "m.yaml").documents
        assert [d.data for d in docs] == [{"a": 1}, {"b": 2}, {"c": 3}]
        assert [d.line for d in docs] == [1, 4, 6]

    def test_empty_documents_are_skipped(self) -> None:
        text = "---\n---\n# only a comment\n---\na: 1\n---\n"
        parsed = parse_text(text, "e.yaml")
        assert parsed.error is None
        assert [d.data for d in parsed.documents] == [{"a": 1}]
        assert parsed.documents[0].line == 5

    def test_scalars_are_resolved_the_yaml_way(self) -> None:
        [doc] = parse_text("a: 80\nb: 'x'\nc: true\nd: null\ne: 1.5\n", "s.yaml").documents
        assert doc.data == {"a": 80, "b": "x", "c": True, "d": None, "e": 1.5}

    def test_merge_keys_are_not_duplicates(self) -> None:
        text = "base: &b {x: 1, y: 2}\nover:\n  <<: *b\n  x: 3\n"
        [doc] = parse_text(text, "m.yaml").documents
        assert doc.data["over"] == {"x": 3, "y": 2}
        assert doc.problems == ()
        assert doc.field_lines["over.x"] == 4

    def test_duplicate_keys_are_a_problem_of_the_document(self) -> None:
        [doc] = parse_text("spec:\n  host: a\n  host: b\n", "d.yaml").documents
        [problem] = doc.problems
        assert problem.field == "spec.host"
        assert problem.line == 3
        assert "duplicate key 'host'" in problem.message

    def test_recursive_alias_is_a_problem_not_a_hang(self) -> None:
        [doc] = parse_text("a: &x [*x]\n", "r.yaml").documents
        assert [p.message for p in doc.problems] == ["recursive YAML alias"]


class TestSyntaxErrors:
    def test_error_names_file_and_line(self) -> None:
        text = dedent("""
            apiVersion: networking.istio.io/v1
            kind: ServiceEntry
            metadata:
              name: ok
            spec:
              hosts: [a.example.com
              ports: []
        """)
        parsed = parse_text(text, "bad.yaml")
        assert parsed.documents == ()
        assert parsed.error is not None
        assert parsed.error.file == "bad.yaml"
        assert parsed.error.line == 7
        assert "YAML syntax error" in parsed.error.message

    def test_bad_indentation_points_at_the_offending_line(self) -> None:
        text = "a:\n  b: 1\n   c: 2\nd: 3\n"
        error = parse_text(text, "i.yaml").error
        assert error is not None
        assert error.line == 3

    def test_a_later_broken_document_makes_the_whole_file_unreadable(self) -> None:
        parsed = parse_text("a: 1\n---\nb: [\n", "two.yaml")
        assert parsed.documents == ()
        assert parsed.error is not None

    def test_unknown_tag_is_reported_not_raised(self) -> None:
        error = parse_text("a: !!python/object:os.system x\n", "t.yaml").error
        assert error is not None
        assert error.line == 1

    def test_invalid_utf8_is_reported_with_its_line(self, tmp_path: Path) -> None:
        path = tmp_path / "bin.yaml"
        path.write_bytes(b"a: 1\nb: \xff\xfe\n")
        parsed = read_config_file(path)
        assert parsed.error is not None
        assert parsed.error.line == 2
        assert "UTF-8" in parsed.error.message


class TestJsonAndLists:
    def test_json_file_with_tabs_and_list_kind(self, tmp_path: Path) -> None:
        path = tmp_path / "list.json"
        path.write_text(
            '{\n'
            '\t"apiVersion": "v1",\n'
            '\t"kind": "List",\n'
            '\t"items": [\n'
            '\t\t{\n'
            '\t\t\t"apiVersion": "networking.istio.io/v1beta1",\n'
            '\t\t\t"kind": "DestinationRule",\n'
            '\t\t\t"metadata": {"name": "reviews"},\n'
            '\t\t\t"spec": {\n'
            '\t\t\t\t"host": "reviews",\n'
            '\t\t\t\t"trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 1e2}}}\n'
            '\t\t\t}\n'
            '\t\t}\n'
            '\t]\n'
            '}\n'
        )
        parsed = read_config_file(path)
        assert parsed.error is None
        [doc] = parsed.documents
        assert doc.line == 5
        assert doc.field_lines["spec.host"] == 10
        assert doc.field_lines["metadata.name"] == 8
        pool = doc.data["spec"]["trafficPolicy"]["connectionPool"]
        assert pool == {"tcp": {"maxConnections": 100.0}}

    def test_yaml_list_items_become_documents_with_relative_paths(self) -> None:
        text = dedent("""
            apiVersion: v1
            kind: List
            items:
            - apiVersion: networking.istio.io/v1
              kind: WorkloadEntry
              metadata:
                name: vm-1
              spec:
                address: 10.0.0.1
            - apiVersion: networking.istio.io/v1
              kind: WorkloadEntry
              metadata:
                name: vm-2
              spec:
                address: 10.0.0.2
        """)
        docs = parse_text(text, "l.yaml").documents
        assert [d.data["metadata"]["name"] for d in docs] == ["vm-1", "vm-2"]
        assert [d.line for d in docs] == [4, 10]
        assert docs[1].field_lines["spec.address"] == 15


class TestKinds:
    @pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
    @pytest.mark.parametrize(
        "kind", [Kind.SERVICE_ENTRY, Kind.WORKLOAD_ENTRY, Kind.VIRTUAL_SERVICE,
                 Kind.DESTINATION_RULE],
    )
    def test_networking_kinds_are_accepted_in_every_version(self, kind: str, version: str) -> None:
        config = only_config(f"""
            apiVersion: networking.istio.io/{version}
            kind: {kind}
            metadata:
              name: x
            spec: {{}}
        """)
        assert config.kind == kind
        assert config.version == version
        assert config.group == "networking.istio.io"

    def test_config_carries_metadata_origin_and_relative_field_lines(self) -> None:
        config = only_config(VIRTUAL_SERVICE, file="dir/vs.yaml")
        assert config.key == ConfigKey(Kind.VIRTUAL_SERVICE, "bookinfo", "reviews")
        assert config.labels == {"app": "reviews"}
        assert config.annotations == {"owner": "team-a"}
        assert config.source_file == "dir/vs.yaml"
        assert config.source_line == 1
        assert config.origin == "dir/vs.yaml:1"
        assert config.spec["hosts"] == ["reviews"]
        assert config.line_of("spec.hosts[0]") == 12
        assert config.line_of("spec.http[0].route[1].weight") == 22

    def test_namespace_defaults_to_default(self) -> None:
        config = only_config("""
            apiVersion: networking.istio.io/v1
            kind: ServiceEntry
            metadata: {name: x}
            spec: {hosts: [a.example.com]}
        """)
        assert config.namespace == "default"

    def test_kubernetes_service_is_an_unsupported_kind(self) -> None:
        error = only_error("""
            apiVersion: v1
            kind: Service
            metadata:
              name: reviews
            spec:
              ports: [{port: 80}]
        """, file="k8s.yaml")
        assert error.file == "k8s.yaml"
        assert error.line == 2
        assert error.field == "kind"
        assert "unsupported kind Service" in error.message
        assert "VirtualService" in error.message  # says what is accepted
        assert error.key == ConfigKey("Service", "default", "reviews")
        assert str(error).startswith("k8s.yaml:2:")

    def test_unknown_version_of_a_known_kind(self) -> None:
        error = only_error("""
            apiVersion: networking.istio.io/v2
            kind: VirtualService
            metadata: {name: reviews}
            spec: {}
        """)
        assert error.line == 1
        assert error.field == "apiVersion"
        assert "networking.istio.io/v2" in error.message
        assert error.key == ConfigKey(Kind.VIRTUAL_SERVICE, "default", "reviews")

    def test_missing_name_leaves_the_resource_unidentified(self) -> None:
        error = only_error("""
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata:
              namespace: prod
            spec: {}
        """)
        assert error.field == "metadata.name"
        assert error.line == 3
        assert error.key is None

    def test_document_that_is_not_a_mapping(self) -> None:
        error = only_error("- just\n- a list\n")
        assert "expected a mapping" in error.message
        assert error.key is None

    def test_spec_is_required(self) -> None:
        error = only_error("""
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: reviews}
        """)
        assert error.message == "spec is required"

    def test_label_values_must_be_strings(self) -> None:
        error = only_error("""
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata:
              name: reviews
              labels:
                version: 2
            spec: {host: reviews}
        """)
        assert error.field == "metadata.labels.version"
        assert error.line == 6

    def test_invalid_object_name(self) -> None:
        error = only_error("""
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: Reviews_1}
            spec: {host: reviews}
        """)
        assert error.field == "metadata.name"
        assert "DNS-1123" in error.message

    def test_duplicate_key_rejects_the_document_at_the_duplicate(self) -> None:
        error = only_error("""
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: reviews}
            spec:
              host: reviews
              host: ratings
        """)
        assert error.line == 6
        assert error.key == ConfigKey(Kind.DESTINATION_RULE, "default", "reviews")

    def test_table_helpers(self) -> None:
        assert parse_api_version("networking.istio.io/v1beta1") == ("networking.istio.io",
                                                                    "v1beta1")
        assert parse_api_version("v1") == ("", "v1")
        assert lookup("networking.istio.io", "ServiceEntry") in SUPPORTED_KINDS
        assert lookup("networking.istio.io", "EnvoyFilter") in SUPPORTED_KINDS
        assert lookup("networking.istio.io", "ProxyConfig") is None
        assert identify({"kind": "X", "metadata": {"name": "n"}}) == ConfigKey("X", "default", "n")
        assert identify({"kind": "X", "metadata": {}}) is None

    def test_document_line_is_used_when_no_field_line_is_known(self) -> None:
        doc = Document({"kind": "VirtualService"}, line=7)
        result = document_to_config(doc, "x.yaml")
        assert isinstance(result, ConfigError)
        assert result.line == 7
