"""Pure renderer of kube-proxy's nftables-mode table: objects in, `add ...` lines out.

It digests Services and EndpointSlices with the same model.digest as the iptables renderer
(kproxy/proxy/render.py), so `kproxy rules --render --proxy-mode nftables` and the golden
test see exactly the service ports and endpoints the iptables mode would program. Only the
IPv4 family is rendered (the labs are single-stack IPv4). Nothing here touches the system.

Each Service is rendered on its own into a ServicePiece (its chains, its affinity sets, its
elements of the shared sets and maps), and the table is the fixed part plus every piece, in
Service order: the syncer keeps the pieces, so a partial sync re-renders only the Services
that changed and writes exactly their part, and a full render is the same pieces composed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from kproxy.proxy.model import Digest, Endpoint, ProxyConfig, ServicePort, digest, port_key
from kproxy.proxy.nft.base import SHARED_SETS, declare_shared, write_base
from kproxy.proxy.nft.names import AFFINITY_PREFIX
from kproxy.proxy.nft.services import ServiceWriter
from kproxy.proxy.nft.table import Chain, Set, Table

Elements = dict[str, tuple[str, str]]  # element key -> (comment, value)


@dataclass
class ServicePiece:
    """One Service's part of the table: what a partial sync rewrites when the Service changes."""

    key: str  # "ns/name"
    ports: list[ServicePort]  # what it was rendered from (compared to skip no-op changes)
    endpoints: list[list[Endpoint]]
    chains: dict[str, Chain]
    affinity: dict[str, Set]
    elements: dict[str, Elements]  # shared set or map -> its elements from this Service

    def digest(self) -> Digest:
        return Digest(list(self.ports), {port_key(sp): eps for sp, eps in zip(self.ports, self.endpoints)}, {})


def service_order(key: str) -> tuple[str, str]:
    """The digest's order of Services ("ns/name" sorted by namespace, then name)."""
    ns, _, name = key.partition("/")
    return (ns, name)


def render_service(key: str, ports: list[ServicePort], endpoints: list[list[Endpoint]],
                   cfg: ProxyConfig) -> ServicePiece:
    """Render one Service's ports (in digest order) with their endpoints."""
    t = Table()
    declare_shared(t)
    writer = ServiceWriter(t, cfg)
    for sp, eps in zip(ports, endpoints):
        writer.write_port(sp, eps)
    affinity = {name: s for name, s in t.sets.items() if name.startswith(AFFINITY_PREFIX)}
    elements = {name: t.sets[name].elements for name in SHARED_SETS if t.sets[name].elements}
    return ServicePiece(key, list(ports), list(endpoints), t.chains, affinity, elements)


def render_pieces(d: Digest, cfg: ProxyConfig) -> dict[str, ServicePiece]:
    """Every proxied Service of a digest rendered on its own, in the digest's order."""
    grouped: dict[str, list[ServicePort]] = {}
    for sp in d.ports:
        grouped.setdefault(sp.service_key, []).append(sp)
    return {key: render_service(key, ports, [d.port_endpoints(sp) for sp in ports], cfg)
            for key, ports in grouped.items()}


def compose(base: Table, pieces: Iterable[ServicePiece]) -> Table:
    """The fixed part (a fresh write_base table, filled in place) plus every piece, in order;
    a key two Services both write (say, a shared externalIP) keeps the later one's value."""
    t = base
    for piece in pieces:
        t.chains.update(piece.chains)
        for name, s in piece.affinity.items():
            t.sets.setdefault(name, s)
        for name, elements in piece.elements.items():
            t.sets[name].elements.update(elements)
    return t


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


def base_table(cfg: ProxyConfig, service_cidrs: Iterable[str] = ()) -> Table:
    t = Table()
    write_base(t, cfg, [c.strip() for c in service_cidrs if c.strip()])
    return t


def render_digest(d: Digest, cfg: ProxyConfig, service_cidrs: Iterable[str] = ()) -> NftRenderResult:
    pieces = render_pieces(d, cfg)
    t = compose(base_table(cfg, service_cidrs), pieces.values())
    return NftRenderResult(t, {key: set(p.chains) for key, p in pieces.items()}, dict(d.skipped))


def render(
    services: Iterable[Mapping[str, Any]],
    endpoint_slices: Iterable[Mapping[str, Any]],
    cfg: ProxyConfig,
    service_cidrs: Iterable[str] = (),
) -> NftRenderResult:
    """Render the whole table for the given objects (``service_cidrs``: the ClusterIP ranges
    whose unallocated addresses `cluster-ips-check` drops; none, no such rule)."""
    return render_digest(digest(services, endpoint_slices, cfg), cfg, service_cidrs)
