"""Kernel I/O for the proxy, behind one small interface (Kernel): the machine's iptables.

`iptables-restore --noflush` swaps every KUBE-* chain kproxy declares in one atomic commit and
leaves every other chain alone; the machine's `iptables` (nf_tables on Debian 12) is used so
`iptables-save` shows what kproxy did. The restores' text is the Proxier's (written by
restoretext); this module runs them, lists chains, and adds what kube-proxy (and the kubelet,
for KUBE-FIREWALL) keep around them: the jumps from the built-in chains, in a real node's order,
and the canary chains; and removes it all on a host. Applier is the real Kernel;
kproxy/proxy/fake.py's FakeKernel is the unit tests' (as kube-proxy's pkg/util/iptables and its
testing/fake.go).
"""
from __future__ import annotations

import fcntl
import logging
import shutil
import subprocess
from typing import Iterable, Protocol

from kproxy.proxy import restoretext as rt

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
RESTORE = ["iptables-restore", "-w", "--noflush"]
# A restore that declares at least this many chains gets a `-S` listing line (see restore()).
LISTING_MIN_CHAINS = 500


class IptablesError(RuntimeError):
    pass


def _run(args: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise IptablesError(f"{' '.join(args[:3])} failed: {res.stderr.strip()}")
    return res


def with_listing(text: str) -> str:
    """``text`` with a chainless ``-S`` after each ``*table`` header.

    iptables-nft 1.8.9 records every chain a restore command names in a sorted linked list
    (nft-cache.c, cache_chain_list_insert) so it can fetch only those chains; each command walks
    the list, so a restore costs O(commands x named chains): 3.7 s at 1,000 Services, minutes at
    5,000. A command that names no chain makes it fetch every chain of the table once and skip
    the list. The restore stays one atomic commit per table and the resulting ruleset is the
    same (tests/integration/test_kernel_fidelity.py); the price is a listing of the table as it
    was, printed to stdout and thrown away.
    """
    return rt.text(rt.with_listing(text.splitlines()))


def restore_input(text: str, listing: bool | None = None) -> str:
    """The exact text restore() feeds to iptables-restore: with the listing line when it
    declares LISTING_MIN_CHAINS chains or more (``listing`` forces it on or off). A small
    restore skips it: listing a loaded table costs more than the walk it saves (1,000 Services:
    a one-chain restore takes 30 ms without, 380 ms with)."""
    if listing is None:
        listing = rt.declared_count(text) >= LISTING_MIN_CHAINS
    return with_listing(text) if listing else text


def restore(text: str, listing: bool | None = None) -> None:
    """``iptables-restore -w --noflush`` of ``text`` (see restore_input); stdout (the listing)
    is discarded. Raises IptablesError when it fails."""
    res = subprocess.run(RESTORE, input=restore_input(text, listing), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise IptablesError(f"{' '.join(RESTORE)} failed: {res.stderr.strip()}")


def restore_lines(lines, listing: bool) -> str:
    """Stream ``lines`` (an iterable of lines without newlines, produced while the restore
    already parses) into ``iptables-restore -w --noflush``: the caller's Python work overlaps
    iptables' parsing on another core. ``listing`` adds the ``-S`` line after each ``*table``
    header. Returns the text sent (without the listing lines); raises IptablesError."""
    proc = subprocess.Popen(RESTORE, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:  # a 1 MiB pipe (the default maximum) lets the render run further ahead of a commit
        fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    sent: list[str] = []
    chunk: list[str] = []
    try:
        try:
            for line in lines:
                sent.append(line)
                chunk.append(line)
                if line[:1] == "*" and listing:
                    chunk.append(rt.LISTING)
                if len(chunk) >= 2000 or line == rt.COMMIT:
                    proc.stdin.write(rt.text(chunk))
                    chunk = []
                    if line == rt.COMMIT:  # a section commits as soon as it is in
                        proc.stdin.flush()
            if chunk:
                proc.stdin.write(rt.text(chunk))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it failed early: its stderr says why
        err = proc.stderr.read()
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if code != 0:
        raise IptablesError(f"{' '.join(RESTORE)} failed: {err.strip()}")
    return rt.text(sent)


def have_iptables() -> bool:
    return shutil.which("iptables-restore") is not None


def save(table: str | None = None) -> str:
    args = ["iptables-save"] + (["-t", table] if table else [])
    return _run(args).stdout


def kube_chains(saved: str) -> dict[str, set[str]]:
    """KUBE-* chains per table in iptables-save output (restoretext reads the declarations)."""
    return {table: {c for c in chains if c.startswith("KUBE-")}
            for table, chains in rt.declared_chains(saved).items()}


class Kernel(Protocol):
    """The kernel I/O the proxy needs: what the Proxier and the daemon call, nothing else."""

    def restore(self, lines: Iterable[str], listing: bool | None = None, stream: bool = False) -> str:
        """``iptables-restore --noflush`` of ``lines``; returns the text sent; raises IptablesError."""

    def save(self) -> str:
        """iptables-save of every table; raises IptablesError."""

    def missing_jumps(self) -> dict[str, list[str]]:
        """Per table, the restore lines that add the missing canaries and jumps."""

    def ensure_jumps(self) -> None:
        """Add the missing canaries and jumps now."""

    def canary_present(self) -> bool:
        """Whether every canary chain is still there (nobody flushed the tables)."""

    def cleanup(self) -> None:
        """Remove every jump and KUBE-* chain."""


class Applier:
    """The real Kernel: the machine's iptables commands, in the current network namespace."""

    def restore(self, lines: Iterable[str], listing: bool | None = None, stream: bool = False) -> str:
        """``stream``: hand the lines over while they are produced (restore_lines; ``listing``
        on or off); otherwise one text (restore; ``listing`` None decides by its size)."""
        if stream:
            return restore_lines(lines, listing=bool(listing))
        text = rt.text(lines)
        restore(text, listing)
        return text

    def save(self) -> str:
        return save()

    def listed_chains(self) -> str:
        """The chains the jumps and canaries live in, as iptables-save prints them."""
        return listed_chains()

    def missing_jumps(self) -> dict[str, list[str]]:
        """The restore lines, per table, that would add the missing canaries and jumps, from a
        listing of each chain involved (iptables-save takes 0.3 s at 1,000 Services, 3.7 s at
        10,000). The Proxier puts them into a full sync's own restore."""
        return missing_jump_lines(self.listed_chains())

    def ensure_jumps(self) -> None:
        """Add the missing canary chains and jumps now (one restore at most)."""
        text = missing_jumps(self.listed_chains())
        if text:
            self.restore(text.splitlines())

    def canary_present(self) -> bool:
        """kube-proxy's flush detector: a canary chain goes when someone wipes its table."""
        return all(_run(["iptables", "-w", "-t", t, "-S", CANARY], check=False).returncode == 0 for t in TABLES)

    def cleanup(self) -> None:
        """Remove every jump and KUBE-* chain (what `kproxy down` does on a real host)."""
        for table, chain, args in JUMPS:
            while _run(["iptables", "-w", "-t", table, "-D", chain, *args], check=False).returncode == 0:
                pass
        lines = cleanup_lines(self.save())
        if lines:
            self.restore(lines)


def cleanup_lines(saved: str) -> list[str]:
    """The restore lines that flush and delete every KUBE-* chain of ``saved`` (iptables-save)."""
    chains = kube_chains(saved)
    lines: list[str] = []
    for table in TABLES:
        names = sorted(chains.get(table, ()))
        if names:
            lines += rt.section(table, deleted=names)
    return lines


def listed_chains() -> str:
    """The built-in chains that carry kproxy's jumps, and the canaries, as iptables-save would
    print them (``iptables -S CHAIN`` of each, run side by side)."""
    wanted = sorted({(t, c) for t, c, _ in JUMPS} | {(t, CANARY) for t in TABLES})
    procs = [(t, subprocess.Popen(["iptables", "-w", "-t", t, "-S", c], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)) for t, c in wanted]
    lines: dict[str, list[str]] = {t: [] for t in TABLES}
    for t, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            continue  # no such chain (a canary not there yet)
        for line in out.splitlines():
            if line.startswith("-N "):
                lines[t].append(rt.declare(line[3:]))
            elif line.startswith("-P "):
                lines[t].append(rt.declare(line.split()[1], policy=line.split()[2]))
            elif line.startswith("-A "):
                lines[t].append(line)
    return rt.text(line for t, ls in lines.items() for line in rt.section(t, rules=ls))


def _jump_present(saved_table: list[str], chain: str, args: list[str]) -> bool:
    target = args[-1]
    comment = args[args.index("--comment") + 1] if "--comment" in args else None
    return any(line.startswith(f"-A {chain} ") and line.endswith(f"-j {target}")
               and (comment is None or f'"{comment}"' in line or f" {comment} " in line)
               for line in saved_table)


def missing_jump_lines(saved: str) -> dict[str, list[str]]:
    """Per table, the restore lines that add what of CANARY and JUMPS `saved` (iptables-save)
    lacks; jumps are inserted at the top of their chain, last first, so they end up in JUMPS'
    order. They go into a table's section after the chains they jump to are declared."""
    tables: dict[str, list[str]] = {}
    table = None
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
            tables[table] = []
        elif table:
            tables[table].append(line)
    out: dict[str, list[str]] = {}
    for t in TABLES:
        lines = tables.get(t, [])
        body = [] if any(line.startswith(f":{CANARY} ") for line in lines) else [rt.declare(CANARY)]
        for tbl, chain, args in reversed(JUMPS):
            if tbl == t and not _jump_present(lines, chain, args):
                body.append(rt.insert(chain, 1, " ".join(rt.quote(a) if " " in a else a for a in args)))
        if body:
            out[t] = body
    return out


def missing_jumps(saved: str) -> str:
    """Restore text that adds what of CANARY and JUMPS `saved` lacks (see missing_jump_lines)."""
    out = [line for t, body in missing_jump_lines(saved).items() for line in rt.section(t, rules=body)]
    return rt.text(out) if out else ""


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
