"""The manifests folder as the desired state: what `kproxy apply` and `kproxy delete` edit.

An object lives in exactly one document of one file. Apply replaces that document's text in
place (or writes a new `<kind>-<namespace>-<name>.yaml`), so the other documents of a file,
and their comments, are never rewritten.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import yaml

_SEPARATOR = re.compile(r"^---[ \t]*(#.*)?$", re.M)


def _chunks(text: str) -> list[str]:
    """Split a YAML stream at its `---` lines; each chunk keeps its text as written."""
    parts, last = [], 0
    for m in _SEPARATOR.finditer(text):
        parts.append(text[last:m.start()])
        last = m.end() + 1
    parts.append(text[last:])
    return parts


def _identity(obj) -> tuple | None:
    if not isinstance(obj, dict) or "kind" not in obj:
        return None
    m = obj.get("metadata") or {}
    return obj["kind"], m.get("namespace") or "", m.get("name")


def _matches(obj, ident: tuple, default_ns: str) -> bool:
    mine = _identity(obj)
    if mine is None:
        return False
    kind, ns, name = mine
    want_kind, want_ns, want_name = ident
    return kind == want_kind and name == want_name and (ns or default_ns) == (want_ns or default_ns)


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml", ".json")
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so the watcher never reads half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kproxy-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _edit(folder: Path, ident: tuple, new_obj: dict | None, cluster_scoped: bool) -> str | None:
    """Replace (or with None, remove) the object's document; returns the file's old text of it."""
    default_ns = "" if cluster_scoped else "default"
    for path in _files(folder):
        text = path.read_text()
        chunks = _chunks(text)
        for i, chunk in enumerate(chunks):
            try:
                doc = yaml.safe_load(chunk)
            except yaml.YAMLError:
                continue
            if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
                items = doc.get("items") or []
                hit = next((j for j, it in enumerate(items) if _matches(it, ident, default_ns)), None)
                if hit is None:
                    continue
                old = items[hit]
                if new_obj is None:
                    items.pop(hit)
                else:
                    items[hit] = new_obj
                chunks[i] = yaml.safe_dump(doc, sort_keys=False)
            elif _matches(doc, ident, default_ns):
                old = doc
                chunks[i] = "" if new_obj is None else yaml.safe_dump(new_obj, sort_keys=False)
            else:
                continue
            kept = [c for c in chunks if c.strip()]
            if not kept:
                path.unlink()
            else:
                _write_atomic(path, "---\n".join(c if c.endswith("\n") else c + "\n" for c in kept))
            return old
    return None


def upsert(folder: Path, obj: dict, cluster_scoped: bool = False) -> str:
    """Put `obj` into the folder: 'created', 'configured' or 'unchanged' (kubectl's words)."""
    folder.mkdir(parents=True, exist_ok=True)
    ident = _identity(obj)
    old = find(folder, ident, cluster_scoped)
    if old is not None:
        if old == obj:
            return "unchanged"
        _edit(folder, ident, obj, cluster_scoped)
        return "configured"
    kind, ns, name = ident
    fname = "-".join(p for p in (kind.lower(), ns, name) if p) + ".yaml"
    _write_atomic(folder / fname, yaml.safe_dump(obj, sort_keys=False))
    return "created"


def remove(folder: Path, kind: str, namespace: str, name: str, cluster_scoped: bool = False) -> bool:
    return _edit(folder, (kind, namespace, name), None, cluster_scoped) is not None


def find(folder: Path, ident: tuple, cluster_scoped: bool = False) -> dict | None:
    """The object (kind, namespace, name) as the folder holds it, or None."""
    default_ns = "" if cluster_scoped else "default"
    for path in _files(folder):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        for doc in docs:
            items = doc.get("items") or [] if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") else [doc]
            for it in items:
                if _matches(it, ident, default_ns):
                    return it
    return None
