"""The lab's trimmed copies of upstream data (``openapi_v1_32.json.gz``, ``protobuf_v1_32.json.gz``):
one format for both, written by the ``*_trim`` scripts a developer runs and read by the server.

Compact JSON with sorted keys, gzipped with mtime 0: re-running a trim script on the same
upstream writes the same bytes, so a regenerated file shows in git only when upstream changed.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any


def write(path: Path, doc: Any) -> int:
    """Store `doc` at `path`; the size of its JSON (before gzip), for the script's report."""
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(gzip.compress(raw, 9, mtime=0))
    return len(raw)


def read(path: Path) -> Any:
    return json.loads(gzip.decompress(path.read_bytes()))
