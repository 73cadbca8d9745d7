"""scripts/bench: the whole benchmark, one command, in its own sandbox, bounded in time.

Sections (each can be skipped with --skip):
  render   render.render() of N generated Services
  sync     a real Proxier full sync into a fresh netns, then the very input it restored loaded
           alone into fresh netns (with its -S listing line, and without it for reference)
  change   one-Service changes as Proxier partial syncs (complete lists, and with a change
           hint), the one-chain restore floor, a full resync of the loaded table
  e2e      a sandboxed lab: N Services in its manifests folder, then one new Service file at a
           time: time to its rules in iptables-save and to the first answered connection
  dataplane wrk through a ClusterIP vs straight to the pod IP, from the node netns
  balance  10,000 connections through a ClusterIP: spread over the endpoints, chi-square
  pods     Deployments of 10 / 100 / 500 pods to Ready, RSS of daemon + pods
Results: results/bench-<time>.json, .png and .txt (the table), also copied to bench-latest.*.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kproxy.bench import gen, stats
from kproxy.bench.dataplane import BALANCE_CLIENT, parse_wrk
from kproxy.bench.plot import Canvas, bar_panel, line_panel
from kproxy.bench.sandbox import PY, BenchError, Cleanup, Lab, netns_pids, ready, rss_kib, run_worker
from kproxy.bench.table import fmt_ratio, fmt_seconds, format_table, verdict
from kproxy.bench.worker import CFG
from kproxy.api import manifest
from kproxy.config import LabConfig
from kproxy.proxy import render

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("render", "sync", "change", "e2e", "dataplane", "balance", "pods")

# Targets of issue 7
TARGET_CHANGE = 0.100        # one-Service change at 10,000 Services live
TARGET_FULL_RATIO = 1.2      # full sync / bare iptables-restore of the same text
TARGET_E2E_P99 = 1.0         # network programming latency p99 at 1,000 Services
TARGET_PODS_100 = 10.0       # 100 pods Ready
TARGET_THROUGHPUT = 0.9      # ClusterIP / direct


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000,5000,10000", help="Service counts for render/sync/change")
    ap.add_argument("--smoke", action="store_true", help="a quick run (< 1 min): 100 Services, 10 pods, short loads")
    ap.add_argument("--results", default=str(REPO / "results"), help="output folder (default results/)")
    ap.add_argument("--e2e-sizes", default="100,1000", help="Service counts for the end-to-end lab")
    ap.add_argument("--pods", default="10,100,500", help="Deployment sizes to bring to Ready")
    ap.add_argument("--changes", type=int, default=20, help="one-Service changes per size (>= 20 for p99)")
    ap.add_argument("--e2e-changes", type=int, default=20, help="new Service files per lab size")
    ap.add_argument("--restore-timeout", type=float, default=60.0,
                    help="seconds one iptables-restore may take before it is killed (reported as a lower bound)")
    ap.add_argument("--wrk-duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--wrk-rounds", type=int, default=6, help="direct/ClusterIP rounds (ABBA order; median ratio)")
    ap.add_argument("--balance-connections", type=int, default=10000)
    ap.add_argument("--balance-endpoints", type=int, default=5)
    ap.add_argument("--skip", default="", help=f"comma list of sections to skip: {','.join(SECTIONS)}")
    ap.add_argument("--max-minutes", type=float, default=25.0, help="overall budget; later sections shrink or skip")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install wrk when it is missing")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.e2e_sizes, args.pods = "100", "100", "10"
        args.e2e_changes = min(args.e2e_changes, 10)
        args.wrk_duration, args.wrk_rounds = 2, 2
        args.balance_connections, args.balance_endpoints = 1000, 3
        args.max_minutes = min(args.max_minutes, 3.0)
    args.sizes = sorted({int(x) for x in str(args.sizes).split(",") if x.strip()})
    args.e2e_sizes = sorted({int(x) for x in str(args.e2e_sizes).split(",") if x.strip()})
    args.pods = sorted({int(x) for x in str(args.pods).split(",") if x.strip()})
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


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


def machine() -> dict:
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
        mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem_kib = 0
    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else ""
    return {"nproc": out("nproc"), "kernel": out("uname", "-r"), "iptables": out("iptables", "--version"),
            "debian": debian, "cpu": model, "memory_gib": round(mem_kib / 1048576, 1),
            "python": platform.python_version(), "wrk": out("sh", "-c", "wrk -v 2>&1 | head -1")}


class Bench:
    def __init__(self, args: argparse.Namespace, cleanup: Cleanup):
        self.args = args
        self.cleanup = cleanup
        self.deadline = time.monotonic() + args.max_minutes * 60
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{cleanup.tag}-", dir="/tmp"))
        cleanup.paths.append(self.tmp)
        self.res: dict = {"command": "scripts/bench " + " ".join(sys.argv[1:]), "machine": machine(),
                          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sizes": args.sizes,
                          "render": {}, "sync": {}, "change": {}, "e2e": {}, "dataplane": {}, "balance": {},
                          "pods": {}, "notes": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def note(self, text: str) -> None:
        log(text)
        self.res["notes"].append(text)

    # ------------------------------------------------------------------ render + sync + change

    def sizes_part(self) -> None:
        a = self.args
        for n in a.sizes:
            if self.left() < 30:
                self.note(f"size {n}: skipped, the time budget is used up")
                continue
            services, slices = gen.cluster(n, a.seed)
            cfg = render.ProxyConfig(**CFG)
            log(f"{n} Services: render")
            t = time.perf_counter()
            result = render.render(services, slices, cfg)
            seconds = time.perf_counter() - t
            text = result.text
            self.res["render"][n] = {
                "seconds": seconds, "lines": text.count("\n"), "bytes": len(text),
                "rules": sum(1 for line in text.splitlines() if line.startswith("-A ")),
                "nat_chains": len(result.nat_chains), "endpoints": sum(len(s["endpoints"]) for s in slices)}
            del result, services, slices
            if "sync" in a.skip and "change" in a.skip:
                continue
            path = self.tmp / f"restore-{n}.txt"
            path.write_text(text)
            del text
            self.sync_size(n, path)
            path.unlink(missing_ok=True)

    def fit_notes(self) -> None:
        """Extrapolate killed plain restores from the sizes that finished (t = c * n^k)."""
        done = [(n, v["bare"]["nolisting"]["seconds"]) for n, v in self.res["sync"].items()
                if v["bare"].get("nolisting", {}).get("ok")]
        killed = [n for n, v in self.res["sync"].items() if v["bare"].get("nolisting", {}).get("timed_out")]
        fit = stats.fit_power(done)
        if fit and killed and done:
            n0, t0 = max(done)
            n1 = min(killed)
            k_min = math.log(self.args.restore_timeout / t0) / math.log(n1 / n0)
            self.res["plain_restore_growth"] = {"fit_exponent": fit[1], "min_exponent_beyond": k_min}
            self.note(f"restore without the listing line: t ~ n^{fit[1]:.2f} up to {n0} Services, then killed at "
                      f"{self.args.restore_timeout:.0f} s at {n1}: from {n0} to {n1} it grows at least as n^{k_min:.2f}")

    def sync_size(self, n: int, path: Path) -> None:
        """A real Proxier full sync (+ one-Service changes + a resync of the loaded table) into a
        fresh netns, then into fresh netns each: the very input it restored, loaded alone
        (``kproxy``); render.render()'s text of the same objects as one commit with the listing
        line (``onecommit``: kproxy before the sections, upstream's shape) and without it
        (``nolisting``: kproxy before issue 7)."""
        a = self.args
        T = a.restore_timeout
        r: dict = {"bare": {}, "proxier": {}, "identical": {}}
        self.res["sync"][n] = r
        render_s = self.res["render"].get(n, {}).get("seconds", 10)
        changes = a.changes if "change" not in a.skip else 0
        budget = max(30.0, min(240.0, self.left() / 4))
        text_out = self.tmp / f"proxier-{n}.txt"
        payload = {"task": "proxier", "n": n, "seed": a.seed, "timeout": T, "changes": changes,
                   "adds": 3 if changes else 0, "budget": budget, "text_out": str(text_out)}
        log(f"{n} Services: Proxier full sync" + (f", then {changes} changes and a full resync" if changes else ""))
        ns = self.cleanup.new_netns(f"prox{n}")
        try:
            out = run_worker(self.cleanup, ns, payload, 6 * render_s + 3 * T + 5 * budget + 180)
        finally:
            self.cleanup.del_netns(ns)
        full = out.get("full", out)
        listing = full.get("listing")
        if changes:
            self.res["change"][n] = {k: out.get(k) for k in ("partial_endpoints", "hinted_endpoints", "partial_add",
                                                            "hinted_add", "floor", "resync", "partial_error")}
        for rep in range(1, REPEATS):
            if not full.get("ok") or full["seconds"] >= REPEAT_BELOW:
                break
            log(f"{n} Services: Proxier full sync again ({rep})")
            ns = self.cleanup.new_netns(f"prox{n}")
            try:
                again = run_worker(self.cleanup, ns, {**payload, "changes": 0, "adds": 0, "text_out": None},
                                   3 * render_s + T + 180)
            finally:
                self.cleanup.del_netns(ns)
            full = _repeat(full, again.get("full", again), keys=("seconds", "render", "restore", "restore_only", "jumps"))
        r["proxier"]["kproxy"] = full
        if "sync" not in a.skip and text_out.exists():
            saved: dict[str, Path] = {}
            smaller_killed = any(v["bare"].get("nolisting", {}).get("timed_out") for m, v in self.res["sync"].items()
                                 if m < n)
            for mode, text_path in (("kproxy", text_out), ("onecommit", path), ("nolisting", path)):
                if mode == "nolisting" and smaller_killed:
                    r["bare"][mode] = {"ok": False, "skipped": True}
                    continue
                for rep in range(REPEATS):
                    log(f"{n} Services: bare {mode} restore into a fresh netns" + (f" (again, {rep + 1})" if rep else ""))
                    ns = self.cleanup.new_netns(f"{mode[:4]}{n}")
                    try:
                        got = run_worker(self.cleanup, ns, {"task": "bare", "text": str(text_path), "mode": mode,
                                                            "listing": listing, "timeout": T}, T + 120)
                        if rep == 0 and n <= 1000 and got.get("ok"):
                            out_path = self.tmp / f"save-{mode}-{n}.txt"
                            run_worker(self.cleanup, ns, {"task": "save", "out": str(out_path)}, 120)
                            saved[mode] = out_path
                    finally:
                        self.cleanup.del_netns(ns)
                    r["bare"][mode] = _repeat(r["bare"].get(mode), got)
                    if not got.get("ok") or got["seconds"] >= REPEAT_BELOW:
                        break
            for mode in ("onecommit", "nolisting"):
                if "kproxy" in saved and mode in saved:
                    r["identical"][mode] = _kube_rules(saved[mode]) == _kube_rules(saved["kproxy"])
            for p in saved.values():
                p.unlink(missing_ok=True)
        text_out.unlink(missing_ok=True)

    # ------------------------------------------------------------------ end to end lab

    def ensure_wrk(self) -> bool:
        if shutil.which("wrk"):
            return True
        if self.args.no_install:
            self.note("wrk is not installed (--no-install): data plane skipped")
            return False
        log("installing Debian's wrk (apt-get install wrk)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        res = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"], env=env,
                             capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
            res = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"], env=env,
                                 capture_output=True, text=True, timeout=300)
        if res.returncode != 0 or not shutil.which("wrk"):
            self.note(f"wrk could not be installed: {res.stderr.strip()[-200:]}; data plane skipped")
            return False
        return True

    def wait_rule(self, lab: Lab, ip: str, timeout: float) -> float | None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if f"-d {ip}/32 " in lab.nat_save():
                return time.monotonic() - start
            time.sleep(0.2)
        return None

    def lab_part(self) -> None:
        a = self.args
        want = [s for s in ("e2e", "dataplane", "balance") if s not in a.skip]
        if not want:
            return
        if self.left() < 60:
            self.note("end-to-end lab skipped: the time budget is used up")
            return
        lab = Lab(self.cleanup, "e2e")
        log("e2e lab: kproxy up --sandbox")
        t = time.monotonic()
        lab.up()
        self.res["e2e"]["lab_up_seconds"] = time.monotonic() - t
        try:
            lab.apply_text(gen.deployment("backend", 2), wait=True)
            ips = sorted(p["status"]["podIP"] for p in lab.pods()
                         if ready(p) and p["metadata"].get("labels", {}).get("app") == "backend")
            if len(ips) < 2:
                raise BenchError(f"backend pods not Ready: {ips}")
            current = 0
            for idx, n in enumerate(a.e2e_sizes):
                if self.left() < 60:
                    self.note(f"e2e at {n} Services skipped: the time budget is used up")
                    break
                t = time.monotonic()
                for i in range(current, n):
                    lab.write_manifest(f"bench-{i:05d}.yaml", gen.manifest(i, ips))
                current = n
                took = self.wait_rule(lab, gen.cluster_ip(n - 1), timeout=min(600, self.left()))
                self.res["e2e"].setdefault(n, {})["initial_programming_seconds"] = took
                if took is None:
                    self.note(f"e2e: {n} Services were not programmed in time")
                    break
                t = time.perf_counter()
                docs = manifest.read_path(lab.manifests)
                self.res["e2e"][n]["manifest_reload_seconds"] = time.perf_counter() - t
                self.res["e2e"][n]["manifest_documents"] = len(docs)
                if "e2e" not in a.skip:
                    self.e2e_changes(lab, n, idx, ips)
                if idx == 0:
                    if "dataplane" not in a.skip:
                        self.dataplane(lab, ips)
                    if "balance" not in a.skip:
                        self.balance(lab)
        finally:
            log("e2e lab: kproxy down")
            lab.down()

    def e2e_changes(self, lab: Lab, n: int, idx: int, ips: list[str]) -> None:
        a = self.args
        log(f"e2e at {n} Services: {a.e2e_changes} new Services, one file each")
        probe = subprocess.Popen(["ip", "netns", "exec", lab.node_netns, PY, "-m", "kproxy.bench.probe"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 start_new_session=True)
        self.cleanup.procs.append(probe)
        samples = []
        try:
            for k in range(a.e2e_changes):
                if self.left() < 20:
                    self.note(f"e2e at {n}: stopped after {k} changes (time budget)")
                    break
                i = 50000 + 1000 * idx + k
                ip = gen.cluster_ip(i)
                text = gen.manifest(i, ips, prefix="new")
                time.sleep(0.6)  # the daemon is idle again (it polls every 0.25 s)
                t0 = time.time()
                lab.write_manifest(f"new-{i:05d}.yaml", text)
                probe.stdin.write(json.dumps({"ip": ip, "port": 80, "timeout": 30}) + "\n")
                probe.stdin.flush()
                ready_, _, _ = select.select([probe.stdout], [], [], 45)
                if not ready_:
                    raise BenchError("the prober did not answer")
                out = json.loads(probe.stdout.readline())
                samples.append({"service": f"new-{i:05d}", "ip": ip,
                                "rules_live": out["rule_at"] - t0 if "rule_at" in out else None,
                                "first_connection": out["connect_at"] - t0 if "connect_at" in out else None,
                                "save_seconds_mean": out.get("save_seconds_mean"),
                                "connect_attempts": out.get("connect_attempts")})
        finally:
            probe.stdin.close()
            try:
                probe.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(probe.pid, signal.SIGKILL)
                probe.wait()
            self.cleanup.procs.remove(probe)
        live = [s["rules_live"] for s in samples if s["rules_live"] is not None]
        conn = [s["first_connection"] for s in samples if s["first_connection"] is not None]
        polls = [s["save_seconds_mean"] for s in samples if s["save_seconds_mean"]]
        self.res["e2e"][n].update({
            "samples": samples, "rules_live": stats.summary(live), "first_connection": stats.summary(conn),
            "failed": len(samples) - min(len(live), len(conn)),
            "iptables_save_seconds": sum(polls) / len(polls) if polls else None})

    def dataplane(self, lab: Lab, ips: list[str]) -> None:
        a = self.args
        if not self.ensure_wrk():
            return
        ip = gen.cluster_ip(60000)
        lab.write_manifest("dp-60000.yaml", gen.manifest(60000, [ips[0]], prefix="dp"))
        if self.wait_rule(lab, ip, 60) is None:
            self.note("data plane: the ClusterIP was not programmed")
            return
        # Fair and stable: the pod server pinned to one core and wrk to the other (they shared
        # both before, so each round measured the scheduler as much as the NAT), rounds in ABBA
        # order (drift cancels out), the ratio the median of each round's pair.
        pinned = self.pin_pod_server(lab, ips[0])
        wrk = (["taskset", "-c", "0"] if pinned and shutil.which("taskset") else []) + ["wrk"]
        log(f"data plane: {a.wrk_rounds} rounds of wrk -t1 -c16 -d{a.wrk_duration}s, direct {ips[0]} vs ClusterIP {ip}"
            + (" (pod server on CPU 1, wrk on CPU 0)" if pinned else ""))
        runs: dict[str, list[dict]] = {"direct": [], "clusterip": []}
        # The pod server answers "Connection: close", so each request is a new connection and wrk
        # closes first: its TIME_WAIT ports would run out after ~28,000 connections. Let the
        # client reuse them (node netns only, put back afterwards).
        sysctl = ["ip", "netns", "exec", lab.node_netns, "sysctl", "-n", "net.ipv4.tcp_tw_reuse"]
        old_reuse = subprocess.run(sysctl, capture_output=True, text=True).stdout.strip() or "2"
        subprocess.run(["ip", "netns", "exec", lab.node_netns, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"],
                       capture_output=True)
        # The server closes first, so it keeps a TIME_WAIT socket per connection for 60 s. A
        # ClusterIP connection reusing a port of an earlier direct one (or the reverse) reaches
        # it with another timestamp offset (the client's is per destination address: the VIP vs
        # the pod IP), PAWS drops the SYN and the client waits 1 s to retry: runs got slower the
        # later they came. The pod keeps no TIME_WAIT for the run (its own netns; put back after).
        pod_ns = self.pod_netns_of(lab, ips[0])
        tw = ["ip", "netns", "exec", pod_ns, "sysctl", "-n", "net.ipv4.tcp_max_tw_buckets"] if pod_ns else None
        old_tw = subprocess.run(tw, capture_output=True, text=True).stdout.strip() if tw else ""
        if old_tw:
            subprocess.run(["ip", "netns", "exec", pod_ns, "sysctl", "-q", "-w", "net.ipv4.tcp_max_tw_buckets=0"],
                           capture_output=True)
        try:
            for rnd in range(a.wrk_rounds):
                order = (("direct", ips[0]), ("clusterip", ip))
                for name, target in (order if rnd % 2 == 0 else order[::-1]):
                    # Every run starts from the same state: ~20,000 connections a run otherwise
                    # pile up as TIME_WAIT conntrack entries and slow each later run (ClusterIP
                    # runs more: NAT), so the ratio drifted with the run's position.
                    subprocess.run(["ip", "netns", "exec", lab.node_netns, "conntrack", "-F"], capture_output=True)
                    time.sleep(1)
                    res = lab.node_exec(*wrk, "-t1", "-c16", f"-d{a.wrk_duration}s", "--latency",
                                        f"http://{target}/", timeout=a.wrk_duration + 60)
                    try:
                        runs[name].append(parse_wrk(res.stdout))
                    except ValueError:
                        self.note(f"data plane: wrk output not understood: {(res.stdout + res.stderr)[-300:]}")
                        return
        finally:
            subprocess.run(["ip", "netns", "exec", lab.node_netns, "sysctl", "-q", "-w",
                            f"net.ipv4.tcp_tw_reuse={old_reuse}"], capture_output=True)
            if old_tw:
                subprocess.run(["ip", "netns", "exec", pod_ns, "sysctl", "-q", "-w",
                                f"net.ipv4.tcp_max_tw_buckets={old_tw}"], capture_output=True)
        out: dict = {"target_pod": ips[0], "cluster_ip": ip, "endpoints": 1, "runs": runs, "tcp_tw_reuse": 1,
                     "pod_tcp_max_tw_buckets": 0 if old_tw else None, "conntrack_flushed_between_runs": True,
                     "pinned": pinned, "rounds": a.wrk_rounds,
                     "command": f"kproxy exec node/node-1 -- {' '.join(wrk)} -t1 -c16 -d{a.wrk_duration}s --latency "
                                f"http://IP/"}
        for name, rs in runs.items():
            out[name] = {"requests_per_second": stats.percentile([r["requests_per_second"] for r in rs], 50),
                         "latency_avg": sum(r["latency"].get("avg", 0) for r in rs) / len(rs),
                         "latency_p50": stats.percentile([r["latency"].get("p50", 0) for r in rs], 50),
                         "latency_p99": stats.percentile([r["latency"].get("p99", 0) for r in rs], 50),
                         "errors": [r["errors"] for r in rs]}
        ratios = [c["requests_per_second"] / d["requests_per_second"] for d, c in zip(runs["direct"], runs["clusterip"])]
        out["round_ratios"] = ratios
        out["ratio"] = stats.percentile(ratios, 50)
        self.res["dataplane"] = out

    @staticmethod
    def pod_netns_of(lab: Lab, pod_ip: str) -> str | None:
        pod = next((p for p in lab.pods() if p.get("status", {}).get("podIP") == pod_ip), None)
        return lab.pod_netns(pod) if pod else None

    def pin_pod_server(self, lab: Lab, pod_ip: str) -> bool:
        """Pin the pod server answering at ``pod_ip`` (a process of this lab) to CPU 1."""
        if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
            return False
        pod = next((p for p in lab.pods() if p.get("status", {}).get("podIP") == pod_ip), None)
        pids = netns_pids(lab.pod_netns(pod)) if pod else []
        ok = bool(pids)
        for pid in pids:
            ok &= subprocess.run(["taskset", "-a", "-p", "-c", "1", str(pid)], capture_output=True).returncode == 0
        return ok

    def balance(self, lab: Lab) -> None:
        a = self.args
        k = a.balance_endpoints
        ip = gen.cluster_ip(60001)
        log(f"balance: {a.balance_connections} connections through {ip} over {k} endpoints")
        lab.apply_text(gen.deployment("spread", k) + "---\n" + gen.selector_service("spread", "spread", ip), wait=True)
        pods = sorted(p["metadata"]["name"] for p in lab.pods()
                      if ready(p) and p["metadata"].get("labels", {}).get("app") == "spread")
        limit = max(30.0, min(180.0, self.left() / 3))
        res = lab.node_exec(PY, "-c", BALANCE_CLIENT, ip, "80", str(a.balance_connections), "32", str(limit),
                            timeout=limit + 60)
        try:
            got = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.note(f"balance client failed: {(res.stdout + res.stderr)[-300:]}")
            return
        counts = [got["counts"].get(p, 0) for p in pods]
        extra = {p: c for p, c in got["counts"].items() if p not in pods}
        self.res["balance"] = {"cluster_ip": ip, "pods": pods, "errors": got["errors"], "seconds": got["seconds"],
                               "unexpected": extra, **stats.balance(counts)}

    # ------------------------------------------------------------------ pods

    def pods_part(self) -> None:
        a = self.args
        if "pods" in a.skip:
            return
        if self.left() < 60:
            self.note("pods skipped: the time budget is used up")
            return
        lab = Lab(self.cleanup, "pods")
        log("pods lab: kproxy up --sandbox")
        lab.up()
        try:
            cidr = ipaddress.ip_network(LabConfig(state_dir=str(lab.state_dir)).node_pod_cidr)
            capacity = cidr.num_addresses - 3  # network, broadcast, and .1 on the bridge
            for k in a.pods:
                if self.left() < 45:
                    self.note(f"{k} pods skipped: the time budget is used up")
                    continue
                want = min(k, capacity)
                if want < k:
                    self.note(f"{k} pods: capped at {want}: the node's pod CIDR {cidr} holds {capacity} pod "
                              f"addresses (LabConfig.node_pod_cidr is at most a /24)")
                self.pods_ready(lab, k, want)
        finally:
            log("pods lab: kproxy down")
            lab.down()

    def pods_ready(self, lab: Lab, k: int, want: int) -> None:
        name = f"pods{k}"
        limit = max(30.0, min(300.0, self.left() - 30))
        log(f"pods: Deployment {name} with {want} replicas to Ready (limit {limit:.0f} s)")
        t0 = time.monotonic()
        lab.apply_text(gen.deployment(name, want), wait=False)
        n_ready, timeline, seconds = 0, [], None
        while time.monotonic() - t0 < limit:
            mine = [p for p in lab.pods() if p["metadata"].get("labels", {}).get("app") == name]
            n_ready = sum(1 for p in mine if ready(p))
            timeline.append((round(time.monotonic() - t0, 2), n_ready))
            if n_ready >= want:
                seconds = time.monotonic() - t0
                break
            time.sleep(0.3)
        mine = [p for p in lab.pods() if p["metadata"].get("labels", {}).get("app") == name]
        daemon = lab.daemon_pid()
        d_rss, d_pss = rss_kib(daemon) if daemon else (0, 0)
        p_rss = p_pss = procs = 0
        for p in mine:
            for pid in netns_pids(lab.pod_netns(p)):
                r, s = rss_kib(pid)
                p_rss, p_pss, procs = p_rss + r, p_pss + s, procs + 1
        self.res["pods"][k] = {"requested": k, "replicas": want, "ready": n_ready, "seconds": seconds,
                               "limit": limit, "timeline": timeline,
                               "daemon_rss_mib": d_rss / 1024, "daemon_pss_mib": d_pss / 1024,
                               "pod_processes": procs, "pods_rss_mib": p_rss / 1024, "pods_pss_mib": p_pss / 1024}
        if seconds is None:
            self.note(f"{k} pods: only {n_ready}/{want} Ready after {limit:.0f} s")
        lab.kproxy("delete", "deployment", name, check=False)
        t = time.monotonic()
        while time.monotonic() - t < 180:
            if not [p for p in lab.pods() if p["metadata"].get("labels", {}).get("app") == name]:
                break
            time.sleep(0.5)
        self.res["pods"][k]["delete_seconds"] = time.monotonic() - t

    # ------------------------------------------------------------------ report

    def rows(self) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
        r = self.res
        T = self.args.restore_timeout
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
        return sections

    def plot(self, path: Path) -> None:
        r = self.res
        T = self.args.restore_timeout
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
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    table = format_table(bench.rows())
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
        bench.plot(folder / f"bench-{stamp}.png")
        shutil.copy(folder / f"bench-{stamp}.png", folder / "bench-latest.png")
    except Exception as e:  # noqa: BLE001 - a broken plot must not lose the figures
        log(f"plot failed: {type(e).__name__}: {e}")
    log(f"results in {folder}/bench-{stamp}.{{json,txt,png}} (and bench-latest.*)")


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("scripts/bench: run as root (it builds network namespaces and sandboxed labs)", file=sys.stderr)
        return 1
    for tool in ("ip", "iptables-restore", "iptables-save"):
        if not shutil.which(tool):
            print(f"scripts/bench: {tool} is not installed (run scripts/setup)", file=sys.stderr)
            return 1
    cleanup = Cleanup()
    signal.signal(signal.SIGTERM, _interrupt)
    bench = Bench(args, cleanup)
    status = 0
    start = time.monotonic()
    try:
        if "render" not in args.skip or "sync" not in args.skip or "change" not in args.skip:
            bench.sizes_part()
            bench.fit_notes()
        bench.lab_part()
        bench.pods_part()
    except KeyboardInterrupt:
        bench.note("interrupted: partial results")
        status = 130
    except Exception as e:  # noqa: BLE001 - report what was measured, then fail
        bench.note(f"failed: {type(e).__name__}: {e}")
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        leftover = cleanup.close()
        if leftover:
            bench.note(f"netns left behind: {leftover}")
            status = status or 1
        bench.res["seconds"] = time.monotonic() - start
        write_outputs(bench, Path(args.results))
    return status


if __name__ == "__main__":
    sys.exit(main())
