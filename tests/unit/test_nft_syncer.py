"""The nftables mode's syncer (kproxy/proxy/nft/syncer.py) against a fake `nft`: the exact
transactions it sends, what a refused one does, the table restored after a hand deletion, the
proxy role driving it, and `kproxy rules svc/NAME`'s filter of the kernel's listing."""
from __future__ import annotations

import re
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
from kproxy.proxy.nft.syncer import STALE_CHAIN_GRACE, NftError, NftSyncer
from kproxy.proxy.role import PROXY_STATUS, ProxyRole
from kproxy.store.cache import key_of
from kproxy.store.sqlite import SqliteStore
from tests.unit.nft_fake import FakeNft

CFG = ProxyConfig(cluster_cidr="10.244.0.0/16", node_name="node-1", node_ips=["192.168.49.2"])


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


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fresh_state(services, slices) -> dict:
    """What a fresh full render of the objects leaves in an empty fake kernel."""
    other = FakeNft()
    make(other).sync(services, slices)
    return other.state()


def live_state(nft, s: NftSyncer) -> dict:
    """The fake kernel's state but the stale chains (which must be there, flushed)."""
    state = nft.state()
    for c in s.stale_chains:
        assert state["chain"].pop(c) == [], c
    return state


def test_a_full_sync_is_one_transaction_leaving_exactly_the_render(nft):
    s = make(nft)
    res = s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    assert res.full and res.applied and res.services_written == 1 and s.last_sync_kind == "full"
    [tx] = nft.transactions()
    lines = tx.splitlines()
    assert lines[:2] == ['add table ip kube-proxy { comment "rules for kube-proxy" ; }', "flush table ip kube-proxy"]
    assert lines[2:] == res.result.transaction.splitlines()[1:]  # nothing to flush or delete yet
    assert "add element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 : goto service-" in tx
    assert set(res.result.service_chains) == {"default/web"}
    assert nft.names("chain") == set(res.result.table.chains)
    assert nft.state()["map"]["service-ips"] == {k: v for k, v in res.result.table.sets["service-ips"].elements.items()}


