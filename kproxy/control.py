"""The daemon's control socket: one JSON object per line, each way (`state-dir/kproxy.sock`)."""
from __future__ import annotations

import json
import socket
from pathlib import Path


def read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def request(state_dir: str, message: dict, timeout: float = 90) -> dict | None:
    """Ask the daemon of `state_dir`; None when it does not run (or does not answer)."""
    path = Path(state_dir) / "kproxy.sock"
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(message).encode() + b"\n")
            return json.loads(read_line(s))
    except (OSError, ValueError):
        return None
