"""Server-side apply (`kubectl apply --server-side`, PATCH application/apply-patch+yaml), simplified.

What is upstream's: the managedFields format (one entry per manager and operation, FieldsV1 sets
`f:`/`k:`/`v:`/`.` as the API server writes them), the fields never tracked (apiVersion, kind,
metadata.name/namespace/uid/..., and status on the main resource), ownership by list keys
(containers by name, ports by port+protocol, finalizers as a set, untagged lists atomic), the
"before-first-apply" manager that takes the fields of an object first applied without
managedFields, Update operations taking ownership of what they change (record_update), and the
409 Conflict's exact message and causes (`Apply failed with 1 conflict: conflict with
"kubectl-client-side-apply" using apps/v1: .spec.replicas`), lifted by `force=true`.

What is simplified (structured-merge-diff is a type-aware library; this is not it):
- a conflict is a field the applier sets to a value different from the live one while another
  manager owns exactly that field (no conflicts through atomic parents or partial list items);
- merging: maps key by key, keyed lists item by item (live order, new items appended), sets as
  unions, everything else replaced; a field the applier stops applying is removed unless another
  manager owns it (empty parents are kept);
- no lastAppliedManager/lastAppliedUpdater: a client-side-applied object is not migrated to
  server-side ownership, and the last-applied annotation is not rewritten;
- no version conversion of managed fields (kproxy serves one version per kind), no cap on the
  number of Update managers, and values are not defaulted first (only port protocols, which are
  list keys, default to TCP).
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import yaml

from kproxy.apiserver.patch import PatchError, bad_request
from kproxy.apiserver.patchmeta import PROTOCOL_DEFAULTS, UNKNOWN, Field, schema_for

BEFORE_FIRST_APPLY = "before-first-apply"
_STRIPPED = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace"),
             ("metadata", "creationTimestamp"), ("metadata", "selfLink"), ("metadata", "uid"),
             ("metadata", "clusterName"), ("metadata", "generation"), ("metadata", "managedFields"),
             ("metadata", "resourceVersion"), ("metadata", "deletionTimestamp"),
             ("metadata", "deletionGracePeriodSeconds"), ("status",)}
_MISSING = object()

Path = tuple  # of ("f", name) | ("k", json of the key fields) | ("v", json of a set member)


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------ field sets


def _list_kind(f: Field) -> str:
    if "merge" not in f.strategies:
        return "atomic"
    return "map" if f.merge_key else "set"


def _keys(f: Field) -> tuple[str, ...]:
    return f.list_map_keys or (f.merge_key,)


def _key_json(item: Any, keys: tuple[str, ...]) -> str:
    if not isinstance(item, dict):
        return json.dumps(item)
    return json.dumps({k: item.get(k, PROTOCOL_DEFAULTS.get(k)) for k in sorted(keys)
                       if k in item or k in PROTOCOL_DEFAULTS}, separators=(",", ":"))


def field_set(obj: dict, schema: dict) -> set[Path]:
    """The fields `obj` sets, as server-side apply tracks them (leaves, list items, set members)."""
    out: set[Path] = set()
    _walk_map(obj, schema, (), out)
    return {p for p in out if not _stripped(p)}


def _stripped(p: Path) -> bool:
    """stripMetaManager's fields (and status, reset on the main resource)."""
    names = tuple(name for _, name in p[:2])
    return p == (("f", "metadata"),) or any(names[:len(s)] == s for s in _STRIPPED)


def _walk_map(v: dict, schema: dict, path: Path, out: set[Path]) -> None:
    if not v:
        out.add(path)
        return
    for k, x in v.items():
        f = schema.get(k, UNKNOWN) if isinstance(schema, dict) else UNKNOWN
        _walk_field(x, f, path + (("f", k),), out)


def _walk_field(x: Any, f: Field, path: Path, out: set[Path]) -> None:
    if isinstance(x, dict):
        _walk_map(x, f.sub, path, out)
    elif isinstance(x, list) and x and _list_kind(f) != "atomic":
        for item in x:
            if _list_kind(f) == "set":
                out.add(path + (("v", json.dumps(item)),))
            else:
                ip = path + (("k", _key_json(item, _keys(f))),)
                out.add(ip)
                if isinstance(item, dict):
                    _walk_map(item, f.sub, ip, out)
    else:
        out.add(path)


