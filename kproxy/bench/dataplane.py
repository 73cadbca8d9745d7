"""The data plane and balance sections, measured from the node netns of the e2e lab (lab.py
hands it over): wrk straight to a pod IP vs through a ClusterIP (ABBA rounds, the pod server
and wrk pinned to separate CPUs, the median ratio), and the balance client (10,000 fresh
connections through a ClusterIP, counting which pod answered each; chi-square). Also the pure
parts the unit tests check: wrk output parsing and the client's source.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

from kproxy.bench import gen, stats
from kproxy.bench.sandbox import PY, Lab, netns_pids, ready
from kproxy.bench.session import Bench, log

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict:
    """Requests/s, transfer, latency (avg, stdev, max, percentiles with --latency) and errors."""
    out: dict = {"latency": {}, "errors": {}}
    for line in output.splitlines():
        s = line.strip()
        m = re.match(r"Requests/sec:\s+([\d.]+)", s)
        if m:
            out["requests_per_second"] = float(m.group(1))
        m = re.match(r"(\d+) requests in ([\d.]+\w+),", s)
        if m:
            out["requests"] = int(m.group(1))
            out["duration_seconds"] = _duration(m.group(2))
        m = re.match(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", s)
        if m:
            out["latency"].update(avg=_duration(m.group(1)), stdev=_duration(m.group(2)), max=_duration(m.group(3)))
        m = re.match(r"(50|75|90|99)%\s+([\d.]+\w+)$", s)
        if m:
            out["latency"][f"p{m.group(1)}"] = _duration(m.group(2))
        m = re.match(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", s)
        if m:
            out["errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
        m = re.match(r"Non-2xx or 3xx responses: (\d+)", s)
        if m:
            out["errors"]["non_2xx"] = int(m.group(1))
    if "requests_per_second" not in out:
        raise ValueError("no Requests/sec in wrk output")
    return out


# Run in the node netns: python -c BALANCE_CLIENT IP PORT CONNECTIONS CONCURRENCY SECONDS.
# Each connection is new (so each one is a new conntrack entry, i.e. a new DNAT choice); prints
# {"pod": count, ...} plus errors as JSON. Bounded by count and by SECONDS.
BALANCE_CLIENT = r"""
import asyncio, json, sys, time
ip, port, total, conc, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
counts, errors, left = {}, [0], [total]
deadline = time.monotonic() + limit
async def one():
    r, w = await asyncio.wait_for(asyncio.open_connection(ip, port), 2)
    try:
        w.write(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 3)
    finally:
        w.close()
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"x-pod-name:"):
            return line.split(b":", 1)[1].strip().decode()
    raise ValueError("no X-Pod-Name")
async def worker():
    while left[0] > 0 and time.monotonic() < deadline:
        left[0] -= 1
        try:
            pod = await one()
            counts[pod] = counts.get(pod, 0) + 1
        except Exception:
            errors[0] += 1
async def main():
    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conc)))
    print(json.dumps({"counts": counts, "errors": errors[0], "seconds": time.monotonic() - start}))
asyncio.run(main())
"""


def ensure_wrk(bench: Bench) -> bool:
    """wrk on the PATH, from Debian's package when missing (unless --no-install)."""
    if shutil.which("wrk"):
        return True
    if bench.args.no_install:
        bench.note("wrk is not installed (--no-install): data plane skipped")
        return False
    log("installing Debian's wrk (apt-get install wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def install() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"], env=env,
                              capture_output=True, text=True, timeout=300)
    res = install()
    if res.returncode != 0:  # a stale package list: once more after apt-get update
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
        res = install()
    if res.returncode != 0 or not shutil.which("wrk"):
        bench.note(f"wrk could not be installed: {res.stderr.strip()[-200:]}; data plane skipped")
        return False
    return True


def _sysctl(netns: str, key: str, value: str | None = None) -> str:
    """Read ``key`` inside ``netns`` ('' when it cannot), or set it to ``value``."""
    if value is None:
        return subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-n", key],
                              capture_output=True, text=True).stdout.strip()
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}"], capture_output=True)
    return value


