"""The counters `kproxy explain` reads in nftables mode: a table of kproxy's own per node netns.

Why a table of our own: upstream's `ip kube-proxy` table has no `counter` statements and
kproxy's must stay rule for rule upstream's (and is the nftables syncer's to write), so the
counts live in `ip <lab prefix>-counters` (kproxy/nftview.py's docstring says what its set
counts and why it is keyed that way). It is made on first use (the first `explain`, `--reset`
or dashboard sample of an nftables lab) in a node's netns, never in the host's: a lab without
its own netns gets rules without counters. It lives as long as the node netns does
(`kproxy down` deletes the namespace with it); `remove()` is there for tests and by-hand cleanup.
"""
from __future__ import annotations

import subprocess

from kproxy.nftview import parse_counters

SET = "conns"
_KEY = "ct original ip daddr . meta l4proto . ip daddr . th dport"


def table_name(prefix: str) -> str:
    return f"{prefix}-counters"


def _nft(netns: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", *args], input=stdin, capture_output=True, text=True,
                          timeout=20)


def transaction(prefix: str) -> str:
    """The table: one dynamic set with a counter per element, added to by every new connection's
    first packet after DNAT (priority -5: after nat's -100, before kube-proxy's filter chains at 0
    that reject or drop what has no endpoint)."""
    t = f"ip {table_name(prefix)}"
    lines = [f"add table {t} {{ comment \"kproxy explain: new connections per (original destination, "
             "protocol, destination after DNAT, port)\" ; }",
             f"add set {t} {SET} {{ type ipv4_addr . inet_proto . ipv4_addr . inet_service ; flags dynamic ; "
             "size 65535 ; counter ; }"]
    for hook in ("forward", "input", "output"):
        lines.append(f"add chain {t} {hook} {{ type filter hook {hook} priority -5 ; }}")
        lines.append(f"add rule {t} {hook} ct state new meta l4proto {{ tcp, udp, sctp }} add @{SET} {{ {_KEY} }}")
    return "\n".join(lines) + "\n"


def ensure(netns: str, prefix: str) -> bool:
    """Make the counters table in `netns` unless it is there; True when it was made just now."""
    if _nft(netns, "list", "set", "ip", table_name(prefix), SET).returncode == 0:
        return False
    res = _nft(netns, "-f", "-", stdin=transaction(prefix))
    if res.returncode != 0:
        raise RuntimeError(f"cannot make the counters table in {netns}: {res.stderr.strip()}")
    return True


def read(netns: str, prefix: str) -> dict | None:
    """The counter elements, or None when there is no counters table."""
    res = _nft(netns, "list", "set", "ip", table_name(prefix), SET)
    return parse_counters(res.stdout) if res.returncode == 0 else None


def reset(netns: str, prefix: str, keys) -> None:
    """Delete these elements (their counts start again from zero at the next new connection)."""
    keys = list(keys)
    if not keys:
        return
    text = ", ".join(" . ".join(k) for k in keys)
    res = _nft(netns, "delete", "element", "ip", table_name(prefix), SET, f"{{ {text} }}")
    if res.returncode != 0:
        raise RuntimeError(f"cannot reset counters in {netns}: {res.stderr.strip()}")


def remove(netns: str, prefix: str) -> None:
    _nft(netns, "delete", "table", "ip", table_name(prefix))


def node_view(netns: str | None, prefix: str, make: bool = False):
    """kube-proxy's table and kproxy's counters in `netns` as explain/graph/dashboard read them
    (nftview.NftNode); `make`: make the counters table first if missing. Raises RuntimeError."""
    from kproxy.nftview import NftNode, parse_listing
    argv = (["ip", "netns", "exec", netns] if netns else []) + ["nft", "list", "table", "ip", "kube-proxy"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise RuntimeError(f"nft list table ip kube-proxy failed: {res.stderr.strip()} (is the lab's proxy running?)")
    if netns and make:
        ensure(netns, prefix)
    return NftNode(parse_listing(res.stdout), read(netns, prefix) if netns else None)
