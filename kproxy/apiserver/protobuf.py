"""Read Kubernetes protobuf request bodies (``application/vnd.kubernetes.protobuf``) as JSON dicts.

kubectl 1.32's typed clients write protobuf: `kubectl create deployment`, `create namespace`,
`create service clusterip ...` POST a protobuf body (``Accept: application/vnd.kubernetes.protobuf,
application/json``) and do not retry in JSON after a 415, so without this those commands fail
against the lab. Responses stay JSON (the Accept allows it); only bodies are read here.

The wire layout is the Go structs' (``protobuf_v1_32.json.gz``, made by :mod:`.protobuf_trim`
from k8s.io/api v0.32.9), and the result is the JSON the same Go value marshals to, so the rest of
the server cannot tell a protobuf create from a JSON one: ``omitempty`` zero values dropped,
pointers kept when set (``replicas: 0`` stays), inline structs merged, and the types with a JSON
form of their own (Time, MicroTime, Duration, IntOrString, Quantity, RawExtension, FieldsV1)
written as Go writes them; one exception: a zero ``creationTimestamp`` (Go's ``null``) is left out. The envelope is runtime.Unknown behind the magic ``k8s\\x00``.

Interface: ``is_protobuf(content_type)``, ``decode(body) -> dict`` (raises ``ProtobufError``,
which the core answers with 400 BadRequest).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import struct
from typing import Any

from kproxy.apiserver import datafile
from kproxy.apiserver.protobuf_trim import DATA_FILE

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
_MAX_DEPTH = 100


class ProtobufError(ValueError):
    """A body that is not a Kubernetes protobuf object the lab knows."""


@functools.lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    return datafile.read(DATA_FILE)


def is_protobuf(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == CONTENT_TYPE


# -- wire ------------------------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def _fields(buf: bytes):
    """Yield (number, wire_type, value) with value an int (varint/fixed) or bytes (length-delimited)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise ProtobufError("truncated fixed64")
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ProtobufError("truncated field")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise ProtobufError("truncated fixed32")
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtobufError("a string is not UTF-8") from None


# -- scalars and special types ---------------------------------------------------------------
def _scalar(kind: str, wire: int, value: Any) -> list[Any]:
    """One or (packed) several scalars of ``kind``."""
    if kind == "string":
        return [_text(value)] if wire == 2 else _bad(kind)
    if kind == "bytes":
        return [base64.b64encode(value).decode()] if wire == 2 else _bad(kind)
    if kind == "double":
        if wire == 1:
            return [struct.unpack("<d", value)[0]]
        if wire == 2:
            return [struct.unpack("<d", value[i:i + 8])[0] for i in range(0, len(value) - 7, 8)]
        return _bad(kind)
    if wire == 0:
        values = [value]
    elif wire == 2:  # packed
        values, pos = [], 0
        while pos < len(value):
            v, pos = _varint(value, pos)
            values.append(v)
    else:
        return _bad(kind)
    return [bool(v) for v in values] if kind == "bool" else [_signed(v) for v in values]


def _bad(kind: str):
    raise ProtobufError(f"a {kind} field has the wrong wire type")


def _plain(buf: bytes) -> dict[int, Any]:
    """Last value per field number (for the small special messages)."""
    return {n: v for n, _, v in _fields(buf)}


