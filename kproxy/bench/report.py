"""The benchmark's report, apart from the measuring: the issue 7 targets, the table's rows
(section by section, with PASS/FAIL against the targets), the PNG figure, and the files
results/bench-<time>.{json,txt,png} (copied to bench-latest.*). It reads only the results dict,
so a run's JSON can be rendered again.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from kproxy.bench import api, nftables
from kproxy.bench.plot import Canvas, bar_panel, line_panel
from kproxy.bench.session import Bench, log
from kproxy.bench.table import fmt_ratio, fmt_seconds, format_table, verdict

# Targets of issue 7
TARGET_CHANGE = 0.100        # one-Service change at 10,000 Services live
TARGET_FULL_RATIO = 1.2      # full sync / bare iptables-restore of the same text
TARGET_E2E_P99 = 1.0         # network programming latency p99 at 1,000 Services
TARGET_PODS_100 = 10.0       # 100 pods Ready
TARGET_THROUGHPUT = 0.9      # ClusterIP / direct


def table_rows(r: dict, T: float) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """The table's sections [(title, [(what, value, target, verdict)])] of results ``r``; ``T``
    is --restore-timeout (a killed restore is shown as more than it)."""
    sections = []
    rows = []
    for n, v in sorted(r["render"].items()):
        rows.append((f"render {n} Services ({v['rules']} rules, {v['nat_chains']} nat chains)",
                     fmt_seconds(v["seconds"]), "", ""))
    sections.append(("1. render: parsed objects -> restore text (render.render)", rows))

    def bare(v: dict) -> str:
        if not v:
            return "-"
        if v.get("ok"):
            return fmt_seconds(v["seconds"])
        return f"> {T:.0f} s (killed)" if v.get("timed_out") else "error"

    rows = []
    for n, v in sorted(r["sync"].items()):
        bk, bo, bn = (v["bare"].get(m, {}) for m in ("kproxy", "onecommit", "nolisting"))
        pk = v["proxier"].get("kproxy", {})
        how = f"{pk.get('sections', 1)} commits" + (", with its -S listing line" if pk.get("listing") else "")
        rows.append((f"{n}: bare iptables-restore --noflush of the Proxier's input ({how}; jumps)",
                     bare(bk), "", ""))
        if pk.get("ok"):
            ratio = pk["seconds"] / bk["seconds"] if bk.get("ok") else None
            jumps = (f"jump listing alongside {fmt_seconds(pk['jumps'])}" if pk.get("jumps")
                     else "jumps read from its chain listing")
            rows.append((f"{n}: Proxier full sync (render, streamed {fmt_seconds(pk.get('render'))}; rest of the "
                         f"restore {fmt_seconds(pk.get('restore_only'))}; {jumps})",
                         fmt_seconds(pk.get("seconds")), "", ""))
            rows.append((f"{n}: full sync / bare restore of the same input", fmt_ratio(ratio),
                         f"<= {TARGET_FULL_RATIO}x", verdict(ratio, TARGET_FULL_RATIO)))
        else:
            rows.append((f"{n}: Proxier full sync", pk.get("error", "n/a")[:60], "", "FAIL"))
        for b, mode, what in ((bo, "onecommit", "render.render()'s text in one commit, listing line (kproxy before)"),
                              (bn, "nolisting", "that text without the listing line (before issue 7)")):
            if not b:
                continue
            same = v["identical"].get(mode)
            label = f"{n}: bare, {what}" + (f", same KUBE rules: {same}" if same is not None else "")
            rows.append((label, "not run (a smaller size was killed)" if b.get("skipped") else bare(b), "", ""))
            if mode == "onecommit" and pk.get("ok") and b.get("ok"):
                rows.append((f"{n}: full sync / bare one-commit restore of the same rules",
                             fmt_ratio(pk["seconds"] / b["seconds"]), "", "info"))
        rs = (r["change"].get(n) or {}).get("resync") or {}
        if rs.get("ok"):
            rows.append((f"{n}: full resync of the loaded table (restore {fmt_seconds(rs.get('restore'))})",
                         fmt_seconds(rs["seconds"]), "", ""))
    sections.append(("2. full sync vs bare iptables-restore of the same input", rows))

    rows = []
    for n, v in sorted(r["change"].items()):
        target = f"<= {TARGET_CHANGE * 1000:.0f} ms" if n == max(r["change"]) else ""
        for key, what in (("partial_endpoints", "partial sync, no hint (every object compared)"),
                          ("hinted_endpoints", "partial sync with the changed key (as the daemon calls it)")):
            pe = v.get(key) or {}
            sm = pe.get("summary", {})
            if not sm.get("n"):
                continue
            rows.append((f"{n}: {what} p50 / p99 (n={sm['n']}; restore p50 "
                         f"{fmt_seconds(pe.get('restore', {}).get('p50'))})",
                         f"{fmt_seconds(sm.get('p50'))} / {fmt_seconds(sm.get('p99'))}", target,
                         verdict(sm.get("p99"), TARGET_CHANGE) if target else ""))
        for key, what in (("partial_add", "a Service added"), ("hinted_add", "a Service added, with its key")):
            pa = (v.get(key) or {}).get("summary", {})
            if pa.get("n"):
                rows.append((f"{n}: partial sync, {what}, p50 (n={pa['n']})", fmt_seconds(pa.get("p50")), "", ""))
        fl = v.get("floor") or {}
        if fl.get("n"):
            rows.append((f"{n}:   floor: restore of one unchanged 2-rule endpoint chain, p50 / min",
                         f"{fmt_seconds(fl.get('p50'))} / {fmt_seconds(fl.get('min'))}", "", "info"))
        if v.get("partial_error"):
            rows.append((f"{n}: partial sync error", v["partial_error"][:60], "", "FAIL"))
    sections.append(("3a. one-Service change (endpoints) at the Proxier", rows))
    sections += nftables.report_rows(r)  # the same sections in nftables mode

    rows = []
    for n, v in sorted((k, v) for k, v in r["e2e"].items() if isinstance(k, int)):
        live, conn = v.get("rules_live", {}), v.get("first_connection", {})
        target = f"<= {TARGET_E2E_P99:.0f} s" if n == 1000 else ""
        rows.append((f"{n}: initial programming of {n} Services", fmt_seconds(v.get("initial_programming_seconds")),
                     "", ""))
        if v.get("manifest_reload_seconds") is not None:
            rows.append((f"{n}: parsing the whole folder once ({v['manifest_documents']} documents; the daemon "
                         f"caches per file)",
                         fmt_seconds(v["manifest_reload_seconds"]), "", ""))
        if live:
            rows.append((f"{n}: new Service file -> rules live p50 / p99 (n={live.get('n', 0)})",
                         f"{fmt_seconds(live.get('p50'))} / {fmt_seconds(live.get('p99'))}", target,
                         verdict(live.get("p99"), TARGET_E2E_P99) if target else ""))
            rows.append((f"{n}: new Service file -> first connection p50 / p99",
                         f"{fmt_seconds(conn.get('p50'))} / {fmt_seconds(conn.get('p99'))}", target,
                         verdict(conn.get("p99"), TARGET_E2E_P99) if target else ""))
    sections.append(("3b. end to end in a sandboxed lab (kproxy up --sandbox)", rows))

    rows = []
    for k, v in sorted(r["pods"].items()):
        target = f"<= {TARGET_PODS_100:.0f} s" if k == 100 else ""
        label = f"{k} pods Ready" if v["replicas"] == k else f"{k} pods requested, capped at {v['replicas']}: Ready"
        value = fmt_seconds(v["seconds"]) if v["seconds"] is not None else f"{v['ready']}/{v['replicas']} in {v['limit']:.0f} s"
        rows.append((label, value, target, verdict(v["seconds"], TARGET_PODS_100) if target else ""))
        rows.append((f"  memory: daemon RSS / pods RSS (PSS) over {v['pod_processes']} processes",
                     f"{v['daemon_rss_mib']:.0f} MiB / {v['pods_rss_mib']:.0f} MiB ({v['pods_pss_mib']:.0f})", "", ""))
    sections.append(("4. pods", rows))

    rows = []
    d = r["dataplane"]
    if d:
        for name in ("direct", "clusterip"):
            x = d[name]
            rows.append((f"{'pod IP directly' if name == 'direct' else 'through the ClusterIP'}: requests (= new "
                         f"connections)/s; latency p50 / p99", f"{x['requests_per_second']:.0f}/s; "
                         f"{fmt_seconds(x['latency_p50'])} / {fmt_seconds(x['latency_p99'])}", "", ""))
        rows.append((f"ClusterIP / direct throughput, median of {len(d.get('round_ratios', []))} rounds ("
                     + " ".join(f"{x:.2f}" for x in d.get("round_ratios", [])) + ")"
                     + ("; pod server and wrk pinned to CPUs 1 and 0" if d.get("pinned") else ""),
                     fmt_ratio(d["ratio"]), f">= {TARGET_THROUGHPUT}x",
                     verdict(d["ratio"], TARGET_THROUGHPUT, higher_is_better=True)))
    b = r["balance"]
    if b:
        rows.append((f"balance: {b['total']} connections over {b['endpoints']} endpoints, max/min",
                     fmt_ratio(b["max_min_ratio"]), "", ""))
        rows.append((f"balance: chi-square {b['chi2']:.2f} (df {b['df']}), p-value", f"{b['p_value']:.3f}",
                     ">= 0.01 (uniform)", verdict(b["p_value"], 0.01, higher_is_better=True)))
    sections.append(("5-6. data plane and balance (from the node netns)", rows))
    if r.get("api"):
        sections.append(api.table_section(r))
    return sections


def plot(r: dict, T: float, path: Path) -> None:
    """The figure of results ``r`` as a PNG at ``path`` (full sync, one-Service change, pods,
    data plane, balance)."""
    c = Canvas(1400, 1000)
    c.text(700, 8, f"KPROXY BENCHMARK  {r['machine'].get('nproc')} CORES  {r['machine'].get('kernel')}  "
                   f"{r['machine'].get('iptables')}", scale=2, anchor="center")

    def pts(getter) -> list:
        out = []
        for n, v in sorted(r["sync"].items()):
            got = getter(n, v)
            if got is not None:
                out.append((n, *got) if isinstance(got, tuple) else (n, got))
        return out

    def bare(mode):
        def g(n, v):
            x = v["bare"].get(mode, {})
            if x.get("ok"):
                return x["seconds"]
            if x.get("timed_out"):
                return (T, True)
            return None
        return g

    series = [
        {"label": "render.render", "points": [(n, v["seconds"]) for n, v in sorted(r["render"].items())]},
        {"label": "bare restore, Proxier's input", "points": pts(bare("kproxy"))},
        {"label": "bare restore, one commit", "points": pts(bare("onecommit"))},
        {"label": "bare restore, no listing line", "points": pts(bare("nolisting"))},
        {"label": "Proxier full sync", "points": pts(lambda n, v: v["proxier"].get("kproxy", {}).get("seconds"))},
        {"label": "full resync, loaded table",
         "points": [(n, v["resync"]["seconds"]) for n, v in sorted(r["change"].items())
                    if (v.get("resync") or {}).get("ok")]},
    ]
    line_panel(c, (10, 40, 680, 470), "FULL SYNC (SECONDS)", series, "SERVICES", "SECONDS, LOG; TRIANGLE = KILLED AT LIMIT")

    def change(key, q):
        return [(n, v[key]["summary"][q]) for n, v in sorted(r["change"].items())
                if v.get(key) and v[key]["summary"].get("n")]

    e2e = [(n, v) for n, v in sorted((k, v) for k, v in r["e2e"].items() if isinstance(k, int)) if v.get("rules_live")]
    series = [
        {"label": "Proxier partial sync p99", "points": change("partial_endpoints", "p99")},
        {"label": "Proxier partial sync p50", "points": change("partial_endpoints", "p50")},
        {"label": "partial sync with key p99", "points": change("hinted_endpoints", "p99")},
        {"label": "one-chain restore floor", "points": [(n, v["floor"]["p50"]) for n, v in sorted(r["change"].items())
                                                        if (v.get("floor") or {}).get("n")]},
        {"label": "lab: rules live p99", "points": [(n, v["rules_live"]["p99"]) for n, v in e2e if v["rules_live"].get("n")]},
        {"label": "lab: first connection p99", "points": [(n, v["first_connection"]["p99"]) for n, v in e2e
                                                          if v["first_connection"].get("n")]},
        {"label": "target 100 ms", "color": (160, 160, 160), "points": [(100, 0.1), (10000, 0.1)]},
    ]
    line_panel(c, (710, 40, 680, 470), "ONE-SERVICE CHANGE (SECONDS)", series, "SERVICES", "SECONDS, LOG")
    groups = [(f"{k}" if v["replicas"] == k else f"{k}->{v['replicas']}", [("seconds to Ready", v["seconds"])])
              for k, v in sorted(r["pods"].items())]
    bar_panel(c, (10, 540, 450, 450), "PODS TO READY", groups, "SECONDS",
              note="TARGET 100 PODS IN 10 S; A->B: CAPPED (NODE /24 POD CIDR)")
    groups = []
    if r["dataplane"]:
        d = r["dataplane"]
        groups = [("DIRECT", [("req/s", d["direct"]["requests_per_second"])]),
                  ("CLUSTERIP", [("req/s", d["clusterip"]["requests_per_second"])])]
    bar_panel(c, (475, 540, 450, 450), "DATA PLANE (WRK)", groups, "REQUESTS (NEW CONNECTIONS) PER SECOND",
              note=f"CLUSTERIP/DIRECT = {r['dataplane']['ratio']:.2f}" if r["dataplane"] else "")
    groups = []
    if r["balance"]:
        b = r["balance"]
        groups = [(f"EP{i}", [("connections", float(cnt))]) for i, cnt in enumerate(b["counts"])]
    bar_panel(c, (940, 540, 450, 450), "BALANCE", groups, "CONNECTIONS PER ENDPOINT",
              note=(f"{r['balance']['total']} CONNECTIONS, MAX/MIN {r['balance']['max_min_ratio']:.2f}, "
                    f"P={r['balance']['p_value']:.2f}") if r["balance"] else "")
    path.write_bytes(c.png())



def write_outputs(bench: Bench, folder: Path) -> None:
    """Print the table (with the machine and the notes) and write it, the JSON and the PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    table = format_table(table_rows(bench.res, bench.args.restore_timeout))
    notes = "\n".join(f"- {n}" for n in bench.res["notes"])
    m = bench.res["machine"]
    head = (f"kproxy benchmark — {m.get('nproc')} cores ({m.get('cpu')}), {m.get('memory_gib')} GiB, kernel "
            f"{m.get('kernel')}, Debian {m.get('debian')}, {m.get('iptables')}\n"
            f"command: {bench.res['command']}\n\n")
    text = head + table + ("\nnotes:\n" + notes + "\n" if notes else "")
    print(text)
    js = json.dumps(bench.res, indent=1, default=str)
    for name in (f"bench-{stamp}", "bench-latest"):
        (folder / f"{name}.json").write_text(js)
        (folder / f"{name}.txt").write_text(text)
    try:
        plot(bench.res, bench.args.restore_timeout, folder / f"bench-{stamp}.png")
        shutil.copy(folder / f"bench-{stamp}.png", folder / "bench-latest.png")
    except Exception as e:  # noqa: BLE001 - a broken plot must not lose the figures
        log(f"plot failed: {type(e).__name__}: {e}")
    log(f"results in {folder}/bench-{stamp}.{{json,txt,png}} (and bench-latest.*)")

