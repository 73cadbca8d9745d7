"""Prototypes of faster paths that would need changes outside the benchmark's files; the
benchmark measures them next to the real code and reports both, it never replaces the real one.

``fast_declare``: render.py's ``_Table.declare`` used to check ``chain not in self.declared`` on
a list, so a full render was O(chains²) (≈ 70,000 nat chains at 10,000 Services: 131 s). The
prototype keeps a set beside the list (same order, same output) while the context is active.
render.py now keeps ``declared`` as an ordered dict itself; then the prototype changes nothing.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

from kproxy.proxy import render


def declare_is_set_based() -> bool:
    """True when render.py's own declare is already O(1) (declared is a dict or set)."""
    return not isinstance(render._Table("probe").declared, list)


@contextmanager
def fast_declare():
    if declare_is_set_based():
        yield
        return
    original = render._Table.declare

    def declare(self, chain: str) -> None:
        seen = self.__dict__.get("_bench_seen")
        if seen is None:
            seen = self._bench_seen = set(self.declared)
        if chain not in seen:
            seen.add(chain)
            self.declared.append(chain)

    render._Table.declare = declare
    try:
        yield
    finally:
        render._Table.declare = original


class EventSync:
    """Prototype of an event-driven sync of one Service whose endpoints changed.

    The Proxier digests, fingerprints and renders *every* Service on each sync (O(N) Python:
    seconds at 10,000 Services) and rewrites the fixed chains (KUBE-SERVICES: one rule per
    Service). When an informer-style event names the one Service whose EndpointSlices changed,
    and the rules that Service puts in the fixed chains stay the same (it still has endpoints,
    the same ports, the same large-cluster mode), only its own KUBE-SVC/SVL/EXT/FW/SEP chains
    differ: this renders that Service alone (before and after, to check the fixed-chain rules),
    restores only its chains and deletes its stale ones — one small atomic restore. Returns None
    when the fixed chains would change: then a normal (partial) sync is needed.
    """

    def __init__(self, cfg: render.ProxyConfig, large_cluster: bool, service_chains: dict[str, set[str]], restore):
        self.cfg = cfg
        self.large_cluster = large_cluster
        self.service_chains = {k: set(v) for k, v in service_chains.items()}
        self.restore = restore
        self.last_restore_seconds = 0.0

    def _render_one(self, svc: dict, slices: list[dict]):
        d = render.digest([svc], slices, self.cfg)
        r = render._Renderer(self.cfg, large_cluster=self.large_cluster)
        r.write_base()
        for sp in d.ports:
            r.write_service_port(sp, d.port_endpoints(sp))
        return r

    @staticmethod
    def _fixed_rows(r) -> tuple:
        rows = []
        for table in (r.filter, r.nat):
            for chain in table.declared:
                if not render.ch.is_service_chain(chain):
                    rows.append((table.name, chain, tuple(table.rules.get(chain, []))))
        return tuple(rows)

    def endpoints_changed(self, svc: dict, old_slices: list[dict], new_slices: list[dict]) -> str | None:
        """Program the new endpoints of ``svc``; returns the restore text, or None (fallback)."""
        from kproxy.bench.restore import emit

        before, after = self._render_one(svc, old_slices), self._render_one(svc, new_slices)
        if self._fixed_rows(before) != self._fixed_rows(after):
            return None
        m = svc["metadata"]
        key = f"{m.get('namespace') or 'default'}/{m['name']}"
        new = after.service_chains.get(key, set())
        chains = [c for c in after.nat.declared if c in new]
        stale = sorted(self.service_chains.get(key, set()) - new)
        text = emit("nat", chains + stale, after.nat.rules, chains, stale)
        start = time.monotonic()
        self.restore(text)
        self.last_restore_seconds = time.monotonic() - start
        self.service_chains[key] = set(new)
        return text
