"""Would an nftables mode meet "one-Service change at 10,000 Services live <= 100 ms"? A quick
standalone measurement, not a proxy mode: a kube-proxy-nftables-style ruleset (one table, the
ClusterIPs in a verdict map, a chain per service port and per endpoint, `numgen` spreading over
the endpoints) for N generated Services is loaded with ``nft -f`` into a netns this script
creates (hooked like kube-proxy's: prerouting and output), then one Service's endpoints are
changed N_CHANGES times (one ``nft -f`` each: new endpoint chains, the service chain flushed and
refilled, the old endpoint chains deleted), and Services are added (their chains and a map
element). Run as root:

    python -m kproxy.bench.nftables --services 10000 [--changes 20]

Prints one JSON object. Everything is inside ``kpbench<4hex>-nft``, removed at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time

from kproxy.bench import gen, stats
from kproxy.api.meta import LABEL_SERVICE_NAME
from kproxy.bench.sandbox import Cleanup

TABLE = "kproxy-bench"


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _svc_chain(name: str) -> str:
    return f"service-{_h(name)}-{gen.NAMESPACE}/{name}/tcp/{gen.PORT_NAME}"


def _ep_chain(name: str, ip: str, port: int) -> str:
    return f"endpoint-{_h(name + ip)}-{gen.NAMESPACE}/{name}/tcp/{gen.PORT_NAME}__{ip}/{port}"


def _service_lines(name: str, ip: str, eps: list[str], port: int) -> list[str]:
    """add chain/rule lines of one Service's chains (as kube-proxy's nftables proxier writes)."""
    svc = _svc_chain(name)
    lines = [f'add chain ip {TABLE} {svc}', f'flush chain ip {TABLE} {svc}',
             f'add rule ip {TABLE} {svc} ip daddr {ip} tcp dport {gen.SERVICE_PORT} '
             f'ip saddr != 10.244.0.0/16 jump mark-for-masquerade']
    for ep in eps:
        chain = _ep_chain(name, ep, port)
        lines += [f'add chain ip {TABLE} {chain}', f'flush chain ip {TABLE} {chain}',
                  f'add rule ip {TABLE} {chain} ip saddr {ep} jump mark-for-masquerade',
                  f'add rule ip {TABLE} {chain} meta l4proto tcp dnat to {ep}:{port}']
    spread = ", ".join(f'{i} : goto {_ep_chain(name, ep, port)}' for i, ep in enumerate(eps))
    lines.append(f'add rule ip {TABLE} {svc} numgen random mod {len(eps)} vmap {{ {spread} }}')
    return lines


def ruleset(services: list[dict], slices: list[dict]) -> str:
    eps = {sl["metadata"]["labels"][LABEL_SERVICE_NAME]: sl for sl in slices}
    lines = [f"add table ip {TABLE}",
             f"add map ip {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}",
             f"add chain ip {TABLE} mark-for-masquerade",
             f"add rule ip {TABLE} mark-for-masquerade meta mark set meta mark or 0x4000",
             f"add chain ip {TABLE} services",
             f"add rule ip {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips",
             f"add chain ip {TABLE} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}",
             f"add rule ip {TABLE} nat-prerouting jump services",
             f"add chain ip {TABLE} nat-output {{ type nat hook output priority -100 ; }}",
             f"add rule ip {TABLE} nat-output jump services"]
    elements = []
    for svc in services:
        name = svc["metadata"]["name"]
        sl = eps[name]
        ips = [e["addresses"][0] for e in sl["endpoints"]]
        lines += _service_lines(name, svc["spec"]["clusterIP"], ips, sl["ports"][0]["port"])
        elements.append(f'{svc["spec"]["clusterIP"]} . tcp . {gen.SERVICE_PORT} : goto {_svc_chain(name)}')
    for i in range(0, len(elements), 1000):
        lines.append(f"add element ip {TABLE} service-ips {{ {', '.join(elements[i:i + 1000])} }}")
    return "\n".join(lines) + "\n"


def nft(netns: str, text: str) -> float:
    t = time.monotonic()
    res = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=text, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nft -f failed: {res.stderr.strip()[:500]}")
    return time.monotonic() - t


def measure(n: int, changes: int, cleanup: Cleanup) -> dict:
    services, slices = gen.cluster(n, 7)
    ns = cleanup.new_netns("nft")
    try:
        text = ruleset(services, slices)
        out: dict = {"services": n, "lines": text.count("\n"), "load_seconds": nft(ns, text)}
        samples = []
        by_name = {s["metadata"]["name"]: s for s in services}
        for c in range(changes):
            before = {sl["metadata"]["labels"][LABEL_SERVICE_NAME]: [e["addresses"][0] for e in sl["endpoints"]]
                      for sl in slices}
            name = gen.change_endpoints(slices, c)
            sl = next(s for s in slices if s["metadata"]["labels"][LABEL_SERVICE_NAME] == name)
            now = [e["addresses"][0] for e in sl["endpoints"]]
            port = sl["ports"][0]["port"]
            lines = _service_lines(name, by_name[name]["spec"]["clusterIP"], now, port)
            lines += [f'delete chain ip {TABLE} {_ep_chain(name, ip, port)}' for ip in before[name] if ip not in now]
            samples.append(nft(ns, "\n".join(lines) + "\n"))
        adds = []
        for k in range(min(changes, 10)):
            i = n + k
            name = gen.service_name(i, "added")
            ip = gen.cluster_ip(i)
            lines = _service_lines(name, ip, [gen.endpoint_ip(i), gen.endpoint_ip(i + 1)], 8080)
            lines.append(f'add element ip {TABLE} service-ips {{ {ip} . tcp . {gen.SERVICE_PORT} : goto {_svc_chain(name)} }}')
            adds.append(nft(ns, "\n".join(lines) + "\n"))
        out["endpoint_change"] = stats.summary(samples)
        out["service_added"] = stats.summary(adds)
        return out
    finally:
        cleanup.del_netns(ns)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--changes", type=int, default=20)
    args = ap.parse_args(argv)
    cleanup = Cleanup()
    try:
        print(json.dumps(measure(args.services, args.changes, cleanup)))
    finally:
        left = cleanup.close()
        if left:
            print(f"netns left behind: {left}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
