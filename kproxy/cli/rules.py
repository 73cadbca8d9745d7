"""`rules`: the iptables rules kproxy owns, read live from a node (iptables-save, filtered to
kproxy's chains) or rendered offline (`--render -f PATH`: no root, no daemon) by the same
renderer the proxy uses (kproxy/proxy/render.py), after the same admission as `apply`.
`--render --proxy-mode nftables` prints kube-proxy's nftables table instead (kproxy/proxy/nft),
from the same digest, as `add table/set/map/chain/rule/element` lines. A lab running in
nftables mode (`up --proxy-mode nftables`) shows `nft list table ip kube-proxy` live instead.
"""
from __future__ import annotations

import ipaddress
import subprocess
import sys

import click

from kproxy.api import admission
from kproxy.cli.common import (fail, need_root, netns_exists, node_netns, not_found, not_running, resolve_kind,
                               running_lab, served_documents, state_dir_option)
from kproxy.config import LabConfig
from kproxy.store.base import object_key


def _node_save(cfg: LabConfig, netns: str | None) -> str:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    res = subprocess.run([*prefix, "iptables-save"], capture_output=True, text=True)
    if res.returncode != 0:
        fail(f"iptables-save failed: {res.stderr.strip()}")
    return res.stdout


def _service_inputs(cfg: LabConfig, store, target: str, namespace: str, node: str | None):
    """`rules svc/NAME`: the Service, its EndpointSlices and the proxy settings that render its
    chains in either mode (exits with kubectl's NotFound when there is no such Service)."""
    from kproxy.proxy import render
    word, _, name = target.partition("/")
    if resolve_kind(word) != "Service" or not name:
        fail("TARGET is svc/NAME")
    svc = store.get(object_key("Service", namespace, name))
    if svc is None:
        click.echo(not_found("Service", name), err=True)
        sys.exit(1)
    slices = [s for _, s in store.list(object_key("EndpointSlice", namespace, ""))]
    pcfg = render.ProxyConfig(cluster_cidr=cfg.cluster_cidr, node_name=node or cfg.node_name, node_ips=["0.0.0.0"])
    return name, svc, slices, pcfg


