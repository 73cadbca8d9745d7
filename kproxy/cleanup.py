"""`kproxy cleanup`: remove every kproxy leftover that no live lab owns, as Mininet's `mn -c`.

A lab whose state dir was deleted (or whose daemon was killed and never brought down) leaves
network namespaces, `/etc/netns/<netns>` folders (pods' resolv.conf and hosts, which keep
showing in `ip netns list`), links in the root namespace (a host-mode lab's bridge and pod
veths) and processes inside its namespaces. `kproxy down` finds them from a state dir; this
finds them by name alone: everything a lab makes is named `kp` + 4 hex digits + `-...` (see
kproxy.node.naming), or `kp` + 13 hex digits for a pod's veth.

Which labs are alive: every kproxy process that runs a lab (`python -m kproxy.daemon`, or the
`up`, `down`, `controller` and `agent` commands, also a lab half-way through `up`) names its
state dir (`--state-dir`, KPROXY_STATE_DIR in its environment, or the default), whose prefix it
owns; so does every lab noted in /run/kproxy/labs whose daemon is alive. Nothing of a prefix
that a live lab owns is touched, and the root namespace's iptables never are (a host-mode
lab's rules go with `kproxy down --state-dir DIR`).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from kproxy import control
from kproxy.config import DEFAULT_STATE_DIR, LabConfig
from kproxy.node.naming import instance_prefix

NETNS_NAME = re.compile(r"^(kp[0-9a-f]{4})-")
LINK_NAME = re.compile(r"^(kp[0-9a-f]{4})(?:-.+|[0-9a-f]{9})$")
OWNER_COMMANDS = ("up", "down", "controller", "agent")


def lab_prefix(state_dir: str) -> str:
    """The prefix of a lab's names: its saved lab_prefix (a multi-node node), else its state dir's."""
    try:
        cfg = LabConfig.load(state_dir)
    except (OSError, ValueError, TypeError):
        cfg = None
    return cfg.naming.prefix if cfg else instance_prefix(state_dir)


def _environ_state_dir(pid: int, proc: str) -> str | None:
    try:
        raw = Path(proc, str(pid), "environ").read_bytes()
    except OSError:
        return None
    for entry in raw.split(b"\0"):
        if entry.startswith(b"KPROXY_STATE_DIR="):
            return entry.split(b"=", 1)[1].decode(errors="replace") or None
    return None


def runs_a_lab(argv: list[str]) -> bool:
    """A daemon, or a command that is building, running or removing a lab."""
    if any(a == "kproxy.daemon" for a in argv[:8]):
        return True
    for i, a in enumerate(argv[:8]):  # also under `timeout`, `sudo`, `ip netns exec`
        if os.path.basename(a) == "kproxy" or a == "kproxy.cli":
            rest = [x for x in argv[i + 1:] if not x.startswith("-")]
            return bool(rest) and rest[0] in OWNER_COMMANDS
    return False


def live_state_dirs(proc: str = control.PROC) -> dict[str, str]:
    """prefix -> state dir of every lab some live kproxy process runs."""
    live = {}
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        if pid == os.getpid():
            continue
        argv = control.cmdline(pid, proc)
        if not argv or not runs_a_lab(argv) or control._proc_state(pid, proc) in (None, "Z", "X", "x"):
            continue
        state_dir = (control._state_dir_arg(argv) or _environ_state_dir(pid, proc) or DEFAULT_STATE_DIR)
        if not os.path.isabs(state_dir):  # relative to that process's working directory
            try:
                state_dir = os.path.join(os.readlink(f"{proc}/{pid}/cwd"), state_dir)
            except OSError:
                pass
        state_dir = os.path.abspath(state_dir)
        live[lab_prefix(state_dir)] = state_dir
        parent = Path(state_dir).parent.parent  # an agent's nodes/node-N: its lab's prefix too
        if Path(state_dir).parent.name == "nodes":
            live.setdefault(lab_prefix(str(parent)), str(parent))
    for prefix, state_dir in control.registered().items():
        if control.pid_file_alive(Path(state_dir) / "daemon.pid", state_dir, proc):
            live.setdefault(prefix, state_dir)
    return live


@dataclass
class Leftovers:
    """What `cleanup` would remove, by kind, in the order it removes them."""
    processes: list[tuple[int, str]] = field(default_factory=list)  # (pid, netns)
    netns: list[str] = field(default_factory=list)
    etc_netns: list[Path] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    state_files: list[Path] = field(default_factory=list)  # stale pid files, sockets, kubeconfigs
    registry: list[str] = field(default_factory=list)
    host_mode: list[str] = field(default_factory=list)  # dead host-mode labs: rules left for `down`

    def empty(self) -> bool:
        return not (self.processes or self.netns or self.etc_netns or self.links or self.state_files
                    or self.registry)


def _root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def find(only: set[str] | None = None, proc: str = control.PROC) -> tuple[Leftovers, dict[str, str]]:
    """Leftovers of labs that no live process runs (only those of the `only` prefixes, if given)."""
    from kproxy.node.network import list_netns, netns_pids
    from kproxy.node.dnsconfig import ETC_NETNS
    live = live_state_dirs(proc)

    def dead(name: str, pattern: re.Pattern = NETNS_NAME) -> bool:
        m = pattern.match(name)
        return bool(m) and m.group(1) not in live and (only is None or m.group(1) in only)

    found = Leftovers()
    found.netns = [ns for ns in list_netns() if dead(ns)]
    # pods first, a node's namespace and `outside` last, as `down` does
    found.netns.sort(key=lambda ns: re.fullmatch(r"kp[0-9a-f]{4}-(outside|node\d*)", ns) is not None)
    for ns in found.netns:
        found.processes += [(pid, ns) for pid in netns_pids(ns) if pid != os.getpid()]
    if ETC_NETNS.is_dir():
        found.etc_netns = sorted(p for p in ETC_NETNS.iterdir() if dead(p.name))
    found.links = [name for name in _root_links() if dead(name, LINK_NAME)]
    for prefix, state_dir in sorted(control.registered().items()):
        if prefix in live or (only is not None and prefix not in only):
            continue
        found.registry.append(prefix)
        sd = Path(state_dir)
        for pid_file in [sd / "daemon.pid", *sd.glob("nodes/*/daemon.pid")]:
            if pid_file.exists() and not control.pid_file_alive(pid_file, str(pid_file.parent), proc):
                found.state_files.append(pid_file)
        found.state_files += [s for s in [sd / "kproxy.sock", *sd.glob("nodes/*/kproxy.sock")] if s.exists()]
        found.state_files += [s for s in [sd / "kubeconfig"] if s.exists()]  # a dead lab's API server is gone
        cfg = LabConfig.load(state_dir) if (sd / "config.json").exists() else None
        if cfg and not cfg.sandbox:
            found.host_mode.append(state_dir)
    return found, live


def remove(found: Leftovers) -> list[str]:
    """Remove what `find` found; returns the errors (each one line)."""
    from kproxy.teardown import kill_pids
    errors = []
    kill_pids([pid for pid, _ in found.processes])
    for ns in found.netns:
        res = subprocess.run(["ip", "netns", "delete", ns], capture_output=True, text=True)
        if res.returncode != 0 and Path("/run/netns", ns).exists():
            errors.append(f"cannot remove netns/{ns}: {res.stderr.strip()}")
    for d in found.etc_netns:
        try:
            if d.is_symlink() or not d.is_dir():
                d.unlink()
            else:
                shutil.rmtree(d)
        except OSError as e:
            errors.append(f"cannot remove {d}: {e.strerror or e}")
    for link in found.links:
        res = subprocess.run(["ip", "link", "delete", link], capture_output=True, text=True)
        if res.returncode != 0 and link in _root_links():
            errors.append(f"cannot remove link/{link}: {res.stderr.strip()}")
    for f in found.state_files:
        try:
            f.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            errors.append(f"cannot remove {f}: {e.strerror or e}")
    for prefix in found.registry:
        control.unregister(prefix)
    return errors


def lines(found: Leftovers, dry_run: bool) -> list[str]:
    """kubectl-like lines: `netns/kp1a2b-node removed`, with ` (dry run)` when nothing is done."""
    tail = " (dry run)" if dry_run else ""
    out = [f"process/{pid} killed (in netns {ns}){tail}" for pid, ns in found.processes]
    out += [f"netns/{ns} removed{tail}" for ns in found.netns]
    out += [f"etc-netns/{d.name} removed{tail}" for d in found.etc_netns]
    out += [f"link/{name} removed{tail}" for name in found.links]
    out += [f"file/{f} removed{tail}" for f in found.state_files]
    out += [f"lab/{prefix} forgotten{tail}" for prefix in found.registry]
    return out
