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


def _chunks(text: str) -> list[list[str]]:
    """Split a YAML stream into [separator line, body] pairs, each kept as written.

    The first pair's separator is "" (the text before any `---`); a separator keeps its comment.
    """
    parts, sep, last = [], "", 0
    for m in _SEPARATOR.finditer(text):
        parts.append([sep, text[last:m.start()]])
        end = min(m.end() + 1, len(text))
        sep, last = text[m.start():end], end
    parts.append([sep, text[last:]])
    return parts


def _join(chunks: list[list[str]]) -> str:
    out = []
    for sep, body in chunks:
        if out and not out[-1].endswith("\n"):
            out.append("\n")
        out.append(sep if sep.endswith("\n") or not sep else sep + "\n")
        out.append(body)
    text = "".join(out)
    return text if text.endswith("\n") else text + "\n"


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
        for i, (_, body) in enumerate(chunks):
            try:
                doc = yaml.safe_load(body)
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
                chunks[i][1] = yaml.safe_dump(doc, sort_keys=False) if items else ""
            elif _matches(doc, ident, default_ns):
                old = doc
                chunks[i][1] = "" if new_obj is None else yaml.safe_dump(new_obj, sort_keys=False)
            else:
                continue
            kept = [c for c in chunks if c[1].strip()]
            if not kept:
                path.unlink()
            else:
                if chunks[0][0] == "" and kept[0][0].strip() == "---":
                    kept[0] = ["", kept[0][1]]  # the file did not start with `---`: keep it so
                _write_atomic(path, _join(kept))
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
    stem = "-".join(p for p in (kind.lower(), ns or ("" if cluster_scoped else "default"), name) if p)
    stem = stem[:200]  # a name may have 253 characters, a file name 255 bytes: the loop below keeps them apart
    path, n = folder / f"{stem}.yaml", 1
    while path.exists():  # never overwrite another object's file
        n += 1
        path = folder / f"{stem}-{n}.yaml"
    _write_atomic(path, yaml.safe_dump(obj, sort_keys=False))
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
