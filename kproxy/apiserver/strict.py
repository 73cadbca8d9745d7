"""Strict field validation and the 422 ``Invalid`` Status, worded as the API server words them.

kubectl 1.32 validates by default (``--validate=strict``): when the server's OpenAPI v3 lists the
``fieldValidation`` query parameter on the kind's PATCH operation (ours does, :mod:`.openapi`)
kubectl does no checking itself and sends ``?fieldValidation=Strict``; the server must then refuse
an object with unknown or duplicate fields, or the typo (``spec.prots``) is silently dropped.
The API server's decoder (sigs.k8s.io/json) reports them as::

    strict decoding error: unknown field "spec.prots", duplicate field "metadata.name"

with ``.``-joined field names and ``[i]`` list indices; a create (POST/PUT) prefixes it with
``Service in version "v1" cannot be handled as a Service: `` (apiserver's transformDecodeError),
a patch does not (it decodes the patched object). Both are 400 BadRequest. With
``fieldValidation=Warn`` (the server's default) each one is a ``Warning`` header instead
(``299 - "unknown field \\"spec.prots\\""``), with ``Ignore`` nothing.

The schemas are upstream's (:func:`kproxy.apiserver.openapi.definitions`), so a field a real
cluster knows is never refused here even when kproxy ignores it.

The core calls: ``unknown_fields(kind, obj)``, ``duplicate_fields(body)``,
``strict_status(kind, version, problems, create=...)``, ``warning_headers(problems)`` and
``invalid_status(kind, name, errors)``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from kproxy.api import errors as field_errors
from kproxy.apiserver import openapi
from kproxy.apiserver import resources as res

_MAX_DEPTH = 64  # deeper than any real object; a hostile one stops here


def _resolve(schema: dict) -> dict:
    """Follow ``$ref`` (and a single-ref ``allOf``) to the schema itself."""
    defs = openapi.definitions()
    for _ in range(8):
        ref = schema.get("$ref")
        if not ref and len(schema.get("allOf") or []) == 1:
            ref = schema["allOf"][0].get("$ref")
        if not isinstance(ref, str):
            return schema
        schema = defs.get(ref.rsplit("/", 1)[1], {})
    return schema


def _walk(schema: dict, value: Any, path: str, out: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    schema = _resolve(schema)
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(props, dict):
                if key in props:
                    _walk(props[key], item, sub, out, depth + 1)
                elif isinstance(extra, dict):
                    _walk(extra, item, sub, out, depth + 1)
                else:
                    out.append(sub)
            elif isinstance(extra, dict):
                _walk(extra, item, sub, out, depth + 1)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _walk(schema["items"], item, f"{path}[{i}]", out, depth + 1)


def schema_for(kind: str, api_version: str | None = None) -> dict | None:
    """The upstream schema of ``kind`` (in ``api_version`` when given), or None if not served."""
    r = res.for_kind(kind, api_version) or (res.for_kind(kind) if api_version is None else None)
    if r is None:
        return None
    name = openapi.definition_for(r.group, r.version, r.kind)
    return openapi.definitions().get(name) if name else None


def unknown_fields(kind: str, obj: Any) -> list[str]:
    """Paths of ``obj``'s fields its kind's schema does not have, in document order.

    ``obj["apiVersion"]`` picks the version when set (``events.k8s.io/v1`` Event vs core Event).
    An unknown kind has no schema to judge by: nothing is reported.
    """
    version = obj.get("apiVersion") if isinstance(obj, dict) else None
    schema = schema_for(kind, version if isinstance(version, str) else None) or schema_for(kind)
    if schema is None:
        return []
    out: list[str] = []
    _walk(schema, obj, "", out, 0)
    return out


class _Pairs(dict):
    """A JSON object that remembers which of its keys came twice."""

    __slots__ = ("duplicates",)


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs()
    obj.duplicates = []
    for key, value in pairs:
        if key in obj and key not in obj.duplicates:
            obj.duplicates.append(key)
        obj[key] = value  # the last one wins, as in Go
    return obj


def _collect(value: Any, path: str, out: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, _Pairs):
        for key in value.duplicates:
            out.append(f"{path}.{key}" if path else key)
        for key, item in value.items():
            _collect(item, f"{path}.{key}" if path else key, out, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _collect(item, f"{path}[{i}]", out, depth + 1)


def duplicate_fields(body: bytes | str) -> list[str]:
    """Paths of fields given twice in a JSON request body (JSON only: YAML bodies are kubectl's
    to refuse, it converts them to JSON first). A body that does not parse has none."""
    try:
        parsed = json.loads(body, object_pairs_hook=_pairs_hook)
    except (ValueError, RecursionError):
        return []
    out: list[str] = []
    _collect(parsed, "", out, 0)
    return out


def problems(kind: str, obj: Any, body: bytes | str | None = None) -> list[str]:
    """Every strict-decoding problem as the decoder words it: unknown, then duplicate fields."""
    found = [f"unknown field {field_errors.go_quote(p)}" for p in unknown_fields(kind, obj)]
    if body is not None:
        found += [f"duplicate field {field_errors.go_quote(p)}" for p in duplicate_fields(body)]
    return found


def strict_message(kind: str, version: str, found: Iterable[str], create: bool = True) -> str:
    """``Service in version "v1" cannot be handled as a Service: strict decoding error: ...``
    (create/update) or the bare ``strict decoding error: ...`` (patch)."""
    text = "strict decoding error: " + ", ".join(found)
    if create:
        return f"{kind} in version {field_errors.go_quote(version)} cannot be handled as a {kind}: {text}"
    return text


def strict_status(kind: str, version: str, found: Iterable[str], create: bool = True) -> dict:
    """The 400 BadRequest Status for ``fieldValidation=Strict``."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": strict_message(kind, version, list(found), create), "reason": "BadRequest",
            "code": 400}


def warning_headers(found: Iterable[str]) -> list[str]:
    """``Warning`` header values for ``fieldValidation=Warn`` (RFC 7234 299, as apiserver sends)."""
    return ["299 - " + json.dumps(p) for p in found]


def invalid_status(kind: str, name: str, errors: Iterable[field_errors.FieldError]) -> dict:
    """The 422 ``Invalid`` Status with one ``details.causes`` entry per field error.

    kubectl prints it as ``The Service "web" is invalid: spec.ports[0].nodePort: Invalid value:
    99999: provided port is not in the valid range. The range of valid ports is 30000-32767``
    (one cause) or one ``* cause`` line each (several), exactly as against a real cluster,
    because these are kproxy's admission errors (:mod:`kproxy.api.errors`) in upstream's words.
    """
    return field_errors.InvalidError(kind, name, list(errors)).to_status()
