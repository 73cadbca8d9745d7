"""`nft list table ip kube-proxy` as `kproxy rules svc/NAME` shows it: only one Service's part.

A node in nftables mode keeps a Service's rules in its own chains (service-, external-,
endpoint-, ...), its ClientIP affinity sets, and elements of the shared verdict maps
(service-ips, service-nodeports, no-endpoint-services, ...). filtered() keeps those blocks of
the kernel's listing, and of the shared sets and maps only the elements that name one of the
Service's chains or carry its comment ("ns/name/..."), in the listing's own format.
"""

from __future__ import annotations

import re


def _blocks(listing: str) -> list[tuple[str, str, list[str]]]:
    """(kind, name, body lines) of each set, map and chain of a one-table listing."""
    out: list[tuple[str, str, list[str]]] = []
    current: tuple[str, str, list[str]] | None = None
    for line in listing.splitlines():
        m = re.match(r"^\t(set|map|chain) (\S+) \{$", line)
        if m:
            current = (m.group(1), m.group(2), [])
            out.append(current)
        elif line == "\t}":
            current = None
        elif current is not None:
            current[2].append(line)
    return out


def _elements(body: list[str]) -> tuple[list[str], list[str]]:
    """A set's or map's declaration lines, and its elements (one string each)."""
    head, text, inside = [], "", False
    for line in body:
        s = line.strip()
        if s.startswith("elements = {"):
            inside, s = True, s[len("elements = {"):]
        if inside:
            text += " " + s
            if text.rstrip().endswith("}"):
                inside = False
        else:
            head.append(line)
    text = text.strip()
    if text.endswith("}"):
        text = text[:-1]
    return head, [e.strip() for e in text.split(",") if e.strip()]


def filtered(listing: str, chains: set[str], sets: set[str], mention: str) -> str:
    """The part of ``listing`` (nft list table) that belongs to one Service: its ``chains`` and
    ``sets`` whole, and the shared sets' and maps' elements naming them or ``mention`` ("ns/name")."""
    names = re.compile(r"(?:goto|jump) (\S+)")
    comment = re.compile(r'comment "%s[":/]' % re.escape(mention))
    out = []
    header = next((line for line in listing.splitlines() if line.startswith("table ")), "table ip kube-proxy {")
    for kind, name, body in _blocks(listing):
        if kind == "chain":
            if name in chains:
                out.append((kind, name, body))
            continue
        if name in sets:
            out.append((kind, name, body))
            continue
        head, elements = _elements(body)
        mine = [e for e in elements if any(m in chains for m in names.findall(e)) or comment.search(e)]
        if mine:
            out.append((kind, name, head + [f"\t\telements = {{ {', '.join(mine)} }}"]))
    text = [header]
    for i, (kind, name, body) in enumerate(out):
        if i:
            text.append("")
        text += [f"\t{kind} {name} {{", *body, "\t}"]
    text.append("}")
    return "\n".join(text) + "\n"
