"""A fake `nft` over one `ip kube-proxy` table, strict enough to catch a wrong transaction.

It keeps chains with their rules and sets/maps with their elements, applies each `nft -f`
transaction on a copy and keeps it only when every line was valid (atomic, as the kernel),
and refuses what the kernel refuses: flushing or deleting what is not there, deleting a chain
something still jumps to (a rule or a map element), a rule naming a missing chain, adding an
element whose key is there with another value, deleting an element that is not there. So the
syncer's partial transactions are checked by the state they leave, not by their text.
"""
from __future__ import annotations

import copy
import re
import subprocess

TABLE = ["ip", "kube-proxy"]


class Refused(Exception):
    pass


def parse_element(body: str) -> tuple[str, str, str]:
    """`10.0.0.1 . tcp . 80 comment "ns/x:p" : goto c` -> (key, comment, value)."""
    m = re.match(r'^(.*?)(?: comment "([^"]*)")?(?: : (.*))?$', body.strip())
    assert m, body
    return m.group(1).strip(), m.group(2) or "", (m.group(3) or "").strip()


class FakeNft:
    def __init__(self):
        self.table: dict | None = None  # {"chain": {name: [rules]}, "set": {...}, "map": {...}}
        self.calls: list[tuple[list[str], str | None]] = []
        self.fail = 0  # refuse this many `nft -f` transactions in a row
        self.refuse = None  # a callable(transaction text) -> error message or None

    # -- what tests look at -----------------------------------------------------------------
    def transactions(self) -> list[str]:
        return [stdin for argv, stdin in self.calls if argv[1:3] == ["-f", "-"]]

    def names(self, kind: str) -> set[str]:
        return set(self.table[kind]) if self.table else set()

    def state(self) -> dict:
        """Chains with their rules, sets and maps with their elements (comparable)."""
        return copy.deepcopy(self.table)

    # -- nft -------------------------------------------------------------------------------
    def __call__(self, argv: list[str], stdin: str | None) -> subprocess.CompletedProcess:
        self.calls.append((argv, stdin))
        args = argv[1:]
        ok = subprocess.CompletedProcess(argv, 0, "", "")
        if args == ["-t", "list", "table", *TABLE]:
            if self.table is None:
                return subprocess.CompletedProcess(argv, 1, "", "Error: No such file or directory")
            return subprocess.CompletedProcess(argv, 0, self.listing(("set", "map", "chain")), "")
        if args == ["delete", "table", *TABLE]:
            self.table = None
            return ok
        if args == ["-t", "-f", "-"]:  # list chains/sets/maps ip
            kinds = [line.split()[1][:-1] for line in stdin.splitlines() if line.strip()]
            return subprocess.CompletedProcess(argv, 0, "".join(self.listing((k,)) for k in kinds), "")
        assert args == ["-f", "-"], argv
        if self.fail:
            self.fail -= 1
            return subprocess.CompletedProcess(argv, 1, "", "Error: Could not process rule: File exists")
        why = self.refuse(stdin) if self.refuse else None
        if why:
            return subprocess.CompletedProcess(argv, 1, "", why)
        try:
            self.table = self.apply(stdin)
        except Refused as e:
            return subprocess.CompletedProcess(argv, 1, "", f"Error: {e}")
        return ok

    def listing(self, kinds) -> str:
        if self.table is None:
            return ""
        body = "".join(f"\t{kind} {name} {{\n\t}}\n" for kind in kinds for name in sorted(self.table[kind]))
        return "table ip kube-proxy {\n" + body + "}\n"

    def apply(self, text: str) -> dict | None:
        t = copy.deepcopy(self.table)
        for line in text.splitlines():
            if not line.strip():
                continue
            m = re.match(r"^(add|flush|delete) (table|chain|set|map|rule|element) ip kube-proxy ?(\S*) ?(.*)$", line)
            if not m:
                raise Refused(f"syntax error: {line}")
            op, kind, name, rest = m.groups()
            if kind == "table":
                if op == "add":
                    t = t or {"chain": {}, "set": {}, "map": {}}
                elif t is None:
                    raise Refused("No such file or directory (table)")
                elif op == "delete":
                    t = None
                else:
                    for rules in t["chain"].values():
                        rules.clear()
                continue
            if t is None:
                raise Refused(f"No such file or directory: {line}")
            if kind == "chain":
                if op == "add":
                    t["chain"].setdefault(name, [])
                elif name not in t["chain"]:
                    raise Refused(f"No such file or directory: {line}")
                elif op == "flush":
                    t["chain"][name].clear()
                else:
                    if self._referenced(t, name):
                        raise Refused(f"Device or resource busy: {line}")
                    del t["chain"][name]
            elif kind in ("set", "map"):
                if op == "add":
                    t[kind].setdefault(name, {})
                elif name not in t[kind]:
                    raise Refused(f"No such file or directory: {line}")
                elif op == "flush":
                    t[kind][name].clear()
                else:
                    if any(f"@{name} " in r + " " for rules in t["chain"].values() for r in rules):
                        raise Refused(f"Device or resource busy: {line}")
                    del t[kind][name]
            elif kind == "rule":
                if name not in t["chain"]:
                    raise Refused(f"No such file or directory: {line}")
                for target in re.findall(r"(?:goto|jump) (\S+)", rest):
                    if target not in t["chain"]:
                        raise Refused(f"No such file or directory (chain {target}): {line}")
                for s in re.findall(r"@(\S+)", rest):
                    if s not in t["set"] and s not in t["map"]:
                        raise Refused(f"No such file or directory (set {s}): {line}")
                t["chain"][name].append(rest)
            else:  # element
                where = t["set"].get(name, t["map"].get(name))
                if where is None:
                    raise Refused(f"No such file or directory: {line}")
                key, comment, value = parse_element(rest.strip()[1:-1])
                if op == "add":
                    if value and value.split()[-1] not in t["chain"] and value.split()[0] in ("goto", "jump"):
                        raise Refused(f"No such file or directory (chain): {line}")
                    if key in where and where[key][1] != value:
                        raise Refused(f"File exists: {line}")
                    where.setdefault(key, (comment, value))
                else:
                    if key not in where:
                        raise Refused(f"No such file or directory: {line}")
                    del where[key]
        return t

    @staticmethod
    def _referenced(t: dict, chain: str) -> bool:
        pattern = re.compile(r"(?:goto|jump) " + re.escape(chain) + r"(?:\s|$|,|\})")
        if any(pattern.search(r) for rules in t["chain"].values() for r in rules):
            return True
        return any(pattern.search(v) for m in t["map"].values() for _, v in m.values())
