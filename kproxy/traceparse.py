"""Pure parsing for `kproxy trace`: xtables-monitor --trace text (iptables mode) or `nft monitor
trace` text (nftables mode) into the same packets, hops and events, then numbered steps;
conntrack -L text into tuples. No root, no lab: unit-tested on captured text.

One shape for both modes, so explain/graph/dashboard and the text walk read either: an Event is
(table, chain, kind, verdict, rule) with the iptables table name (nat/filter: for nftables the
type of the base chain the packet is in), the verdict as xtables-monitor words it (ACCEPT, DROP,
JUMP:CHAIN, GOTO:CHAIN, ...) and the rule as the tool prints it (`-A ...` or nft's rule text).
walk() then reads the rule with the mode's vocabulary (explain.explain_rule or nftview)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from kproxy.explain import Rule, Saved, explain_rule
from kproxy.proxy import chains as ch

# NF verdicts xtables-monitor prints as numbers.
_VERDICTS = {"0xfffffffb": "RETURN", "0xffffffff": "CONTINUE", "0xfffffffe": "BREAK"}


@dataclass
class Event:
    """One TRACE line: a rule (or a chain's policy/return) the packet met."""

    table: str
    chain: str
    kind: str  # rule | policy | return
    verdict: str  # ACCEPT, DROP, CONTINUE, RETURN, JUMP:CHAIN, GOTO:CHAIN, ...
    rule: str  # "-A CHAIN ..." (empty for a policy)


@dataclass
class Hop:
    """A packet as one hook saw it (a PACKET line) and the rules it met there."""

    fields: dict[str, str]
    flags: list[str]
    events: list[Event] = field(default_factory=list)


@dataclass
class Packet:
    """One packet of the flow, from the raw table on: the hooks it went through on one node."""

    hops: list[Hop] = field(default_factory=list)

    @property
    def first(self) -> dict[str, str]:
        return self.hops[0].fields if self.hops else {}

    def summary(self) -> str:
        f = self.first
        flags = " ".join(self.hops[0].flags) if self.hops else ""
        where = f" in {f['IN']}" if f.get("IN") else (f" out {f['OUT']}" if f.get("OUT") else "")
        return f"{f.get('SRC')}:{f.get('SPORT')} -> {f.get('DST')}:{f.get('DPORT')} {flags}{where}".replace("  ", " ")


def _packet_line(line: str) -> Hop:
    fields, flags = {}, []
    for word in line.split()[3:]:
        k, eq, v = word.partition("=")
        if eq:
            fields[k] = v
        elif word.isupper():
            flags.append(word)
    return Hop(fields, flags)


def _trace_line(line: str) -> tuple[str, str, str, str, str] | None:
    """` TRACE: 2 ID table:chain:rule:0xHANDLE:VERDICT[:TARGET]  -4 -t table -A ...` (or
    `table:chain:policy:VERDICT`, `table:chain:return:...`) into (table, chain, kind, verdict, rule)."""
    words = line.split(None, 4)
    if len(words) < 4 or words[0] != "TRACE:":
        return None
    parts = words[3].split(":")
    if len(parts) < 3:
        return None
    table, chain, kind, rest = parts[0], parts[1], parts[2], parts[3:]
    if kind == "rule" and rest and rest[0].startswith("0x"):
        rest = rest[1:]  # the rule's handle
    verdict = ":".join(rest)
    verdict = _VERDICTS.get(verdict, verdict) or ("RETURN" if kind == "return" else "")
    rule = re.sub(r"^-4 -t \S+ ", "", words[4].strip()) if len(words) > 4 and kind == "rule" else ""
    return table, chain, kind, verdict, rule


def parse_monitor(text: str, port: int, trace_chain: str) -> list[Packet]:
    """xtables-monitor --trace output into the packets of the flow whose probe used source port
    `port`: a packet starts where our TRACE rule (raw table) caught it."""
    packets: list[Packet] = []
    hop: Hop | None = None
    for line in text.splitlines():
        if line.startswith("PACKET:"):
            hop = _packet_line(line)
            if str(port) not in (hop.fields.get("SPORT"), hop.fields.get("DPORT")):
                hop = None  # another flow's packet (a concurrent trace)
            continue
        ev = _trace_line(line)
        if ev is None or hop is None:
            continue
        table, chain, kind, verdict, rule = ev
        if table == "raw":
            if chain != trace_chain:
                continue  # raw PREROUTING/OUTPUT's policy: nothing of Kubernetes
            # our TRACE rule: a new packet starts
            packets.append(Packet())
            hop = Hop(hop.fields, hop.flags)
            packets[-1].hops.append(hop)
            continue
        if not packets:
            continue
        if not packets[-1].hops or packets[-1].hops[-1] is not hop:
            packets[-1].hops.append(hop)
        hop.events.append(Event(table, chain, kind, verdict, rule if kind == "rule" else ""))
    return packets


_TUPLE = re.compile(r"src=(\S+) dst=(\S+)(?: sport=(\d+) dport=(\d+))?")


def parse_conntrack(text: str) -> list[dict]:
    """`conntrack -L` lines into {proto, state, original, reply, flags}."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or not words[1].isdigit():
            continue
        tuples = [dict(zip(("src", "dst", "sport", "dport"), m.groups())) for m in _TUPLE.finditer(line)]
        if len(tuples) < 2:
            continue
        state = words[3] if len(words) > 3 and words[3].isupper() and "=" not in words[3] else ""
        out.append({"proto": words[0], "state": state, "original": tuples[0], "reply": tuples[1],
                    "flags": re.findall(r"\[(\w+)\]", line)})
    return out


def conntrack_line(e: dict) -> str:
    o, r = e["original"], e["reply"]
    return (f"{e['proto']} {e['state'] or ''} original {o['src']}:{o['sport']} -> {o['dst']}:{o['dport']}, "
            f"reply {r['src']}:{r['sport']} -> {r['dst']}:{r['dport']}"
            + (f" [{', '.join(e['flags'])}]" if e["flags"] else "")).replace("  ", " ")


def _who(ip: str, pods_by_ip: dict[str, dict]) -> str:
    p = pods_by_ip.get(ip)
    return f"pod {p['name']} on {p['node']}" if p else "no pod known by that IP"


def _decision() -> dict:
    """What a walk decided, before it has seen anything (walk's docstring says each key)."""
    return {"dnat": None, "pod": None, "masquerade": False, "mark_reason": None, "verdict": None,
            "refusal": None, "choice": None}


def _rule_events(packet: Packet, steps: list[dict], out: dict):
    """(hop, index in the hop, event, its step) for each rule a packet met, whichever the mode;
    a chain's end (policy, return) is a step too, added here, so each walker reads rules only."""
    for hop in packet.hops:
        f = hop.fields
        for i, ev in enumerate(hop.events):
            step = {"table": ev.table, "chain": ev.chain, "rule": ev.rule, "verdict": ev.verdict,
                    "packet": f"{f.get('SRC')}:{f.get('SPORT')} -> {f.get('DST')}:{f.get('DPORT')}",
                    "in": f.get("IN") or "", "out": f.get("OUT") or ""}
            if ev.kind != "rule":
                step["explanation"] = f"end of {ev.chain}: {ev.kind} {ev.verdict}"
                if ev.kind == "policy" and ev.verdict == "DROP":
                    out["verdict"] = "DROP"
                steps.append(step)
                continue
            yield hop, i, ev, step


def _dnat(dest: str, step: dict, out: dict, pods_by_ip: dict[str, dict]) -> None:
    """A DNAT rule met: the destination it chose, and the pod behind it, named in the step."""
    out["dnat"] = dest
    out["pod"] = pods_by_ip.get(dest.rpartition(":")[0])
    step["explanation"] += f": {_who(dest.rpartition(':')[0], pods_by_ip)}"


def walk(packet: Packet, saved: Saved, pods_by_ip: dict[str, dict]) -> tuple[list[dict], dict]:
    """The numbered steps of one packet, and what they decided: {dnat, pod, masquerade, reason,
    verdict, refusal, choice}. `saved` (iptables-save of the node) supplies the rules the trace
    does not print: the random rolls that said no before the one taken."""
    if not isinstance(saved, Saved):  # an nftables node: nftview.Listing
        return walk_nft(packet, saved, pods_by_ip)
    steps, out = [], _decision()
    for hop, i, ev, step in _rule_events(packet, steps, out):
        rule = Rule(ev.table, ev.chain, ev.rule)
        step["explanation"] = explain_rule(rule)
        t = rule.target or ""
        if ev.chain.startswith((ch.SVC_PREFIX, ch.SVL_PREFIX)) and t.startswith(ch.SEP_PREFIX):
            skipped = []
            for r in saved.chain("nat", ev.chain):
                if r.text == ev.rule:
                    break
                if r.option("--probability") and (r.target or "").startswith(ch.SEP_PREFIX):
                    skipped.append({"rule": r.text, "probability": float(r.option("--probability")),
                                    "taken": False})
                    steps.append({"table": "nat", "chain": ev.chain, "rule": r.text, "verdict": "no match",
                                  "explanation": f"random roll said no: not {r.comment.split('-> ')[-1]}",
                                  "packet": step["packet"], "in": step["in"], "out": step["out"], "not_met": True})
            p = rule.option("--probability")
            # sessionAffinity ClientIP: a `-m recent --rcheck` rule before the rolls sent a known
            # client back to its endpoint; no dice were rolled
            out["choice"] = {"chain": ev.chain, "taken": ev.rule, "probability": float(p) if p else None,
                             "rolled_no": skipped, "affinity": "--rcheck" in ev.rule.split()}
        if t == "DNAT":
            _dnat(rule.option("--to-destination") or "", step, out, pods_by_ip)
        if t == ch.KUBE_MARK_MASQ:
            out["mark_reason"] = step["explanation"]
        if t == "MASQUERADE":
            out["masquerade"] = True
        if t in ("REJECT", "DROP"):
            step["verdict"] = t  # the kernel reports a REJECT as DROP (plus an ICMP error sent back)
            out["verdict"] = t
            out["refusal"] = step["explanation"]
        steps.append(step)
        jumped = ev.verdict.partition(":")[2]
        after = hop.events[i + 1] if i + 1 < len(hop.events) else None
        watched = ch.is_service_chain(jumped) or (ev.table == "nat" and jumped in (ch.KUBE_SERVICES,
                                                                                   ch.KUBE_NODEPORTS))
        if ev.verdict.startswith("JUMP:") and watched and (after is None or after.chain != jumped):
            # The kernel prints nothing for a chain none of whose rules matched: say so.
            why = {ch.KUBE_SERVICES: " (the destination is no Service address: not DNATed here)",
                   ch.KUBE_NODEPORTS: " (no NodePort of that number)"}.get(jumped, "")
            if jumped.startswith(ch.EXT_PREFIX):
                why = " (not DNATed)"
            steps.append({**step, "chain": jumped, "rule": "", "verdict": "no match", "not_met": True,
                          "explanation": f"no rule of {jumped} matched this packet: back to {ev.chain}{why}"})
    return steps, out


# -- nftables mode: `nft monitor trace` ------------------------------------------------------
_NFT_LINE = re.compile(r"^trace id (\S+) (\S+) (\S+) (\S+) (packet|rule|policy|verdict):? ?(.*)$")
_NFT_VERDICTS = {"accept": "ACCEPT", "drop": "DROP", "continue": "CONTINUE", "return": "RETURN", "queue": "QUEUE"}
_TCP_FLAGS = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"))


def _nft_verdict(text: str) -> str:
    """`jump services` -> JUMP:services, `goto X` -> GOTO:X, `accept` -> ACCEPT."""
    word, _, rest = text.strip().partition(" ")
    if word in ("jump", "goto"):
        return f"{word.upper()}:{rest}"
    return _NFT_VERDICTS.get(word, text.strip().upper())


def _nft_packet(text: str) -> Hop:
    """A `packet:` line's fields in xtables-monitor's names (IN, OUT, SRC, DST, PROTO, SPORT, DPORT)."""
    fields, flags = {}, []
    for name, key in (("iif", "IN"), ("oif", "OUT")):
        m = re.search(rf'\b{name} "([^"]+)"', text)
        if m:
            fields[key] = m.group(1)
    for name, key in (("saddr", "SRC"), ("daddr", "DST")):
        m = re.search(rf"\bip {name} (\S+)", text)
        if m:
            fields[key] = m.group(1)
    m = re.search(r"\b(tcp|udp|sctp) sport (\d+) \1 dport (\d+)", text)
    if m:
        fields["PROTO"], fields["SPORT"], fields["DPORT"] = m.group(1), m.group(2), m.group(3)
    m = re.search(r"\btcp flags == (\S+)", text)
    if m:
        word = m.group(1)
        bits = int(word, 16) if word.startswith("0x") else sum(b for b, nm in _TCP_FLAGS if nm.lower() in word.split("|"))
        flags = [nm for b, nm in _TCP_FLAGS if bits & b]
    return Hop(fields, flags)


def parse_nft_monitor(text: str, port: int, trace_table: str, table: str = "kube-proxy") -> list[Packet]:
    """`nft monitor trace` output into the packets of the flow whose probe used source port
    `port`: a packet starts where the rule of our trace table (`trace_table`, hooked before
    kube-proxy's chains) set nftrace on it; its hops are the base chains of `table` it met."""
    from kproxy.nftview import BASE_TYPES
    packets: list[Packet] = []
    ours: set[str] = set()
    hop: Hop | None = None
    pending: Hop | None = None
    for line in text.splitlines():
        m = _NFT_LINE.match(line.strip())
        if not m:
            continue
        tid, _family, tbl, chain, kind, rest = m.groups()
        if tbl == trace_table:
            if kind == "packet":
                pending = _nft_packet(rest)
            elif kind == "rule" and pending is not None:
                ours.add(tid)
                packets.append(Packet([Hop(pending.fields, pending.flags)]))
                hop = None
            continue
        if tbl != table:
            hop = None if kind == "packet" else hop
            continue
        if kind == "packet":
            new = _nft_packet(rest)
            mine = tid in ours or str(port) in (new.fields.get("SPORT"), new.fields.get("DPORT"))
            hop = None
            if mine and packets:
                new.fields["HOOK"] = chain
                hop = new
                packets[-1].hops.append(hop)
            continue
        if hop is None:
            continue
        kind_type = BASE_TYPES.get(hop.fields.get("HOOK", ""), "nat")
        if kind == "rule":
            rule, _, verdict = rest.rpartition(" (verdict ")
            hop.events.append(Event(kind_type, chain, "rule", _nft_verdict(verdict.rstrip(")")), rule.strip()))
        else:  # "policy accept" / "verdict continue" (a chain that returned)
            hop.events.append(Event(kind_type, chain, "policy" if kind == "policy" else "return",
                                    _nft_verdict(rest), ""))
    return packets


def walk_nft(packet: Packet, listing, pods_by_ip: dict[str, dict]) -> tuple[list[dict], dict]:
    """walk() for the nftables mode: the same steps and decision, read with nftview's words;
    a map lookup names the element the packet matched (`listing`: nftview.Listing)."""
    from kproxy import nftview as nv
    from kproxy.proxy.nft import names as n
    steps, out = [], _decision()
    for hop, i, ev, step in _rule_events(packet, steps, out):
        f = hop.fields
        rule, target = ev.rule, ev.verdict.partition(":")[2]
        step["explanation"] = nv.explain_rule(ev.chain, rule)
        if "vmap @" in rule and not rule.startswith("numgen"):
            map_name = rule.split("vmap @", 1)[1].split()[0]
            element = listing.element(map_name, f.get("DST"), f.get("PROTO"), f.get("DPORT"))
            if element is not None:
                step["element"] = element.text
                step["explanation"] = nv.explain_element(element)
                if map_name in (n.NO_ENDPOINT_SERVICES_MAP, n.NO_ENDPOINT_NODEPORTS_MAP):
                    out["refusal"] = step["explanation"]
            if ev.verdict == "DROP":
                out["verdict"] = "DROP"
                out["refusal"] = out["refusal"] or step["explanation"]
        elif rule.startswith("numgen random"):
            c = nv.numgen_choice(rule, target)
            out["choice"] = {"chain": ev.chain, "taken": rule, "probability": c["probability"], "rolled_no": [],
                             "affinity": False, "numgen": c["numgen"], "endpoint": nv.endpoint_of(target)}
        elif rule.startswith("ip saddr @") and target.startswith(n.ENDPOINT_PREFIX):
            out["choice"] = {"chain": ev.chain, "taken": rule, "probability": None, "rolled_no": [],
                             "affinity": True, "endpoint": nv.endpoint_of(target)}
        if "dnat to " in rule:
            _dnat(rule.split("dnat to ", 1)[1].split()[0], step, out, pods_by_ip)
        if target == n.MARK_MASQ_CHAIN:
            out["mark_reason"] = step["explanation"]
        if rule.startswith("masquerade"):
            out["masquerade"] = True
        if ev.chain == n.REJECT_CHAIN or (ev.chain == n.CLUSTER_IPS_CHECK_CHAIN and "reject" in rule):
            step["verdict"] = "REJECT"  # the kernel reports a reject as drop (plus the ICMP error it sent)
            out["verdict"] = "REJECT"
            out["refusal"] = out["refusal"] or step["explanation"]
        elif ev.verdict == "DROP" and "vmap @" not in rule:
            out["verdict"] = "DROP"
            out["refusal"] = out["refusal"] or step["explanation"]
        steps.append(step)
        after = hop.events[i + 1] if i + 1 < len(hop.events) else None
        checks = {n.FIREWALL_CHECK_CHAIN: " (no element of firewall-ips: no loadBalancerSourceRanges apply)",
                  n.SERVICE_ENDPOINTS_CHECK_CHAIN: " (no element of no-endpoint-services for this destination)",
                  n.NODEPORT_ENDPOINTS_CHECK_CHAIN: " (no element of no-endpoint-nodeports for this port)",
                  n.CLUSTER_IPS_CHECK_CHAIN: " (the destination is no ClusterIP left undNATed)"}
        watched = n.is_service_chain(target) or target == n.SERVICES_CHAIN or target in checks
        if ev.verdict.startswith(("JUMP:", "GOTO:")) and watched and (after is None or after.chain != target):
            # the kernel prints nothing for a chain none of whose rules matched: say so
            why = (" (the destination is no Service address: not DNATed here)" if target == n.SERVICES_CHAIN
                   else " (not DNATed)" if target.startswith(n.EXTERNAL_PREFIX) else checks.get(target, ""))
            back = ev.chain if ev.verdict.startswith("JUMP:") else "the base chain"
            steps.append({**step, "chain": target, "rule": "", "verdict": "no match", "not_met": True,
                          "element": None,
                          "explanation": f"no rule of {target} matched this packet: back to {back}{why}"})
    return steps, out
