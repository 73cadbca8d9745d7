"""OpenAPI v2 in gnostic's protobuf form (``openapi_v2.Document``), for older kubectl.

client-go fetches ``/openapi/v2`` with ``Accept: application/com.github.proto-openapi.spec.v2@v1.0
+protobuf`` only, and kubectl before 1.27 needs it: Debian's kubectl 1.20 validates every
`apply`/`create` against it client-side and stops with "the server could not find the requested
resource" when the server has no protobuf v2 (it then tries the pre-1.10 ``/swagger-2.0.0.pb-v1``).

Only what kube-openapi's ``proto.NewOpenAPIData`` reads is written: ``swagger``, ``info`` and every
definition (schema fields, ``$ref``, and the ``x-kubernetes-*`` vendor extensions as gnostic
carries them: the value's YAML text, here JSON, which is YAML). Field numbers are those of
google/gnostic ``openapiv2/OpenAPIv2.proto`` (proto3: zero values are not written).
"""

from __future__ import annotations

import json
import struct
from typing import Any

ACCEPT = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"  # what client-go asks for
# what kube-openapi answers with: Go's mime parser (client-go checks the answer) refuses the "@"
CONTENT_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _string(number: int, text: Any) -> bytes:
    return _bytes(number, str(text).encode()) if text not in (None, "") else b""


def _int(number: int, value: Any) -> bytes:
    return _varint(number << 3) + _varint(int(value)) if value else b""


def _bool(number: int, value: Any) -> bytes:
    return _varint(number << 3) + b"\x01" if value else b""


def _double(number: int, value: Any) -> bytes:
    return _varint(number << 3 | 1) + struct.pack("<d", float(value)) if value else b""


def _any(number: int, value: Any) -> bytes:
    """gnostic's Any: ``yaml`` (field 2) holds the value's YAML text."""
    return _bytes(number, _string(2, json.dumps(value, separators=(",", ":"))))


def _named_any(number: int, name: str, value: Any) -> bytes:
    return _bytes(number, _string(1, name) + _any(2, value))


_STRINGS = {"format": 2, "title": 3, "description": 4, "pattern": 13, "discriminator": 26}
_INTS = {"maxLength": 11, "minLength": 12, "maxItems": 14, "minItems": 15, "maxProperties": 17,
         "minProperties": 18}
_BOOLS = {"exclusiveMaximum": 8, "exclusiveMinimum": 10, "uniqueItems": 16, "readOnly": 27}
_DOUBLES = {"multipleOf": 6, "maximum": 7, "minimum": 9}


def schema(s: dict) -> bytes:
    """One ``openapi_v2.Schema``."""
    out = bytearray(_string(1, s.get("$ref")))
    for key, number in _STRINGS.items():
        out += _string(number, s.get(key))
    if "default" in s:
        out += _any(5, s["default"])
    for key, number in _DOUBLES.items():
        out += _double(number, s.get(key))
    for key, number in _INTS.items():
        out += _int(number, s.get(key))
    for key, number in _BOOLS.items():
        out += _bool(number, s.get(key))
    for name in s.get("required") or []:
        out += _string(19, name)
    for value in s.get("enum") or []:
        out += _any(20, value)
    extra = s.get("additionalProperties")
    if isinstance(extra, dict):
        out += _bytes(21, _bytes(1, schema(extra)))
    elif isinstance(extra, bool):
        out += _bytes(21, _varint(2 << 3) + (b"\x01" if extra else b"\x00"))
    kinds = s.get("type")
    if kinds:
        out += _bytes(22, b"".join(_string(1, t) for t in ([kinds] if isinstance(kinds, str) else kinds)))
    items = s.get("items")
    if items:
        out += _bytes(23, b"".join(_bytes(1, schema(i)) for i in (items if isinstance(items, list) else [items])))
    for sub in s.get("allOf") or []:
        out += _bytes(24, schema(sub))
    props = s.get("properties")
    if props:
        out += _bytes(25, b"".join(_bytes(1, _string(1, name) + _bytes(2, schema(p))) for name, p in props.items()))
    for key, value in s.items():
        if key.startswith("x-"):
            out += _named_any(31, key, value)
    return bytes(out)


def document(title: str, version: str, definitions: dict[str, dict]) -> bytes:
    """The ``openapi_v2.Document``: swagger 2.0, info, definitions."""
    info = _string(1, title) + _string(2, version)
    defs = b"".join(_bytes(1, _string(1, name) + _bytes(2, schema(s))) for name, s in definitions.items())
    return _string(1, "2.0") + _bytes(2, info) + _bytes(9, defs)