def encode_fields(paths: set[Path]) -> dict:
    """A FieldsV1 object: {"f:spec": {"f:replicas": {}}, "f:ports": {"k:{...}": {".": {}, ...}}}."""
    root: dict = {}
    for p in sorted(paths):
        node = root
        for kind, name in p:
            node = node.setdefault(f"{kind}:{name}", {})
        if p and p[-1][0] == "k":
            node["."] = {}
    return root


def decode_fields(fields: dict, path: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for key, sub in (fields or {}).items():
        if key == ".":
            out.add(path)
            continue
        kind, _, name = key.partition(":")
        child = path + ((kind, name),)
        if sub:
            out |= decode_fields(sub, child)
        if not sub or kind == "v":
            out.add(child)
    return out


def path_string(p: Path) -> str:
    """fieldpath.Path.String(): .spec.ports[port=80,protocol="TCP"].targetPort, [="a"] for sets."""
    out = []
    for kind, name in p:
        if kind == "f":
            out.append("." + name)
        elif kind == "k":
            key = json.loads(name)
            out.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(key.items())) + "]")
        else:
            out.append(f"[={name}]")
    return "".join(out)


# ------------------------------------------------------------------ navigating by path


def _field_of(schema: dict, path: Path) -> Field:
    f, sub = UNKNOWN, schema
    for kind, name in path:
        if kind == "f":
            f = sub.get(name, UNKNOWN) if isinstance(sub, dict) else UNKNOWN
            sub = f.sub
    return f


def _get(obj: Any, path: Path, schema: dict) -> Any:
    cur, sub, f = obj, schema, UNKNOWN
    for kind, name in path:
        if kind == "f":
            if not isinstance(cur, dict) or name not in cur:
                return _MISSING
            f = sub.get(name, UNKNOWN) if isinstance(sub, dict) else UNKNOWN
            cur, sub = cur[name], f.sub
        elif kind == "k":
            cur = next((i for i in cur or [] if _key_json(i, _keys(f)) == name), _MISSING) \
                if isinstance(cur, list) else _MISSING
        else:
            cur = next((i for i in cur or [] if json.dumps(i) == name), _MISSING) \
                if isinstance(cur, list) else _MISSING
        if cur is _MISSING:
            return cur
    return cur


def _remove(obj: dict, path: Path, schema: dict) -> None:
    parent = _get(obj, path[:-1], schema) if len(path) > 1 else obj
    kind, name = path[-1]
    if kind == "f" and isinstance(parent, dict):
        parent.pop(name, None)
    elif isinstance(parent, list):
        f = _field_of(schema, path[:-1])
        parent[:] = [i for i in parent if (_key_json(i, _keys(f)) if kind == "k" else json.dumps(i)) != name]


def _prune(obj: dict, path: Path, schema: dict) -> None:
    """Drop the containers a removal left empty, as the typed object's omitempty would."""
    for i in range(len(path) - 1, 0, -1):
        container = _get(obj, path[:i], schema)
        if container is _MISSING or container:
            return
        _remove(obj, path[:i], schema)


def _merge(live: Any, applied: Any, f: Field) -> Any:
    if isinstance(live, dict) and isinstance(applied, dict):
        out = dict(live)
        for k, v in applied.items():
            sub = f.sub.get(k, UNKNOWN) if isinstance(f.sub, dict) else UNKNOWN
            out[k] = _merge(live.get(k), v, sub)
        return out
    if isinstance(live, list) and isinstance(applied, list) and _list_kind(f) != "atomic":
        if _list_kind(f) == "set":
            return live + [v for v in applied if v not in live]
        keys = _keys(f)
        out_list = list(live)
        for item in applied:
            k = _key_json(item, keys)
            i = next((n for n, x in enumerate(out_list) if _key_json(x, keys) == k), -1)
            if i >= 0:
                out_list[i] = _merge(out_list[i], item, Field((), "", f.sub))
            else:
                out_list.append(item)
        return out_list
    return copy.deepcopy(applied)


