"""Programs rendered rules into the kernel through the machine's own iptables.

`iptables-restore --noflush` swaps every KUBE-* chain kproxy declares in one atomic commit and
leaves every other chain alone; the machine's `iptables` (nf_tables on Debian 12) is used so
`iptables-save` shows what kproxy did. The restores themselves are the Proxier's; this module
adds what kube-proxy (and the kubelet, for KUBE-FIREWALL) keep around them: the jumps from the
built-in chains, in a real node's order, and the canary chains; and removes it all on a host.
"""
from __future__ import annotations

import logging
import shutil
import subprocess

log = logging.getLogger(__name__)

# (table, built-in chain, rule args) in kube-proxy's order; each is prepended if missing.
JUMPS: list[tuple[str, str, list[str]]] = [
    # the order a kube-proxy node shows them in (kubelet's KUBE-FIREWALL jumps first)
    ("filter", "INPUT", ["-j", "KUBE-FIREWALL"]),
    ("filter", "INPUT", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                         "kubernetes load balancer firewall", "-j", "KUBE-PROXY-FIREWALL"]),
    ("filter", "INPUT", ["-m", "comment", "--comment", "kubernetes health check service ports",
                         "-j", "KUBE-NODEPORTS"]),
    ("filter", "INPUT", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                         "kubernetes externally-visible service portals", "-j", "KUBE-EXTERNAL-SERVICES"]),
    ("filter", "FORWARD", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                           "kubernetes load balancer firewall", "-j", "KUBE-PROXY-FIREWALL"]),
    ("filter", "FORWARD", ["-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD"]),
    ("filter", "FORWARD", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                           "kubernetes service portals", "-j", "KUBE-SERVICES"]),
    ("filter", "FORWARD", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                           "kubernetes externally-visible service portals", "-j", "KUBE-EXTERNAL-SERVICES"]),
    ("filter", "OUTPUT", ["-j", "KUBE-FIREWALL"]),
    ("filter", "OUTPUT", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                          "kubernetes load balancer firewall", "-j", "KUBE-PROXY-FIREWALL"]),
    ("filter", "OUTPUT", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                          "kubernetes service portals", "-j", "KUBE-SERVICES"]),
    ("nat", "PREROUTING", ["-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]),
    ("nat", "OUTPUT", ["-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]),
    ("nat", "POSTROUTING", ["-m", "comment", "--comment", "kubernetes postrouting rules",
                            "-j", "KUBE-POSTROUTING"]),
]
CANARY = "KUBE-PROXY-CANARY"
TABLES = ("filter", "nat", "mangle")


class IptablesError(RuntimeError):
    pass


def _run(args: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise IptablesError(f"{' '.join(args[:3])} failed: {res.stderr.strip()}")
    return res


def have_iptables() -> bool:
    return shutil.which("iptables-restore") is not None


def save(table: str | None = None) -> str:
    args = ["iptables-save"] + (["-t", table] if table else [])
    return _run(args).stdout


def kube_chains(saved: str) -> dict[str, set[str]]:
    """KUBE-* chains per table in iptables-save output."""
    out: dict[str, set[str]] = {}
    table = None
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
            out.setdefault(table, set())
        elif line.startswith(":KUBE-") and table:
            out[table].add(line[1:].split()[0])
    return out


class Applier:
    """What kproxy adds around the Proxier's restores: jumps, canaries, and their removal."""

    def ensure_jumps(self) -> None:
        """Add the missing canary chains and jumps: one iptables-save, at most one restore."""
        text = missing_jumps(save())
        if text:
            _run(["iptables-restore", "-w", "--noflush"], stdin=text)

    def canary_present(self) -> bool:
        """kube-proxy's flush detector: a canary chain goes when someone wipes its table."""
        return all(_run(["iptables", "-w", "-t", t, "-S", CANARY], check=False).returncode == 0 for t in TABLES)

    def cleanup(self) -> None:
        """Remove every jump and KUBE-* chain (what `kproxy down` does on a real host)."""
        for table, chain, args in JUMPS:
            while _run(["iptables", "-w", "-t", table, "-D", chain, *args], check=False).returncode == 0:
                pass
        chains = kube_chains(save())
        lines = []
        for table in TABLES:
            names = sorted(chains.get(table, ()))
            if names:
                lines += [f"*{table}", *[f":{c} - [0:0]" for c in names], *[f"-X {c}" for c in names], "COMMIT"]
        if lines:
            _run(["iptables-restore", "-w", "--noflush"], stdin="\n".join(lines) + "\n")


def _jump_present(saved_table: list[str], chain: str, args: list[str]) -> bool:
    target = args[-1]
    comment = args[args.index("--comment") + 1] if "--comment" in args else None
    return any(line.startswith(f"-A {chain} ") and line.endswith(f"-j {target}")
               and (comment is None or f'"{comment}"' in line or f" {comment} " in line)
               for line in saved_table)


def missing_jumps(saved: str) -> str:
    """Restore text that adds what of CANARY and JUMPS `saved` (iptables-save) lacks; jumps are
    inserted at the top of their chain, last first, so they end up in JUMPS' order."""
    tables: dict[str, list[str]] = {}
    table = None
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
            tables[table] = []
        elif table:
            tables[table].append(line)
    out = []
    for t in TABLES:
        lines = tables.get(t, [])
        body = [] if any(line.startswith(f":{CANARY} ") for line in lines) else [f":{CANARY} - [0:0]"]
        for tbl, chain, args in reversed(JUMPS):
            if tbl == t and not _jump_present(lines, chain, args):
                body.append(f"-I {chain} 1 " + " ".join(f'"{a}"' if " " in a else a for a in args))
        if body:
            out += [f"*{t}", *body, "COMMIT"]
    return "\n".join(out) + "\n" if out else ""


def owned_lines(saved: str, chains: set[str] | None = None, mention: str | None = None) -> str:
    """iptables-save text reduced to KUBE-* chains, or to one Service's `chains` and the rules
    that jump to them or name it (`mention`, "ns/name") in their comment."""
    out = []
    keep = (lambda c: c in chains) if chains is not None else (lambda c: c.startswith("KUBE-"))
    for line in saved.splitlines():
        if line.startswith(("*", "COMMIT")):
            out.append(line)
        elif line.startswith(":"):
            if keep(line[1:].split()[0]):
                out.append(line)
        elif line.startswith("-A "):
            parts = line.split()
            target = parts[parts.index("-j") + 1] if "-j" in parts else None
            named = mention is not None and (f'"{mention}:' in line or f" {mention}:" in line
                                              or f'"{mention} ' in line)
            if keep(parts[1]) or (chains is not None and ((target and keep(target)) or named)):
                out.append(line)
    # drop tables with nothing of ours
    result, block = [], []
    for line in out:
        block.append(line)
        if line == "COMMIT":
            if len(block) > 2:
                result.extend(block)
            block = []
    return "\n".join(result) + ("\n" if result else "")
