"""Pure renderer of kube-proxy's nftables-mode table: objects in, `add ...` lines out.

It digests Services and EndpointSlices with the same model.digest as the iptables renderer
(kproxy/proxy/render.py), so `kproxy rules --render --proxy-mode nftables` and the golden
test see exactly the service ports and endpoints the iptables mode would program. Only the
IPv4 family is rendered (the labs are single-stack IPv4). Nothing here touches the system.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from kproxy.proxy.model import Digest, ProxyConfig, digest
from kproxy.proxy.nft.base import write_base
from kproxy.proxy.nft.services import ServiceWriter
from kproxy.proxy.nft.table import Table


@dataclass
class NftRenderResult:
    table: Table
    service_chains: dict[str, set[str]]  # "ns/name" -> its per-service chains
    skipped_services: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """Upstream's test-fake dump: what `rules --render` prints and the golden case holds."""
        return "".join(line + "\n" for line in self.table.dump())

    @property
    def transaction(self) -> str:
        """The same lines, declarations first: one `nft -f` transaction."""
        return "".join(line + "\n" for line in self.table.loadable())


def render_digest(d: Digest, cfg: ProxyConfig, service_cidrs: Iterable[str] = ()) -> NftRenderResult:
    t = Table()
    write_base(t, cfg, [c.strip() for c in service_cidrs if c.strip()])
    writer = ServiceWriter(t, cfg)
    chains: dict[str, set[str]] = {}
    for sp in d.ports:
        chains.setdefault(sp.service_key, set()).update(writer.write_port(sp, d.port_endpoints(sp)))
    return NftRenderResult(t, chains, dict(d.skipped))


def render(
    services: Iterable[Mapping[str, Any]],
    endpoint_slices: Iterable[Mapping[str, Any]],
    cfg: ProxyConfig,
    service_cidrs: Iterable[str] = (),
) -> NftRenderResult:
    """Render the whole table for the given objects (``service_cidrs``: the ClusterIP ranges
    whose unallocated addresses `cluster-ips-check` drops; none, no such rule)."""
    return render_digest(digest(services, endpoint_slices, cfg), cfg, service_cidrs)