def throughput(bench: Bench, lab: Lab, ips: list[str]) -> None:
    """wrk to ``ips[0]`` directly and through a new one-endpoint ClusterIP: res["dataplane"]."""
    a = bench.args
    if not ensure_wrk(bench):
        return
    ip = gen.cluster_ip(60000)
    lab.write_manifest("dp-60000.yaml", gen.manifest(60000, [ips[0]], prefix="dp"))
    if lab.wait_rule(ip, 60) is None:
        bench.note("data plane: the ClusterIP was not programmed")
        return
    # Fair and stable: the pod server pinned to one core and wrk to the other (they shared
    # both before, so each round measured the scheduler as much as the NAT), rounds in ABBA
    # order (drift cancels out), the ratio the median of each round's pair.
    pod = lab.pod_with_ip(ips[0])
    pod_ns = lab.pod_netns(pod) if pod else None
    pinned = pin_pod_server(pod_ns)
    wrk = (["taskset", "-c", "0"] if pinned and shutil.which("taskset") else []) + ["wrk"]
    log(f"data plane: {a.wrk_rounds} rounds of wrk -t1 -c16 -d{a.wrk_duration}s, direct {ips[0]} vs ClusterIP {ip}"
        + (" (pod server on CPU 1, wrk on CPU 0)" if pinned else ""))
    runs: dict[str, list[dict]] = {"direct": [], "clusterip": []}
    # The pod server answers "Connection: close", so each request is a new connection and wrk
    # closes first: its TIME_WAIT ports would run out after ~28,000 connections. Let the
    # client reuse them (node netns only, put back afterwards).
    old_reuse = _sysctl(lab.node_netns, "net.ipv4.tcp_tw_reuse") or "2"
    _sysctl(lab.node_netns, "net.ipv4.tcp_tw_reuse", "1")
    # The server closes first, so it keeps a TIME_WAIT socket per connection for 60 s. A
    # ClusterIP connection reusing a port of an earlier direct one (or the reverse) reaches
    # it with another timestamp offset (the client's is per destination address: the VIP vs
    # the pod IP), PAWS drops the SYN and the client waits 1 s to retry: runs got slower the
    # later they came. The pod keeps no TIME_WAIT for the run (its own netns; put back after).
    old_tw = _sysctl(pod_ns, "net.ipv4.tcp_max_tw_buckets") if pod_ns else ""
    if old_tw:
        _sysctl(pod_ns, "net.ipv4.tcp_max_tw_buckets", "0")
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
                    bench.note(f"data plane: wrk output not understood: {(res.stdout + res.stderr)[-300:]}")
                    return
    finally:
        _sysctl(lab.node_netns, "net.ipv4.tcp_tw_reuse", old_reuse)
        if old_tw:
            _sysctl(pod_ns, "net.ipv4.tcp_max_tw_buckets", old_tw)
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
    bench.res["dataplane"] = out


def pin_pod_server(pod_ns: str | None) -> bool:
    """Pin the pod server of ``pod_ns`` (a pod netns of this lab) to CPU 1."""
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return False
    pids = netns_pids(pod_ns) if pod_ns else []
    ok = bool(pids)
    for pid in pids:
        ok &= subprocess.run(["taskset", "-a", "-p", "-c", "1", str(pid)], capture_output=True).returncode == 0
    return ok


def balance(bench: Bench, lab: Lab) -> None:
    """A Deployment of --balance-endpoints pods behind a ClusterIP, fresh connections counted per
    pod answering: res["balance"]."""
    a = bench.args
    k = a.balance_endpoints
    ip = gen.cluster_ip(60001)
    log(f"balance: {a.balance_connections} connections through {ip} over {k} endpoints")
    lab.apply_text(gen.deployment("spread", k) + "---\n" + gen.selector_service("spread", "spread", ip), wait=True)
    pods = sorted(p["metadata"]["name"] for p in lab.app_pods("spread") if ready(p))
    limit = max(30.0, min(180.0, bench.left() / 3))
    res = lab.node_exec(PY, "-c", BALANCE_CLIENT, ip, "80", str(a.balance_connections), "32", str(limit),
                        timeout=limit + 60)
    try:
        got = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        bench.note(f"balance client failed: {(res.stdout + res.stderr)[-300:]}")
        return
    counts = [got["counts"].get(p, 0) for p in pods]
    extra = {p: c for p, c in got["counts"].items() if p not in pods}
    bench.res["balance"] = {"cluster_ip": ip, "pods": pods, "errors": got["errors"], "seconds": got["seconds"],
                            "unexpected": extra, **stats.balance(counts)}
