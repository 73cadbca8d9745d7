"""scripts/bench: the whole benchmark, one command, in its own sandbox, bounded in time.

Sections (each can be skipped with --skip):
  render   render.render() of N generated Services
  sync     a real Proxier full sync into a fresh netns, then the very input it restored loaded
           alone into fresh netns (with its -S listing line, and without it for reference)
  change   one-Service changes as Proxier partial syncs (complete lists, and with a change
           hint), the one-chain restore floor, a full resync of the loaded table
           (sync and change also run in nftables mode beside, --proxy-modes; nftables.py)
  e2e      a sandboxed lab: N Services in its manifests folder, then one new Service file at a
           time: time to its rules in iptables-save and to the first answered connection
  dataplane wrk through a ClusterIP vs straight to the pod IP, from the node netns
  balance  10,000 connections through a ClusterIP: spread over the endpoints, chi-square
  pods     Deployments of 10 / 100 / 500 pods to Ready, RSS of daemon + pods
  api      the lab's Kubernetes API server at 1,000 Services: kubectl get svc -A, list latency
           (server time), watch latency write -> event p50/p99, 100 kubectl apply calls
Results: results/bench-<time>.json, .png and .txt (the table), also copied to bench-latest.*.

This module is the driver: the arguments, the sections in order, the cleanup whatever happens,
the report. The sections live in sync.py (render, sync, change), lab.py (e2e, pods) and
dataplane.py (dataplane, balance), api.py (api); their shared state in session.py; the table and figure in
report.py.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from kproxy.bench import api, lab, sync
from kproxy.bench.report import write_outputs
from kproxy.bench.sandbox import Cleanup
from kproxy.bench.session import Bench

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("render", "sync", "change", "e2e", "dataplane", "balance", "pods", "api")


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
    ap.add_argument("--api-services", type=int, default=1000, help="Services in the api section's lab")
    ap.add_argument("--api-watch-events", type=int, default=100, help="writes timed to their watch event")
    ap.add_argument("--api-file-edits", type=int, default=10, help="hand-edited manifest files timed to their event")
    ap.add_argument("--api-applies", type=int, default=100, help="kubectl apply calls, one Service each")
    ap.add_argument("--skip", default="", help=f"comma list of sections to skip: {','.join(SECTIONS)}")
    ap.add_argument("--max-minutes", type=float, default=25.0, help="overall budget; later sections shrink or skip")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install wrk when it is missing")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--proxy-modes", default="iptables,nftables",
                    help="modes of the sync and change sections, side by side (comma list)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.e2e_sizes, args.pods = "100", "100", "10"
        args.e2e_changes = min(args.e2e_changes, 10)
        args.wrk_duration, args.wrk_rounds = 2, 2
        args.balance_connections, args.balance_endpoints = 1000, 3
        args.api_services, args.api_watch_events, args.api_file_edits, args.api_applies = 100, 20, 3, 10
        args.max_minutes = min(args.max_minutes, 3.0)
    args.sizes = sorted({int(x) for x in str(args.sizes).split(",") if x.strip()})
    args.e2e_sizes = sorted({int(x) for x in str(args.e2e_sizes).split(",") if x.strip()})
    args.pods = sorted({int(x) for x in str(args.pods).split(",") if x.strip()})
    args.proxy_modes = {m.strip() for m in str(args.proxy_modes).split(",") if m.strip()}
    if args.proxy_modes - {"iptables", "nftables"}:
        ap.error(f"unknown proxy modes: {', '.join(sorted(args.proxy_modes - {'iptables', 'nftables'}))}")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


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
            sync.sizes_part(bench)
            sync.fit_notes(bench)
        lab.lab_part(bench)
        lab.pods_part(bench)
        api.api_part(bench)
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
