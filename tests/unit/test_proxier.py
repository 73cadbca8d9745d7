"""Proxier: partial syncs as upstream's syncProxyRules does them, on a fake kernel.

The core case is a port of upstream's TestSyncProxyRulesRepeated (pkg/proxy/iptables/
proxier_test.go): the same objects, the same sequence of changes, the same expected restore
inputs, compared after upstream's sort. The one deliberate difference: when nothing changed,
upstream still restores the fixed chains, kproxy restores nothing.
"""

from __future__ import annotations

import copy
import subprocess
from textwrap import dedent

import pytest

from kproxy.proxy import chains
from kproxy.proxy.applier import IptablesError
from kproxy.proxy.conntrack import Conntrack
from kproxy.proxy.fake import FakeKernel
from kproxy.proxy.model import LARGE_CLUSTER_ENDPOINTS_THRESHOLD
from kproxy.proxy.proxier import Proxier
from kproxy.proxy.render import ProxyConfig, render
from kproxy.proxy.sorting import sort_restore_text

CONFIG = ProxyConfig(cluster_cidr="10.0.0.0/8", node_name="test-node", node_ips=["192.168.0.2"])


# ------------------------------------------------------------------ fakes


class FakeConntrackRun:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str]) -> subprocess.CompletedProcess:
        self.calls.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")


class Lab:
    """A Proxier wired to fakes, plus the objects it syncs. ``jumps``: the fake kernel starts
    with kube-proxy's jumps and canaries (so a first sync has none to add)."""

    def __init__(self, jumps: bool = True, **config) -> None:
        self.kernel = FakeKernel(jumps=jumps)
        self.conntrack_run = FakeConntrackRun()
        self.services: dict[str, dict] = {}
        self.slices: dict[str, dict] = {}
        self.cfg = ProxyConfig(**{**vars(CONFIG), **config})
        self.proxier = Proxier(self.cfg, self.kernel, Conntrack(run=self.conntrack_run))

    def add(self, *objects: dict) -> None:
        for obj in objects:
            store = self.services if obj["kind"] == "Service" else self.slices
            store[f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"] = obj

    def delete(self, kind: str, key: str) -> None:
        (self.services if kind == "Service" else self.slices).pop(key)

    def sync(self, full: bool = False):
        return self.proxier.sync(list(self.services.values()), list(self.slices.values()), full=full)

    @property
    def text(self) -> str:
        return self.kernel.restores[-1]

    def full_render_state(self) -> dict[str, dict[str, list[str]]]:
        """What a full render restored into a fresh kernel, plus the jumps, would leave."""
        fresh = FakeKernel(jumps=True)
        fresh.restore(render(list(self.services.values()), list(self.slices.values()), self.cfg).text.splitlines())
        return fresh.tables


def service(ns: str, name: str, ip: str, port: int, *, protocol="TCP", port_name="p", **spec) -> dict:
    ports = [{"name": port_name, "port": port, "protocol": protocol}]
    if "nodePort" in spec:
        ports[0]["nodePort"] = spec.pop("nodePort")
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports, **spec}}


def endpoint_slice(ns: str, name: str, port: int, *ips: str, protocol="TCP", port_name="p", **conditions) -> dict:
    return {
        "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-1", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": protocol}],
        "endpoints": [{"addresses": [ip], **({"conditions": conditions} if conditions else {})} for ip in ips],
    }


def assert_rules(expected: str, got: str) -> None:
    assert sort_restore_text(got) == sort_restore_text(dedent(expected))


def assert_partial(expected: str, lab: "Lab") -> None:
    """A partial sync against upstream's restore input for it: the kernel ends up as after a full
    sync (which is what upstream's restore leads to), kproxy declares no Service chain upstream
    would not (only those whose rules changed) and deletes the same ones; it edits the fixed
    chains in place instead of rewriting them."""
    exp = dedent(expected)
    assert service_chains_in(lab.text) <= service_chains_in(exp)
    assert deleted(lab.text) == deleted(exp)
    assert not declared(lab.text) & FIXED_CHAINS
    assert lab.kernel.tables == lab.full_render_state()


def deleted(text: str) -> set[str]:
    return {line.split()[1] for line in text.splitlines() if line.startswith("-X ")}


def declared(text: str) -> set[str]:
    return {line[1:].split()[0] for line in text.splitlines() if line.startswith(":")}


def service_chains_in(text: str) -> set[str]:
    return {c for c in declared(text) if chains.is_service_chain(c)}


