"""Work the benchmark runs *inside* one of its network namespaces (started with
``ip netns exec NS python -m kproxy.bench.worker JSON``), so every iptables command it makes
lands there. Prints one JSON object.

Tasks:
- ``bare``: time a restore text (a file) loaded alone: ``kproxy`` (the Proxier's exact input),
  ``onecommit`` (render.render()'s text in one commit, with the listing line) or ``nolisting``
  (that text without it).
- ``proxier``: a real Proxier (kproxy/proxy/proxier.py, its own restore) full sync of N generated
  Services, one-Service changes as partial syncs (with and without a change hint), the restore
  floor, then a full resync of the loaded table.
- ``save``: ``iptables-save`` without comments and counters, for an identity check.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from kproxy.bench import gen
from kproxy.api.meta import LABEL_SERVICE_NAME
from kproxy.bench.restore import RestoreError, RestoreTimeout, run_restore
from kproxy.bench.stats import summary
from kproxy.proxy.applier import Applier, IptablesError, restore_input
from kproxy.proxy.proxier import Proxier
from kproxy.proxy.render import LARGE_CLUSTER_ENDPOINTS_THRESHOLD, ProxyConfig, digest

CFG = dict(cluster_cidr="10.244.0.0/16", node_name="node-1", node_ips=["192.168.49.2"])


def bare(args: dict) -> dict:
    text = open(args["text"]).read()
    mode, timeout = args.get("mode", "kproxy"), args.get("timeout")
    start = time.monotonic()
    try:
        if mode == "kproxy":  # exactly what the Proxier's restore was fed (the listing line or not)
            run_restore(restore_input(text, args.get("listing")), timeout)
        elif mode == "onecommit":  # render.render()'s text, one commit, with the listing line
            run_restore(restore_input(text, True), timeout)
        elif mode == "nolisting":  # the same without the listing line (kproxy before issue 7)
            run_restore(text, timeout)
        else:
            raise ValueError(mode)
    except RestoreTimeout as e:
        return {"ok": False, "timed_out": True, "error": str(e), "seconds": time.monotonic() - start}
    except RestoreError as e:
        return {"ok": False, "timed_out": False, "error": str(e), "seconds": time.monotonic() - start}
    return {"ok": True, "seconds": time.monotonic() - start, "commits": text.count("\nCOMMIT")}


class TimedApplier(Applier):
    """The real applier, timing the listing of its jumps and canaries (a full sync runs it
    alongside the render; the missing ones go into the sync's restore)."""

    def __init__(self):
        self.jump_seconds = 0.0

    def missing_jumps(self) -> dict[str, list[str]]:
        t = time.monotonic()
        out = super().missing_jumps()
        self.jump_seconds = time.monotonic() - t
        return out


def _sync_record(res, name: str | None = None) -> dict:
    return {"service": name, "seconds": res.duration, "render": res.render_seconds,
            "restore": res.restore_seconds, "lines_restored": res.result.text.count("\n"), "applied": res.applied,
            "full": res.full}


def _changes(proxier: Proxier, services, slices, count: int, budget: float, first: int, kind: str,
             hint: bool) -> list[dict]:
    """``count`` one-Service changes, each followed by a Proxier sync with the complete lists
    (``hint`` False: the Proxier compares every object's signature) or with the changed key as
    well (``hint`` True: as the daemon calls it, from its ChangeTracker)."""
    out = []
    for name in gen.service_changes(services, slices, count, first, kind, hint, budget):
        changed = {f"{gen.NAMESPACE}/{name}"} if hint else None
        res = proxier.sync(services, slices, changed=changed)
        out.append(_sync_record(res, name))
    return out


def _floor(services, slices, timeout) -> dict:
    """The smallest restore that carries a jump: one endpoint chain rewritten with its same two
    rules. At 10,000 Services it is mostly the kernel's commit (see README)."""
    from kproxy.bench.restore import emit
    from kproxy.proxy.model import digest_service
    from kproxy.proxy.servicerules import render_service
    svc = services[0]
    mine = [sl for sl in slices if sl["metadata"]["labels"][LABEL_SERVICE_NAME] == svc["metadata"]["name"]]
    cfg = ProxyConfig(**CFG)
    large = digest(services, slices, cfg).total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
    r = render_service(digest_service(svc, mine, cfg), cfg, large)
    sep = next(c for c in r.chains if c.startswith("KUBE-SEP-"))
    text = emit("nat", [sep], r.chains, [sep])
    return summary([run_restore(text, timeout) for _ in range(5)])


def _summ(samples: list[dict]) -> dict:
    return {"samples": samples, "summary": summary([s["seconds"] for s in samples]),
            "render": summary([s["render"] for s in samples]), "restore": summary([s["restore"] for s in samples])}


def proxier_task(args: dict) -> dict:
    """A real Proxier (its own restore: streamed, in sections into the fresh netns, jumps included) in this
    netns: a full sync of N Services, then one-Service changes, then a full resync of the
    loaded table."""
    n, seed = args["n"], args.get("seed", 7)
    t0 = time.monotonic()
    services, slices = gen.cluster(n, seed)
    out: dict = {"n": n, "generate_seconds": time.monotonic() - t0}
    applier = TimedApplier()
    proxier = Proxier(ProxyConfig(**CFG), applier=applier)
    try:
        res = proxier.sync(services, slices, full=True)
    except IptablesError as e:
        out["full"] = {"ok": False, "timed_out": False, "error": str(e)[:800]}
        return out
    out["full"] = {"ok": True, **_sync_record(res), "rules": res.rules, "lines": res.result.text.count("\n"),
                   "jumps": applier.jump_seconds, "restore_only": res.restore_seconds,
                   "listing": proxier.last_listing, "sections": res.result.text.count("\nCOMMIT")}
    if args.get("text_out"):
        with open(args["text_out"], "w") as f:
            f.write(res.result.text)
    budget = args.get("budget", 120.0)
    changes = args.get("changes", 20)
    if not changes:
        return out
    try:
        out["partial_endpoints"] = _summ(_changes(proxier, services, slices, changes, budget, 0, "endpoints", False))
        out["hinted_endpoints"] = _summ(_changes(proxier, services, slices, changes, budget, 1000, "endpoints", True))
        adds = args.get("adds", 0)
        out["partial_add"] = _summ(_changes(proxier, services, slices, adds, budget / 2, 0, "add", False))
        out["hinted_add"] = _summ(_changes(proxier, services, slices, adds, budget / 2, 0, "add", True))
        out["floor"] = _floor(services, slices, args.get("timeout"))
        t = time.monotonic()
        res = proxier.sync(services, slices, full=True)
        out["resync"] = {"ok": True, "seconds": time.monotonic() - t, "render": res.render_seconds,
                         "restore": res.restore_seconds, "jumps": applier.jump_seconds}
    except IptablesError as e:
        out["partial_error"] = str(e)[:800]
    return out


def normalized_save() -> str:
    """iptables-save without comments (timestamps) and counters: equal rulesets compare equal."""
    text = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    lines = [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(lines) + "\n"


def save_task(args: dict) -> dict:
    text = normalized_save()
    with open(args["out"], "w") as f:
        f.write(text)
    return {"ok": True, "lines": text.count("\n")}


def main() -> None:
    args = json.loads(sys.argv[1])
    task = {"bare": bare, "proxier": proxier_task, "save": save_task}[args["task"]]
    print(json.dumps(task(args)))


if __name__ == "__main__":
    main()
