"""Read Kubernetes manifests from files and folders, like ``kubectl apply -f``.

Reading never raises: each document comes back as a :class:`Document`
holding either the parsed object or an error message naming the file and the
document, so one bad document does not hide the good ones around it.

What is read, and why (the daemon reading a folder runs as root):

* only regular files: a symlink is never followed (inside the folder or not:
  ``O_NOFOLLOW``), and FIFOs, sockets and devices are refused without
  blocking (``lstat`` first, then ``O_NONBLOCK`` and ``fstat`` of what was
  opened); each refusal is a Document error naming the file;
* at most MAX_FILE_BYTES (3 MiB, the API server's request limit) per file;
* UTF-8 text (a leading byte-order mark is dropped);
* JSON-compatible documents only, bounded in depth and alias expansion
  (see :mod:`kproxy.api.safeload`);
* objects whose metadata decodes as the API server's ObjectMeta (a string
  name, string-to-string labels...), refused in kubectl's words otherwise.

Errors never quote a file beyond a short excerpt, and never quote a file that
was refused unread.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import yaml

from kproxy.api import safeload

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 3 * 1024 * 1024  # the API server's limit on a request body
EXCERPT = 80  # characters of a document quoted in an error, at most


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
# Public API
# --------------------------------------------------------------------------

def read_path(path: str | os.PathLike) -> list[Document]:
    """Read a manifest file, or every manifest under a folder (sorted, recursive)."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            return [doc for file in manifest_files(path) for doc in read_file(file)]
        if not os.path.lexists(path):
            return [Document(str(path), 0, error=f'the path "{path}" does not exist')]
    except (OSError, ValueError) as exc:
        return [Document(str(path), 0, error=f"error reading {path}: {_os_reason(exc)}")]
    return read_file(path)


def read_file(path: str | os.PathLike) -> list[Document]:
    """Read every document of one manifest file (a regular file, not followed if a symlink)."""
    source = str(path)
    text, error = read_manifest_text(source)
    if error is not None:
        return [Document(source, 0, error=error)]
    return read_text(text, source)


