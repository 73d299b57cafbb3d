"""`meshpilot analyze` as a command: output shapes, thresholds, exit codes, suppression,
namespaces, inputs (directories, stdin) and the options istioctl users expect."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from meshpilot.cli.main import app
from meshpilot.demo.mesh import free_port

# A VirtualService routing to a host nobody defines (IST0101, Error) and a Service whose port
# name says nothing about its protocol (IST0118, Info).
BROKEN = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: ratings
---
apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: default
spec:
  selector:
    app: reviews
  ports:
  - name: web
    port: 9080
"""
HOST_LINE = 12  # line of `host: ratings`

GATEWAY_ONLY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: public
  namespace: default
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
"""


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, ["analyze", *args], input=stdin)


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(BROKEN)
    return path


def codes(result: Result) -> list[tuple[str, str]]:
    return [(m["code"], m["origin"]) for m in json.loads(result.stdout)]


# --- Output formats -------------------------------------------------------------------------

def test_log_lines_have_istioctls_shape_and_point_at_the_field(broken: Path) -> None:
    result = run(str(broken))

    lines = result.stdout.splitlines()
    assert lines[0] == (f'Error [IST0101] (VirtualService default/reviews {broken}:{HOST_LINE})'
                        ' Referenced host not found: "ratings"')
    assert lines[1] == (f"Info [IST0118] (Service default/reviews {broken}:23) Port name web "
                        "(port: 9080, targetPort: ) doesn't follow the naming convention of "
                        "Istio port.")
    assert len(lines) == 2
    assert "\x1b[" not in result.stdout  # not a terminal: no colour


def test_json_output_has_istioctls_keys(broken: Path) -> None:
    result = run("-o", "json", str(broken))

    messages = json.loads(result.stdout)
    assert messages[0] == {
        "code": "IST0101",
        "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0101/",
        "level": "Error",
        "message": 'Referenced host not found: "ratings"',
        "origin": "VirtualService default/reviews",
        "reference": f"{broken}:{HOST_LINE}",
    }
    assert [m["code"] for m in messages] == ["IST0101", "IST0118"]


def test_yaml_output_is_the_same_list(broken: Path) -> None:
    as_json = json.loads(run("-o", "json", str(broken)).stdout)
    as_yaml = yaml.safe_load(run("-o", "yaml", str(broken)).stdout)
    assert as_yaml == as_json


def test_unknown_output_format_is_a_usage_error(broken: Path) -> None:
    assert run("-o", "xml", str(broken)).exit_code == 2


def test_colour_can_be_forced_for_the_level(broken: Path) -> None:
    result = run("--color", str(broken))
    assert "\x1b[" in result.stdout
    assert "Referenced host not found" in result.stdout


def test_no_issues_is_said_on_stderr(tmp_path: Path) -> None:
    clean = tmp_path / "clean.yaml"
    clean.write_text(GATEWAY_ONLY.replace("8080", "80"))

    result = run(str(clean))

    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No validation issues found when analyzing namespace: default." in result.stderr


# --- Thresholds and exit codes --------------------------------------------------------------

def test_errors_fail_log_output_with_79(broken: Path) -> None:
    assert run(str(broken)).exit_code == 79


def test_machine_formats_exit_0_even_with_errors(broken: Path) -> None:
    assert run("-o", "json", str(broken)).exit_code == 0
    assert run("-o", "yaml", str(broken)).exit_code == 0


def test_warnings_pass_unless_failure_threshold_is_lowered(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GATEWAY_ONLY)  # port 8080 is not on the ingress Service: IST0162 Warning

    assert run(str(path)).exit_code == 0
    assert run("--failure-threshold", "Warning", str(path)).exit_code == 79


def test_output_threshold_hides_lower_levels_but_not_the_exit_code(broken: Path) -> None:
    result = run("--output-threshold", "Error", str(broken))

    assert [line.split()[1] for line in result.stdout.splitlines()] == ["[IST0101]"]
    assert result.exit_code == 79
    only_errors = run("-o", "json", "--output-threshold", "error", str(broken))
    assert codes(only_errors) == [("IST0101", "VirtualService default/reviews")]


def test_bad_threshold_is_a_usage_error(broken: Path) -> None:
    assert run("--failure-threshold", "Fatal", str(broken)).exit_code == 2


def test_unparseable_file_exits_65_and_says_where(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\nmetadata: [unclosed\n")

    result = run(str(bad))

    assert result.exit_code == 65
    assert f"{bad}:" in result.stderr
    assert run("--ignore-unknown", str(bad)).exit_code == 0


def test_findings_take_precedence_over_parse_errors(tmp_path: Path, broken: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    assert run(str(broken), str(bad)).exit_code == 79


# --- Suppression ----------------------------------------------------------------------------

def test_suppress_one_code_on_one_resource(broken: Path) -> None:
    result = run("-o", "json", "-S", "IST0101=VirtualService default/reviews", str(broken))
    assert codes(result) == [("IST0118", "Service default/reviews")]


def test_suppress_with_wildcards_and_istioctls_dotted_form(broken: Path) -> None:
    wildcard = run("-o", "json", "-S", "IST0101=VirtualService *", "-S",
                   "IST0118=* default/*", str(broken))
    assert codes(wildcard) == []
    dotted = run("-o", "json", "-S", "IST0101=VirtualService reviews.default", str(broken))
    assert codes(dotted) == [("IST0118", "Service default/reviews")]


def test_suppression_needs_the_right_code_and_resource(broken: Path) -> None:
    other_code = run("-o", "json", "-S", "IST0102=VirtualService default/reviews", str(broken))
    other_name = run("-o", "json", "-S", "IST0101=VirtualService default/other", str(broken))
    assert len(codes(other_code)) == 2
    assert len(codes(other_name)) == 2


def test_suppressed_errors_do_not_fail_the_command(broken: Path) -> None:
    assert run("-S", "IST0101=VirtualService default/reviews", str(broken)).exit_code == 0


def test_malformed_suppression_is_a_usage_error(broken: Path) -> None:
    assert run("-S", "IST0101", str(broken)).exit_code == 2
    assert run("-S", "nonsense=VirtualService x", str(broken)).exit_code == 2


@pytest.mark.parametrize("value", ["IST0101", "IST0118, IST0101", "*"])
def test_suppress_annotation_on_the_resource(tmp_path: Path, value: str) -> None:
    path = tmp_path / "annotated.yaml"
    annotated = BROKEN.replace(
        "  name: reviews\n  namespace: default\nspec:\n  hosts:",
        "  name: reviews\n  namespace: default\n  annotations:\n"
        f'    galley.istio.io/analyze-suppress: "{value}"\nspec:\n  hosts:',
    )
    path.write_text(annotated)

    result = run("-o", "json", str(path))

    assert ("IST0101", "VirtualService default/reviews") not in codes(result)
    assert ("IST0118", "Service default/reviews") in codes(result)


# --- Namespaces -----------------------------------------------------------------------------

def test_namespace_selects_findings_and_defaults_missing_namespaces(tmp_path: Path) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text(BROKEN.replace("  namespace: default\n", "") + textwrap.dedent("""\
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: elsewhere
          namespace: other
        spec:
          hosts: [elsewhere]
          http:
          - route:
            - destination: {host: nowhere}
        """))

    default = codes(run("-o", "json", str(path)))
    team = codes(run("-o", "json", "-n", "team", str(path)))
    everything = codes(run("-o", "json", "-A", str(path)))

    assert ("IST0101", "VirtualService default/reviews") in default
    assert ("IST0101", "VirtualService other/elsewhere") not in default
    assert ("IST0101", "VirtualService team/reviews") in team
    assert ("IST0101", "VirtualService reviews") in everything
    assert ("IST0101", "VirtualService other/elsewhere") in everything


# --- Inputs and options ---------------------------------------------------------------------

def test_directories_are_walked_recursively(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "mesh.yml").write_text(BROKEN)
    (tmp_path / "notes.txt").write_text("not config")

    assert ("IST0101", "VirtualService default/reviews") in codes(
        run("-o", "json", str(tmp_path)))
    assert codes(run("-o", "json", "--no-recursive", str(tmp_path))) == []


def test_stdin(broken: Path) -> None:
    result = run("-o", "json", "-", stdin=BROKEN)
    assert ("IST0101", "VirtualService default/reviews") in codes(result)
    assert json.loads(result.stdout)[0]["reference"] == f"-:{HOST_LINE}"


def test_only_the_named_analyzers_run(broken: Path) -> None:
    result = run("-o", "json", "--analyzer", "service.PortNameAnalyzer", str(broken))
    assert codes(result) == [("IST0118", "Service default/reviews")]


def test_unknown_analyzer_is_a_usage_error(broken: Path) -> None:
    result = run("--analyzer", "no.SuchAnalyzer", str(broken))
    assert result.exit_code == 2
    assert "no.SuchAnalyzer" in result.output


def test_list_analyzers() -> None:
    result = run("-L")
    assert result.exit_code == 0
    assert "* virtualservice.DestinationHostAnalyzer: " in result.stdout
    assert "* schema.ValidationAnalyzer.VirtualService: " in result.stdout


def test_live_mode_without_a_server_says_so(broken: Path) -> None:
    assert run("--use-kube=false", str(broken)).exit_code == 79
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    for flag in ("--use-kube=true", "--live"):
        live = run(flag, "--xds-address", address, "--timeout", "0.5", str(broken))
        assert live.exit_code == 1
        assert f"discovery server at {address}" in live.output


def test_bad_use_kube_value_is_a_usage_error(broken: Path) -> None:
    assert run("--use-kube=maybe", str(broken)).exit_code == 2


def test_list_shows_optional_analyzers_apart() -> None:
    listing = run("-L").stdout
    assert "* annotations.AlphaAnalyzer: " in listing
    assert "(only with --analyzer)" in listing
    assert "* sidecar.SelectorAnalyzer: " in listing


def test_paths_are_required_offline() -> None:
    assert run().exit_code == 2


def test_mesh_config_turning_ingress_off_removes_the_default_gateway(tmp_path: Path) -> None:
    gateway = tmp_path / "gw.yaml"
    gateway.write_text(GATEWAY_ONLY.replace("8080", "80"))
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("ingressControllerMode: 'OFF'\n")

    with_ingress = codes(run("-o", "json", str(gateway)))
    without = codes(run("-o", "json", "--meshConfigFile", str(mesh), str(gateway)))

    assert with_ingress == []
    assert ("IST0101", "Gateway default/public") in without
