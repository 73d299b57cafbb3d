"""Istio's analyzer conformance table, run through the CLI as the README of the data says.

Each case of `tests/data/istio-analyze/cases.json` (copied from the shared conformance corpus,
itself taken from istio/istio's `TestAnalyzers`) runs one analyzer offline over its input
files with `meshpilot analyze --analyzer NAME -A -o json`; the (code, resource) pairs of the
output must equal the expected ones as a multiset. Text, level and lines are not compared.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from meshpilot.cli.main import app

DATA = Path(__file__).parent / "data" / "istio-analyze"
CASES: list[dict[str, Any]] = json.loads((DATA / "cases.json").read_text(encoding="utf-8"))


def _case_id(case: dict[str, Any]) -> str:
    return str(case["go_test_id"]).removeprefix("TestAnalyzers/")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_istio_analyzer_case(case: dict[str, Any]) -> None:
    testdata = DATA / "testdata"
    args = ["analyze", "--analyzer", case["analyzer_name"], "-A", "-o", "json"]
    if case.get("mesh_config"):
        args += ["--meshConfigFile", str(testdata / case["mesh_config"])]
    if case.get("mesh_networks"):
        args += ["--meshNetworksFile", str(testdata / case["mesh_networks"])]
    args += [str(testdata / name) for name in case["input_files"]]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    produced = Counter((m["code"], m["origin"]) for m in json.loads(result.stdout))
    expected = Counter((e["code"], e["resource"]) for e in case["expected"])
    assert produced == expected


def test_every_case_names_a_known_analyzer() -> None:
    listing = CliRunner().invoke(app, ["analyze", "--list-analyzers"]).stdout
    for case in CASES:
        assert f"* {case['analyzer_name']}:" in listing