FILTER = """\
    *filter
    :KUBE-NODEPORTS - [0:0]
    :KUBE-SERVICES - [0:0]
    :KUBE-EXTERNAL-SERVICES - [0:0]
    :KUBE-FIREWALL - [0:0]
    :KUBE-FORWARD - [0:0]
    :KUBE-PROXY-FIREWALL - [0:0]
    -A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
    -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
    -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
    -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
    COMMIT
"""
NAT_HEAD = """\
    *nat
    :KUBE-NODEPORTS - [0:0]
    :KUBE-SERVICES - [0:0]
    :KUBE-MARK-MASQ - [0:0]
    :KUBE-POSTROUTING - [0:0]
"""
NAT_FIXED = """\
    -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
    -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
    -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
    -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
    -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
"""
SVC1 = '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O\n'
SVC2 = '-A KUBE-SERVICES -m comment --comment "ns2/svc2:p8080 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 8080 -j KUBE-SVC-2VJB64SDSIJUP5T6\n'
SVC3 = '-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK\n'
SVC4 = '-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK\n'


def _text(*parts: str) -> str:
    return "".join(dedent(p) if p.startswith("    ") else p for p in parts)


# ------------------------------------------------ upstream TestSyncProxyRulesRepeated


def test_sync_proxy_rules_repeated_like_upstream():
    lab = Lab()
    lab.add(
        service("ns1", "svc1", "172.30.0.41", 80, port_name="p80"),
        service("ns2", "svc2", "172.30.0.42", 8080, port_name="p8080"),
        endpoint_slice("ns1", "svc1", 80, "10.0.1.1", port_name="p80"),
        endpoint_slice("ns2", "svc2", 8080, "10.0.2.1", port_name="p8080"),
    )
    first = lab.sync()
    assert first.full and first.applied
    assert_rules(_text(FILTER, NAT_HEAD, """\
        :KUBE-SEP-SNQ3ZNILQDEJNDQO - [0:0]
        :KUBE-SEP-UHEGFW77JX3KXTOV - [0:0]
        :KUBE-SVC-2VJB64SDSIJUP5T6 - [0:0]
        :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
        """, SVC1, SVC2, NAT_FIXED, """\
        -A KUBE-SEP-SNQ3ZNILQDEJNDQO -m comment --comment ns1/svc1:p80 -s 10.0.1.1 -j KUBE-MARK-MASQ
        -A KUBE-SEP-SNQ3ZNILQDEJNDQO -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.1.1:80
        -A KUBE-SEP-UHEGFW77JX3KXTOV -m comment --comment ns2/svc2:p8080 -s 10.0.2.1 -j KUBE-MARK-MASQ
        -A KUBE-SEP-UHEGFW77JX3KXTOV -m comment --comment ns2/svc2:p8080 -m tcp -p tcp -j DNAT --to-destination 10.0.2.1:8080
        -A KUBE-SVC-2VJB64SDSIJUP5T6 -m comment --comment "ns2/svc2:p8080 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 8080 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-2VJB64SDSIJUP5T6 -m comment --comment "ns2/svc2:p8080 -> 10.0.2.1:8080" -j KUBE-SEP-UHEGFW77JX3KXTOV
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.0.1.1:80" -j KUBE-SEP-SNQ3ZNILQDEJNDQO
        COMMIT
        """), lab.text)

    # Add a new service and its endpoints: only its SVC and SEP chains are written.
    lab.add(service("ns3", "svc3", "172.30.0.43", 80, port_name="p80"),
            endpoint_slice("ns3", "svc3", 80, "10.0.3.1", port_name="p80"))
    second = lab.sync()
    assert not second.full and second.services_written == 1
    assert_partial(_text(FILTER, NAT_HEAD, """\
        :KUBE-SEP-BSWRHOQ77KEXZLNL - [0:0]
        :KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
        """, SVC1, SVC2, SVC3, NAT_FIXED, """\
        -A KUBE-SEP-BSWRHOQ77KEXZLNL -m comment --comment ns3/svc3:p80 -s 10.0.3.1 -j KUBE-MARK-MASQ
        -A KUBE-SEP-BSWRHOQ77KEXZLNL -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.3.1:80
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.0.3.1:80" -j KUBE-SEP-BSWRHOQ77KEXZLNL
        COMMIT
        """), lab)

    # Delete a service (won't update the other services).
    lab.delete("Service", "ns2/svc2")
    lab.sync()
    assert_partial(_text(FILTER, NAT_HEAD, """\
        :KUBE-SEP-UHEGFW77JX3KXTOV - [0:0]
        :KUBE-SVC-2VJB64SDSIJUP5T6 - [0:0]
        """, SVC1, SVC3, NAT_FIXED, """\
        -X KUBE-SEP-UHEGFW77JX3KXTOV
        -X KUBE-SVC-2VJB64SDSIJUP5T6
        COMMIT
        """), lab)

    # Add a service, sync, then add its endpoints: first only the REJECT rule...
    lab.add(service("ns4", "svc4", "172.30.0.44", 80, port_name="p80"))
    lab.sync()
    reject = '-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j REJECT\n'
    assert_partial(_text(FILTER.replace("COMMIT\n", reject + "COMMIT\n"), NAT_HEAD, SVC1, SVC3, NAT_FIXED, "COMMIT\n"),
                 lab)

    # ... then the new service's chains.
    lab.add(endpoint_slice("ns4", "svc4", 80, "10.0.4.1", port_name="p80"))
    lab.sync()
    assert_partial(_text(FILTER, NAT_HEAD, """\
        :KUBE-SEP-AYCN5HPXMIRJNJXU - [0:0]
        :KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
        """, SVC1, SVC3, SVC4, NAT_FIXED, """\
        -A KUBE-SEP-AYCN5HPXMIRJNJXU -m comment --comment ns4/svc4:p80 -s 10.0.4.1 -j KUBE-MARK-MASQ
        -A KUBE-SEP-AYCN5HPXMIRJNJXU -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.4.1:80
        -A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.0.4.1:80" -j KUBE-SEP-AYCN5HPXMIRJNJXU
        COMMIT
        """), lab)

    # Change an endpoint of an existing service: its SVC and SEP chains are rewritten.
    lab.add(endpoint_slice("ns3", "svc3", 80, "10.0.3.2", port_name="p80"))
    lab.sync()
    assert_partial(_text(FILTER, NAT_HEAD, """\
        :KUBE-SEP-BSWRHOQ77KEXZLNL - [0:0]
        :KUBE-SEP-DKCFIS26GWF2WLWC - [0:0]
        :KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
        """, SVC1, SVC3, SVC4, NAT_FIXED, """\
        -A KUBE-SEP-DKCFIS26GWF2WLWC -m comment --comment ns3/svc3:p80 -s 10.0.3.2 -j KUBE-MARK-MASQ
        -A KUBE-SEP-DKCFIS26GWF2WLWC -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.3.2:80
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.0.3.2:80" -j KUBE-SEP-DKCFIS26GWF2WLWC
        -X KUBE-SEP-BSWRHOQ77KEXZLNL
        COMMIT
        """), lab)

    # Add an endpoint to a service: its SVC and SEP chains are rewritten.
    lab.add(endpoint_slice("ns3", "svc3", 80, "10.0.3.2", "10.0.3.3", port_name="p80"))
    lab.sync()
    assert_partial(_text(FILTER, NAT_HEAD, """\
        :KUBE-SEP-DKCFIS26GWF2WLWC - [0:0]
        :KUBE-SEP-JVVZVJ7BSEPPRNBS - [0:0]
        :KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
        """, SVC1, SVC3, SVC4, NAT_FIXED, """\
        -A KUBE-SEP-DKCFIS26GWF2WLWC -m comment --comment ns3/svc3:p80 -s 10.0.3.2 -j KUBE-MARK-MASQ
        -A KUBE-SEP-DKCFIS26GWF2WLWC -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.3.2:80
        -A KUBE-SEP-JVVZVJ7BSEPPRNBS -m comment --comment ns3/svc3:p80 -s 10.0.3.3 -j KUBE-MARK-MASQ
        -A KUBE-SEP-JVVZVJ7BSEPPRNBS -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.3.3:80
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.0.3.2:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-DKCFIS26GWF2WLWC
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.0.3.3:80" -j KUBE-SEP-JVVZVJ7BSEPPRNBS
        COMMIT
        """), lab)

    # Sync with no new changes: upstream restores only the fixed chains; kproxy restores nothing.
    restores = len(lab.kernel.restores)
    idle = lab.sync()
    assert not idle.applied and len(lab.kernel.restores) == restores

    # A dangling jump from svc3's chain to svc4's endpoint makes the partial sync deleting svc4
    # fail; the next sync is full, rewrites svc3's chains too and succeeds.
    lab.kernel.add_rule("nat", "KUBE-SVC-X27LE4BHSL4DOUIK", "-j KUBE-SEP-AYCN5HPXMIRJNJXU")
    lab.delete("Service", "ns4/svc4")
    with pytest.raises(IptablesError):
        lab.sync()
    assert "KUBE-SEP-AYCN5HPXMIRJNJXU" in lab.kernel.nat_chains()
    recovered = lab.sync()
    assert recovered.full and recovered.applied
    assert_rules(_text(FILTER, NAT_HEAD, """\
        :KUBE-SEP-AYCN5HPXMIRJNJXU - [0:0]
        :KUBE-SEP-DKCFIS26GWF2WLWC - [0:0]
        :KUBE-SEP-JVVZVJ7BSEPPRNBS - [0:0]
        :KUBE-SEP-SNQ3ZNILQDEJNDQO - [0:0]
        :KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
        :KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
        :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
        """, SVC1, SVC3, NAT_FIXED, """\
        -A KUBE-SEP-DKCFIS26GWF2WLWC -m comment --comment ns3/svc3:p80 -s 10.0.3.2 -j KUBE-MARK-MASQ
        -A KUBE-SEP-DKCFIS26GWF2WLWC -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.3.2:80
        -A KUBE-SEP-JVVZVJ7BSEPPRNBS -m comment --comment ns3/svc3:p80 -s 10.0.3.3 -j KUBE-MARK-MASQ
        -A KUBE-SEP-JVVZVJ7BSEPPRNBS -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.3.3:80
        -A KUBE-SEP-SNQ3ZNILQDEJNDQO -m comment --comment ns1/svc1:p80 -s 10.0.1.1 -j KUBE-MARK-MASQ
        -A KUBE-SEP-SNQ3ZNILQDEJNDQO -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.1.1:80
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.0.3.2:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-DKCFIS26GWF2WLWC
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.0.3.3:80" -j KUBE-SEP-JVVZVJ7BSEPPRNBS
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.0.1.1:80" -j KUBE-SEP-SNQ3ZNILQDEJNDQO
        -X KUBE-SEP-AYCN5HPXMIRJNJXU
        -X KUBE-SVC-4SW47YFZTEDKD3PK
        COMMIT
        """), lab.text)
    assert lab.kernel.tables == lab.full_render_state()


