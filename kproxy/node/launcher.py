"""The daemon's side of the pod-server fork server (zygote.py): start it once, ask it for
containers, and hand the kubelet Popen-like handles (pid, poll, wait) for them."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

ZYGOTE = str(Path(__file__).with_name("zygote.py"))


class ForkedProcess:
    """A container forked by the zygote: what the kubelet uses of subprocess.Popen."""

    def __init__(self, launcher: "Launcher", pid: int):
        self.launcher, self.pid = launcher, pid
        self.returncode: int | None = None
        self.args = ["(forked pod server)"]

    def poll(self) -> int | None:
        if self.returncode is None and not self.launcher.alive():
            # no zygote left to report its end: look for the process itself
            if not os.path.exists(f"/proc/{self.pid}"):
                self.returncode = -9
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.01)
        return self.returncode


class Launcher:
    """One zygote per kubelet, started on first use; spawn() returns a ForkedProcess."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.next_id = 0
        self.replies: dict[int, dict] = {}
        self.cond = threading.Condition()
        self.procs: dict[int, ForkedProcess] = {}
        self.early_exits: dict[int, int] = {}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-S", "-I", ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                                     umask=0o022)  # its pods get a container runtime's umask, not the daemon's 077
        threading.Thread(target=self._read, args=(self.proc,), daemon=True, name="zygote").start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                if "exit" in msg:
                    fp = self.procs.pop(msg["exit"], None)
                    if fp is not None:
                        fp.returncode = msg["code"]
                    else:  # ended before its spawn reply was handled
                        self.early_exits[msg["exit"]] = msg["code"]
                else:
                    self.replies[msg["id"]] = msg
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def spawn(self, netns: str, hostname: str, argv: list[str], env: dict, log_path: str,
              cwd: str = "/", timeout: float = 10.0) -> ForkedProcess:
        """Fork a pod server (argv: its arguments) in /run/netns/``netns``; raises OSError."""
        with self.lock:
            if not self.alive():
                self._start()
            self.next_id += 1
            ident = self.next_id
            req = {"id": ident, "netns": os.path.join("/run/netns", netns), "hostname": hostname, "argv": argv,
                   "env": env, "log": log_path, "cwd": cwd}
            try:
                self.proc.stdin.write((json.dumps(req) + "\n").encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as e:
                raise OSError(f"pod server launcher: {e}") from e
        with self.cond:
            if not self.cond.wait_for(lambda: ident in self.replies or not self.alive(), timeout):
                raise OSError("pod server launcher did not answer")
            reply = self.replies.pop(ident, None)
            if reply is None or "error" in reply:
                raise OSError(f"pod server launcher: {(reply or {}).get('error', 'it ended')}")
            fp = ForkedProcess(self, reply["pid"])
            if fp.pid in self.early_exits:
                fp.returncode = self.early_exits.pop(fp.pid)
            else:
                self.procs[fp.pid] = fp
            return fp

    def stop(self) -> None:
        """End the zygote (EOF, then a kill if it lingers); the pods it forked are not touched."""
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
