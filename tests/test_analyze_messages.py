"""The message catalog, Go-style rendering, suppression rules and certificate checks."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from meshpilot.analysis.analyzers.x509 import CertificateError, check_certificate
from meshpilot.analysis.messages import CATALOG, Level, by_code, go_format, message_type
from meshpilot.analysis.suppress import Suppression

DATA = Path(__file__).parent / "data" / "istio-analyze"


def test_catalog_holds_every_istio_code_with_its_level_and_template() -> None:
    table = json.loads((DATA / "messages.json").read_text(encoding="utf-8"))
    for entry in table:
        loaded = by_code(entry["code"])
        assert loaded is not None
        assert (loaded.name, loaded.level.label, loaded.template) == (
            entry["name"], entry["level"], entry["template"])
    assert {m.code for m in CATALOG if m.code.startswith("MP")} == {
        "MP0001", "MP0002", "MP0003", "MP0004", "MP0005", "MP0006", "MP0007", "MP0008",
        "MP0009", "MP0010"}


def test_unknown_message_names_fail_loudly() -> None:
    with pytest.raises(KeyError):
        message_type("NoSuchMessage")


def test_go_verbs() -> None:
    assert go_format("%s %q %d %v", ["a", 'b"c', 3, ["x", "y"]]) == 'a "b\\"c" 3 [x y]'
    assert go_format("%v and %s", ["one"]) == "one and %!s(MISSING)"
    assert go_format("100%%", []) == "100%"


def test_levels_are_ordered_and_parsed_case_insensitively() -> None:
    assert Level.parse("warning") is Level.WARNING
    assert Level.INFO.rank < Level.WARNING.rank < Level.ERROR.rank
    with pytest.raises(ValueError):
        Level.parse("fatal")


@pytest.mark.parametrize("rule", ["IST0101", "IST0101=", "X=Pod a", "IST01=Pod a"])
def test_malformed_suppressions(rule: str) -> None:
    with pytest.raises(ValueError):
        Suppression.parse(rule)


def _secret_certificate(document_name: str, file: str) -> bytes:
    for document in yaml.safe_load_all((DATA / "testdata" / file).read_text()):
        if document and document["metadata"]["name"] == document_name:
            return base64.b64decode(document["data"]["tls.crt"])
    raise LookupError(document_name)


def test_certificate_validity_is_read_from_der() -> None:
    valid = _secret_certificate("httpbin-credential", "gateway-secrets.yaml")
    expired = _secret_certificate("expired-secret", "gateway-secrets-validation.yaml")

    check_certificate(valid)
    with pytest.raises(CertificateError):
        check_certificate(expired)
    with pytest.raises(CertificateError):
        check_certificate(valid, now=datetime(1990, 1, 1, tzinfo=UTC))
    with pytest.raises(CertificateError):
        check_certificate(b"hush hush hush\n")
