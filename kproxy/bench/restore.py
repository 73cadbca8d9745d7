"""Restore texts in the benchmark: timed loads into its own network namespaces, a parser, and
the listing line (see kproxy/proxy/applier.with_listing for why iptables-nft 1.8.9 needs it).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from kproxy.proxy import restoretext


RESTORE = ["iptables-restore", "-w", "--noflush"]


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


def emit(table: str, declare: list[str], rules: dict[str, list[str]], order: list[str],
         delete: list[str] = ()) -> str:
    """One table's restore block: declarations, the rules of ``order``'s chains, deletions."""
    return restoretext.text(restoretext.section(table, declare, [r for c in order for r in rules.get(c, [])],
                                                [c for c in delete if c not in declare]))