def _nft_rules(cfg: LabConfig, store, netns: str | None, target: str | None, namespace: str,
               node: str | None) -> None:
    """A lab in nftables mode: `nft list table ip kube-proxy` from the node, whole or one Service's part."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    res = subprocess.run([*prefix, "nft", "list", "table", "ip", "kube-proxy"], capture_output=True, text=True)
    if res.returncode != 0:
        fail(f"nft list table ip kube-proxy failed: {res.stderr.strip()}")
    if not target:
        click.echo(res.stdout, nl=False)
        return
    name, svc, slices, pcfg = _service_inputs(cfg, store, target, namespace, node)
    from kproxy.proxy.nft import listing
    from kproxy.proxy.nft import render as nft_render
    base = nft_render.render([], [], pcfg).table
    own = nft_render.render([svc], slices, pcfg).table
    click.echo(listing.filtered(res.stdout, set(own.chains) - set(base.chains), set(own.sets) - set(base.sets),
                                f"{namespace}/{name}"), nl=False)


def render_warnings(svc: dict) -> list[str]:
    """What `rules --render` cannot know for a (valid, defaulted) Service."""
    spec, name = svc.get("spec", {}), svc["metadata"]["name"]
    out = []
    if spec.get("type") != "ExternalName" and not spec.get("clusterIP"):
        out.append(f'Service "{name}" has no spec.clusterIP: --render needs fixed clusterIPs '
                   "(a running lab allocates them)")
    if spec.get("type") in ("NodePort", "LoadBalancer"):
        for p in spec.get("ports") or []:
            if not p.get("nodePort"):
                out.append(f'Service "{name}" port {p.get("port")} has no nodePort: --render needs fixed nodePorts '
                           "(a running lab allocates them)")
    return out


def _node_port_hint(obj: dict, node_port_range: tuple[int, int]) -> str | None:
    lo, hi = node_port_range
    outside = [p["nodePort"] for p in (obj.get("spec") or {}).get("ports") or []
               if isinstance(p, dict) and isinstance(p.get("nodePort"), int) and p["nodePort"]
               and not lo <= p["nodePort"] <= hi]
    if obj.get("kind") != "Service" or not outside:
        return None
    want_lo, want_hi = min(lo, *outside), max(hi, *outside)
    return (f'hint: Service "{obj["metadata"].get("name", "")}" uses nodePort {", ".join(map(str, outside))}, outside '
            f"{lo}-{hi}: pass --service-node-port-range {want_lo}-{want_hi} (and start the lab with the same "
            "--service-node-port-range to serve it)")


@click.command()
@click.argument("target", required=False)
@click.option("--render", "render_only", is_flag=True, help="Print the rules for -f PATH without root or daemon.")
@click.option("-f", "--filename", "path", type=click.Path(exists=True))
@click.option("-n", "--namespace", default="default")
@click.option("--proxy-mode", type=click.Choice(["iptables", "nftables"]), default=None,
              help="Which kube-proxy mode's rules --render prints (default iptables; live: the lab's mode).")
@click.option("--cluster-cidr", default="10.244.0.0/16")
@click.option("--service-cidr", default=LabConfig.service_cidr,
              help="ClusterIP range (nftables: cluster-ips-check drops its unallocated addresses).")
@click.option("--node-name", default="node-1")
@click.option("--node-ip", default="192.168.49.2")
@click.option("--service-node-port-range", default="30000-32767")
@state_dir_option
@click.option("--node", default=None, help="Whose rules (a multi-node lab; default: the first node).")
def rules(target, render_only, path, namespace, proxy_mode, cluster_cidr, service_cidr, node_name, node_ip, service_node_port_range, node,
          state_dir):
    """Print the live rules kproxy owns (iptables-save form; a lab in nftables mode: `nft list
    table ip kube-proxy`), or --render them offline."""
    from kproxy.proxy import applier, render
    if render_only:
        if not path:
            fail("--render needs -f PATH")
        try:
            lo, hi = (int(x) for x in service_node_port_range.split("-"))
        except ValueError:
            fail(f'--service-node-port-range "{service_node_port_range}": want A-B, e.g. 30000-32767')
        services, slices = [], []
        docs, rc = served_documents(path)
        render_gate = admission.Admission((lo, hi), "0.0.0.0/0")  # no lab: any clusterIP, no namespaces
        for doc in docs:
            verdict = render_gate.admit(doc.obj, doc.source)
            obj = verdict.obj
            if not verdict.ok:
                click.echo(verdict.kubectl_message(doc.source), err=True)
                hint = _node_port_hint(obj, (lo, hi))
                if hint:
                    click.echo(hint, err=True)
                rc = 1
                continue
            if obj["kind"] == "Service":
                for w in render_warnings(obj):
                    click.echo(f"warning: {w}", err=True)
                services.append(obj)
            elif obj["kind"] == "EndpointSlice":
                slices.append(obj)
        cfg = render.ProxyConfig(cluster_cidr=cluster_cidr or None, node_name=node_name, node_ips=[node_ip])
        if proxy_mode == "nftables":
            from kproxy.proxy.nft import render as nft_render
            cidrs = [c.strip() for c in service_cidr.split(",") if c.strip()]
            for cidr in cidrs:
                try:
                    ipaddress.IPv4Network(cidr, strict=False)
                except ValueError:
                    fail(f'--service-cidr "{cidr}": want an IPv4 CIDR, e.g. 10.96.0.0/12')
            click.echo(nft_render.render(services, slices, cfg, cidrs).text, nl=False)
        else:
            click.echo(render.render(services, slices, cfg).text, nl=False)
        sys.exit(rc)
    need_root()
    cfg, store = running_lab(state_dir)
    netns = node_netns(cfg, store, node)
    if netns and not netns_exists(netns):
        fail(not_running(cfg.state_dir))
    if proxy_mode and proxy_mode != cfg.proxy_mode:
        fail(f"--proxy-mode {proxy_mode}: the lab in {cfg.state_dir} runs in {cfg.proxy_mode} mode "
             f"(`kproxy down`, then `kproxy up --proxy-mode {proxy_mode}` to switch)")
    if cfg.proxy_mode == "nftables":
        _nft_rules(cfg, store, netns, target, namespace, node)
        return
    saved = _node_save(cfg, netns)
    if not target:
        click.echo(applier.owned_lines(saved), nl=False)
        return
    name, svc, slices, pcfg = _service_inputs(cfg, store, target, namespace, node)
    chains = render.render([svc], slices, pcfg).service_chains.get(f"{namespace}/{name}", set())
    click.echo(applier.owned_lines(saved, chains, mention=f"{namespace}/{name}"), nl=False)
