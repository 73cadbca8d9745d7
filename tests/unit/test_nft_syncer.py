"""The nftables mode's syncer (kproxy/proxy/nft/syncer.py) against a fake `nft`: the exact
transactions it sends, what a refused one does, the table restored after a hand deletion, the
proxy role driving it, and `kproxy rules svc/NAME`'s filter of the kernel's listing."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from kproxy.cluster.commands import agent_argv
from kproxy.config import LabConfig
from kproxy.context import Context
from kproxy.frontend import Frontend
from kproxy.proxy.applier import IptablesError
from kproxy.proxy.conntrack import Conntrack
from kproxy.proxy.fake import FakeKernel
from kproxy.proxy.model import ProxyConfig
from kproxy.proxy.nft import listing, syncer
from kproxy.proxy.nft.syncer import NftError, NftSyncer
from kproxy.proxy.role import PROXY_STATUS, ProxyRole
from kproxy.store.cache import key_of
from kproxy.store.sqlite import SqliteStore

CFG = ProxyConfig(cluster_cidr="10.244.0.0/16", node_name="node-1", node_ips=["192.168.49.2"])


class FakeNft:
    """`nft` over a one-table kernel: object names only (enough for what the syncer lists)."""

    def __init__(self):
        self.table: dict[str, set[str]] | None = None
        self.calls: list[tuple[list[str], str | None]] = []
        self.fail = 0  # refuse this many `nft -f` in a row

    def transactions(self) -> list[str]:
        return [stdin for argv, stdin in self.calls if argv[1:3] == ["-f", "-"]]

    def __call__(self, argv: list[str], stdin: str | None) -> subprocess.CompletedProcess:
        self.calls.append((argv, stdin))
        ok = subprocess.CompletedProcess(argv, 0, "", "")
        if argv[1:] == ["-t", "list", "table", "ip", "kube-proxy"]:
            if self.table is None:
                return subprocess.CompletedProcess(argv, 1, "", "Error: No such file or directory")
            body = "".join(f"\t{kind} {name} {{\n\t}}\n" for kind in ("set", "map", "chain")
                           for name in sorted(self.table[kind]))
            return subprocess.CompletedProcess(argv, 0, "table ip kube-proxy {\n" + body + "}\n", "")
        if argv[1:] == ["delete", "table", "ip", "kube-proxy"]:
            self.table = None
            return ok
        assert argv[1:3] == ["-f", "-"], argv
        if self.fail:
            self.fail -= 1
            return subprocess.CompletedProcess(argv, 1, "", "Error: Could not process rule: File exists")
        table = None if self.table is None else {k: set(v) for k, v in self.table.items()}
        for line in stdin.splitlines():
            words = line.split()
            if words[:2] == ["add", "table"]:
                table = table or {"chain": set(), "set": set(), "map": set()}
            elif words[:2] == ["delete", "table"]:
                table = None
            elif words[0] == "add" and words[1] in ("chain", "set", "map"):
                table[words[1]].add(words[4])
            elif words[0] == "delete":
                table[words[1]].discard(words[4])
        self.table = table
        return ok


def svc(name: str, ip: str, affinity: bool = False, protocol: str = "TCP") -> dict:
    spec = {**({"clusterIP": ip} if ip else {}), "type": "ClusterIP", "selector": {"app": name},
            "ports": [{"name": "p", "port": 80, "targetPort": 8080, "protocol": protocol}]}
    if affinity:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 10800}}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def eps(name: str, *ips: str, protocol: str = "TCP") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{name}-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "p", "port": 8080, "protocol": protocol}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node-1"} for ip in ips]}


@pytest.fixture
def nft():
    return FakeNft()


def make(nft, **kw) -> NftSyncer:
    return NftSyncer(CFG, ["10.96.0.0/12"], run=nft, conntrack=kw.get("conntrack") or Conntrack(run=lambda a: None))


def test_a_full_sync_is_one_transaction_leaving_exactly_the_render(nft):
    s = make(nft)
    res = s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    assert res.full and res.applied and res.services_written == 1
    [tx] = nft.transactions()
    lines = tx.splitlines()
    assert lines[:2] == ["add table ip kube-proxy", "flush table ip kube-proxy"]
    assert lines[2:] == res.result.transaction.splitlines()  # nothing to flush or delete yet
    assert "add element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 : goto service-" in tx
    assert set(res.result.service_chains) == {"default/web"}
    assert nft.table["chain"] == set(res.result.table.chains)


def test_nothing_changed_nothing_sent(nft):
    s = make(nft)
    objs = ([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    s.sync(*objs)
    res = s.sync(*objs)
    assert not res.applied and len(nft.transactions()) == 1
    res = s.sync(*objs, changed=set())  # the informer says nothing changed: not even rendered
    assert not res.applied and res.result.service_chains


def test_a_deleted_service_is_flushed_then_deleted_in_the_same_transaction(nft):
    s = make(nft)
    first = s.sync([svc("web", "10.96.0.10"), svc("db", "10.96.0.11")],
                   [eps("web", "10.244.0.5"), eps("db", "10.244.0.6")])
    gone = first.result.service_chains["default/db"]
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")], changed={"default/db"})
    tx = nft.transactions()[-1].splitlines()
    assert "flush map ip kube-proxy service-ips" in tx
    deletes = [line for line in tx if line.startswith("delete ")]
    assert deletes == [f"delete chain ip kube-proxy {c}" for c in sorted(gone)]
    assert tx.index("flush map ip kube-proxy service-ips") < tx.index(deletes[0])  # the map no longer jumps there
    assert not gone & nft.table["chain"]


def test_affinity_sets_survive_a_resync_and_go_with_their_service(nft):
    s = make(nft)
    res = s.sync([svc("web", "10.96.0.10", affinity=True)], [eps("web", "10.244.0.5")])
    [aff] = [n for n in res.result.table.sets if n.startswith("affinity-")]
    s.sync([svc("web", "10.96.0.10", affinity=True)], [eps("web", "10.244.0.5")], full=True)
    tx = nft.transactions()[-1]
    assert f"flush set ip kube-proxy {aff}" not in tx  # clients keep their endpoint
    assert "flush set ip kube-proxy cluster-ips" in tx
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    assert f"delete set ip kube-proxy {aff}" in nft.transactions()[-1]
    assert aff not in nft.table["set"]


def test_a_refused_transaction_falls_back_to_replacing_the_table(nft):
    s = make(nft)
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    nft.fail = 1
    res = s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.6")])
    assert res.transaction.startswith("add table ip kube-proxy\ndelete table ip kube-proxy\n")
    assert res.applied and nft.table["chain"] == set(res.result.table.chains)


def test_a_failing_nft_is_reported_like_a_failed_restore_and_the_next_sync_is_full(nft):
    s = make(nft)
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    nft.fail = 2
    with pytest.raises(IptablesError, match="nft -f - failed: Error: Could not process rule"):
        s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.6")])
    assert isinstance(NftError("x"), IptablesError)
    res = s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.6")], changed=set())
    assert res.applied and res.full  # not skipped: what the kernel holds is unknown


def test_the_table_deleted_by_hand_is_the_canary_and_a_full_sync_restores_it(nft):
    s = make(nft)
    objs = ([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    s.sync(*objs)
    assert s.canary_present()
    nft.table = None  # nft delete table ip kube-proxy
    assert not s.canary_present()
    s.sync(*objs, full=True)
    assert s.canary_present() and nft.table["chain"] >= set(s.sync(*objs).result.table.chains)


def test_cleanup_deletes_the_table_only_when_there_is_one(nft):
    assert not syncer.remove_table(nft)
    assert not [a for a, _ in nft.calls if "delete" in a]
    make(nft).sync([], [])
    assert syncer.remove_table(nft) and nft.table is None


def test_udp_conntrack_entries_of_a_replaced_endpoint_are_deleted(nft):
    ran = []
    s = make(nft, conntrack=Conntrack(run=lambda a: ran.append(a) or subprocess.CompletedProcess(a, 0, "", "")))
    s.sync([svc("dns", "10.96.0.53", protocol="UDP")], [eps("dns", "10.244.0.5", protocol="UDP")])
    ran.clear()
    res = s.sync([svc("dns", "10.96.0.53", protocol="UDP")], [eps("dns", "10.244.0.6", protocol="UDP")])
    assert any("10.96.0.53" in cmd and "10.244.0.5" in cmd for cmd in res.conntrack_commands), res.conntrack_commands
    assert ran == res.conntrack_commands


def test_health_check_ports_as_the_last_sync_saw_them(nft):
    lb = svc("lb", "10.96.0.12")
    lb["spec"].update(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=32000)
    lb["spec"]["ports"][0]["nodePort"] = 31000
    s = make(nft)
    s.sync([lb], [eps("lb", "10.244.0.5")])
    assert s.health_check_ports() == {32000: ("default", "lb", 1)}


# -- the proxy role in nftables mode ------------------------------------------------------------
def test_the_proxy_role_drives_the_syncer_in_nftables_mode(tmp_path, monkeypatch, nft):
    monkeypatch.setattr(syncer, "run_nft", nft)
    cfg = LabConfig(state_dir=str(tmp_path), sandbox=True, proxy_mode="nftables")
    Path(cfg.manifests).mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg, SqliteStore(tmp_path / "s.db"), node_ip="192.168.49.2")
    kernel = FakeKernel()
    role = ProxyRole(ctx, kernel)
    role.make_proxier()
    assert isinstance(role.proxier, NftSyncer)
    Frontend(ctx).admit_service(svc("web", ""))
    role.sync()
    ip = ctx.store.get(key_of("Service", "default", "web"))["spec"]["clusterIP"]
    assert f'no-endpoint-services {{ {ip} . tcp . 80 comment "default/web:p" : goto reject-chain }}' in \
        nft.transactions()[-1]
    assert ctx.store.get(PROXY_STATUS)["services"] == ["default/web"]
    assert not any(kernel.tables[t].get(c) for t in kernel.tables for c in kernel.tables[t])  # no iptables rule
    nft.fail = 2
    role.sync(force=True)
    assert [e for _, e in ctx.store.list("/registry/events/") if e["reason"] == "FailedSync"]
    nft.table = None  # deleted by hand: the canary check restores it before the periodic resync
    role.last_full_sync, role.last_canary = time.monotonic(), 0.0
    role.resync(time.monotonic())
    assert nft.table is not None and any(c.startswith("service-") for c in nft.table["chain"])


# -- settings and listings -------------------------------------------------------------------------
def test_the_mode_is_a_saved_lab_setting_and_an_agent_flag(tmp_path):
    from kproxy.cli.lifecycle import up_command
    cfg = LabConfig(state_dir=str(tmp_path), proxy_mode="nftables")
    cfg.save()
    assert LabConfig.load(str(tmp_path)).proxy_mode == "nftables"
    assert "--proxy-mode nftables" in up_command(cfg)
    assert "--proxy-mode" not in up_command(LabConfig(state_dir=str(tmp_path)))
    assert agent_argv("kproxy", str(tmp_path), "https://x:2379", "n", "1.2.3.4", proxy_mode="nftables")[-2:] == [
        "--proxy-mode", "nftables"]
    from kproxy.cluster.units import AGENT_UNIT, node_units
    unit = node_units(False, "node-2", "192.168.56.12", "192.168.56.11", "10.244.2.0/24", "/usr/bin/kproxy",
                      str(tmp_path), proxy_mode="nftables")[AGENT_UNIT]
    assert "--proxy-mode nftables" in unit
    assert "--proxy-mode" not in node_units(False, "node-2", "192.168.56.12", "192.168.56.11", "10.244.2.0/24",
                                            "/usr/bin/kproxy", str(tmp_path))[AGENT_UNIT]


LISTING = """table ip kube-proxy {
\tcomment "rules for kube-proxy"
\tmap service-ips {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\tcomment "ClusterIP, ExternalIP and LoadBalancer IP traffic"
\t\telements = { 10.96.0.10 . tcp . 80 : goto service-AAAA-default/web/tcp/p,
\t\t\t     10.96.0.11 . tcp . 80 : goto service-BBBB-default/db/tcp/p }
\t}

\tmap no-endpoint-services {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.96.0.12 . tcp . 80 comment "default/web2:p" : goto reject-chain,
\t\t\t     10.96.0.10 . tcp . 81 comment "default/web:q" : goto reject-chain }
\t}

