"""Read Kubernetes manifests from files and folders, like ``kubectl apply -f``.

Reading never raises: each document comes back as a :class:`Document`
holding either the parsed object or an error message naming the file and the
document, so one bad document does not hide the good ones around it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

# kubectl splits YAML streams on lines that are exactly "---" (trailing
# blanks allowed); we also accept a trailing comment.
_SEPARATOR = re.compile(r"^---[ \t]*(#.*)?$")


@dataclass
class Document:
    """One object read from a manifest, or why it could not be read."""

    source: str  # file path as given or found
    index: int  # 0-based position among the file's non-empty documents
    obj: dict | None = None
    error: str | None = None
    item: int | None = None  # 0-based position inside a List, if expanded from one

    @property
    def ok(self) -> bool:
        return self.error is None


# --------------------------------------------------------------------------
# YAML loading rules
# --------------------------------------------------------------------------

class _DuplicateKeyError(yaml.MarkedYAMLError):
    pass


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser: ~10x faster
    """SafeLoader that keeps timestamps as strings and rejects duplicate keys.

    Timestamps must stay strings so objects remain JSON-serialisable; duplicate
    keys are an error in kubectl and silently losing one confuses students.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _DuplicateKeyError(
                    problem=f"key {json.dumps(str(key))} already set in map",
                    problem_mark=key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

def read_path(path: str | os.PathLike) -> list[Document]:
    """Read a manifest file, or every manifest under a folder (sorted, recursive)."""
    path = Path(path)
    if path.is_dir():
        return [doc for file in manifest_files(path) for doc in read_file(file)]
    if not path.exists():
        return [Document(str(path), 0, error=f'the path "{path}" does not exist')]
    return read_file(path)


def read_file(path: str | os.PathLike) -> list[Document]:
    """Read every document of one manifest file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [Document(source, 0, error=f"error reading {source}: {exc}")]
    return read_text(text, source)


def read_text(text: str, source: str = "<stdin>") -> list[Document]:
    """Parse manifest text (a YAML stream, or JSON objects for ``*.json``)."""
    raw = _json_values(text, source) if source.endswith(".json") else _yaml_values(text, source)
    docs: list[Document] = []
    for index, (value, error) in enumerate(raw):
        if error is not None:
            docs.append(Document(source, index, error=error))
        else:
            docs.extend(_documents_for(value, source, index))
    return docs


def dump_documents(objs: Iterable[dict]) -> str:
    """Serialise objects as a multi-document YAML stream (for ``kproxy apply``)."""
    parts = [
        yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)
        for obj in objs
    ]
    return "---\n".join(parts)


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------

def manifest_files(folder: Path) -> list[Path]:
    """Manifest files under ``folder``, sorted, skipping hidden files and folders."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(root) / f
            for f in files
            if not f.startswith(".") and f.endswith(MANIFEST_SUFFIXES)
        )
    return sorted(found)


# --------------------------------------------------------------------------
# Raw values: (value, None) per non-empty document, or (None, error)
# --------------------------------------------------------------------------

def _parse_error(source: str, index: int, reason: str) -> str:
    return f"error parsing {source} (document {index + 1}): {reason}"


def _split_yaml(text: str) -> Iterator[tuple[int, str]]:
    """Yield (first line number, chunk) for each ``---``-separated chunk."""
    start, lines = 1, []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if _SEPARATOR.match(line.rstrip("\r\n")):
            yield start, "".join(lines)
            start, lines = number + 1, []
        else:
            lines.append(line)
    yield start, "".join(lines)


def _yaml_values(text: str, source: str) -> list[tuple[Any, str | None]]:
    values: list[tuple[Any, str | None]] = []
    for first_line, chunk in _split_yaml(text):
        try:
            for value in yaml.load_all(chunk, Loader=_Loader):
                if value is not None:
                    values.append((value, None))
        except yaml.YAMLError as exc:
            reason = "error converting YAML to JSON: yaml: " + _yaml_reason(exc, first_line)
            values.append((None, _parse_error(source, len(values), reason)))
    return values


def _yaml_reason(exc: yaml.YAMLError, first_line: int) -> str:
    """PyYAML's message as ``line N: problem``, with N counted in the whole file."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return problem
    return f"line {first_line + mark.line}: {problem}"


def _json_values(text: str, source: str) -> list[tuple[Any, str | None]]:
    """Decode a stream of JSON values; stop at the first malformed one."""
    decoder, values, pos = json.JSONDecoder(), [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return values
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            values.append((None, _parse_error(source, len(values), str(exc))))
            return values
        if value is not None:
            values.append((value, None))


# --------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------

def _documents_for(value: Any, source: str, index: int) -> list[Document]:
    """Turn one parsed document into Documents, expanding ``*List`` kinds."""
    error = _object_error(value)
    if error:
        return [Document(source, index, error=_parse_error(source, index, error))]
    kind = value["kind"]
    if kind.endswith("List") and "items" in value:
        return _list_items(value, source, index)
    return [Document(source, index, obj=value)]


def _list_items(lst: dict, source: str, index: int) -> list[Document]:
    items = lst.get("items") or []
    if not isinstance(items, list):
        reason = f"items of {lst['kind']} must be a list"
        return [Document(source, index, error=_parse_error(source, index, reason))]
    docs = []
    for n, item in enumerate(items):
        item = _typed_list_item(lst, item)
        error = _object_error(item)
        if error:
            where = f"error parsing {source} (document {index + 1}, item {n + 1}): "
            docs.append(Document(source, index, error=where + error, item=n))
        else:
            docs.append(Document(source, index, obj=item, item=n))
    return docs


def _typed_list_item(lst: dict, item: Any) -> Any:
    """Items of a typed list (``ServiceList``) may omit their kind and apiVersion."""
    if not isinstance(item, dict) or lst["kind"] == "List":
        return item
    item = dict(item)
    item.setdefault("kind", lst["kind"][: -len("List")])
    item.setdefault("apiVersion", lst.get("apiVersion"))
    return item


def _object_error(value: Any) -> str | None:
    """Why ``value`` is not a Kubernetes object, worded like kubectl, or None."""
    if not isinstance(value, dict):
        return f"expected an object with apiVersion and kind, got {_type_name(value)}"
    if not isinstance(value.get("kind"), str) or not value["kind"]:
        return f"Object 'Kind' is missing in '{_compact_json(value)}'"
    if not isinstance(value.get("apiVersion"), str) or not value["apiVersion"]:
        return f"Object 'apiVersion' is missing in '{_compact_json(value)}'"
    return None


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def _compact_json(value: Any) -> str:
    """JSON as Go's encoding/json writes it: compact, sorted keys, HTML-escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
