"""The manifests folder as the desired state: what `kproxy apply` and `kproxy delete` edit.

An object lives in one document of one file. Apply replaces that document's text in place (or
writes a new `<kind>-<namespace>-<name>.yaml`), so the other documents of a file, and their
comments, are never rewritten.

Why a lock: two `kproxy apply` of the same new object used to both see "absent", both say
`created` and write two files. Every read-decide-write holds an exclusive `flock` on the
folder itself (its directory's file descriptor: no lock file to litter it) and a per-process
lock for threads, so the second one sees the
first one's file and says `unchanged` or `configured`, as kubectl would.

Why an index: finding an object used to read and parse every file of the folder per call
(20 Services into a 204-file folder: 5.6 s; a 50 MB file: 24-31 s per apply). The index keeps,
per file, its stamp (mtime, ctime, size, inode) and the identities it holds; only files whose
stamp changed are parsed again (a file the reader refuses, too big or not regular, is recorded
as holding nothing and not read again until it changes). A file changed within the last
two seconds is re-read next time whatever its stamp says, as git does for "racy" entries,
since a timestamp may not tick between two quick writes.

Files are parsed with the manifest reader of kproxy.api.manifest (its loader and its limits),
so the folder means the same to apply as to the daemon.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import tempfile
import threading
import time
from pathlib import Path

import yaml

from kproxy.api import manifest, safeload

_SEPARATOR = re.compile(r"^---[ \t]*(#.*)?$", re.M)
INDEX_VERSION = 1
RACY_SECONDS = 2.0


class WriteError(OSError):
    """A file of the folder could not be written; nothing was left half-written."""

    def __init__(self, path: Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.path, self.cause = path, cause

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.cause.strerror or self.cause}"


# -- the lock -----------------------------------------------------------------------------
_thread_locks: dict[str, threading.RLock] = {}
_depth = threading.local()
_guard = threading.Lock()


@contextlib.contextmanager
def locked(folder: Path):
    """Hold the folder's write lock: other threads and processes wait. Re-entrant per thread."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    with _guard:
        rlock = _thread_locks.setdefault(key, threading.RLock())
    with rlock:
        depths = _depth.__dict__.setdefault("d", {})
        if depths.get(key):
            depths[key] += 1
            try:
                yield
            finally:
                depths[key] -= 1
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise WriteError(folder, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            depths[key] = 1
            try:
                yield
            finally:
                depths[key] = 0
        finally:
            os.close(fd)  # closing releases the flock


# -- the index ----------------------------------------------------------------------------
def _stamp(st: os.stat_result) -> list:
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino]


def _idents_of(path: Path) -> list[list]:
    """(kind, namespace-as-written, name) of every object the reader accepts in `path`."""
    out = []
    try:
        docs = manifest.read_file(path)
    except (Exception, RecursionError):  # noqa: BLE001 - a file the reader cannot take holds nothing
        return []
    for doc in docs:
        obj = doc.obj
        if doc.error or not isinstance(obj, dict):
            continue
        m = obj.get("metadata")
        if isinstance(m, dict) and isinstance(obj.get("kind"), str):
            ns, name = m.get("namespace") or "", m.get("name")
            if isinstance(ns, str) and isinstance(name, (str, int, float, bool)):
                out.append([obj["kind"], ns, name])
    return out


