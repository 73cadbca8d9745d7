"""A pod's /etc/resolv.conf and /etc/hosts, written as the kubelet writes them.

They go to /etc/netns/<pod netns>/, which `ip netns exec` binds over /etc for every process
started in the pod (containers and `kproxy exec`), so resolvers in the pod see the cluster DNS.
"""
from __future__ import annotations

import os
from pathlib import Path

from .naming import pod_hostname

ETC_NETNS = Path("/etc/netns")
MAX_SEARCH = 32  # the kubelet's limit on search domains


def _parse_resolv(text: str) -> tuple[list[str], list[str], list[str]]:
    servers, searches, options = [], [], []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if parts[0] == "nameserver" and len(parts) > 1:
            servers.append(parts[1])
        elif parts[0] in ("search", "domain"):
            searches = parts[1:]
        elif parts[0] == "options":
            options += parts[1:]
    return servers, searches, options


def _merge_options(base: list[str], extra: list[dict]) -> list[str]:
    opts = {o.split(":", 1)[0]: o for o in base}
    for o in extra:
        name = o.get("name", "")
        opts[name] = f"{name}:{o['value']}" if o.get("value") not in (None, "") else name
    return list(opts.values())


def resolv_conf(pod: dict, cluster_dns: str, domain: str, node_resolv: str) -> str:
    """resolv.conf for `pod` per its dnsPolicy (ClusterFirst, Default, None) and dnsConfig."""
    spec, ns = pod["spec"], pod["metadata"]["namespace"]
    policy = spec.get("dnsPolicy", "ClusterFirst")
    cfg = spec.get("dnsConfig") or {}
    if policy == "None":
        servers, searches, options = [], [], []
    elif policy == "Default":
        servers, searches, options = _parse_resolv(node_resolv)
    else:  # ClusterFirst, and ClusterFirstWithHostNet (pods here never share the node's network)
        servers = [cluster_dns]
        searches = [f"{ns}.svc.{domain}", f"svc.{domain}", domain]
        options = ["ndots:5"]
    servers = (servers + list(cfg.get("nameservers", [])))[:3]
    searches = list(dict.fromkeys(searches + list(cfg.get("searches", []))))[:MAX_SEARCH]
    options = _merge_options(options, cfg.get("options", []))
    lines = []
    if searches:
        lines.append("search " + " ".join(searches))
    lines += [f"nameserver {s}" for s in servers]
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def hosts_file(pod: dict, domain: str) -> str:
    """The kubelet's managed /etc/hosts: localhost lines, the pod's own name, HostAliases."""
    meta, spec = pod["metadata"], pod["spec"]
    ip = pod["status"]["podIP"]
    hostname = pod_hostname(pod)
    lines = ["# Kubernetes-managed hosts file.", "127.0.0.1\tlocalhost",
             "::1\tlocalhost ip6-localhost ip6-loopback", "fe00::0\tip6-localnet", "fe00::0\tip6-mcastprefix",
             "fe00::1\tip6-allnodes", "fe00::2\tip6-allrouters"]
    if spec.get("subdomain"):
        lines.append(f"{ip}\t{hostname}.{spec['subdomain']}.{meta['namespace']}.svc.{domain}\t{hostname}")
    else:
        lines.append(f"{ip}\t{hostname}")
    aliases = spec.get("hostAliases") or []
    if aliases:
        lines.append("")
        lines.append("# Entries added by HostAliases.")
        lines += [f"{a['ip']}\t" + "\t".join(a.get("hostnames", [])) for a in aliases]
    return "\n".join(lines) + "\n"


def write_pod_files(netns: str, files: dict[str, str]) -> None:
    """The pod's /etc/resolv.conf and /etc/hosts: world-readable as /etc's (a pod running as a
    non-root user reads them), whatever the daemon's umask (077: its own state is private)."""
    d = ETC_NETNS / netns
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    for name, text in files.items():
        (d / name).write_text(text)
        os.chmod(d / name, 0o644)


def remove_pod_files(netns: str) -> None:
    d = ETC_NETNS / netns
    if d.is_dir():
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


def owned_dirs(prefix: str) -> list[Path]:
    return sorted(p for p in ETC_NETNS.glob(f"{prefix}-*") if p.is_dir()) if ETC_NETNS.is_dir() else []
