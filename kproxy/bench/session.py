"""One benchmark run's shared state, apart from the sections that fill it (sync.py, lab.py,
dataplane.py) and the report that reads it (report.py): the arguments, the sandbox cleanup, the
time budget, the results dict with its notes, the machine it ran on, and the log line.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kproxy.bench.sandbox import Cleanup


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict:
    """What the figures were measured on: cores, CPU, memory, kernel, iptables, Debian, wrk."""
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
        mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem_kib = 0
    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else ""
    return {"nproc": out("nproc"), "kernel": out("uname", "-r"), "iptables": out("iptables", "--version"),
            "debian": debian, "cpu": model, "memory_gib": round(mem_kib / 1048576, 1),
            "python": platform.python_version(), "wrk": out("sh", "-c", "wrk -v 2>&1 | head -1")}


class Bench:
    """What every section reads and writes: ``args``, ``cleanup`` (the sandbox), ``tmp`` (a
    scratch folder removed with it), ``res`` (the results, one dict per section, and ``notes``)
    and the time budget (``left()``); a section skips or shrinks itself when it runs short."""

    def __init__(self, args: argparse.Namespace, cleanup: Cleanup):
        self.args = args
        self.cleanup = cleanup
        self.deadline = time.monotonic() + args.max_minutes * 60
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{cleanup.tag}-", dir="/tmp"))
        cleanup.paths.append(self.tmp)
        self.res: dict = {"command": "scripts/bench " + " ".join(sys.argv[1:]), "machine": machine(),
                          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sizes": args.sizes,
                          "render": {}, "sync": {}, "change": {}, "e2e": {}, "dataplane": {}, "balance": {},
                          "pods": {}, "notes": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def note(self, text: str) -> None:
        """Log ``text`` and keep it for the report's notes."""
        log(text)
        self.res["notes"].append(text)