class Index:
    """file -> (stamp, identities) for a folder, saved as JSON (best effort) at `path` between
    calls (the CLI keeps it in the lab's state dir; None: kept for this session only)."""

    def __init__(self, folder: Path, path: Path | None = None):
        self.folder = Path(folder)
        self.path = Path(path) if path else None
        self.entries: dict[str, dict] = {}
        self.parsed = 0  # files parsed by the last refresh (for tests and timing)
        self._by_name: dict | None = None  # object name -> files holding one (files_with), rebuilt on change
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") == INDEX_VERSION and data.get("folder") == str(self.folder):
                self.entries = data.get("files") or {}
        except (OSError, ValueError, AttributeError):
            pass

    def refresh(self) -> None:
        """Stat every manifest file; parse only the new and changed ones."""
        self.parsed = 0
        # strings, not a Path per file: an API write refreshes the index of a 1,000-file folder
        files = manifest._listing(self.folder) if self.folder.is_dir() else []
        base = str(self.folder)
        old, self.entries, self._by_name = self.entries, {}, None
        for d, name in files:
            rel = name if d == base else f"{d[len(base) + 1:]}/{name}" if d.startswith(base + "/") \
                else str((Path(d) / name).relative_to(self.folder))
            self._entry(f"{d}/{name}", old.get(rel), rel)

    def _entry(self, path, old: dict | None, rel: str | None = None) -> None:
        rel = rel if rel is not None else str(Path(path).relative_to(self.folder))
        self._by_name = None
        try:
            st = os.stat(path)
        except OSError:
            self.entries.pop(rel, None)
            return
        stamp = _stamp(st)
        if old and old.get("stamp") == stamp and not old.get("racy"):
            self.entries[rel] = old
            return
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device: never opened
            idents = []
        else:
            self.parsed += 1
            idents = _idents_of(Path(path))
        now_ns = time.time_ns()
        racy = now_ns - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_SECONDS * 1e9
        self.entries[rel] = {"stamp": stamp, "idents": idents, "racy": racy}

    def update(self, path: Path) -> None:
        """Index `path` again now: this session just wrote (or removed) it."""
        self._entry(Path(path), None)

    def identities(self) -> list[tuple]:
        """(kind, namespace as written, name) of every object of the folder, in file order."""
        return [tuple(i) for _, e in sorted(self.entries.items()) for i in e["idents"]]

    def files_with(self, ident: tuple, default_ns: str | None) -> list[Path]:
        try:
            if self._by_name is None:
                self._by_name = {}
                for rel, e in self.entries.items():
                    for i in e["idents"]:
                        self._by_name.setdefault(i[2], set()).add(rel)
            rels = sorted(self._by_name.get(ident[2], ()))
        except TypeError:  # a name that is no dictionary key: look at every file
            rels = sorted(self.entries)
        return [self.folder / rel for rel in rels
                if any(_same(tuple(i), ident, default_ns) for i in self.entries[rel]["idents"])]

    def save(self) -> None:
        """Best effort: a full disk or a read-only state dir only costs a re-parse next time."""
        if self.path is None:
            return
        data = {"version": INDEX_VERSION, "folder": str(self.folder), "files": self.entries}
        try:
            _write_atomic(self.path, json.dumps(data, separators=(",", ":")), mode=0o600)
        except OSError:
            pass


# -- text of a YAML stream, kept as written -----------------------------------------------
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


def _load(body: str):
    """One document with the manifest reader's loader; None when it does not parse."""
    docs = list(safeload.yaml_documents(body))
    if len(docs) != 1 or docs[0][1] is not None:  # refused by the reader: not an object we can edit
        return None
    return docs[0][0]


def _dump(obj) -> str:
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True)


def _identity(obj) -> tuple | None:
    if not isinstance(obj, dict) or "kind" not in obj:
        return None
    m = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return obj["kind"], m.get("namespace") or "", m.get("name")


def _same(a: tuple, b: tuple, default_ns: str | None) -> bool:
    """One identity? default_ns None: a cluster-scoped kind, whose namespace (if a manifest
    gives one) the API server drops, so it never tells two objects apart."""
    (kind, ns, name), (want_kind, want_ns, want_name) = a, b
    return kind == want_kind and name == want_name and (
        default_ns is None or (ns or default_ns) == (want_ns or default_ns))


def _matches(obj, ident: tuple, default_ns: str | None) -> bool:
    mine = _identity(obj)
    return mine is not None and _same(mine, ident, default_ns)


def _is_list(doc) -> bool:
    return isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc


def _write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write through a temporary file and rename, so no reader ever sees half a file; on any
    failure (a full disk) the temporary file is removed and the old file is left as it was."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kproxy-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is None:
            with contextlib.suppress(OSError):
                mode = stat.S_IMODE(path.stat().st_mode)  # an edited file keeps its mode
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise WriteError(path, e) from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


