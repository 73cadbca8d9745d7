"""Ways to load a restore text, timed: the Proxier's own (one ``iptables-restore --noflush``) and
faster prototypes, measured side by side inside the benchmark's own network namespaces.

Why prototypes: iptables-nft 1.8.9 (Debian 12) records every chain a restore command names in a
*sorted linked list* (nft-cache.c, cache_chain_list_insert) so it can fetch just those chains
from the kernel; each command walks that list, so one restore costs O(commands x chains) string
compares: minutes for 5,000+ Services. A command without a chain (``-S``) makes it fetch all
chains instead and skip the list (``all_chains``), which is what the "listing" prototype adds.

- ``plain``: exactly what kproxy runs (proxier.RESTORE).
- ``listing``: the same text with ``-S`` after each ``*table`` line. Still one atomic commit per
  table and byte-for-byte the same ruleset (the benchmark checks with ``iptables-save``); the cost
  is a listing of the table as it was, printed and thrown away.
- ``batched``: the per-Service chains in several smaller restores (each Service's chains
  together, in jump order), the fixed chains and deletions last. Each restore is atomic, the
  whole is not: on a live node Services switch over batch by batch.
- ``DiffRestore``: remembers each chain's rules and restores only chains whose rules changed
  (a partial sync without a rewrite of unchanged KUBE-SERVICES, etc.).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field

RESTORE = ["iptables-restore", "-w", "--noflush"]
DYNAMIC = re.compile(r"^KUBE-(SVC|SVL|EXT|FW|SEP)-")


class RestoreError(RuntimeError):
    pass


class RestoreTimeout(RestoreError):
    pass


def run_restore(text: str, timeout: float | None = None, prefix: list[str] | None = None) -> float:
    """Pipe ``text`` to iptables-restore; returns the seconds it took. A restore still running
    after ``timeout`` is killed before it commits (nothing of it is applied) and raises
    RestoreTimeout."""
    start = time.monotonic()
    proc = subprocess.Popen([*(prefix or []), *RESTORE], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(text, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise RestoreTimeout(f"iptables-restore still running after {timeout:.0f} s: killed") from None
    if proc.returncode != 0:
        raise RestoreError(f"iptables-restore failed ({proc.returncode}): {err.strip()[:500]}")
    return time.monotonic() - start


# ------------------------------------------------------------------------ parsing


@dataclass
class Table:
    name: str
    declared: list[str] = field(default_factory=list)
    rules: dict[str, list[str]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


def parse(text: str) -> list[Table]:
    """The tables of a restore text: declared chains, rules per chain (in order), deletions."""
    tables: list[Table] = []
    cur: Table | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = Table(line[1:])
            tables.append(cur)
        elif line == "COMMIT":
            cur = None
        elif cur is None:
            raise ValueError(f"line outside a table: {line[:80]}")
        elif line.startswith(":"):
            chain = line[1:].split()[0]
            cur.declared.append(chain)
        elif line.startswith("-A "):
            chain = line.split(None, 2)[1]
            cur.rules.setdefault(chain, []).append(line)
        elif line.startswith("-X "):
            cur.deleted.append(line.split()[1])
        else:
            raise ValueError(f"unexpected restore line: {line[:80]}")
    return tables


def _jump(rule: str) -> str | None:
    words = rule.split()
    for flag in ("-j", "-g"):
        if flag in words:
            i = words.index(flag)
            if i + 1 < len(words):
                return words[i + 1]
    return None


def emit(table: str, declare: list[str], rules: dict[str, list[str]], order: list[str],
         delete: list[str] = ()) -> str:
    """One table's restore block: declarations, the rules of ``order``'s chains, deletions."""
    lines = [f"*{table}", *[f":{c} - [0:0]" for c in declare]]
    for chain in order:
        lines += rules.get(chain, [])
    lines += [f"-X {c}" for c in delete]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ prototypes


def with_listing(text: str) -> str:
    """``text`` with ``-S`` after every table header (see the module docstring)."""
    out = []
    for line in text.splitlines():
        out.append(line)
        if line.startswith("*"):
            out.append("-S")
    return "\n".join(out) + "\n"


def batches(text: str, chains_per_batch: int = 2000) -> list[str]:
    """Split a restore text into restores of about ``chains_per_batch`` per-Service chains each.

    Per-Service chains are grouped by the jumps between them (a Service's SVC/SVL/EXT/FW chains
    and its SEP chains stay together); the fixed chains those groups jump to (KUBE-MARK-MASQ) come
    first, every other fixed chain, the other tables and the chain deletions come last, so no
    rule ever jumps to a chain that does not exist yet and stale chains go only once nothing
    jumps to them.
    """
    first: list[str] = []
    middle: list[str] = []
    last: list[str] = []
    for t in parse(text):
        declared_dynamic = [c for c in t.declared if DYNAMIC.match(c) and c not in t.deleted]
        if not declared_dynamic:
            last.append(emit(t.name, t.declared, t.rules, t.declared, t.deleted))
            continue
        parent = {c: c for c in declared_dynamic}

        def find(c: str) -> str:
            while parent[c] != c:
                parent[c] = parent[parent[c]]
                c = parent[c]
            return c

        needed_fixed: list[str] = []
        for c in declared_dynamic:
            for rule in t.rules.get(c, []):
                target = _jump(rule)
                if target in parent:
                    parent[find(c)] = find(target)
                elif target and target.startswith("KUBE-") and target in t.declared and target not in needed_fixed:
                    needed_fixed.append(target)
        groups: dict[str, list[str]] = {}
        for c in declared_dynamic:
            groups.setdefault(find(c), []).append(c)
        fixed = [c for c in t.declared if not DYNAMIC.match(c) and c not in t.deleted]
        early = [c for c in needed_fixed if not any(_jump(r) in parent for r in t.rules.get(c, []))]
        if early:
            first.append(emit(t.name, early, t.rules, early))
        batch: list[str] = []
        for members in groups.values():
            batch += members
            if len(batch) >= chains_per_batch:
                middle.append(emit(t.name, batch, t.rules, batch))
                batch = []
        if batch:
            middle.append(emit(t.name, batch, t.rules, batch))
        rest = [c for c in fixed if c not in early]
        last.append(emit(t.name, rest + t.deleted, t.rules, rest, t.deleted))
    return first + middle + last


class DiffRestore:
    """Restores only the chains whose rules differ from what this object last applied.

    Correct as long as the kernel still holds what was applied through it (the assumption a
    partial sync makes too): ``reset()`` (or a failed restore) makes the next call apply
    everything, as a full sync must, e.g. after someone flushed the rules.
    """

    def __init__(self, apply=None):
        self.apply = apply or (lambda text: run_restore(text))
        self.chains: dict[str, dict[str, list[str]]] | None = None
        self.gone: set[tuple[str, str]] = set()  # (table, chain) deleted through this object
        self.last_text = ""

    def reset(self) -> None:
        self.chains = None
        self.gone = set()

    def __call__(self, text: str) -> None:
        tables = parse(text)
        known = self.chains
        out = []
        for t in tables:
            mem = (known or {}).get(t.name, {})
            live = [c for c in t.declared if c not in t.deleted]
            changed = live if known is None else [c for c in live if mem.get(c) != t.rules.get(c, [])]
            deleted = [c for c in t.deleted if known is None or (t.name, c) not in self.gone]
            if changed or deleted:
                out.append(emit(t.name, changed + deleted, t.rules, changed, deleted))
        self.last_text = "".join(out)
        if not out:
            return
        try:
            self.apply(self.last_text)
        except Exception:
            self.reset()
            raise
        if self.chains is None:
            self.chains = {}
        for t in tables:
            mem = self.chains.setdefault(t.name, {})
            for c in t.declared:
                if c not in t.deleted:
                    mem[c] = list(t.rules.get(c, []))
                    self.gone.discard((t.name, c))
            for c in t.deleted:
                mem.pop(c, None)
                self.gone.add((t.name, c))


class SwitchableRestore:
    """A restore function for Proxier(restore=...) whose method can change between syncs:
    'plain' (kproxy's own), 'listing', 'batched' or 'diff'. Records the seconds of each call."""

    def __init__(self, mode: str = "plain", timeout: float | None = None, chains_per_batch: int = 2000):
        self.mode = mode
        self.timeout = timeout
        self.chains_per_batch = chains_per_batch
        self.diff = DiffRestore(apply=lambda text: run_restore(with_listing(text) if self._big(text) else text,
                                                               self.timeout))
        self.last_seconds = 0.0
        self.last_lines = 0

    @staticmethod
    def _big(text: str) -> bool:
        return text.count("\n") > 20000

    def __call__(self, text: str) -> None:
        start = time.monotonic()
        if self.mode == "plain":
            self.last_lines = text.count("\n")
            run_restore(text, self.timeout)
        elif self.mode == "listing":
            self.last_lines = text.count("\n")
            run_restore(with_listing(text), self.timeout)
        elif self.mode == "batched":
            self.last_lines = text.count("\n")
            for part in batches(text, self.chains_per_batch):
                run_restore(part, self.timeout)
        elif self.mode == "diff":
            self.diff(text)
            self.last_lines = self.diff.last_text.count("\n")
        else:
            raise ValueError(f"unknown restore mode {self.mode}")
        self.last_seconds = time.monotonic() - start