def read_manifest_text(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """(text, None) of a manifest file read safely, or (None, "error reading <file>: why").

    For any code that needs a manifest's text (not its objects): a regular
    file only (no symlink followed, no FIFO opened for reading, no device),
    at most MAX_FILE_BYTES, UTF-8 (a byte-order mark dropped). Never raises.
    """
    source = str(path)
    try:
        data, problem = _read_regular(source)
    except (OSError, ValueError) as exc:
        data, problem = None, _os_reason(exc)
    if problem is not None:
        return None, f"error reading {source}: {problem}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"error reading {source}: invalid UTF-8 at byte {exc.start}: manifests must be UTF-8 text"
    return text.removeprefix("\ufeff"), None


def read_stream(stream: BinaryIO, source: str = "STDIN") -> list[Document]:
    """Parse a byte stream (``-f -``) under the rules of a file: at most MAX_FILE_BYTES are read
    (``< /dev/zero`` must not fill the memory), UTF-8 only (never a lone surrogate passed on)."""
    data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        return [Document(source, 0, error=f"error reading {source}: {_too_large()}")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [Document(source, 0, error=f"error reading {source}: invalid UTF-8 at byte {exc.start}: "
                                          "manifests must be UTF-8 text")]
    return read_text(text.removeprefix("\ufeff"), source)


def read_text(text: str, source: str = "<stdin>") -> list[Document]:
    """Parse manifest text (a YAML stream, or JSON objects for ``*.json``)."""
    if len(text) > MAX_FILE_BYTES and len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        return [Document(source, 0, error=f"error reading {source}: {_too_large()}")]
    try:
        return _documents(text, source)
    except Exception as exc:  # noqa: BLE001 - reading never raises; this is a kproxy bug if reached
        return [Document(source, 0, error=f"error parsing {source}: internal error: {type(exc).__name__}")]


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
    """Manifest files under ``folder``, sorted, skipping hidden files and folders.

    Symlinks are listed (never followed, not even to folders) so that reading
    them reports why they are refused instead of skipping them silently.
    """
    return [Path(d) / f for d, f in _listing(folder)]


def _listing(folder: Path) -> list[tuple[str, str]]:
    """(directory, name) of each manifest file, in the order of the sorted Paths (by their parts)
    without making a Path per file: a poller lists the folder four times a second, and sorting
    1,000 Paths cost ~20 ms a listing."""
    found = []
    for root, dirs, files in os.walk(folder):
        linked = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in linked)
        parent = str(Path(root))
        parts = Path(root).parts
        found.extend(
            (parts + (f,), parent, f)
            for f in files + linked
            if not f.startswith(".") and f.endswith(MANIFEST_SUFFIXES)
        )
    found.sort(key=lambda t: t[0])
    return [(d, f) for _, d, f in found]


def folder_signature(folder: Path) -> tuple:
    """(directory, name, size, mtime_ns) of each file manifest_files lists: what a poller of the
    folder compares (it works on shared folders too, where no inotify comes). Built on the same
    listing as the reader, so a change is noticed exactly where the reader would see one."""
    if not folder.is_dir():
        return ()
    sig = []
    for d, name in _listing(folder):
        try:  # lstat: a symlink is reported by the reader, never followed (nor broken)
            st = os.lstat(os.path.join(d, name))
        except OSError:  # removed since the walk listed it: the next poll sees it gone
            continue
        sig.append((d, name, st.st_size, st.st_mtime_ns))
    return tuple(sig)


def _too_large() -> str:
    return (f"the file is larger than {MAX_FILE_BYTES} bytes (3 MiB): kproxy refuses it as the API server "
            "refuses a request over its 3 MiB limit")


def _os_reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def _not_regular(mode: int) -> str:
    kind = _file_type(mode)
    if kind == "symbolic link":
        return "is a symbolic link: kproxy reads only regular files and does not follow symlinks"
    if kind == "directory":
        return "is a directory"
    return f"is a {kind}, not a regular file: kproxy reads only regular files"


def _read_regular(source: str) -> tuple[bytes | None, str | None]:
    """(content, None), or (None, why not): never follows a symlink nor blocks on a FIFO."""
    st = os.lstat(source)
    if not stat.S_ISREG(st.st_mode):
        return None, _not_regular(st.st_mode)
    if st.st_size > MAX_FILE_BYTES:
        return None, _too_large()
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(source, flags)
    except OSError as exc:
        if stat.S_ISLNK(os.lstat(source).st_mode):  # replaced by a symlink since the lstat
            return None, _not_regular(stat.S_IFLNK)
        raise exc
    try:
        st = os.fstat(fd)  # what was opened, not what the name pointed to a moment ago
        if not stat.S_ISREG(st.st_mode):
            return None, _not_regular(st.st_mode)
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, min(1 << 20, MAX_FILE_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:
            return None, _too_large()
        return b"".join(chunks), None
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------

def _parse_error(source: str, index: int, reason: str) -> str:
    return f"error parsing {source} (document {index + 1}): {reason}"


def _documents(text: str, source: str) -> list[Document]:
    is_json = source.endswith(".json")
    raw = safeload.json_documents(text) if is_json else safeload.yaml_documents(text)
    docs: list[Document] = []
    index = 0
    for value, error in raw:
        if error is not None:
            if not is_json:
                error = "error converting YAML to JSON: yaml: " + error
            docs.append(Document(source, index, error=_parse_error(source, index, error)))
        else:
            docs.extend(_documents_for(value, source, index))
        index += 1
    return docs


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
    if value["kind"].endswith("List") and "items" in value:
        return None
    return metadata_error(value)


# ObjectMeta fields that must decode as strings, and the string maps.
_META_STRINGS = ("name", "generateName", "namespace", "uid", "resourceVersion", "creationTimestamp",
                 "deletionTimestamp")
_META_MAPS = ("labels", "annotations")


def metadata_error(obj: dict) -> str | None:
    """Why ``obj.metadata`` does not decode as an ObjectMeta, in the words of Go's JSON decoder.

    kubectl decodes metadata before it sends anything, so a non-string name
    (``name: 12345``, ``name: yes``) is refused as it refuses it:
    ``json: cannot unmarshal number into Go struct field ObjectMeta.metadata.name of type string``.
    The object's identity is read from these fields everywhere, so the reader enforces them.
    """
    metadata = obj.get("metadata")
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return _unmarshal(metadata, f"{obj['kind']}.metadata", "v1.ObjectMeta")
    for key in _META_STRINGS:
        if metadata.get(key) is not None and not isinstance(metadata[key], str):
            return _unmarshal(metadata[key], f"ObjectMeta.metadata.{key}", "string")
    for key in _META_MAPS:
        mapping = metadata.get(key)
        if mapping is None:
            continue
        if not isinstance(mapping, dict):
            return _unmarshal(mapping, f"ObjectMeta.metadata.{key}", "map[string]string")
        for item, text in mapping.items():
            if text is not None and not isinstance(text, str):
                return _unmarshal(text, f"ObjectMeta.metadata.{key}", "string") + f" (key {json.dumps(item)[:EXCERPT]})"
    return None


def _unmarshal(value: Any, field: str, go_type: str) -> str:
    return f"json: cannot unmarshal {json_type(value)} into Go struct field {field} of type {go_type}"


def json_type(value: Any) -> str:
    """The JSON type word Go's decoder uses in its errors (`cannot unmarshal number into ...`);
    the API server's patch errors use it too."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else "object"


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
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "..."  # an excerpt, never the whole file
