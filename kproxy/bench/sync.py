"""The benchmark's sections on generated Services, no lab: render (render.render() of N
Services), then per proxy mode (--proxy-modes; nftables.py has the nftables side), sync (a real Proxier full sync into a fresh netns, then the very input it restored
loaded alone into fresh netns, with and without its listing line) and change (one-Service
partial syncs, the one-chain restore floor, a full resync of the loaded table). The Proxier runs
in kproxy.bench.worker inside the netns; this module drives it and folds the repeats.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from kproxy.bench import gen, nftables, stats
from kproxy.bench.sandbox import run_worker
from kproxy.bench.session import Bench, log
from kproxy.bench.worker import CFG
from kproxy.proxy import render

REPEATS = 3          # a measurement under REPEAT_BELOW seconds is taken 3 times, the median kept
REPEAT_BELOW = 10.0


def _kube_rules(path: Path) -> str:
    """The KUBE chains and their rules of an iptables-save, per table, without the canaries: the
    Proxier's input also adds the jumps from the built-in chains and the canaries (a mangle
    table), render.render()'s text does not."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("*"):
            out.append(line)
        elif line.startswith((":KUBE-", "-A KUBE-")) and "KUBE-PROXY-CANARY" not in line:
            out.append(line)
    return "\n".join(line for i, line in enumerate(out)
                     if not line.startswith("*") or (i + 1 < len(out) and not out[i + 1].startswith("*")))


def _repeat(prev: dict | None, new: dict, keys: tuple[str, ...] = ("seconds",)) -> dict:
    """Fold one more run into a result: the median of each key over the runs so far (all runs
    kept under "runs"); a failed run is kept as the result only when it is the first."""
    if prev is None:
        return {**new, "runs": [new]}
    before = prev.get("runs") or [{k: v for k, v in prev.items() if k != "runs"}]
    if not new.get("ok"):
        return {**prev, "runs": before + [new]}
    runs = [r for r in before + [new] if r.get("ok")]
    out = {**prev, "runs": before + [new]}
    for k in keys:
        vals = sorted(r[k] for r in runs if r.get(k) is not None)
        if vals:
            out[k] = stats.percentile(vals, 50)
    return out


def sizes_part(bench: Bench) -> None:
    """Per size: render.render() timed, then (unless sync and change are skipped) its text
    handed to sync_size() as the bare restores' input."""
    a = bench.args
    for n in a.sizes:
        if bench.left() < 30:
            bench.note(f"size {n}: skipped, the time budget is used up")
            continue
        services, slices = gen.cluster(n, a.seed)
        cfg = render.ProxyConfig(**CFG)
        log(f"{n} Services: render")
        t = time.perf_counter()
        result = render.render(services, slices, cfg)
        seconds = time.perf_counter() - t
        text = result.text
        bench.res["render"][n] = {
            "seconds": seconds, "lines": text.count("\n"), "bytes": len(text),
            "rules": sum(1 for line in text.splitlines() if line.startswith("-A ")),
            "nat_chains": len(result.nat_chains), "endpoints": sum(len(s["endpoints"]) for s in slices)}
        del result, services, slices
        if "sync" in a.skip and "change" in a.skip:
            continue
        path = bench.tmp / f"restore-{n}.txt"
        path.write_text(text)
        del text
        if "iptables" in a.proxy_modes:
            sync_size(bench, n, path)
        path.unlink(missing_ok=True)
        if "nftables" in a.proxy_modes:  # the same Services in nftables mode, side by side
            nftables.sync_size(bench, n)


def fit_notes(bench: Bench) -> None:
    """Extrapolate killed plain restores from the sizes that finished (t = c * n^k)."""
    done = [(n, v["bare"]["nolisting"]["seconds"]) for n, v in bench.res["sync"].items()
            if v["bare"].get("nolisting", {}).get("ok")]
    killed = [n for n, v in bench.res["sync"].items() if v["bare"].get("nolisting", {}).get("timed_out")]
    fit = stats.fit_power(done)
    if fit and killed and done:
        n0, t0 = max(done)
        n1 = min(killed)
        k_min = math.log(bench.args.restore_timeout / t0) / math.log(n1 / n0)
        bench.res["plain_restore_growth"] = {"fit_exponent": fit[1], "min_exponent_beyond": k_min}
        bench.note(f"restore without the listing line: t ~ n^{fit[1]:.2f} up to {n0} Services, then killed at "
                   f"{bench.args.restore_timeout:.0f} s at {n1}: from {n0} to {n1} it grows at least as n^{k_min:.2f}")