# -- a locked session on the folder -------------------------------------------------------
class Folder:
    """The folder under its lock, with its index fresh: find, upsert and remove objects."""

    def __init__(self, folder: Path, index_path: Path | None = None):
        self.folder = Path(folder)
        self.index = Index(self.folder, index_path)
        self.index.refresh()
        self.dropped: list[Path] = []  # files an upsert removed a duplicate copy of its object from

    def _each(self, ident: tuple, cluster_scoped: bool):
        """(path, chunks, chunk number, parsed document) of every document holding `ident`."""
        default_ns = None if cluster_scoped else "default"
        for path in self.index.files_with(ident, default_ns):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            chunks = _chunks(text)
            for i, (_, body) in enumerate(chunks):
                doc = _load(body)
                if _matches(doc, ident, default_ns) or (
                        _is_list(doc) and any(_matches(it, ident, default_ns) for it in doc.get("items") or [])):
                    yield path, chunks, i, doc

    def find(self, ident: tuple, cluster_scoped: bool = False) -> dict | None:
        """The object (kind, namespace, name) as the folder holds it, or None."""
        default_ns = None if cluster_scoped else "default"
        for _, _, _, doc in self._each(ident, cluster_scoped):
            if not _is_list(doc):
                return doc
            return next(it for it in doc.get("items") or [] if _matches(it, ident, default_ns))
        return None

    def _edit(self, ident: tuple, new_obj: dict | None, cluster_scoped: bool) -> dict | None:
        """Replace (or with None, remove) the object's document; returns the first old one.

        The object ends up in one place: the first document holding it is replaced, any other
        copy (a duplicate identity in another file or document) is removed and its file noted
        in `self.dropped`. Each file is rewritten once, atomically; a file left empty is removed."""
        default_ns = None if cluster_scoped else "default"
        first, edited = None, {}
        for path, chunks, i, doc in self._each(ident, cluster_scoped):
            chunks = edited.setdefault(path, chunks)
            if _is_list(doc):
                keep = []
                for it in doc.get("items") or []:
                    if not _matches(it, ident, default_ns):
                        keep.append(it)
                    elif first is None:
                        first = it
                        if new_obj is not None:
                            keep.append(new_obj)
                    elif new_obj is not None:
                        self.dropped.append(path)
                doc["items"] = keep
                chunks[i][1] = _dump(doc) if keep else ""
            elif first is None:
                first = doc
                chunks[i][1] = "" if new_obj is None else _dump(new_obj)
            else:
                chunks[i][1] = ""
                if new_obj is not None:
                    self.dropped.append(path)
        for path, chunks in edited.items():
            kept = [c for c in chunks if c[1].strip()]
            if not kept:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise WriteError(path, e) from e
            else:
                if chunks[0][0] == "" and kept[0][0].strip() == "---":
                    kept[0] = ["", kept[0][1]]  # the file did not start with `---`: keep it so
                _write_atomic(path, _join(kept))
            self.index.update(path)
        return first

    def upsert(self, obj: dict, cluster_scoped: bool = False) -> str:
        """Put `obj` into the folder: 'created', 'configured' or 'unchanged' (kubectl's words)."""
        if cluster_scoped and isinstance(obj.get("metadata"), dict) and "namespace" in obj["metadata"]:
            obj = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "namespace"}}
        ident = _identity(obj)
        old = self.find(ident, cluster_scoped)
        if old is not None:
            if old == obj:
                return "unchanged"
            self._edit(ident, obj, cluster_scoped)
            return "configured"
        kind, ns, name = ident
        stem = "-".join(str(p) for p in (kind.lower(), ns or ("" if cluster_scoped else "default"), name) if p)
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:200]
        path, n = self.folder / f"{stem}.yaml", 1
        while os.path.lexists(path):  # never overwrite another object's file (or a folder so named)
            n += 1
            path = self.folder / f"{stem}-{n}.yaml"
        _write_atomic(path, _dump(obj))
        self.index.update(path)
        return "created"

    def identities(self) -> list[tuple]:
        return self.index.identities()

    def remove(self, kind: str, namespace: str, name: str, cluster_scoped: bool = False) -> bool:
        """Remove every document holding the object; False when there was none."""
        return self._edit((kind, namespace, name), None, cluster_scoped) is not None


@contextlib.contextmanager
def session(folder: Path, index_path: Path | None = None):
    """The folder locked for a read-decide-write, its index saved at the end."""
    folder = Path(folder)
    with locked(folder):
        f = Folder(folder, index_path)
        try:
            yield f
        finally:
            f.index.save()


def upsert(folder: Path, obj: dict, cluster_scoped: bool = False, index_path: Path | None = None) -> str:
    with session(folder, index_path) as f:
        return f.upsert(obj, cluster_scoped)


def remove(folder: Path, kind: str, namespace: str, name: str, cluster_scoped: bool = False,
           index_path: Path | None = None) -> bool:
    if not Path(folder).is_dir():
        return False
    with session(folder, index_path) as f:
        return f.remove(kind, namespace, name, cluster_scoped)


def find(folder: Path, ident: tuple, cluster_scoped: bool = False, index_path: Path | None = None) -> dict | None:
    """The object (kind, namespace, name) as the folder holds it, or None."""
    if not Path(folder).is_dir():
        return None
    with session(folder, index_path) as f:
        return f.find(ident, cluster_scoped)
