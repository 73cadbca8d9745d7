"""The daemon's control socket: one JSON object per line, each way (`state-dir/kproxy.sock`)."""
from __future__ import annotations

import json
import os
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


# -- is a lab's daemon alive? ---------------------------------------------------------------
PROC = "/proc"


def _proc_state(pid: int, proc: str) -> str | None:
    """The one-letter state of /proc/PID/stat (R, S, Z...), or None when there is no such pid."""
    try:
        text = Path(proc, str(pid), "stat").read_text()
    except OSError:
        return None
    _, _, rest = text.rpartition(")")  # the command may hold spaces and parentheses
    parts = rest.split()
    return parts[0] if parts else None


def cmdline(pid: int, proc: str = PROC) -> list[str]:
    try:
        raw = Path(proc, str(pid), "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _state_dir_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--state-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--state-dir="):
            return a.split("=", 1)[1]
    return None


def is_kproxy(argv: list[str]) -> bool:
    """A kproxy daemon or command: `python -m kproxy.daemon ...`, `.../kproxy up ...`."""
    return any(os.path.basename(a) == "kproxy" or a.startswith("kproxy.") for a in argv[:3])


def process_alive(pid: int, state_dir: str | None = None, proc: str = PROC) -> bool:
    """Whether `pid` is a live kproxy process (of `state_dir`, when its command line names one).

    A pid file outlives a daemon killed with -9: its pid may be a zombie nobody reaped yet
    (state Z), gone, or reused by an unrelated process. os.kill(pid, 0) says "alive" to all
    of them but the second; /proc tells them apart."""
    state = _proc_state(pid, proc)
    if state is None or state in ("Z", "X", "x"):
        return False
    argv = cmdline(pid, proc)
    if not argv:  # a kernel thread, or it just exited
        return False
    if not is_kproxy(argv):
        return False
    named = _state_dir_arg(argv)
    if state_dir is None or named is None:
        return True
    return os.path.realpath(named) == os.path.realpath(state_dir)


def pid_file_alive(path: Path, state_dir: str | None = None, proc: str = PROC) -> int | None:
    """The pid in `path` when it is a live kproxy process, else None (no file, stale, garbage)."""
    try:
        pid = int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and process_alive(pid, state_dir, proc) else None


# -- the labs of this machine: /run/kproxy/labs/<prefix> -> state dir ------------------------
REGISTRY = Path("/run/kproxy/labs")


def register(prefix: str, state_dir: str, registry: Path | None = None) -> None:
    """Note that the lab of `prefix` lives in `state_dir`, so `kproxy cleanup` can ask whether it runs."""
    reg = registry or REGISTRY
    try:
        reg.mkdir(parents=True, exist_ok=True, mode=0o700)
        (reg / prefix).write_text(json.dumps({"stateDir": os.path.realpath(state_dir)}) + "\n")
    except OSError:
        pass  # best effort: cleanup also finds a lab by its processes


def unregister(prefix: str, registry: Path | None = None) -> None:
    try:
        ((registry or REGISTRY) / prefix).unlink()
    except OSError:
        pass


def registered(registry: Path | None = None) -> dict[str, str]:
    """prefix -> state dir of every lab `up` noted (and `down` did not remove)."""
    reg = registry or REGISTRY
    out = {}
    try:
        entries = list(reg.iterdir())
    except OSError:
        return {}
    for p in entries:
        try:
            out[p.name] = json.loads(p.read_text())["stateDir"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