# ------------------------------------------------------------------ managed fields


def _entries(obj: dict | None) -> list[dict]:
    return list(((obj or {}).get("metadata") or {}).get("managedFields") or [])


def _identity(e: dict) -> tuple:
    """BuildManagerIdentifier: an applier is one manager whatever its apiVersion."""
    return (e.get("manager", ""), e.get("operation", ""), e.get("subresource", ""),
            "" if e.get("operation") == "Apply" else e.get("apiVersion", ""))


def _manager_text(e: dict) -> str:
    text = json.dumps(e.get("manager", ""))
    if e.get("subresource"):
        text += f" with subresource {json.dumps(e['subresource'])}"
    if e.get("operation") == "Update":
        text += f" using {e.get('apiVersion', '')}"
    return text


def _entry(manager: str, operation: str, api_version: str, paths: set[Path], stamp: str) -> dict:
    return {"manager": manager, "operation": operation, "apiVersion": api_version, "time": stamp,
            "fieldsType": "FieldsV1", "fieldsV1": encode_fields(paths)}


def _with_entries(obj: dict, entries: list[dict]) -> dict:
    obj.setdefault("metadata", {})["managedFields"] = [e for e in entries if e.get("fieldsV1")]
    if not obj["metadata"]["managedFields"]:
        del obj["metadata"]["managedFields"]
    return obj


def record_update(kind: str, old: dict | None, new: dict, manager: str, api_version: str = "") -> dict:
    """managedFields after a create (old None) or an update/patch by `manager`: it takes the
    fields it changed from everyone else. As upstream, an existing object without managedFields
    stays untracked (until its first apply), and managedFields written by the request itself
    (non-empty) replace the live ones. Returns `new` with metadata.managedFields set."""
    schema = schema_for(kind) or {}
    api_version = api_version or new.get("apiVersion", "")
    # FieldManager.Update: managedFields the request itself carries win (kubectl's csaupgrade
    # rewrites them with a JSON patch); else the live object's are kept.
    base = _entries(new) or _entries(old)
    if old is not None and not base:
        new.get("metadata", {}).pop("managedFields", None)
        return new
    new_set = field_set(new, schema)
    old_set = field_set(old, schema) if old is not None else set()
    changed = {p for p in new_set if p not in old_set or _get(old, p, schema) != _get(new, p, schema)}
    gone = old_set - new_set
    entries, mine = [], None
    ident = _identity({"manager": manager, "operation": "Update", "apiVersion": api_version})
    for e in base:
        paths = decode_fields(e.get("fieldsV1") or {}) - gone
        if _identity(e) == ident:
            mine = e
            paths |= changed
        else:
            paths -= changed
        entries.append({**e, "fieldsV1": encode_fields(paths)} if paths != decode_fields(e.get("fieldsV1") or {})
                       else e)
    if mine is None and changed:
        entries.append(_entry(manager, "Update", api_version, changed, now_rfc3339()))
    elif mine is not None:
        entries = [{**e, "time": now_rfc3339()} if _identity(e) == ident else e for e in entries]
    return _with_entries(new, entries)


def parse_apply_body(body: bytes) -> dict:
    try:
        applied = yaml.safe_load(body.decode("utf-8") if isinstance(body, bytes) else body)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise bad_request(f"error decoding YAML: {e}") from None
    if not isinstance(applied, dict):
        raise bad_request("error decoding YAML: the apply configuration must be an object")
    return applied