def _time(buf: bytes, micro: bool) -> str | None:
    f = _plain(buf)
    seconds, nanos = _signed(f.get(1, 0)) if isinstance(f.get(1, 0), int) else 0, f.get(2, 0)
    if not f:
        return None  # Go's zero Time marshals to an empty message, and to null in JSON
    when = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=seconds)
    if micro:
        return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{int(nanos) // 1000:06d}Z"
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def go_duration(ns: int) -> str:
    """Go's time.Duration.String()."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim(ns / size) + unit
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + _trim(rest / 1e9) + "s"


def _trim(x: float) -> str:
    return f"{x:.9f}".rstrip("0").rstrip(".")


def _raw_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ProtobufError("an embedded JSON field does not parse") from None


def _special(name: str, buf: bytes) -> Any:
    if name == "meta/v1.Time":
        return _time(buf, micro=False)
    if name == "meta/v1.MicroTime":
        return _time(buf, micro=True)
    f = _plain(buf)
    if name == "meta/v1.Duration":
        return go_duration(_signed(f.get(1, 0)))
    if name in ("meta/v1.FieldsV1", "runtime.RawExtension"):
        return _raw_json(f.get(1, b""))
    if name == "intstr.IntOrString":
        if f.get(1, 0) == 1:
            return _text(f.get(3, b""))
        v = _signed(f.get(2, 0))
        return v - (1 << 32) if v >= 1 << 31 else v
    if name == "resource.Quantity":
        return _text(f.get(1, b""))
    if name == "meta/v1.TypeMeta":
        return {"apiVersion": _text(f.get(1, b"")), "kind": _text(f.get(2, b""))}
    raise ProtobufError(f"no decoder for {name}")


_ZERO = {"string": "", "bytes": "", "int": 0, "bool": False, "double": 0.0}


def _zero_special(name: str) -> Any:
    return _special(name, b"")


# -- messages --------------------------------------------------------------------------------
def _map_entry(kinds: list, buf: bytes, depth: int) -> tuple[Any, Any]:
    key_kind, value_kind, value_type = kinds
    key: Any = _ZERO[key_kind]
    value: Any = None
    for n, wire, v in _fields(buf):
        if n == 1:
            key = _scalar(key_kind, wire, v)[-1]
        elif n == 2:
            value = _message(value_type, v, depth + 1) if value_kind == "msg" else _scalar(value_kind, wire, v)[-1]
    if value is None:
        value = _message(value_type, b"", depth + 1) if value_kind == "msg" else _ZERO[value_kind]
    return key, value


def _message(name: str, buf: bytes, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise ProtobufError("the object nests too deeply")
    messages = _data()["messages"]
    if name not in messages:
        return _special(name, buf)
    layout = {f[0]: f for f in messages[name]}
    seen: dict[int, Any] = {}
    for n, wire, v in _fields(buf):
        field = layout.get(n)
        if field is None:
            continue  # a field this version does not know: dropped, as the decoder drops it
        _, _, kind, typ, flags = field
        if kind == "msg":
            if wire != 2:
                _bad("message")
            items = [_message(typ, v, depth + 1)]
        elif kind == "map":
            if wire != 2:
                _bad("map")
            items = [_map_entry(typ, v, depth)]
        else:
            items = _scalar(kind, wire, v)
        if "r" in flags or kind == "map":
            seen.setdefault(n, []).extend(items)
        else:
            seen[n] = items[-1]
    out: dict[str, Any] = {}
    for n, json_name, kind, typ, flags in messages[name]:
        present = n in seen
        value = seen.get(n)
        if kind == "map":
            value = dict(value or [])
        if "i" in flags:  # inline: the nested struct's fields are the parent's
            inner = value if present else _message(typ, b"", depth + 1)
            out.update(inner if isinstance(inner, dict) else {})
            continue
        if "p" in flags:
            if present:
                out[json_name] = value
            elif "o" not in flags:
                out[json_name] = None
            continue
        if "r" in flags or kind == "map":
            if value:
                out[json_name] = value
            elif "o" not in flags:
                out[json_name] = None
            continue
        if kind == "msg":  # a non-pointer struct: Go's omitempty never drops it...
            value = value if present else _message(typ, b"", depth + 1)
            if value is None and "o" in flags:
                continue  # ...but a zero Time (null in Go's JSON) is left out: the server sets its own
            out[json_name] = value
            continue
        if not present:
            value = _ZERO[kind]
        if "o" in flags and value == _ZERO[kind]:
            continue
        out[json_name] = value
    return out


def decode(body: bytes) -> dict:
    """A protobuf request body as the JSON object the same Go value marshals to."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the body does not start with the Kubernetes protobuf prefix")
    envelope = _plain(body[len(MAGIC):])
    type_meta = _special("meta/v1.TypeMeta", envelope.get(1, b""))
    if envelope.get(3) or envelope.get(4):
        raise ProtobufError("encoded or nested content types are not supported")
    api_version, kind = type_meta["apiVersion"], type_meta["kind"]
    name = _data()["kinds"].get(f"{api_version} {kind}")
    if name is None:
        raise ProtobufError(f'no kind "{kind}" is registered for version "{api_version}"')
    obj = _message(name, envelope.get(2, b""))
    return {"apiVersion": api_version, "kind": kind, **obj}
