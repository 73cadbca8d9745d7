"""PATCH bodies as the Kubernetes API server applies them, refusals worded as it words them.

`apply_patch(kind, obj, body, content_type)` returns the patched copy of `obj` (a plain dict)
or raises `PatchError(reason, code, message)`; the caller turns it into a Status with
`PatchError.status()`. What happens after the patch (name/namespace checks, resourceVersion
preconditions → 409, admission → 422 Invalid, writing) is the REST layer's, not this module's.

The three patch types (k8s.io/apiserver pkg/endpoints/handlers/patch.go):
- application/strategic-merge-patch+json: built-in kinds only, with the merge keys and patch
  strategies of their Go struct tags (patchmeta.py); the apply algorithm is strategicpatch.py.
  Custom resources (MetalLB's kinds) get 415, as from upstream's CRD handler.
- application/merge-patch+json: RFC 7386, with evanphx/json-patch's MergePatch corner cases
  (`null` or a scalar body: 400 "Invalid JSON Patch").
- application/json-patch+json: RFC 6902 applied by the pinned `jsonpatch` library. Failures
  are first checked against evanphx/json-patch v4's rules (what the API server links), so a
  failed `test` or a missing path gives upstream's 422 "the server rejected our request due to
  an error in our request", and v4's quirk is kept: `replace` of a missing object key adds it.
- application/apply-patch+yaml (server-side apply) is passed on to ssa.py (simplified there).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import jsonpointer

from kproxy.api.manifest import json_type
from kproxy.apiserver import strategicpatch as smp
from kproxy.apiserver.patchmeta import schema_for

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
# installer.go's order; the CRD handler (apiextensions) has no strategic merge patch.
BUILTIN_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)
CUSTOM_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, APPLY_PATCH)
MAX_JSON_PATCH_OPERATIONS = 10000


class PatchError(Exception):
    """A refused patch: the Status reason ("" for upstream's plain errors), HTTP code and message."""

    def __init__(self, reason: str, code: int, message: str, details: dict | None = None):
        super().__init__(message)
        self.reason, self.code, self.message, self.details = reason, code, message, details

    def status(self) -> dict:
        """The metav1.Status body the API server sends for this error."""
        out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": self.message}
        if self.reason:
            out["reason"] = self.reason
        if self.details is not None:
            out["details"] = self.details
        out["code"] = self.code
        return out


def bad_request(message: str) -> PatchError:
    return PatchError("BadRequest", 400, message)


def invalid_request() -> PatchError:
    """NewGenericServerResponse(422, ...): the server's message is dropped (no causes)."""
    return PatchError("Invalid", 422, "the server rejected our request due to an error in our request", {})


def internal(message: str) -> PatchError:
    """A plain Go error reaching ErrorToAPIStatus: 500, reason Unknown (""), the error's text."""
    return PatchError("", 500, message)


def unsupported_media_type(accepted: tuple[str, ...]) -> PatchError:
    return PatchError("UnsupportedMediaType", 415, "the body of the request was in an unknown format - "
                      "accepted media types include: " + ", ".join(accepted))


def media_type(content_type: str) -> str:
    """The patch type from a Content-Type header, without `; charset=...` (as upstream)."""
    i = content_type.find(";")
    return content_type[:i] if i > 0 else content_type


def apply_patch(kind: str, obj: dict | None, body: bytes, content_type: str, field_manager: str = "",
                force: bool = False) -> dict:
    """`obj` patched by `body`; `obj` itself is left untouched. For server-side apply
    (application/apply-patch+yaml) `obj` may be None (the apply creates the object) and the
    request's fieldManager and force parameters apply; see ssa.py."""
    ctype = media_type(content_type or "")
    custom = schema_for(kind) is None
    accepted = CUSTOM_PATCH_TYPES if custom else BUILTIN_PATCH_TYPES
    if ctype not in accepted:
        raise unsupported_media_type(accepted)
    if ctype == APPLY_PATCH:
        from kproxy.apiserver.ssa import server_side_apply  # ssa.py builds on this module
        return server_side_apply(kind, obj, body, field_manager, force)
    if obj is None:
        raise internal("patch of an object that does not exist")
    original = copy.deepcopy(obj)
    if ctype == JSON_PATCH:
        return json_patch(original, body)
    if ctype == MERGE_PATCH:
        return merge_patch(original, body)
    return strategic_merge_patch(kind, original, body)


# ------------------------------------------------------------------ strategic merge patch


def strategic_merge_patch(kind: str, original: dict, body: bytes) -> dict:
    try:
        patch = json.loads(body or b"{}")
    except ValueError as e:
        raise bad_request(go_json_error(e, body)) from None
    if patch is None:
        patch = {}
    if not isinstance(patch, dict):
        raise bad_request(f"json: cannot unmarshal {json_type(patch)} into Go value of type map[string]interface {{}}")
    schema = schema_for(kind)
    try:
        if schema is None:
            raise smp.SMPError(smp.ERR_UNSUPPORTED, sentinel=True)
        return smp.strategic_merge_patch(original, patch, schema)
    except smp.SMPError as e:
        raise _interpret_smp_error(e) from None


def _interpret_smp_error(e: smp.SMPError) -> PatchError:
    """interpretStrategicMergePatchError."""
    if e.sentinel in (smp.ERR_BAD_JSON_DOC, smp.ERR_BAD_PRIMITIVE_LIST, smp.ERR_BAD_RETAIN_KEYS,
                      smp.ERR_BAD_SET_ELEMENT_ORDER, smp.ERR_UNSUPPORTED):
        return bad_request(e.message)
    if e.sentinel in (smp.ERR_NO_LIST_OF_LISTS, smp.ERR_NOT_MATCH_RETAIN_KEYS):
        return invalid_request()
    return internal(e.message)


# ------------------------------------------------------------------ JSON merge patch (RFC 7386)

ERR_BAD_JSON_PATCH = "Invalid JSON Patch"


def merge_patch(original: dict, body: bytes) -> dict:
    try:
        patch = json.loads(body)
    except ValueError:
        raise bad_request(ERR_BAD_JSON_PATCH) from None
    if patch is None or not isinstance(patch, (dict, list)):
        raise bad_request(ERR_BAD_JSON_PATCH)
    if isinstance(patch, list):
        # evanphx returns the (null-pruned) array as the document; decoding it as an object fails.
        text = json.dumps(patch, separators=(",", ":"))
        msg = f'patch: Invalid value: "{text}": couldn\'t get version/kind; json parse error: json: cannot ' \
              "unmarshal array into Go value of type struct { APIVersion string \"json:\\\"apiVersion," \
              "omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }"
        raise PatchError("Invalid", 422, f' "" is invalid: {msg}',
                         {"causes": [{"reason": "FieldValueInvalid", "message": msg.split(": ", 1)[1],
                                      "field": "patch"}]})
    return merge_docs(original, patch)


def merge_docs(target: Any, patch: Any) -> Any:
    """RFC 7386 MergePatch(target, patch)."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = merge_docs(target.get(k), v)
    return target


# ------------------------------------------------------------------ JSON patch (RFC 6902)


def json_patch(original: dict, body: bytes) -> dict:
    try:
        ops = json.loads(body)
    except ValueError as e:
        raise bad_request(go_json_error(e, body)) from None
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        bad = ops if not isinstance(ops, list) else next(op for op in ops if not isinstance(op, dict))
        into = "jsonpatch.Patch" if not isinstance(ops, list) else "jsonpatch.Operation"
        raise bad_request(f"json: cannot unmarshal {json_type(bad)} into Go value of type {into}")
    if len(ops) > MAX_JSON_PATCH_OPERATIONS:
        raise PatchError("RequestEntityTooLarge", 413, "Request entity too large: The allowed maximum operations in "
                         f"a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {len(ops)}")
    doc: Any = original
    for op in ops:
        op = _evanphx_check(doc, op)
        try:
            doc = jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, ValueError):
            raise invalid_request() from None
    return doc


def _find_object(doc: Any, path: str) -> tuple[Any, str | None]:
    """evanphx findObject: the container of `path`'s last token and that token, (None, None) if
    any step is missing."""
    split = path.split("/")
    if len(split) < 2:
        return None, None
    for part in split[1:-1]:
        key = _unescape(part)
        if isinstance(doc, dict):
            doc = doc.get(key)
        elif isinstance(doc, list):
            i = _atoi(key)
            doc = doc[i] if i is not None and 0 <= i < len(doc) else None
        else:
            return None, None
        if not isinstance(doc, (dict, list)):
            return None, None
    return doc, _unescape(split[-1])


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _atoi(s: str) -> int | None:
    try:
        return int(s) if s.strip() == s and s.lstrip("+-").isdigit() else None
    except ValueError:
        return None


def _exists(con: Any, key: str) -> bool:
    if isinstance(con, dict):
        return key in con
    i = _atoi(key)
    return i is not None and 0 <= i < len(con)


def _evanphx_check(doc: Any, op: dict) -> dict:
    """Refuse (422) what evanphx/json-patch v4 refuses; return the op to hand to `jsonpatch`."""
    kind, path = op.get("op"), op.get("path")
    if kind not in ("add", "remove", "replace", "move", "copy", "test") or not isinstance(path, str):
        raise invalid_request()
    if kind in ("move", "copy"):
        src = op.get("from")
        con, key = _find_object(doc, src) if isinstance(src, str) else (None, None)
        if con is None or not _exists(con, key):
            raise invalid_request()
    if path == "":
        if kind == "test" and doc != op.get("value"):
            raise invalid_request()
        return op
    con, key = _find_object(doc, path)
    if con is None:
        raise invalid_request()
    if kind == "replace" and isinstance(con, dict) and key not in con:
        return {**op, "op": "add"}  # v4's partialDoc.get never fails: replace adds the key
    if kind == "test" and not _exists(con, key):
        if op.get("value") is None:
            return {"op": "test", "path": "", "value": doc}  # v4: absent == null passes
        raise invalid_request()
    return op


# ------------------------------------------------------------------ Go-like JSON decode errors


def go_json_error(e: ValueError, body: bytes) -> str:
    """encoding/json's wording for the commonest syntax errors."""
    pos = getattr(e, "pos", None)
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
    if pos is None or pos >= len(text) or not text.strip():
        return "unexpected end of JSON input"
    ch = text[pos]
    where = "looking for beginning of value" if "Expecting value" in str(e) else \
        "looking for beginning of object key string" if "property name" in str(e) else "after object key:value pair"
    return f"invalid character {_go_char(ch)} {where}"


def _go_char(ch: str) -> str:
    return "'\\''" if ch == "'" else f"'{ch}'" if ch.isprintable() else repr(ch)