def test_nothing_changed_nothing_sent(nft):
    s = make(nft)
    objs = ([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    s.sync(*objs)
    res = s.sync(*objs)
    assert not res.applied and len(nft.transactions()) == 1
    res = s.sync(*objs, changed=set())  # the informer says nothing changed: not even rendered
    assert not res.applied and res.result.service_chains


def many(n: int, **changes) -> tuple[list[dict], list[dict]]:
    services = [svc(f"s{i}", f"10.96.0.{i + 10}") for i in range(n)]
    slices = [eps(f"s{i}", f"10.244.0.{i + 10}") for i in range(n)]
    return services, slices


def test_a_partial_sync_writes_only_the_changed_services_chains_and_elements(nft):
    """One Service's endpoints change among 20: its chains are flushed and rewritten, its
    elements edited by key; no other Service, no fixed chain, no set flush appears."""
    s = make(nft)
    services, slices = many(20)
    first = s.sync(services, slices)
    slices[7] = eps("s7", "10.244.1.7", "10.244.1.8")
    res = s.sync(services, slices, changed={"default/s7"})
    assert not res.full and res.applied and res.services_written == 1 and s.last_sync_kind == "partial"
    tx = nft.transactions()[-1]
    named = set(re.findall(r"default/(s\d+)/", tx))
    assert named == {"s7"}, tx
    assert "flush table" not in tx and "flush map" not in tx and "flush set ip kube-proxy cluster-ips" not in tx
    assert not re.search(r"chain ip kube-proxy (services|nat-|filter-|mark-for-masquerade)", tx)
    svc_chain = next(c for c in first.result.service_chains["default/s7"] if c.startswith("service-"))
    assert f"add chain ip kube-proxy {svc_chain}\nflush chain ip kube-proxy {svc_chain}\n" in tx
    old_ep = next(c for c in first.result.service_chains["default/s7"] if c.startswith("endpoint-"))
    assert f"flush chain ip kube-proxy {old_ep}" in tx and "delete chain" not in tx  # stale: flushed, kept
    assert "service-ips" not in tx  # the ClusterIP's element still says goto the same chain
    assert nft.state()["chain"] == {**fresh_state(services, slices)["chain"], old_ep: []}
    assert list(s.stale_chains) == [old_ep]


def test_partial_syncs_leave_the_kernel_as_a_fresh_full_sync_would(nft):
    """Adds, endpoint changes, a Service losing its endpoints and getting them back, affinity
    on and off, a port added, Services deleted: after each partial sync the fake kernel equals
    a fresh full render of the same objects (but for the stale chains waiting for deletion)."""
    clock = Clock()
    s = NftSyncer(CFG, ["10.96.0.0/12"], run=nft, conntrack=Conntrack(run=lambda a: None), clock=clock)
    services, slices = many(6)
    s.sync(services, slices)
    steps = [
        lambda: slices.__setitem__(0, eps("s0", "10.244.2.1", "10.244.2.2")),
        lambda: services.append(svc("new", "10.96.1.1")) or slices.append(eps("new", "10.244.3.1")),
        lambda: slices.__setitem__(1, eps("s1")),  # no endpoints: reject through no-endpoint-services
        lambda: slices.__setitem__(1, eps("s1", "10.244.0.11")),
        lambda: services.__setitem__(2, svc("s2", "10.96.0.12", affinity=True)),
        lambda: services.__setitem__(2, svc("s2", "10.96.0.12")),
        lambda: services[3]["spec"]["ports"].append({"name": "q", "port": 81, "targetPort": 8080,
                                                     "protocol": "TCP"}),
        lambda: services.pop(4) and slices.pop(4),
        lambda: services.__setitem__(0, svc("s0", "10.96.0.10", protocol="UDP")),
    ]
    for i, step in enumerate(steps):
        clock.now += 0.25
        step()
        res = s.sync(services, slices)
        assert res.applied and not res.full, i
        want = fresh_state(services, slices)
        got = nft.state()
        assert set(got["chain"]) - set(want["chain"]) == set(s.stale_chains), i
        assert all(got["chain"][c] == [] for c in s.stale_chains), i
        assert {c: r for c, r in got["chain"].items() if c not in s.stale_chains} == want["chain"], i
        assert got["set"] == want["set"] and got["map"] == want["map"], i
    assert s.stale_chains  # some went stale in the last second
    clock.now += 1.0
    assert s.delete_stale_chains()[0] > 0 and not s.stale_chains
    assert nft.state() == fresh_state(services, slices)


def test_stale_chains_are_flushed_then_deleted_after_the_grace(nft):
    clock = Clock()
    s = NftSyncer(CFG, [], run=nft, conntrack=Conntrack(run=lambda a: None), clock=clock)
    first = s.sync([svc("web", "10.96.0.10"), svc("db", "10.96.0.11")],
                   [eps("web", "10.244.0.5"), eps("db", "10.244.0.6")])
    gone = first.result.service_chains["default/db"]
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")], changed={"default/db"})
    tx = nft.transactions()[-1].splitlines()
    flushed = [line for line in tx if line.startswith("flush chain")]
    assert flushed == [f"flush chain ip kube-proxy {c}" for c in sorted(gone)]
    assert not [line for line in tx if line.startswith("delete chain")]
    assert any(line.startswith("delete element ip kube-proxy service-ips { 10.96.0.11 . tcp . 80 }") for line in tx)
    assert gone <= nft.names("chain") and all(nft.state()["chain"][c] == [] for c in gone)
    assert s.delete_stale_chains() == (0, 0)  # not yet: the grace is not over
    clock.now += STALE_CHAIN_GRACE - 0.01
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.6")], changed={"default/web"})
    assert "delete chain" not in nft.transactions()[-1]
    clock.now += 0.5  # past the grace: the next sync deletes them in its own transaction
    web = s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.7")], changed={"default/web"})
    tx = nft.transactions()[-1].splitlines()
    deletes = [line for line in tx if line.startswith("delete chain")]
    assert deletes == [f"delete chain ip kube-proxy {c}" for c in sorted(gone)]
    assert not gone & nft.names("chain") and len(nft.transactions()) == 4
    assert set(s.stale_chains) == nft.names("chain") - set(web.result.table.chains)  # web's old endpoint


def test_a_refused_stale_deletion_does_not_fail_the_sync(nft):
    """(Old kernels: a chain a just-deleted element pointed to may still count as used.)"""
    clock = Clock()
    s = NftSyncer(CFG, [], run=nft, conntrack=Conntrack(run=lambda a: None), clock=clock)
    s.sync([svc("web", "10.96.0.10"), svc("db", "10.96.0.11")], [eps("web", "10.244.0.5"), eps("db", "10.244.0.6")])
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    stale = set(s.stale_chains)
    clock.now += 2
    nft.refuse = lambda tx: "Error: Could not process rule: Device or resource busy" if "delete chain" in tx else None
    res = s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.8")])
    assert res.applied and not res.full and res.cleanup_failures == len(stale) and res.sync_failures == 0
    assert "10.244.0.8" in nft.transactions()[-1] and "delete chain" not in nft.transactions()[-1]
    assert stale <= set(s.stale_chains) and s.stale_chains[sorted(stale)[0]] == clock.now  # retried later
    assert s.delete_stale_chains() == (0, 0)
    clock.now += 2
    assert s.delete_stale_chains() == (0, len(s.stale_chains))
    nft.refuse = None
    clock.now += 2
    assert s.delete_stale_chains()[0] == len(stale) + 1 and not s.stale_chains


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
    assert aff not in nft.names("set")


def test_a_refused_partial_sync_is_followed_by_a_full_one_at_once(nft):
    s = make(nft)
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    nft.table["map"]["service-ips"].clear()  # someone edited the map by hand: the partial delete fails
    res = s.sync([svc("web", "10.96.0.10")], [eps("web")])
    assert res.applied and res.full and res.sync_failures == 1
    assert nft.transactions()[-1].startswith('add table ip kube-proxy { comment "rules for kube-proxy" ; }\n'
                                             'flush table ip kube-proxy\n')
    assert live_state(nft, s) == fresh_state([svc("web", "10.96.0.10")], [eps("web")]) and s.stale_chains


def test_a_refused_transaction_falls_back_to_replacing_the_table(nft):
    s = make(nft)
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    nft.fail = 2  # the partial sync, then the full one
    res = s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.6")])
    assert res.transaction.startswith("add table ip kube-proxy\ndelete table ip kube-proxy\n")
    assert res.applied and res.sync_failures == 2 and nft.names("chain") == set(res.result.table.chains)


def test_a_failing_nft_is_reported_like_a_failed_restore_and_the_next_sync_is_full(nft):
    s = make(nft)
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    nft.fail = 3
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
    assert s.canary_present() and nft.state() == fresh_state(*objs)


def test_a_full_sync_keeps_the_grace_of_chains_already_stale(nft):
    clock = Clock()
    s = NftSyncer(CFG, [], run=nft, conntrack=Conntrack(run=lambda a: None), clock=clock)
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5")])
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.6")])
    [old] = s.stale_chains
    nft.table["chain"]["endpoint-XXXX-default/gone/tcp/p__10.244.9.9/80"] = ["meta l4proto tcp dnat to 10.244.9.9:80"]
    clock.now += 0.5
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.6")], full=True)  # finds a leftover too
    assert s.stale_chains == {old: 1000.0, "endpoint-XXXX-default/gone/tcp/p__10.244.9.9/80": 1000.5}
    assert nft.state()["chain"]["endpoint-XXXX-default/gone/tcp/p__10.244.9.9/80"] == []  # flushed
    clock.now += 0.6
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.6")], full=True)
    assert list(s.stale_chains) == ["endpoint-XXXX-default/gone/tcp/p__10.244.9.9/80"]
    assert f"delete chain ip kube-proxy {old}" in nft.transactions()[-1]


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
    assert nft.table is not None and any(c.startswith("service-") for c in nft.names("chain"))


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
    real = nft_render.render_service

    def render_service(key, ports, *args, **kw):
        if any(sp.name == "bad" for sp in ports):
            raise TypeError("'<' not supported between instances of 'str' and 'NoneType'")
        return real(key, ports, *args, **kw)
    monkeypatch.setattr(nft_render, "render_service", render_service)
    monkeypatch.setattr(syncer, "render_service", render_service)
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


def test_nftables_mode_metrics_status_and_stale_chains_through_the_role(tmp_path, monkeypatch, nft):
    """/metrics in nftables mode: upstream's nftables_* failure counters, no iptables_* ones;
    the stored status says which kind the last sync was; the role's idle passes delete stale
    chains once their grace is over."""
    monkeypatch.setattr(syncer, "run_nft", nft)
    cfg = LabConfig(state_dir=str(tmp_path), sandbox=True, proxy_mode="nftables")
    Path(cfg.manifests).mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg, SqliteStore(tmp_path / "s.db"), node_ip="192.168.49.2")
    role = ProxyRole(ctx, FakeKernel())
    role.make_proxier()
    clock = Clock()
    role.proxier.clock = clock
    Frontend(ctx).admit_service(svc("web", ""))
    role.sync()
    assert ctx.store.get(PROXY_STATUS)["full"] is True
    ctx.objects["EndpointSlice"]["default/web-1"] = eps("web", "10.244.0.5")
    role.sync()
    status = ctx.store.get(PROXY_STATUS)
    assert status["full"] is False and status["servicesWritten"] == 1 and status["lastPartial"]
    ctx.objects["EndpointSlice"]["default/web-1"] = eps("web", "10.244.0.6")
    role.sync()
    assert ctx.store.get(PROXY_STATUS)["staleChains"] == 1 and len(role.proxier.stale_chains) == 1
    text = ctx.metrics.registry.exposition()
    assert "kubeproxy_sync_proxy_rules_nftables_sync_failures_total 0" in text
    assert "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total 0" in text
    assert "iptables" not in text
    assert "kubeproxy_sync_partial_proxy_rules_duration_seconds_count 2" in text
    assert "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1" in text
    nft.fail = 1  # the partial sync refused, the full one after it taken
    ctx.objects["EndpointSlice"]["default/web-1"] = eps("web", "10.244.0.7")
    role.sync()
    assert "kubeproxy_sync_proxy_rules_nftables_sync_failures_total 1" in ctx.metrics.registry.exposition()
    stale = set(role.proxier.stale_chains)
    assert stale and stale <= nft.names("chain")
    role.last_full_sync = role.last_canary = time.monotonic()
    role.resync(time.monotonic())
    assert stale <= nft.names("chain")  # grace not over
    clock.now += 2
    role.resync(time.monotonic())
    assert not stale & nft.names("chain") and not role.proxier.stale_chains
    iptables_mode = Context(LabConfig(state_dir=str(tmp_path / "i"), sandbox=True), SqliteStore(tmp_path / "i.db"),
                            node_ip="192.168.49.2")
    other = ProxyRole(iptables_mode, FakeKernel())
    other.make_proxier()
    text = iptables_mode.metrics.registry.exposition()
    assert "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 0" in text and "nftables" not in text


def test_a_big_first_sync_loads_the_service_chains_in_sections(nft, monkeypatch):
    """Into a table without Service chains, the chains go in SECTION_SERVICES Services per
    transaction (nothing jumps to them yet), then one transaction with the fixed part and every
    element, which makes them live at once; the kernel ends up as with one transaction."""
    monkeypatch.setattr(syncer, "SECTION_SERVICES", 3)  # from 9 Services on
    services, slices = many(12)
    s = make(nft)
    res = s.sync(services, slices)
    txs = nft.transactions()
    assert len(txs) == 5 and res.full
    for tx in txs[:4]:
        assert "element" not in tx and "nat-prerouting" not in tx and "flush table" not in tx
        assert len(set(re.findall(r"default/(s\d+)/", tx))) == 3
    assert "flush table" not in txs[4] and not re.search(r"add (chain|rule) ip kube-proxy \S+/", txs[4])
    assert "add element ip kube-proxy service-ips" in txs[4]
    assert nft.state() == fresh_state(services, slices)
    services.pop(3), slices.pop(3)  # gone: its chains go stale, flushed by the last transaction
    s0 = next(c for c in nft.table["chain"] if c.startswith("service-") and "default/s0/" in c)
    nft.table["chain"][s0].append("drop")  # drift: a rule added by hand
    res = s.sync(services, slices, full=True)  # a resync of the loaded table, in sections as well
    txs = nft.transactions()[5:]
    assert len(txs) == 5 and not any("flush table" in tx for tx in txs)
    assert all(f"flush chain ip kube-proxy {c}" in txs[4] for c in s.stale_chains) and len(s.stale_chains) == 2
    assert live_state(nft, s) == fresh_state(services, slices)


def test_a_refused_section_falls_back_to_one_transaction(nft, monkeypatch):
    monkeypatch.setattr(syncer, "SECTION_SERVICES", 3)
    services, slices = many(12)
    nft.refuse = lambda tx: "Error: boom" if "default/s6/" in tx and "element" not in tx else None
    s = make(nft)
    res = s.sync(services, slices)
    assert res.full and res.sync_failures == 1 and "flush table" in nft.transactions()[-1]
    nft.refuse = None
    assert nft.state() == fresh_state(services, slices)


def test_an_element_two_services_write_keeps_the_full_renders_value(nft):
    """Two Services with the same externalIP and port (the API does not forbid it): the key is
    the later Service's, as in a full render; when that one goes, the other's value comes back
    instead of the key disappearing."""
    a, b = svc("a", "10.96.0.10"), svc("b", "10.96.0.11")
    for x in (a, b):
        x["spec"]["externalIPs"] = ["192.168.49.200"]
    s = make(nft)
    services, slices = [a, b], [eps("a", "10.244.0.5"), eps("b", "10.244.0.6")]
    s.sync(services, slices)
    key = "192.168.49.200 . tcp . 80"

    def target() -> str:
        return nft.state()["map"]["service-ips"][key][1]
    assert "default/b/" in target()
    slices[0] = eps("a", "10.244.0.7")  # a changes: b still wins the key
    s.sync(services, slices)
    assert "default/b/" in target() and live_state(nft, s) == fresh_state(services, slices)
    services.pop(1), slices.pop(1)  # b goes: a's value comes back
    s.sync(services, slices)
    assert "default/a/" in target() and live_state(nft, s) == fresh_state(services, slices)
    services.append(svc("b", "10.96.0.11")), slices.append(eps("b", "10.244.0.6"))
    services[1]["spec"]["externalIPs"] = ["192.168.49.200"]
    s.sync(services, slices)  # b back: the key is b's again
    assert "default/b/" in target() and live_state(nft, s) == fresh_state(services, slices)
