"""The benchmark's sections in sandboxed labs (``kproxy up --sandbox``), driven as a user
would, through the CLI and the manifests folder: e2e (N Services in the folder, then one new
Service file at a time: time to its rules in iptables-save and to the first answered
connection; the data plane and balance run in the same lab, see dataplane.py) and pods
(Deployments to Ready, the daemon's and the pods' memory). One helper brings a lab up and
always down.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator

from kproxy.bench import dataplane, gen, stats
from kproxy.bench.sandbox import PY, BenchError, Lab, netns_pids, ready, rss_kib
from kproxy.bench.session import Bench, log
from kproxy.api import manifest
from kproxy.config import LabConfig

@contextlib.contextmanager
def sandboxed_lab(bench: Bench, label: str) -> Iterator[tuple[Lab, float]]:
    """A lab up (``kproxy up --sandbox``) for the block, with the seconds ``up`` took; down
    after it, whatever happens (a lab that fails to come up is removed by bench.cleanup)."""
    lab = Lab(bench.cleanup, label)
    log(f"{label} lab: kproxy up --sandbox")
    t = time.monotonic()
    lab.up()
    try:
        yield lab, time.monotonic() - t
    finally:
        log(f"{label} lab: kproxy down")
        lab.down()


def lab_part(bench: Bench) -> None:
    """The e2e lab: two backend pods, then per --e2e-sizes size its Services written into the
    folder, the time to program them all, and e2e_changes(); data plane and balance at the first
    size."""
    a = bench.args
    want = [s for s in ("e2e", "dataplane", "balance") if s not in a.skip]
    if not want:
        return
    if bench.left() < 60:
        bench.note("end-to-end lab skipped: the time budget is used up")
        return
    with sandboxed_lab(bench, "e2e") as (lab, up_seconds):
        bench.res["e2e"]["lab_up_seconds"] = up_seconds
        lab.apply_text(gen.deployment("backend", 2), wait=True)
        ips = sorted(p["status"]["podIP"] for p in lab.app_pods("backend") if ready(p))
        if len(ips) < 2:
            raise BenchError(f"backend pods not Ready: {ips}")
        current = 0
        for idx, n in enumerate(a.e2e_sizes):
            if bench.left() < 60:
                bench.note(f"e2e at {n} Services skipped: the time budget is used up")
                break
            for i in range(current, n):
                lab.write_manifest(f"bench-{i:05d}.yaml", gen.manifest(i, ips))
            current = n
            took = lab.wait_rule(gen.cluster_ip(n - 1), timeout=min(600, bench.left()))
            bench.res["e2e"].setdefault(n, {})["initial_programming_seconds"] = took
            if took is None:
                bench.note(f"e2e: {n} Services were not programmed in time")
                break
            t = time.perf_counter()
            docs = manifest.read_path(lab.manifests)
            bench.res["e2e"][n]["manifest_reload_seconds"] = time.perf_counter() - t
            bench.res["e2e"][n]["manifest_documents"] = len(docs)
            if "e2e" not in a.skip:
                e2e_changes(bench, lab, n, idx, ips)
            if idx == 0:
                if "dataplane" not in a.skip:
                    dataplane.throughput(bench, lab, ips)
                if "balance" not in a.skip:
                    dataplane.balance(bench, lab)


def e2e_changes(bench: Bench, lab: Lab, n: int, idx: int, ips: list[str]) -> None:
    """--e2e-changes new Service files, one at a time, each timed by kproxy.bench.probe in the
    node netns: to its rule in iptables-save and to the first answered connection."""
    a = bench.args
    log(f"e2e at {n} Services: {a.e2e_changes} new Services, one file each")
    probe = subprocess.Popen(["ip", "netns", "exec", lab.node_netns, PY, "-m", "kproxy.bench.probe"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             start_new_session=True)
    bench.cleanup.procs.append(probe)
    samples = []
    try:
        for k in range(a.e2e_changes):
            if bench.left() < 20:
                bench.note(f"e2e at {n}: stopped after {k} changes (time budget)")
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
        bench.cleanup.procs.remove(probe)
    live = [s["rules_live"] for s in samples if s["rules_live"] is not None]
    conn = [s["first_connection"] for s in samples if s["first_connection"] is not None]
    polls = [s["save_seconds_mean"] for s in samples if s["save_seconds_mean"]]
    bench.res["e2e"][n].update({
        "samples": samples, "rules_live": stats.summary(live), "first_connection": stats.summary(conn),
        "failed": len(samples) - min(len(live), len(conn)),
        "iptables_save_seconds": sum(polls) / len(polls) if polls else None})


def pods_part(bench: Bench) -> None:
    """The pods lab: a Deployment per --pods size (capped at the node's pod CIDR) to Ready."""
    a = bench.args
    if "pods" in a.skip:
        return
    if bench.left() < 60:
        bench.note("pods skipped: the time budget is used up")
        return
    with sandboxed_lab(bench, "pods") as (lab, _):
        cidr = ipaddress.ip_network(LabConfig(state_dir=str(lab.state_dir)).node_pod_cidr)
        capacity = cidr.num_addresses - 3  # network, broadcast, and .1 on the bridge
        for k in a.pods:
            if bench.left() < 45:
                bench.note(f"{k} pods skipped: the time budget is used up")
                continue
            want = min(k, capacity)
            if want < k:
                bench.note(f"{k} pods: capped at {want}: the node's pod CIDR {cidr} holds {capacity} pod "
                           f"addresses (LabConfig.node_pod_cidr is at most a /24)")
            pods_ready(bench, lab, k, want)


def pods_ready(bench: Bench, lab: Lab, k: int, want: int) -> None:
    """Seconds for a Deployment of ``want`` pods to be Ready, the memory of the daemon and the
    pods then, and the seconds to delete it: res["pods"][k]."""
    name = f"pods{k}"
    limit = max(30.0, min(300.0, bench.left() - 30))
    log(f"pods: Deployment {name} with {want} replicas to Ready (limit {limit:.0f} s)")
    t0 = time.monotonic()
    lab.apply_text(gen.deployment(name, want), wait=False)
    n_ready, timeline, seconds = 0, [], None
    while time.monotonic() - t0 < limit:
        mine = lab.app_pods(name)
        n_ready = sum(1 for p in mine if ready(p))
        timeline.append((round(time.monotonic() - t0, 2), n_ready))
        if n_ready >= want:
            seconds = time.monotonic() - t0
            break
        time.sleep(0.3)
    mine = lab.app_pods(name)
    daemon = lab.daemon_pid()
    d_rss, d_pss = rss_kib(daemon) if daemon else (0, 0)
    p_rss = p_pss = procs = 0
    for p in mine:
        for pid in netns_pids(lab.pod_netns(p)):
            r, s = rss_kib(pid)
            p_rss, p_pss, procs = p_rss + r, p_pss + s, procs + 1
    bench.res["pods"][k] = {"requested": k, "replicas": want, "ready": n_ready, "seconds": seconds,
                            "limit": limit, "timeline": timeline,
                            "daemon_rss_mib": d_rss / 1024, "daemon_pss_mib": d_pss / 1024,
                            "pod_processes": procs, "pods_rss_mib": p_rss / 1024, "pods_pss_mib": p_pss / 1024}
    if seconds is None:
        bench.note(f"{k} pods: only {n_ready}/{want} Ready after {limit:.0f} s")
    lab.kproxy("delete", "deployment", name, check=False)
    t = time.monotonic()
    while time.monotonic() - t < 180:
        if not lab.app_pods(name):
            break
        time.sleep(0.5)
    bench.res["pods"][k]["delete_seconds"] = time.monotonic() - t
