"""The benchmark's sync and change sections in nftables mode, beside the iptables ones (same
generated Services, same sizes): a real NftSyncer (kproxy/proxy/nft/syncer.py) in a fresh
netns, and where its time goes.

Per size, in netns of its own (``python -m kproxy.bench.nftables JSON`` runs inside one):

- ``full``: the syncer's first full sync (render, listing, the Services' chains in sections of
  SECTION_SERVICES, then one transaction with the rest);
- ``bare``: the same table as ONE transaction (upstream's first sync, and kproxy's before the
  sections) loaded with a bare `nft -f` into another fresh netns (the target: full sync within
  1.2x of it);
- one-Service changes as partial syncs, with the changed key (as the daemon calls it) and
  without (every object compared), and Services added;
- where a partial sync's time goes: ``cache``, an element added and deleted in one `nft -f`
  (a real commit, no net change): nft fills its cache first as for any `add rule`/`add element`
  (nft 1.0.6 dumps every chain of the ruleset);
  ``nocache``, a transaction nft needs no cache for (`add table` + `flush chain` of a scratch
  chain): process start + the kernel's commit, the floor of the `nft` CLI; ``check``, the
  partial transaction's shape run with `nft -c` (cache, evaluation and the kernel's prepare,
  no commit); ``libnftables``, the ``cache`` transaction through libnftables in this process
  (ctypes, one context kept: the cache is dumped again after each commit all the same), to
  tell the process start from the cache fill;
- ``resync``: a full sync into the loaded table, when the first one took under RESYNC_BELOW s.

Everything runs in ``kpbench<4hex>-nft…`` namespaces, removed at the end (Cleanup).
"""
from __future__ import annotations

import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kproxy.bench import gen, stats
from kproxy.bench.sandbox import Cleanup, run_worker
from kproxy.bench.session import Bench, log
from kproxy.bench.table import fmt_ratio, fmt_seconds, verdict

CFG = dict(cluster_cidr="10.244.0.0/16", node_name="node-1", node_ips=["192.168.49.2"])
SERVICE_CIDR = "10.100.0.0/16"
RESYNC_BELOW = 30.0   # a full resync of the loaded table is measured when the first sync took less
REPEAT_BELOW = 10.0   # bare loads under this are taken 3 times (median)
TARGET_CHANGE = 0.100
TARGET_FULL_RATIO = 1.2


# ------------------------------------------------------------------ inside the netns