# ------------------------------------------------------------------ three services


def three_services() -> Lab:
    lab = Lab()
    for i in (1, 2, 3):
        lab.add(service("ns", f"s{i}", f"172.30.0.{i}", 80),
                endpoint_slice("ns", f"s{i}", 80, f"10.0.{i}.1", f"10.0.{i}.2"))
    lab.sync()
    return lab


def chains_of(lab: Lab, key: str) -> set[str]:
    return lab.proxier._service_chains[key]


FIXED_CHAINS = {"KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD",
                "KUBE-PROXY-FIREWALL", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"}


def test_changing_one_of_three_services_declares_only_its_chains():
    lab = three_services()
    s2 = chains_of(lab, "ns/s2")
    lab.add(endpoint_slice("ns", "s2", 80, "10.0.2.1", "10.0.2.2", "10.0.2.3"))
    result = lab.sync()
    assert (result.full, result.applied, result.services_written) == (False, True, 1)
    new_sep = chains.endpoint_chain("ns/s2:p", "tcp", "10.0.2.3:80")
    svc = next(c for c in s2 if c.startswith("KUBE-SVC-"))
    # Only the chains whose rules changed: the SVC chain and the new endpoint's; the others and
    # the fixed chains stay as they are (upstream rewrites the fixed chains on every sync).
    assert declared(lab.text) == {svc, new_sep}
    assert "KUBE-SERVICES" not in lab.text
    assert result.rules == lab.text.count("\n-A ")
    assert lab.kernel.tables == lab.full_render_state()


def test_deleting_one_of_three_services_deletes_exactly_its_chains():
    lab = three_services()
    s3 = chains_of(lab, "ns/s3")
    lab.delete("Service", "ns/s3")
    result = lab.sync()
    assert not result.full and result.services_written == 0
    lines = lab.text.splitlines()
    for chain in s3:
        assert f":{chain} - [0:0]" in lines and f"-X {chain}" in lines
    assert service_chains_in(lab.text) == s3
    assert sorted(result.result.deleted_chains) == sorted(s3)
    assert lab.kernel.tables == lab.full_render_state()


def test_nothing_changed_means_no_restore():
    lab = three_services()
    before = len(lab.kernel.restores)
    result = lab.sync()
    assert (result.full, result.applied, result.rules, result.services_written) == (False, False, 0, 0)
    assert len(lab.kernel.restores) == before
    assert result.result.service_chains == lab.proxier._last.service_chains


def test_irrelevant_object_changes_are_not_changes():
    lab = three_services()
    lab.services["ns/s1"]["metadata"]["labels"] = {"app": "x"}
    lab.services["ns/s1"]["spec"]["selector"] = {"app": "x"}
    lab.slices["ns/s2-1"]["metadata"]["resourceVersion"] = "42"
    assert not lab.sync().applied


def test_full_sync_when_asked_lists_the_kernel_and_ensures_jumps():
    lab = three_services()
    # a first sync lists the kernel (iptables-save) and reads the jumps from that listing
    assert (lab.kernel.listings, lab.kernel.jump_listings) == (1, 0)
    lab.add(endpoint_slice("ns", "s1", 80, "10.0.1.1"))
    lab.sync()
    assert (lab.kernel.listings, lab.kernel.jump_listings) == (1, 0)  # partial: neither
    result = lab.sync(full=True)
    assert result.full and result.services_written == 3
    assert service_chains_in(lab.text) == set().union(*lab.proxier._service_chains.values())
    # a resync of a loaded table lists the jump chains apart, while the Services render
    assert (lab.kernel.listings, lab.kernel.jump_listings) == (2, 1)
    assert lab.kernel.ensured == 0  # the missing ones go into the sync's own restore


def test_full_sync_deletes_stale_chains_found_in_the_kernel():
    lab = three_services()
    lab.kernel.tables["nat"]["KUBE-SEP-LEFTOVER0000000"] = []
    lab.kernel.tables["nat"]["KUBE-SOMETHING-ELSE"] = []
    lab.sync(full=True)
    assert "-X KUBE-SEP-LEFTOVER0000000" in lab.text.splitlines()
    assert "KUBE-SOMETHING-ELSE" in lab.kernel.nat_chains()


def test_request_full_sync():
    lab = three_services()
    lab.proxier.request_full_sync()
    assert lab.sync().full


def test_failed_restore_is_raised_and_the_next_sync_is_full():
    lab = three_services()
    lab.add(endpoint_slice("ns", "s1", 80, "10.0.1.9"))
    lab.kernel.fail_next = True
    with pytest.raises(IptablesError):
        lab.sync()
    result = lab.sync()
    assert result.full and result.applied
    assert lab.kernel.tables == lab.full_render_state()


def test_first_sync_after_failure_even_without_changes_is_full():
    lab = Lab()
    lab.add(service("ns", "s1", "172.30.0.1", 80), endpoint_slice("ns", "s1", 80, "10.0.1.1"))
    lab.kernel.fail_next = True
    with pytest.raises(IptablesError):
        lab.sync()
    assert lab.sync().full


def test_kernel_matches_a_full_sync_after_many_partial_ones():
    lab = three_services()
    steps = [
        lambda: lab.add(service("ns", "s4", "172.30.0.4", 53, protocol="UDP", type="NodePort", nodePort=30053)),
        lambda: lab.add(endpoint_slice("ns", "s4", 53, "10.0.4.1", protocol="UDP")),
        lambda: lab.add(service("ns", "s1", "172.30.0.1", 80, sessionAffinity="ClientIP")),
        lambda: lab.add(service("ns", "s2", "172.30.0.2", 80, type="NodePort", nodePort=30080,
                                externalTrafficPolicy="Local")),
        lambda: lab.delete("EndpointSlice", "ns/s3-1"),
        lambda: lab.delete("Service", "ns/s1"),
        lambda: lab.add(endpoint_slice("ns", "s2", 80, "10.0.2.7")),
    ]
    for step in steps:
        step()
        result = lab.sync()
        assert result.applied and not result.full
        assert lab.kernel.tables == lab.full_render_state()
    assert lab.kernel.listings == 1


def test_crossing_the_large_cluster_threshold_syncs_fully():
    lab = three_services()
    many = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(LARGE_CLUSTER_ENDPOINTS_THRESHOLD)]
    lab.add(service("ns", "big", "172.30.0.9", 80), endpoint_slice("ns", "big", 80, *many))
    result = lab.sync()
    assert result.full
    assert "-m comment" not in "\n".join(l for l in lab.text.splitlines() if l.startswith("-A KUBE-SEP-"))
    assert lab.kernel.tables == lab.full_render_state()


