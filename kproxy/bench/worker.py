"""Work the benchmark runs *inside* one of its network namespaces (started with
``ip netns exec NS python -m kproxy.bench.worker JSON``), so every iptables command it makes
lands there. Prints one JSON object.

Tasks:
- ``bare``: time a restore text (a file) loaded alone, in a given mode (see restore.py).
- ``proxier``: a real Proxier (kproxy/proxy/proxier.py) full sync of N generated Services, then
  one-Service changes as partial syncs: kproxy's own restore, then the DiffRestore prototype.
- ``save``: ``iptables-save`` without comments and counters, for an identity check.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import copy
from contextlib import nullcontext

from kproxy.bench import gen
from kproxy.bench.prototypes import EventSync, fast_declare
from kproxy.bench.restore import RestoreError, RestoreTimeout, SwitchableRestore, batches, run_restore, with_listing
from kproxy.bench.stats import summary
from kproxy.proxy.proxier import Proxier
from kproxy.proxy.render import LARGE_CLUSTER_ENDPOINTS_THRESHOLD, ProxyConfig, digest

CFG = dict(cluster_cidr="10.244.0.0/16", node_name="node-1", node_ips=["192.168.49.2"])


def bare(args: dict) -> dict:
    text = open(args["text"]).read()
    mode, timeout = args.get("mode", "plain"), args.get("timeout")
    start = time.monotonic()
    try:
        if mode == "plain":
            run_restore(text, timeout)
            parts = 1
        elif mode == "listing":
            run_restore(with_listing(text), timeout)
            parts = 1
        elif mode == "batched":
            chunks = batches(text, args.get("chains_per_batch", 2000))
            deadline = start + (timeout or 1e9)
            for chunk in chunks:
                run_restore(chunk, max(1.0, deadline - time.monotonic()))
            parts = len(chunks)
        else:
            raise ValueError(mode)
    except RestoreTimeout as e:
        return {"ok": False, "timed_out": True, "error": str(e), "seconds": time.monotonic() - start}
    except RestoreError as e:
        return {"ok": False, "timed_out": False, "error": str(e), "seconds": time.monotonic() - start}
    return {"ok": True, "seconds": time.monotonic() - start, "restores": parts}


def _sync_record(res, sw: SwitchableRestore, name: str | None = None) -> dict:
    return {"service": name, "seconds": res.duration, "render": res.render_seconds,
            "restore": res.restore_seconds, "lines_restored": sw.last_lines, "applied": res.applied,
            "full": res.full}


def _changes(proxier: Proxier, sw: SwitchableRestore, services, slices, count: int, budget: float,
             first: int, kind: str) -> list[dict]:
    out = []
    deadline = time.monotonic() + budget
    for c in range(count):
        if time.monotonic() > deadline:
            break
        if kind == "endpoints":
            name = gen.change_endpoints(slices, first + c)
        else:  # a new Service with two endpoints
            i = len(services)
            svc = gen.service(i, prefix="added", target_port=8080)
            services.append(svc)
            name = svc["metadata"]["name"]
            slices.append(gen.endpoint_slice(name, [gen.endpoint_ip(i), gen.endpoint_ip(i + 1)], port=8080))
        res = proxier.sync(services, slices)
        out.append(_sync_record(res, sw, name))
    return out


def _event_changes(proxier: Proxier, services, slices, count: int, budget: float, timeout) -> dict:
    """One-Service endpoint changes through the EventSync prototype (prototypes.py)."""
    last = proxier.sync(services, slices)  # in step; its result indexes every Service's chains
    cfg = proxier.cfg
    large = digest(services, slices, cfg).total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
    ev = EventSync(cfg, large, last.result.service_chains, lambda text: run_restore(text, timeout))
    by_name = {s["metadata"]["name"]: s for s in services}
    samples, fallbacks = [], 0
    deadline = time.monotonic() + budget
    for c in range(count):
        if time.monotonic() > deadline:
            break
        old = copy.deepcopy(slices)
        name = gen.change_endpoints(slices, 5000 + c)
        old_mine = [sl for sl in old if sl["metadata"]["labels"]["kubernetes.io/service-name"] == name]
        new_mine = [sl for sl in slices if sl["metadata"]["labels"]["kubernetes.io/service-name"] == name]
        start = time.monotonic()
        text = ev.endpoints_changed(by_name[name], old_mine, new_mine)
        seconds = time.monotonic() - start
        if text is None:
            fallbacks += 1
            continue
        samples.append({"service": name, "seconds": seconds, "restore": ev.last_restore_seconds,
                        "lines_restored": text.count("\n")})
    # The floor: rewriting one endpoint chain with the same two rules, the smallest restore that
    # still carries a jump; at 10,000 Services it is mostly the kernel's commit (see README).
    from kproxy.bench.restore import emit
    svc = services[0]
    mine = [sl for sl in slices if sl["metadata"]["labels"]["kubernetes.io/service-name"] == svc["metadata"]["name"]]
    r = ev._render_one(svc, mine)
    sep = next(c for c in r.nat.declared if c.startswith("KUBE-SEP-"))
    text = emit("nat", [sep], r.nat.rules, [sep])
    floor = [run_restore(text, timeout) for _ in range(5)]
    return {"samples": samples, "summary": summary([s["seconds"] for s in samples]),
            "restore": summary([s["restore"] for s in samples]), "fallbacks": fallbacks,
            "one_chain_restore": summary(floor)}


def proxier_task(args: dict) -> dict:
    n, seed = args["n"], args.get("seed", 7)
    t0 = time.monotonic()
    services, slices = gen.cluster(n, seed)
    out: dict = {"n": n, "generate_seconds": time.monotonic() - t0}
    sw = SwitchableRestore(args.get("full_mode", "plain"), timeout=args.get("timeout"))
    proxier = Proxier(ProxyConfig(**CFG), restore=sw)
    try:
        with fast_declare() if args.get("fast_declare_full") else nullcontext():
            res = proxier.sync(services, slices, full=True)
    except RestoreTimeout as e:
        out["full"] = {"ok": False, "timed_out": True, "mode": sw.mode, "error": str(e)}
        return out
    except RestoreError as e:
        out["full"] = {"ok": False, "timed_out": False, "mode": sw.mode, "error": str(e)}
        return out
    out["full"] = {"ok": True, "mode": sw.mode, **_sync_record(res, sw),
                   "rules": res.rules, "lines": res.result.text.count("\n"),
                   "restore_only": sw.last_seconds}
    if args.get("text_out"):
        with open(args["text_out"], "w") as f:
            f.write(res.result.text)
    budget = args.get("budget", 120.0)
    changes = args.get("changes", 20)
    try:
        sw.mode = "plain"
        eps = _changes(proxier, sw, services, slices, changes, budget, 0, "endpoints")
        out["partial_endpoints"] = {"samples": eps, "summary": summary([s["seconds"] for s in eps]),
                                    "render": summary([s["render"] for s in eps]),
                                    "restore": summary([s["restore"] for s in eps])}
        adds = _changes(proxier, sw, services, slices, args.get("adds", 0), budget / 2, 0, "add")
        out["partial_add"] = {"samples": adds, "summary": summary([s["seconds"] for s in adds])}
        sw.mode = "diff"
        diff = _changes(proxier, sw, services, slices, changes + 1, budget, 1000, "endpoints")[1:]  # 1st seeds
        out["diff_endpoints"] = {"samples": diff, "summary": summary([s["seconds"] for s in diff]),
                                 "render": summary([s["render"] for s in diff]),
                                 "restore": summary([s["restore"] for s in diff])}
        dadds = _changes(proxier, sw, services, slices, args.get("adds", 0), budget / 2, 0, "add")
        out["diff_add"] = {"samples": dadds, "summary": summary([s["seconds"] for s in dadds])}
        out["event_endpoints"] = _event_changes(proxier, services, slices, changes, budget, args.get("timeout"))
    except RestoreError as e:
        out["partial_error"] = str(e)
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
