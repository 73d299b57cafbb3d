"""Serial number and validity of an X.509 certificate, for `proxy-config secret`.

Envoy's config dump carries certificate chains as base64 PEM or DER (private keys redacted).
Only three fields are needed, all at fixed places at the start of the DER structure:

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
        [0] version (optional), serialNumber INTEGER, signature SEQUENCE, issuer SEQUENCE,
        validity SEQUENCE { notBefore Time, notAfter Time }, … } … }

so a few lines of DER walking read them without a cryptography library.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True, slots=True)
class CertInfo:
    serial: str
    not_before: datetime
    not_after: datetime

    def valid_at(self, when: datetime) -> bool:
        return self.not_before <= when <= self.not_after


def _read(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `at`."""
    tag = data[at]
    length = data[at + 1]
    start = at + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    return tag, start, start + length


def _time(data: bytes, at: int) -> tuple[datetime, int]:
    tag, start, end = _read(data, at)
    text = data[start:end].decode()
    fmt = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"  # UTCTime or GeneralizedTime
    return datetime.strptime(text, fmt).replace(tzinfo=UTC), end


def parse_der(der: bytes) -> CertInfo:
    _, cert_start, _ = _read(der, 0)
    _, tbs_start, _ = _read(der, cert_start)
    at = tbs_start
    tag, _, end = _read(der, at)
    if tag == 0xA0:  # explicit version
        at = end
    _, start, end = _read(der, at)
    serial = der[start:end].hex().lstrip("0") or "0"
    at = end
    for _ in range(2):  # signature algorithm, issuer
        at = _read(der, at)[2]
    _, validity_start, _ = _read(der, at)
    not_before, after = _time(der, validity_start)
    not_after, _ = _time(der, after)
    return CertInfo(serial, not_before, not_after)


def parse_chain(data: bytes) -> list[CertInfo]:
    """Every certificate in PEM text, or one DER certificate."""
    blocks = _PEM.findall(data)
    if blocks:
        return [parse_der(base64.b64decode(b"".join(b.split()))) for b in blocks]
    return [parse_der(data)] if data[:1] == b"\x30" else []