\tchain services {
\t\tip daddr . meta l4proto . th dport vmap @service-ips
\t}

\tchain service-AAAA-default/web/tcp/p {
\t\tip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
\t}

\tchain service-BBBB-default/db/tcp/p {
\t}
}
"""


def test_rules_svc_shows_the_services_chains_and_its_map_elements():
    out = listing.filtered(LISTING, {"service-AAAA-default/web/tcp/p"}, set(), "default/web")
    assert "chain service-AAAA-default/web/tcp/p {" in out and "jump mark-for-masquerade" in out
    assert "elements = { 10.96.0.10 . tcp . 80 : goto service-AAAA-default/web/tcp/p }" in out
    assert 'elements = { 10.96.0.10 . tcp . 81 comment "default/web:q" : goto reject-chain }' in out
    assert "BBBB" not in out and "web2" not in out and "chain services" not in out
    assert out.startswith("table ip kube-proxy {\n") and out.endswith("}\n")


def test_a_service_whose_nftables_rules_fail_to_render_is_quarantined(tmp_path, monkeypatch, nft):
    """The quarantine renders each Service alone with the mode's own renderer (the iptables one
    would find nothing wrong with a Service only the nftables renderer trips on)."""
    from kproxy.proxy.nft import render as nft_render
    monkeypatch.setattr(syncer, "run_nft", nft)
    real = nft_render.render_digest

    def render_digest(d, *args, **kw):
        if any(sp.name == "bad" for sp in d.ports):
            raise TypeError("'<' not supported between instances of 'str' and 'NoneType'")
        return real(d, *args, **kw)
    monkeypatch.setattr(nft_render, "render_digest", render_digest)
    monkeypatch.setattr(syncer, "render_digest", render_digest)
    cfg = LabConfig(state_dir=str(tmp_path), sandbox=True, proxy_mode="nftables")
    Path(cfg.manifests).mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg, SqliteStore(tmp_path / "s.db"), node_ip="192.168.49.2")
    role = ProxyRole(ctx, FakeKernel())
    role.make_proxier()
    Frontend(ctx).admit_service(svc("bad", ""))
    Frontend(ctx).admit_service(svc("good", ""))
    role.sync()
    assert list(role.quarantine) == [key_of("Service", "default", "bad")]
    role.sync()
    assert ctx.store.get(PROXY_STATUS)["services"] == ["default/good"]
    assert ("FailedProxyRules", "Service", "default", "bad") in ctx.obj_problems
