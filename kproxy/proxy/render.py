"""Pure renderer of kube-proxy's iptables-mode ruleset: objects in, ``iptables-restore`` text out.

A port of what upstream's syncProxyRules (pkg/proxy/iptables/proxier.go, v1.32/v1.33) writes
into ``iptables-restore``, for a whole ruleset at once: ``kproxy rules --render``, the daemon's
search for a Service whose rules fail, the benchmark, and the tests that pin the output (golden
files, upstream's own cases). The Proxier, which keeps the kernel in step incrementally, uses the
same parts (model.digest, servicerules.ServiceWriter, fixedchains, restoretext), so its full
and partial syncs leave the kernel holding exactly this text's ruleset.

Nothing here touches the system, so the text can be diffed, logged and tested before it is
loaded. Only the IPv4 family is rendered (the labs are single-stack IPv4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from kproxy.proxy import restoretext as rt
from kproxy.proxy.fixedchains import write_base, write_trailer
from kproxy.proxy.model import LARGE_CLUSTER_ENDPOINTS_THRESHOLD, Digest, ProxyConfig, digest
from kproxy.proxy.servicerules import ServiceWriter


@dataclass
class RenderResult:
    """The restore input plus an index of what it declares."""

    text: str
    filter_chains: list[str]
    nat_chains: list[str]  # active chains; stale ones being deleted are in deleted_chains
    service_chains: dict[str, set[str]]  # "ns/name" -> its per-service nat chains
    deleted_chains: list[str] = field(default_factory=list)
    skipped_services: dict[str, str] = field(default_factory=dict)  # "ns/name" -> reason


def render(
    services: Iterable[Mapping[str, Any]],
    endpoint_slices: Iterable[Mapping[str, Any]],
    cfg: ProxyConfig,
    *,
    existing_nat_chains: Iterable[str] | None = None,
    changed: set[str] | None = None,
) -> RenderResult:
    """Render the iptables-restore input for the given objects.

    ``existing_nat_chains`` (the chains the nat table holds now) is optional: when given,
    stale KUBE-SVC/SVL/EXT/FW/SEP chains are flushed and deleted as upstream does.
    ``changed`` ("ns/name" keys) asks for a partial sync; see render_digest().
    """
    return render_digest(
        digest(services, endpoint_slices, cfg), cfg, existing_nat_chains=existing_nat_chains, changed=changed
    )


def render_digest(
    d: Digest,
    cfg: ProxyConfig,
    *,
    existing_nat_chains: Iterable[str] | None = None,
    changed: set[str] | None = None,
) -> RenderResult:
    """Render a digest; ``changed`` None is a full sync.

    With a set, as upstream's partial sync (tryPartialSync): the fixed chains are still
    written whole, but the KUBE-SVC/SVL/EXT/FW/SEP chains of services not in ``changed`` are
    neither declared nor written, so ``iptables-restore --noflush`` leaves them alone.
    ``service_chains`` stays complete, and unwritten chains still count as active.
    """
    r = ServiceWriter(cfg, large_cluster=d.total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD)
    write_base(cfg, r.filter, r.nat)
    for sp in d.ports:
        r.write_service_port(sp, d.port_endpoints(sp), write_chains=changed is None or sp.service_key in changed)
    if existing_nat_chains is not None:
        r.delete_stale(existing_nat_chains)
    write_trailer(cfg, r.filter, r.nat)

    text = rt.text([*r.filter.lines(), *r.nat.lines()])
    return RenderResult(
        text=text,
        filter_chains=list(r.filter.declared),
        nat_chains=list(r.nat.declared),
        service_chains=r.service_chains,
        deleted_chains=list(r.nat.deleted),
        skipped_services=dict(d.skipped),
    )

