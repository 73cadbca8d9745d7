"""`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`: the server-side printing kubectl asks for.

kubectl (1.11+) does not print tables itself: it asks the API server for a meta.k8s.io/v1
Table and prints its columns, hiding those with priority > 0 unless `-o wide`. The API server
always generates the wide form (upstream's TableConvertor passes GenerateOptions{Wide: true}),
so every row carries every column's cell.

The columns and cells are kproxy.tables' (COLUMNS, cells()), the same code `kproxy get` prints
with, so the two cannot drift; this module only shapes them as the Table object: column
definitions with upstream's descriptions (columndocs.py), rows with their object as
includeObject asks (None → null, Metadata → PartialObjectMetadata, Object → the object), and
the Completed/Succeeded|Failed row condition upstream's pod printer sets.
"""

from __future__ import annotations

from typing import Any

from kproxy import tables
from kproxy.apiserver.columndocs import DOCS

INCLUDE_OBJECT = ("None", "Metadata", "Object")

_POD_CONDITIONS = {
    "Succeeded": [{"type": "Completed", "status": "True", "reason": "Succeeded",
                   "message": "The pod has completed successfully."}],
    "Failed": [{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}],
}


def column_definitions(kind: str) -> list[dict]:
    """The Table's columnDefinitions for `kind`, upstream's names, types, formats, priorities."""
    return [{"name": c.name, "type": c.type, "format": c.format, "description": DOCS.get(c.doc, c.doc),
             "priority": c.priority} for c in tables.columns(kind)]


def _row_object(obj: dict, include_object: str) -> Any:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata") or {}}


def to_table(kind: str, objs: list[dict], include_object: str = "Metadata", resource_version: str = "",
             continue_token: str = "") -> dict:
    """A meta.k8s.io/v1 Table of `objs` (kept in the given order, as a list response is)."""
    if include_object not in INCLUDE_OBJECT:
        raise ValueError(f"includeObject must be one of {', '.join(INCLUDE_OBJECT)}")
    rows = []
    for o in objs:
        row: dict[str, Any] = {"cells": tables.cells(kind, o)}
        if kind == "Pod":
            cond = _POD_CONDITIONS.get((o.get("status") or {}).get("phase", ""))
            if cond:
                row["conditions"] = cond
        row["object"] = _row_object(o, include_object)
        rows.append(row)
    metadata: dict[str, str] = {}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    if continue_token:
        metadata["continue"] = continue_token
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
            "columnDefinitions": column_definitions(kind), "rows": rows}