def _nft(text: str, *flags: str) -> float:
    t = time.monotonic()
    res = subprocess.run(["nft", *flags, "-f", "-"], input=text, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nft -f failed: {res.stderr.strip()[:400]}")
    return time.monotonic() - t


def _median(fn, k: int = 5) -> float:
    return statistics.median(fn() for _ in range(k))


def _libnftables(text: str, k: int = 5) -> float | None:
    """The same transaction through libnftables in this process (no process start); None when
    the library is not there."""
    try:
        lib = ctypes.CDLL("libnftables.so.1")
    except OSError:
        return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_ctx_buffer_output.argtypes = lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    ctx = lib.nft_ctx_new(0)
    lib.nft_ctx_buffer_output(ctx)
    lib.nft_ctx_buffer_error(ctx)
    try:
        lib.nft_run_cmd_from_buffer(ctx, text.encode())  # the first run loads what it needs
        samples = []
        for _ in range(k):
            t = time.monotonic()
            if lib.nft_run_cmd_from_buffer(ctx, text.encode()) != 0:
                return None
            samples.append(time.monotonic() - t)
        return statistics.median(samples)
    finally:
        lib.nft_ctx_free(ctx)


def _changes(syncer, services, slices, count: int, first: int, kind: str, hint: bool, budget: float) -> dict:
    out = []
    for name in gen.service_changes(services, slices, count, first, kind, hint, budget):
        res = syncer.sync(services, slices, changed={f"{gen.NAMESPACE}/{name}"} if hint else None)
        if res.full:
            raise RuntimeError(f"a one-Service change was a full sync ({name})")
        out.append({"seconds": res.duration, "render": res.render_seconds, "nft": res.restore_seconds,
                    "lines": res.transaction.count("\n")})
    return {"samples": out, "summary": stats.summary([s["seconds"] for s in out]),
            "render": stats.summary([s["render"] for s in out]), "nft": stats.summary([s["nft"] for s in out]),
            "lines": statistics.median(s["lines"] for s in out) if out else 0}


def sync_task(args: dict) -> dict:
    from kproxy.proxy.conntrack import Conntrack
    from kproxy.proxy.model import ProxyConfig
    from kproxy.proxy.nft.names import TABLE
    from kproxy.proxy.nft.syncer import NftError, NftSyncer

    n = args["n"]
    services, slices = gen.cluster(n, args.get("seed", 7))
    syncer = NftSyncer(ProxyConfig(**CFG), [SERVICE_CIDR], conntrack=Conntrack(run=lambda a: None))
    out: dict = {"n": n, "load": os.getloadavg()[0]}
    try:
        res = syncer.sync(services, slices, full=True)
    except NftError as e:
        out["full"] = {"ok": False, "error": str(e)[:800]}
        return out
    out["full"] = {"ok": True, "seconds": res.duration, "render": res.render_seconds, "nft": res.restore_seconds,
                   "lines": res.transaction.count("\n"),
                   "chains": sum(len(c) for c in res.result.service_chains.values())}
    from kproxy.proxy.nft.render import render
    # the comparator: the whole table as ONE transaction (upstream's first sync; the syncer
    # itself sends a big first sync as sections, then one transaction with the rest)
    Path(args["text_out"]).write_text(render(services, slices, ProxyConfig(**CFG), [SERVICE_CIDR]).transaction)
    changes = args.get("changes", 0)
    if not changes:
        return out
    budget = args.get("budget", 120.0)
    try:
        out["hinted_endpoints"] = _changes(syncer, services, slices, changes, 1000, "endpoints", True, budget)
        out["partial_endpoints"] = _changes(syncer, services, slices, changes, 0, "endpoints", False, budget)
        out["hinted_add"] = _changes(syncer, services, slices, args.get("adds", 3), 0, "add", True, budget / 2)
        # where the time goes (see the module docstring)
        cache = (f"add element ip {TABLE} cluster-ips {{ 10.255.255.254 }}\n"
                 f"delete element ip {TABLE} cluster-ips {{ 10.255.255.254 }}\n")  # a real commit, no net change
        out["cache"] = _median(lambda: _nft(cache))
        nocache = f"add table ip {TABLE}\nflush chain ip {TABLE} mark-for-masquerade-bench\n"
        _nft(f"add chain ip {TABLE} mark-for-masquerade-bench\n")
        out["nocache"] = _median(lambda: _nft(nocache))
        _nft(f"delete chain ip {TABLE} mark-for-masquerade-bench\n")
        piece = syncer._pieces[next(iter(syncer._pieces))]  # noqa: SLF001 - a Service's chains, rewritten as-is
        shape = "".join(f"{c.declaration()}\nflush chain ip {TABLE} {name}\n"
                        + "".join(f"add rule ip {TABLE} {name} {r}\n" for r in c.rules)
                        for name, c in sorted(piece.chains.items()))
        out["check"] = _median(lambda: _nft(shape, "-c"))
        out["same_shape"] = _median(lambda: _nft(shape))
        out["libnftables"] = _libnftables(cache)
        if out["full"]["seconds"] < RESYNC_BELOW:
            t = time.monotonic()
            res = syncer.sync(services, slices, full=True)
            out["resync"] = {"ok": True, "seconds": time.monotonic() - t, "render": res.render_seconds,
                             "nft": res.restore_seconds}
    except (NftError, RuntimeError) as e:
        out["partial_error"] = str(e)[:800]
    return out


def bare_task(args: dict) -> dict:
    t = time.monotonic()
    res = subprocess.run(["nft", "-f", args["text"]], capture_output=True, text=True)
    seconds = time.monotonic() - t
    if res.returncode != 0:
        return {"ok": False, "error": res.stderr.strip()[:800], "seconds": seconds}
    return {"ok": True, "seconds": seconds, "load": os.getloadavg()[0]}


# ------------------------------------------------------------------ the driver


def run_in(cleanup: Cleanup, netns: str, payload: dict, timeout: float) -> dict:
    """This module's worker inside ``netns`` (killed with its process group after ``timeout``)."""
    return run_worker(cleanup, netns, payload, timeout, module="kproxy.bench.nftables")


def sync_size(bench: Bench, n: int) -> None:
    """The nftables mode at ``n`` Services: bench.res["nft"][n]."""
    a = bench.args
    r: dict = {}
    bench.res.setdefault("nft", {})[n] = r
    changes = a.changes if "change" not in a.skip else 0
    text = bench.tmp / f"nft-{n}.txt"
    timeout = max(600.0, min(1800.0, bench.left()))
    log(f"{n} Services: nftables mode: full sync" + (f", then {changes} changes" if changes else ""))
    ns = bench.cleanup.new_netns(f"nft{n}")
    try:
        out = run_in(bench.cleanup, ns, {"task": "sync", "n": n, "seed": a.seed, "changes": changes,
                                         "text_out": str(text), "budget": max(30.0, min(240.0, bench.left() / 4))},
                     timeout)
    finally:
        bench.cleanup.del_netns(ns)
    r.update(out)
    if "sync" in a.skip or not text.exists():
        return
    runs = []
    for rep in range(3):
        log(f"{n} Services: nftables mode: bare nft -f of the same transaction" + (f" (again, {rep})" if rep else ""))
        ns = bench.cleanup.new_netns(f"nftb{n}")
        try:
            got = run_in(bench.cleanup, ns, {"task": "bare", "text": str(text)}, timeout)
        finally:
            bench.cleanup.del_netns(ns)
        runs.append(got)
        if not got.get("ok") or got["seconds"] >= REPEAT_BELOW:
            break
    ok = sorted(x["seconds"] for x in runs if x.get("ok"))
    r["bare"] = {"ok": bool(ok), "seconds": stats.percentile(ok, 50) if ok else None, "runs": runs}
    text.unlink(missing_ok=True)


def report_rows(r: dict) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """The report's nftables sections (report.table_rows adds them after the iptables ones)."""
    nft = {int(k): v for k, v in (r.get("nft") or {}).items()}
    if not nft:
        return []
    rows = []
    for n, v in sorted(nft.items()):
        full, bare = v.get("full") or {}, v.get("bare") or {}
        if not full.get("ok"):
            rows.append((f"{n}: nftables full sync", str(full.get("error", "n/a"))[:60], "", "FAIL"))
            continue
        rows.append((f"{n}: nftables full sync (render {fmt_seconds(full.get('render'))}, nft -f "
                     f"{fmt_seconds(full.get('nft'))}, {full.get('lines')} lines; load {v.get('load', 0):.1f})",
                     fmt_seconds(full["seconds"]), "", ""))
        if bare.get("ok"):
            ratio = full["seconds"] / bare["seconds"]
            rows.append((f"{n}: nftables full sync / bare nft -f of the same transaction "
                         f"({fmt_seconds(bare['seconds'])})", fmt_ratio(ratio), f"<= {TARGET_FULL_RATIO}x",
                         verdict(ratio, TARGET_FULL_RATIO)))
        if (v.get("resync") or {}).get("ok"):
            rows.append((f"{n}: nftables full resync of the loaded table", fmt_seconds(v["resync"]["seconds"]), "", ""))
    out = [("2n. nftables mode: full sync vs bare nft -f of the same transaction", rows)]
    rows = []
    top = max(nft)
    for n, v in sorted(nft.items()):
        for key, what in (("hinted_endpoints", "with the changed key (as the daemon calls it)"),
                          ("partial_endpoints", "no hint (every object compared)"),
                          ("hinted_add", "a Service added")):
            s = (v.get(key) or {}).get("summary") or {}
            if not s.get("n"):
                continue
            target = f"<= {TARGET_CHANGE * 1000:.0f} ms" if n == top and key == "hinted_endpoints" else ""
            value = f"{fmt_seconds(s.get('p50'))} / {fmt_seconds(s.get('p99'))}"
            rows.append((f"{n}: nftables partial sync, {what}, p50 / p99 (n={s['n']}; nft -f p50 "
                         f"{fmt_seconds(v[key]['nft'].get('p50'))})", value, target,
                         verdict(s.get("p99"), TARGET_CHANGE) if target else ""))
        if v.get("cache") is not None:
            lib = v.get("libnftables")
            rows.append((f"{n}:   where: element add+delete (nft cache fill + commit) / no-cache tx / the "
                         f"former in-process (libnftables)",
                         f"{fmt_seconds(v['cache'])} / {fmt_seconds(v.get('nocache'))} / "
                         f"{fmt_seconds(lib) if lib is not None else 'n/a'}", "", ""))
            rows.append((f"{n}:   a Service's chains rewritten: nft -c (no commit) / nft -f",
                         f"{fmt_seconds(v.get('check'))} / {fmt_seconds(v.get('same_shape'))}", "", ""))
        if v.get("partial_error"):
            rows.append((f"{n}: nftables partial sync error", v["partial_error"][:60], "", "FAIL"))
    out.append(("3n. nftables mode: one-Service change", rows))
    return out


def main() -> None:
    args = json.loads(sys.argv[1])
    print(json.dumps({"sync": sync_task, "bare": bare_task}[args["task"]](args)))


if __name__ == "__main__":
    main()