def server_side_apply(kind: str, live: dict | None, body: bytes, field_manager: str, force: bool = False,
                      before_first_apply: bool = False) -> dict:
    """The object after `field_manager` applies `body` to `live` (None: the object is created),
    or PatchError: 422 without a field manager, 409 Conflict naming the other managers' fields.

    Ownership lives in live's metadata.managedFields: the caller must keep what this returns
    (with the object, not necessarily in the manifests folder) for conflicts and removals to
    work across applies. A live object without managedFields is, by default, owned by nobody
    (applied over without conflicts, nothing removed): what a store that does not keep
    managedFields needs, else every second apply would collide with the first.
    `before_first_apply=True` is upstream's rule instead (skipNonAppliedManager: the existing
    fields go to a "before-first-apply" manager, and changing them is a conflict) — right for a
    caller that does keep managedFields."""
    if not field_manager:
        raise PatchError("Invalid", 422, 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                         "is required for apply patch",
                         {"group": "meta.k8s.io", "kind": "PatchOptions",
                          "causes": [{"reason": "FieldValueRequired", "message": "Required value: is required for "
                                      "apply patch", "field": "fieldManager"}]})
    applied = parse_apply_body(body)
    schema = schema_for(kind) or {}
    top = Field((), "", schema)
    api_version = applied.get("apiVersion", "")
    stamp = now_rfc3339()
    applied_set = field_set(applied, schema)
    if live is None:
        obj = copy.deepcopy(applied)
        return _with_entries(obj, [_entry(field_manager, "Apply", api_version, applied_set, stamp)])
    live = copy.deepcopy(live)
    entries = _entries(live)
    if not entries and before_first_apply:  # skipNonAppliedManager: the existing fields get a manager
        existing = field_set(live, schema)
        entries = [_entry(BEFORE_FIRST_APPLY, "Update", live.get("apiVersion", api_version), existing, stamp)]
    ident = _identity({"manager": field_manager, "operation": "Apply"})
    owned = [(e, decode_fields(e.get("fieldsV1") or {})) for e in entries]
    mine = next((paths for e, paths in owned if _identity(e) == ident), set())
    conflicts = []
    for p in sorted(applied_set):
        if p[-1][0] in ("k", "v"):
            continue  # a keyed item or set member: same key, same thing
        live_v = _get(live, p, schema)
        if live_v is _MISSING or live_v == _get(applied, p, schema):
            continue
        conflicts += [(e, p) for e, paths in owned if _identity(e) != ident and p in paths]
    if conflicts and not force:
        raise _conflict_error(conflicts)
    taken = {p for _, p in conflicts}
    merged = _merge(live, applied, top)
    others = set().union(*(paths for e, paths in owned if _identity(e) != ident)) - taken if owned else set()
    for p in sorted(mine - applied_set, key=len):  # parents first: a removed item takes its fields
        if p not in others:
            _remove(merged, p, schema)
            _prune(merged, p, schema)
    new_entries, placed = [], False
    for e, paths in owned:
        if _identity(e) == ident:
            new_entries.append(_entry(field_manager, "Apply", api_version, applied_set, stamp))
            placed = True
        else:
            left = paths - taken
            new_entries.append({**e, "fieldsV1": encode_fields(left)} if left != paths else e)
    if not placed:
        new_entries.append(_entry(field_manager, "Apply", api_version, applied_set, stamp))
    merged.setdefault("metadata", {})
    for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation"):
        if k in (live.get("metadata") or {}):
            merged["metadata"][k] = live["metadata"][k]
    if "status" in live:
        merged["status"] = live["status"]
    return _with_entries(merged, new_entries)


def _conflict_error(conflicts: list[tuple[dict, Path]]) -> PatchError:
    """NewConflictError / getConflictMessage."""
    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {_manager_text(e)}",
               "field": path_string(p)} for e, p in conflicts]
    if len(conflicts) == 1:
        e, p = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {_manager_text(e)}: {path_string(p)}"
    else:
        by: dict[str, tuple[dict, list[str]]] = {}
        for e, p in conflicts:  # grouped by manager identifier, sorted as its JSON sorts
            key = json.dumps({k: e[k] for k in ("manager", "operation", "apiVersion", "subresource")
                              if e.get(k) and not (k == "apiVersion" and e.get("operation") == "Apply")},
                             separators=(",", ":"))
            by.setdefault(key, (e, []))[1].append(path_string(p))
        lines = []
        for key in sorted(by):
            e, paths = by[key]
            lines.append(f"conflicts with {_manager_text(e)}:")
            lines += [f"- {p}" for p in paths]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return PatchError("Conflict", 409, message, {"causes": causes})