def sync_size(bench: Bench, n: int, path: Path) -> None:
    """A real Proxier full sync (+ one-Service changes + a resync of the loaded table) into a
    fresh netns, then into fresh netns each: the very input it restored, loaded alone
    (``kproxy``); render.render()'s text of the same objects as one commit with the listing
    line (``onecommit``: kproxy before the sections, upstream's shape) and without it
    (``nolisting``: kproxy before issue 7)."""
    a = bench.args
    T = a.restore_timeout
    r: dict = {"bare": {}, "proxier": {}, "identical": {}}
    bench.res["sync"][n] = r
    render_s = bench.res["render"].get(n, {}).get("seconds", 10)
    changes = a.changes if "change" not in a.skip else 0
    budget = max(30.0, min(240.0, bench.left() / 4))
    text_out = bench.tmp / f"proxier-{n}.txt"
    payload = {"task": "proxier", "n": n, "seed": a.seed, "timeout": T, "changes": changes,
               "adds": 3 if changes else 0, "budget": budget, "text_out": str(text_out)}
    log(f"{n} Services: Proxier full sync" + (f", then {changes} changes and a full resync" if changes else ""))
    ns = bench.cleanup.new_netns(f"prox{n}")
    try:
        out = run_worker(bench.cleanup, ns, payload, 6 * render_s + 3 * T + 5 * budget + 180)
    finally:
        bench.cleanup.del_netns(ns)
    full = out.get("full", out)
    listing = full.get("listing")
    if changes:
        bench.res["change"][n] = {k: out.get(k) for k in ("partial_endpoints", "hinted_endpoints", "partial_add",
                                                         "hinted_add", "floor", "resync", "partial_error")}
    for rep in range(1, REPEATS):
        if not full.get("ok") or full["seconds"] >= REPEAT_BELOW:
            break
        log(f"{n} Services: Proxier full sync again ({rep})")
        ns = bench.cleanup.new_netns(f"prox{n}")
        try:
            again = run_worker(bench.cleanup, ns, {**payload, "changes": 0, "adds": 0, "text_out": None},
                               3 * render_s + T + 180)
        finally:
            bench.cleanup.del_netns(ns)
        full = _repeat(full, again.get("full", again), keys=("seconds", "render", "restore", "restore_only", "jumps"))
    r["proxier"]["kproxy"] = full
    if "sync" not in a.skip and text_out.exists():
        saved: dict[str, Path] = {}
        smaller_killed = any(v["bare"].get("nolisting", {}).get("timed_out") for m, v in bench.res["sync"].items()
                             if m < n)
        for mode, text_path in (("kproxy", text_out), ("onecommit", path), ("nolisting", path)):
            if mode == "nolisting" and smaller_killed:
                r["bare"][mode] = {"ok": False, "skipped": True}
                continue
            for rep in range(REPEATS):
                log(f"{n} Services: bare {mode} restore into a fresh netns" + (f" (again, {rep + 1})" if rep else ""))
                ns = bench.cleanup.new_netns(f"{mode[:4]}{n}")
                try:
                    got = run_worker(bench.cleanup, ns, {"task": "bare", "text": str(text_path), "mode": mode,
                                                         "listing": listing, "timeout": T}, T + 120)
                    if rep == 0 and n <= 1000 and got.get("ok"):
                        out_path = bench.tmp / f"save-{mode}-{n}.txt"
                        run_worker(bench.cleanup, ns, {"task": "save", "out": str(out_path)}, 120)
                        saved[mode] = out_path
                finally:
                    bench.cleanup.del_netns(ns)
                r["bare"][mode] = _repeat(r["bare"].get(mode), got)
                if not got.get("ok") or got["seconds"] >= REPEAT_BELOW:
                    break
        for mode in ("onecommit", "nolisting"):
            if "kproxy" in saved and mode in saved:
                r["identical"][mode] = _kube_rules(saved[mode]) == _kube_rules(saved["kproxy"])
        for p in saved.values():
            p.unlink(missing_ok=True)
    text_out.unlink(missing_ok=True)