def test_sync_result_timings_add_up():
    lab = Lab()
    lab.add(service("ns", "s1", "172.30.0.1", 80))
    result = lab.sync()
    assert result.duration == pytest.approx(result.render_seconds + result.restore_seconds)
    assert result.render_seconds >= 0 and result.restore_seconds >= 0


def test_an_endpoint_that_moves_or_stops_being_ready_is_a_change():
    lab = Lab()
    lab.add(service("ns", "s1", "172.30.0.1", 80), endpoint_slice("ns", "s1", 80, "10.0.1.1"))
    lab.sync()
    lab.add(copy.deepcopy(lab.slices["ns/s1-1"]))
    assert not lab.sync().applied
    lab.add(endpoint_slice("ns", "s1", 80, "10.0.1.2"))
    assert lab.sync().services_written == 1
    lab.add(endpoint_slice("ns", "s1", 80, "10.0.1.2", ready=False))
    result = lab.sync()
    assert result.applied and "has no endpoints" in lab.text
    assert lab.kernel.tables == lab.full_render_state()


# ------------------------------------------------------------------ conntrack


def test_udp_endpoint_removal_clears_its_conntrack_entries_after_the_restore():
    lab = Lab()
    lab.add(service("kube-system", "dns", "10.96.0.20", 53, protocol="UDP", type="NodePort", nodePort=30053),
            endpoint_slice("kube-system", "dns", 53, "10.244.0.5", "10.244.0.6", protocol="UDP"))
    first = lab.sync()
    # A service port getting endpoints (here: the first sync) may have cached REJECTed flows.
    assert first.conntrack_commands == lab.conntrack_run.calls == [
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.20"],
        ["conntrack", "-D", "-p", "udp", "--orig-port-dst", "30053"],
    ]
    lab.conntrack_run.calls.clear()
    lab.add(endpoint_slice("kube-system", "dns", 53, "10.244.0.6", protocol="UDP"))
    assert lab.sync().conntrack_commands == lab.conntrack_run.calls == [
        ["conntrack", "-D", "-p", "udp", "--orig-port-dst", "30053", "--dst-nat", "10.244.0.5"],
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.20", "--dst-nat", "10.244.0.5"],
    ]


