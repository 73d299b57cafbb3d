"""Just enough X.509 to judge a gateway credential: PEM decoding and the validity period.

Istio checks a Gateway's TLS secret by decoding the first PEM block of the certificate and
parsing the DER certificates in it, rejecting any that is expired or not yet valid. This reads
the same: a strict DER walk to `tbsCertificate.validity` of each certificate (the rest of the
structure is only checked to be well-formed TLV), with UTCTime and GeneralizedTime.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime

_PEM = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)\r?\n?-----END \1-----", re.DOTALL
)
_SEQUENCE, _UTC_TIME, _GENERALIZED_TIME, _CONTEXT_0 = 0x30, 0x17, 0x18, 0xA0


class CertificateError(ValueError):
    pass


def first_pem_block(data: bytes) -> tuple[str, bytes]:
    found = _PEM.search(data)
    if found is None:
        raise CertificateError("no PEM block")
    try:
        body = base64.b64decode(b"".join(found.group(2).split()), validate=True)
    except binascii.Error as error:
        raise CertificateError("PEM body is not base64") from error
    return found.group(1).decode("ascii"), body


def validity_periods(der: bytes) -> list[tuple[datetime, datetime]]:
    """(notBefore, notAfter) of each certificate in a DER byte string."""
    periods = []
    offset = 0
    while offset < len(der):
        tag, start, end = _tlv(der, offset)
        if tag != _SEQUENCE:
            raise CertificateError("certificate is not a DER SEQUENCE")
        periods.append(_validity(der[start:end]))
        offset = end
    if not periods:
        raise CertificateError("no certificate")
    return periods


def check_certificate(pem: bytes, now: datetime | None = None) -> None:
    """Raise CertificateError unless the first PEM block holds only currently valid certs."""
    _, der = first_pem_block(pem)
    moment = now or datetime.now(UTC)
    for not_before, not_after in validity_periods(der):
        if moment > not_after or moment < not_before:
            raise CertificateError("certificate is expired or not yet valid")


def _validity(certificate: bytes) -> tuple[datetime, datetime]:
    tag, start, end = _tlv(certificate, 0)
    if tag != _SEQUENCE:
        raise CertificateError("tbsCertificate is not a SEQUENCE")
    tbs = certificate[start:end]
    fields: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(tbs) and len(fields) < 6:
        field_tag, field_start, field_end = _tlv(tbs, offset)
        fields.append((field_tag, tbs[field_start:field_end]))
        offset = field_end
    if fields and fields[0][0] == _CONTEXT_0:
        fields = fields[1:]  # the optional explicit version
    if len(fields) < 4 or fields[3][0] != _SEQUENCE:
        raise CertificateError("tbsCertificate has no validity")
    validity = fields[3][1]
    tag1, s1, e1 = _tlv(validity, 0)
    tag2, s2, e2 = _tlv(validity, e1)
    return _time(tag1, validity[s1:e1]), _time(tag2, validity[s2:e2])


def _tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `offset`."""
    if offset + 2 > len(data):
        raise CertificateError("truncated DER")
    tag, length = data[offset], data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise CertificateError("bad DER length")
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise CertificateError("truncated DER")
    return tag, start, end


def _time(tag: int, value: bytes) -> datetime:
    text = value.decode("ascii", errors="replace")
    try:
        if tag == _UTC_TIME:
            century = "19" if text[:2].isdigit() and int(text[:2]) >= 50 else "20"  # RFC 5280
            parsed = datetime.strptime(century + text, "%Y%m%d%H%M%SZ")
        elif tag == _GENERALIZED_TIME:
            parsed = datetime.strptime(text, "%Y%m%d%H%M%SZ")
        else:
            raise CertificateError("validity time has an unknown type")
    except ValueError as error:
        raise CertificateError(f"bad validity time {text!r}") from error
    return parsed.replace(tzinfo=UTC)
