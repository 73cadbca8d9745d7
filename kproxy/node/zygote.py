"""A fork server for the built-in pod server: one interpreter that has imported it, forking a
child per container instead of starting a new Python each time (issue 7: 100 pods to Ready).

A new interpreter with asyncio costs ~130 ms of CPU; a fork of this one, a few ms. The child
does what `ip netns exec NETNS unshare --uts` did for the container: its own session (so the
kubelet ends it with killpg as before), the pod's network namespace, a UTS namespace of its own
with the pod's hostname, its log file, the container's environment; then it runs the pod
server. It does not get `ip netns exec`'s /etc bind mounts (the pod's resolv.conf and hosts):
the built-in server resolves no names, and `kproxy exec` and exec probes still go through
`ip netns exec`.

Runs as ``python -S -I zygote.py`` (standard library only, the pod server beside it) and speaks
JSON lines: on stdin {"id", "netns", "hostname", "argv", "env", "log", "cwd"}; on stdout
{"id", "pid"} or {"id", "error"}, and {"exit": pid, "code": returncode} when a child ends
(negative: killed by that signal, as subprocess reports it). It ends at EOF on stdin; the
children, in their own sessions, are the kubelet's to stop.
"""
from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import podserver  # noqa: E402  (imported once, asyncio with it: what every child shares)

CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _child(req: dict, keep: set[int], started: int) -> None:
    """In the forked child: become the container, run the pod server, never return."""
    code = 0
    try:
        os.setsid()
        os.close(started)  # the zygote answers once this process leads its own group
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python starts: EPIPE, not death
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # in the state dir: root's only
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for fd in {log, null} | keep:
            if fd > 2:
                os.close(fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        ns = os.open(req["netns"], os.O_RDONLY)
        _check(_libc.setns(ns, CLONE_NEWNET), "setns")
        os.close(ns)
        _check(_libc.unshare(CLONE_NEWUTS), "unshare")
        os.environ.clear()
        os.environ.update(req.get("env") or {})
        os.chdir(req.get("cwd") or "/")
        podserver.main(["--hostname", req["hostname"], *req["argv"]])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - the container's log says why, as a crash would
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    out = os.fdopen(1, "w", buffering=1)
    buf = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.05)
        if ready:
            chunk = os.read(0, 65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                req = json.loads(line)
                r, w = os.pipe()
                try:
                    pid = os.fork()
                except OSError as e:
                    os.close(r)
                    os.close(w)
                    out.write(json.dumps({"id": req.get("id"), "error": str(e)}) + "\n")
                    continue
                if pid == 0:
                    os.close(r)
                    _child(req, {0, 1}, w)
                os.close(w)
                os.read(r, 1)  # EOF once the child called setsid: killpg(pid) works from then on
                os.close(r)
                out.write(json.dumps({"id": req.get("id"), "pid": pid}) + "\n")
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            out.write(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    main()