def test_no_conntrack_cleanup_when_the_restore_fails():
    lab = Lab()
    lab.add(service("ns", "dns", "10.96.0.20", 53, protocol="UDP"),
            endpoint_slice("ns", "dns", 53, "10.244.0.5", protocol="UDP"))
    lab.sync()
    lab.conntrack_run.calls.clear()
    lab.add(endpoint_slice("ns", "dns", 53, "10.244.0.6", protocol="UDP"))
    lab.kernel.fail_next = True
    with pytest.raises(IptablesError):
        lab.sync()
    assert lab.conntrack_run.calls == []
    # The retry compares with the last state that reached the kernel.
    assert lab.sync().conntrack_commands == [
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.20", "--dst-nat", "10.244.0.5"],
    ]


def test_terminating_but_serving_udp_endpoint_keeps_its_flows():
    lab = Lab()
    lab.add(service("ns", "dns", "10.96.0.20", 53, protocol="UDP"),
            endpoint_slice("ns", "dns", 53, "10.244.0.5", "10.244.0.6", protocol="UDP"))
    lab.sync()
    lab.slices["ns/dns-1"]["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}
    result = lab.sync()
    assert result.applied and result.conntrack_commands == []


def test_tcp_services_need_no_conntrack_cleanup():
    lab = three_services()
    lab.delete("EndpointSlice", "ns/s1-1")
    assert lab.sync().conntrack_commands == []
    assert lab.conntrack_run.calls == []


# ------------------------------------------------------------------ in-place edits, change hints


def test_fixed_chains_are_edited_in_place_and_match_a_full_sync():
    import random

    lab = Lab()
    for i in range(0, 40, 2):
        lab.add(service("ns", f"s{i:02d}", f"172.30.1.{i}", 80, type="NodePort", nodePort=30000 + i),
                endpoint_slice("ns", f"s{i:02d}", 80, f"10.0.{i}.1"))
    lab.sync()
    rng = random.Random(5)
    for step in range(40):
        i = rng.randrange(40)
        what = rng.choice(["add", "endpoints", "none", "delete", "ports"])
        if what == "add":
            lab.add(service("ns", f"s{i:02d}", f"172.30.1.{i}", 80))
        elif what == "endpoints":
            lab.add(endpoint_slice("ns", f"s{i:02d}", 80, *[f"10.0.{i}.{k}" for k in range(1, rng.randrange(1, 4) + 1)]))
        elif what == "none":
            lab.slices.pop(f"ns/s{i:02d}-1", None)
        elif what == "delete":
            lab.services.pop(f"ns/s{i:02d}", None)
        else:
            svc = service("ns", f"s{i:02d}", f"172.30.1.{i}", 80, type="NodePort", nodePort=30000 + i)
            svc["spec"]["ports"].append({"name": "q", "port": 81, "protocol": "UDP"})
            lab.add(svc)
        result = lab.sync()
        assert not result.full
        if result.applied:
            assert not declared(lab.text) & FIXED_CHAINS  # edited, never rewritten
        assert lab.kernel.tables == lab.full_render_state(), (step, what, i)


def test_a_change_hint_limits_the_sync_to_those_services():
    lab = three_services()
    lab.slices["ns/s1-1"]["endpoints"].append({"addresses": ["10.0.1.9"]})
    lab.slices["ns/s2-1"]["endpoints"].append({"addresses": ["10.0.2.9"]})
    result = lab.proxier.sync(list(lab.services.values()), list(lab.slices.values()), changed={"ns/s1"})
    assert result.services_written == 1 and "10.0.2.9" not in lab.text
    result = lab.sync()  # no hint: every object is compared, s2's change is found
    assert result.services_written == 1 and "10.0.2.9" in lab.text
    assert lab.kernel.tables == lab.full_render_state()


def test_a_rule_missing_from_the_kernel_fails_the_partial_sync_and_the_next_is_full():
    lab = three_services()
    lab.kernel.tables["nat"]["KUBE-SERVICES"] = [r for r in lab.kernel.tables["nat"]["KUBE-SERVICES"]
                                                 if "172.30.0.2" not in r]
    lab.delete("Service", "ns/s2")
    with pytest.raises(IptablesError):
        lab.sync()
    assert lab.sync().full
    assert lab.kernel.tables == lab.full_render_state()


# ------------------------------------------------------------------ full syncs in sections


def many_services(n: int = 80, **kw) -> Lab:
    lab = Lab(**kw)
    for i in range(n):
        lab.add(service("ns", f"m{i:03d}", f"172.30.{i // 200}.{i % 200 + 1}", 80),
                endpoint_slice("ns", f"m{i:03d}", 80, *[f"10.{i % 7}.{i // 200}.{i % 200 + k}" for k in range(1 + i % 4)]))
    return lab


def sections(text: str) -> list[tuple[str, list[str]]]:
    out, cur = [], None
    for line in text.splitlines():
        if line.startswith("*"):
            cur = (line[1:], [])
        elif line == "COMMIT":
            out.append(cur)
        else:
            cur[1].append(line)
    return out


def test_the_first_full_sync_of_many_services_commits_in_sections():
    lab = many_services()
    lab.sync()
    secs = sections(lab.text)
    nat = [body for table, body in secs if table == "nat"]
    assert [t for t, _ in secs][-2:] == ["filter", "nat"] and len(nat) > 4
    # the fixed chains first, with none of the Services' rules
    assert [line[1:].split()[0] for line in nat[0] if line.startswith(":")] == lab.proxier._fixed.declared["nat"]
    assert not any("KUBE-SVC-" in line for line in nat[0])
    # the Services' sections: growing from 16 chains, never over 256, whole Services each
    sizes = [sum(line.startswith(":") for line in body) for body in nat[1:-1]]
    assert sizes[0] >= 16 and max(sizes) <= 256 + 10 and sizes[1] >= sizes[0]
    # no rule jumps to a chain not declared in its own or an earlier section; KUBE-SERVICES'
    # Service rules, which make them reachable, come in the last section only
    known: set[str] = set()
    for body in nat:
        known |= {line[1:].split()[0] for line in body if line.startswith(":")}
        for line in body:
            if " -j KUBE-" in line:
                assert line.split(" -j ")[1].split()[0] in known, line
    assert all(not line.startswith("-A KUBE-SERVICES") for body in nat[:-1] for line in body
               if "KUBE-SVC-" in line)
    assert lab.kernel.tables == lab.full_render_state()


def test_a_resync_of_a_loaded_table_is_one_atomic_commit():
    lab = many_services()
    lab.sync()
    lab.slices["ns/m001-1"]["endpoints"].append({"addresses": ["10.9.9.9"]})
    result = lab.sync(full=True)
    assert result.full and [t for t, _ in sections(lab.text)] == ["filter", "nat"]
    assert lab.kernel.tables == lab.full_render_state()


def test_a_few_services_are_one_commit_per_table():
    lab = three_services()
    assert [t for t, _ in sections(lab.text)] == ["filter", "nat"]


@pytest.mark.parametrize("n", [3, 80])
def test_missing_jumps_go_into_the_full_syncs_own_restore(n):
    lab = many_services(n, jumps=False)  # a fresh netns: the built-in chains, empty
    lab.sync()
    secs = sections(lab.text)
    last_nat = [body for table, body in secs if table == "nat"][-1]
    assert secs[-1] == ("mangle", [":KUBE-PROXY-CANARY - [0:0]"])
    assert last_nat[-1].startswith("-I PREROUTING 1 ")  # after KUBE-SERVICES is declared and filled
    assert lab.kernel.tables["nat"]["PREROUTING"] == [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES']
    assert lab.kernel.tables == lab.full_render_state() and lab.kernel.ensured == 0


def test_a_failed_jump_listing_falls_back_to_ensuring_them_after_the_restore():
    lab = many_services(3)
    lab.sync()

    def fail() -> dict[str, list[str]]:
        raise IptablesError("iptables -S failed")

    lab.kernel.missing_jumps = fail
    lab.kernel.tables["nat"]["PREROUTING"].clear()  # someone removed the jump
    lab.sync(full=True)
    assert lab.kernel.ensured == 1
    assert lab.kernel.tables == lab.full_render_state()


def test_a_first_sync_in_sections_is_followed_by_ordinary_partial_syncs():
    lab = many_services()
    lab.sync()
    lab.slices["ns/m005-1"]["endpoints"].append({"addresses": ["10.9.9.9"]})
    lab.delete("Service", "ns/m006")
    result = lab.sync()
    assert not result.full and result.services_written == 1
    assert lab.kernel.tables == lab.full_render_state()


def test_a_wrong_large_cluster_guess_is_rewritten_in_the_last_commit():
    """Orphan slices count in the upper bound the guess is made from, not in the real total:
    the sections go in with large-cluster comments, the last commit rewrites them all."""
    lab = many_services(60)
    orphan = endpoint_slice("ns", "nobody", 80, *[f"10.8.{i // 250}.{i % 250 + 1}" for i in range(1200)])
    lab.add(orphan)
    lab.sync()
    nat = [body for t, body in sections(lab.text) if t == "nat"]
    assert len(nat) > 3 and any(line.startswith(":KUBE-SVC-") for line in nat[-1])  # rewritten
    assert not lab.proxier._large_cluster
    assert lab.kernel.tables == lab.full_render_state()


def test_a_first_sync_in_sections_forgets_services_that_are_gone():
    """Only skipped Services before (no rules, so the next big full sync is a first one): their
    signatures go when they go, so one that comes back the same is rendered again."""
    lab = many_services()
    ext = service("ns", "ext", "", 80, type="ExternalName", externalName="example.org")
    lab.add(ext)
    lab.proxier._changes.sigs["ns/gone"] = b"remembered"
    lab.sync()
    assert "ns/gone" not in lab.proxier._changes.sigs and "ns/ext" in lab.proxier._changes.sigs
    assert lab.kernel.tables == lab.full_render_state()


def test_a_wrong_large_cluster_guess_is_fixed_in_one_commit_too():
    """49 Services given as 50 objects (one twice): too few to section, and an IPv6 slice counts
    in the guess's upper bound but not in the total: the one commit holds the right comments."""
    lab = Lab()
    for i in range(49):
        lab.add(service("ns", f"s{i:02d}", f"172.30.0.{i + 1}", 80),
                endpoint_slice("ns", f"s{i:02d}", 80, f"10.0.0.{i + 1}"))
    v6 = endpoint_slice("ns", "s01", 80, *[f"fd00::{i:x}" for i in range(1, 1002)])
    v6["metadata"]["name"], v6["addressType"] = "s01-v6", "IPv6"
    lab.add(v6)
    services = list(lab.services.values()) + [lab.services["ns/s00"]]
    lab.proxier.sync(services, list(lab.slices.values()), full=True)
    assert not lab.proxier._large_cluster
    assert lab.kernel.tables == lab.full_render_state()


def test_why_a_service_is_skipped_follows_it_without_a_restore():
    lab = three_services()
    lab.add(service("ns", "x", "", 80, type="ExternalName", externalName="example.org"))
    lab.sync()
    assert "ExternalName" in lab.proxier._skipped["ns/x"]
    lab.services["ns/x"] = service("ns", "x", "None", 80)
    result = lab.sync()
    assert not result.applied and "headless" in lab.proxier._skipped["ns/x"]
    assert "headless" in result.result.skipped_services["ns/x"]


def test_a_failed_chain_listing_never_sections_a_sync():
    """A restarted daemon whose listing fails cannot tell an empty kernel from a loaded one:
    sections would empty KUBE-SERVICES until the last commit, so it writes one commit."""
    lab = many_services()

    def fail():
        raise IptablesError("iptables-save failed")

    lab.kernel.save = fail
    lab.sync()
    assert [t for t, _ in sections(lab.text)] == ["filter", "nat"]
    assert lab.kernel.tables == lab.full_render_state()


# ------------------------------------------------------------------ health check


def test_health_check_ports_count_this_nodes_ready_endpoints():
    """What the health-check server answers per healthCheckNodePort, from the digested view."""
    lab = Lab()
    lb = service("ns", "lb", "172.30.0.7", 80, type="LoadBalancer", externalTrafficPolicy="Local",
                 nodePort=30080, healthCheckNodePort=32000)
    sl = endpoint_slice("ns", "lb", 80, "10.0.7.1", "10.0.7.2", "10.0.7.3")
    for ep, node in zip(sl["endpoints"], ["test-node", "test-node", "other-node"]):
        ep["nodeName"] = node
    sl["endpoints"][1]["conditions"] = {"ready": False}
    cluster_policy = service("ns", "np", "172.30.0.8", 80, type="LoadBalancer", nodePort=30081,
                             healthCheckNodePort=32001)  # only ETP Local gets one
    lab.add(lb, sl, cluster_policy)
    lab.sync()
    assert lab.proxier.health_check_ports() == {32000: ("ns", "lb", 1)}
    sl["endpoints"][1]["conditions"] = {"ready": True}
    assert not lab.sync().full
    assert lab.proxier.health_check_ports() == {32000: ("ns", "lb", 2)}
    lab.delete("EndpointSlice", "ns/lb-1")
    lab.sync()
    assert lab.proxier.health_check_ports() == {32000: ("ns", "lb", 0)}
    lab.delete("Service", "ns/lb")
    lab.sync()
    assert lab.proxier.health_check_ports() == {}
