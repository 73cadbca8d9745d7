"""render(changed=...): upstream's partial sync (skippedNatChains/skippedNatRules in syncProxyRules).

In a partial sync upstream still writes every rule of the fixed chains, but the KUBE-SVC/SVL/
EXT/FW/SEP chains of services that did not change are neither declared nor written; they
still count as active, so they are never deleted as stale.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kproxy.proxy import chains
from kproxy.proxy.render import ProxyConfig, RenderResult, render
from kproxy.proxy.sorting import parse

GOLDEN = Path(__file__).parent / "golden"
REFERENCE = Path(__file__).resolve().parents[3] / "shared/reference/kube-proxy-iptables/manifests.yaml"
CONFIG = ProxyConfig(cluster_cidr="10.0.0.0/8", node_name="test-node", node_ips=["192.168.0.2"])


def _split(objects: list[dict]) -> tuple[list[dict], list[dict]]:
    return [o for o in objects if o["kind"] == "Service"], [o for o in objects if o["kind"] == "EndpointSlice"]


def _cases() -> list[tuple[str, list[dict], list[dict]]]:
    cases = []
    for path in sorted(GOLDEN.glob("*.yaml")):
        cases.append((path.stem, *_split(yaml.safe_load(path.read_text())["objects"])))
    if REFERENCE.is_file():
        cases.append(("reference", *_split([d for d in yaml.safe_load_all(REFERENCE.read_text()) if d])))
    return cases


CASES = _cases()


def _owner(result: RenderResult) -> dict[str, str]:
    """Per-service chain -> its service key."""
    return {chain: key for key, owned in result.service_chains.items() for chain in owned}


def _without_chains_of(text: str, dropped: set[str]) -> str:
    """The full text less the declarations and rules of ``dropped`` chains."""
    keep = []
    for line in text.splitlines():
        words = line.split()
        if line.startswith(":") and line[1:].split()[0] in dropped:
            continue
        if line.startswith("-A ") and words[1] in dropped:
            continue
        keep.append(line)
    return "\n".join(keep) + "\n"


@pytest.mark.parametrize("name,services,slices", CASES, ids=[c[0] for c in CASES])
def test_changed_everything_is_the_full_sync(name, services, slices):
    full = render(services, slices, CONFIG)
    keys = set(full.service_chains)
    assert render(services, slices, CONFIG, changed=keys).text == full.text


@pytest.mark.parametrize("name,services,slices", CASES, ids=[c[0] for c in CASES])
def test_partial_is_full_less_the_unchanged_services_chains(name, services, slices):
    full = render(services, slices, CONFIG)
    owner = _owner(full)
    for key in [*full.service_chains, "nowhere/none"]:
        partial = render(services, slices, CONFIG, changed={key})
        others = {chain for chain, k in owner.items() if k != key}
        assert partial.text == _without_chains_of(full.text, others)
        assert partial.service_chains == full.service_chains
        assert set(partial.nat_chains) == set(full.nat_chains) - others


@pytest.mark.parametrize("name,services,slices", CASES, ids=[c[0] for c in CASES])
def test_nothing_changed_writes_only_fixed_chains(name, services, slices):
    full = render(services, slices, CONFIG)
    partial = render(services, slices, CONFIG, changed=set())
    for table in parse(partial.text):
        assert not [c.name for c in table.chains if chains.is_service_chain(c.name)]
    # Every service's rules in the fixed chains are still there, jumps to unwritten chains too.
    fixed = [line for line in full.text.splitlines() if not _is_service_chain_line(line)]
    assert partial.text.splitlines() == fixed


def _is_service_chain_line(line: str) -> bool:
    if line.startswith(":"):
        return chains.is_service_chain(line[1:].split()[0])
    return line.startswith("-A ") and chains.is_service_chain(line.split()[1])


def _svc(name: str, ip: str, port: int = 80) -> dict:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": "ns1"},
        "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": port, "protocol": "TCP"}]},
    }


def _slice(name: str, *ips: str, port: int = 80) -> dict:
    return {
        "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-1", "namespace": "ns1", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip]} for ip in ips],
    }


def test_unwritten_chains_are_active_not_stale():
    services = [_svc("a", "172.30.0.1"), _svc("b", "172.30.0.2")]
    slices = [_slice("a", "10.0.1.1"), _slice("b", "10.0.2.1")]
    full = render(services, slices, CONFIG)
    existing = set().union(*full.service_chains.values())
    partial = render(services, slices, CONFIG, existing_nat_chains=existing, changed={"ns1/a"})
    assert partial.deleted_chains == []
    assert not full.service_chains["ns1/b"] & set(partial.nat_chains)


def test_partial_deletes_a_changed_services_old_endpoint_chain():
    services = [_svc("a", "172.30.0.1"), _svc("b", "172.30.0.2")]
    before = render(services, [_slice("a", "10.0.1.1"), _slice("b", "10.0.2.1")], CONFIG)
    existing = set().union(*before.service_chains.values())
    after = render(services, [_slice("a", "10.0.1.2"), _slice("b", "10.0.2.1")], CONFIG,
                   existing_nat_chains=existing, changed={"ns1/a"})
    old_sep = chains.endpoint_chain("ns1/a:p", "tcp", "10.0.1.1:80")
    new_sep = chains.endpoint_chain("ns1/a:p", "tcp", "10.0.1.2:80")
    assert after.deleted_chains == [old_sep]
    lines = after.text.splitlines()
    assert f":{old_sep} - [0:0]" in lines and f"-X {old_sep}" in lines
    assert f":{new_sep} - [0:0]" in lines


def test_partial_deletes_a_deleted_services_chains():
    a, b = _svc("a", "172.30.0.1"), _svc("b", "172.30.0.2")
    before = render([a, b], [_slice("a", "10.0.1.1"), _slice("b", "10.0.2.1")], CONFIG)
    existing = set().union(*before.service_chains.values())
    after = render([a], [_slice("a", "10.0.1.1")], CONFIG, existing_nat_chains=existing, changed={"ns1/b"})
    assert sorted(after.deleted_chains) == sorted(before.service_chains["ns1/b"])
    assert "ns1/b" not in after.service_chains
    assert not [c for c in after.nat_chains if chains.is_service_chain(c)]


def test_a_proxier_full_sync_writes_the_render_text():
    """The Proxier renders each Service alone and assembles them with the fixed chains; into a
    kernel holding a stale chain, its one-commit full sync is the very text render() writes."""
    from kproxy.bench import gen
    from kproxy.bench.worker import CFG
    from kproxy.proxy.fake import FakeKernel
    from kproxy.proxy.proxier import Proxier
    cfg = ProxyConfig(**CFG)
    services, slices = gen.cluster(40, seed=3)
    services.append({"kind": "Service", "metadata": {"name": "np", "namespace": "a"},
                     "spec": {"clusterIP": "10.100.9.9", "type": "NodePort", "externalTrafficPolicy": "Local",
                              "ports": [{"name": "u", "port": 53, "protocol": "UDP", "nodePort": 30053}]}})
    kernel = FakeKernel(jumps=True)
    kernel.restore(["*nat", ":KUBE-SEP-GONE - [0:0]", "COMMIT"])
    Proxier(cfg, kernel).sync(services, slices, full=True)
    full = render(services, slices, cfg, existing_nat_chains=["KUBE-SEP-GONE"])
    assert kernel.restores[-1] == full.text
