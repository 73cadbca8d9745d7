"""Chaos in a 3-node lab (issue 12, "Done when"): kill -9 an agent, then the controller, then
etcd, each restarted the way the lab (or systemd, in the Vagrant lab) starts it; after each:
the same ClusterIPs and NodePorts, every node's nat table holds exactly the per-Service chains a
fresh render gives (none stale, none missing), netns are exactly the nodes + outside + one per
pod, and every process of the lab is a lab process or runs inside a live pod.

Reads go through the CLI (`kproxy get`), so the checks hold whatever the store's URL or
transport security is; only the pid files the lab writes name what is killed."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kproxy.cluster import lab as cluster

import pytest

from .chaos_checks import DEPLOY, SVC, items, reap, reap_all, services_snapshot, set_subreaper, wait_converged

LAB_UP_ARGS = ("--nodes", "3")
NODES = 3



def _check(lab, timeout: float = 60) -> None:
    cfg = lab.cfg
    nodes = [(f"node-{i}", cluster.node_ip(cfg, i), cfg.naming.for_node(i).node_netns) for i in range(1, NODES + 1)]
    fixed = {n[2] for n in nodes} | {cfg.naming.outside_netns}
    wait_converged(lab, timeout=timeout, nodes=nodes, fixed_netns=fixed,
                   roots=lambda: set(cluster.process_pids(cfg).values()), replicas={"chaos": 4})


@pytest.fixture(scope="module", autouse=True)
def reaper():
    """Before the lab starts: its processes, orphaned when `kproxy up` exits, are re-parented here."""
    set_subreaper(True)
    yield
    reap_all()
    set_subreaper(False)
    reap_all()


def _kill(pidfile: Path) -> None:
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGKILL)  # this one process of the lab, by the pid file the lab wrote
    reap(pid)


def test_kill_an_agent_the_controller_and_etcd_in_turn(lab, monkeypatch):
    start = time.monotonic()
    # what the test restarts carries the lab's mark, as what `kproxy up` started does
    monkeypatch.setenv("KPROXY_STATE_DIR", str(lab.state_dir))
    lab.apply(DEPLOY % {"replicas": 4} + "---" + SVC % {"name": "before-1"} + "---" + SVC % {"name": "before-2"})
    _check(lab)
    known = services_snapshot(items(lab, "svc"))
    state = Path(lab.state_dir)
    timings = {}
    for role, pidfile, restart in (
            ("agent node-2", state / "nodes" / "node-2" / "daemon.pid", lambda: cluster.start_agent(lab.cfg, 2)),
            ("controller", state / "daemon.pid", lambda: cluster.start_controller(lab.cfg)),
            ("etcd", state / "etcd.pid", lambda: (cluster.start_etcd(lab.cfg), cluster.wait_for_etcd(lab.cfg)))):
        t0 = time.monotonic()
        _kill(pidfile)
        if role != "etcd":  # the rest of the lab takes changes meanwhile (etcd away: nothing does)
            lab.apply(SVC % {"name": f"during-{role.split()[-1]}"}, wait=False)
        time.sleep(1)
        restart()
        _check(lab)
        after = services_snapshot(items(lab, "svc"))
        for name, alloc in known.items():
            assert after.get(name) == alloc, f"after killing the {role}: {name} was {alloc}, now {after.get(name)}"
        known = after
        timings[role] = round(time.monotonic() - t0, 1)
    assert {f"default/during-{r}" for r in ("node-2", "controller")} <= set(known)
    print(f"restart-to-converged seconds: {timings}; whole test {time.monotonic() - start:.0f} s")
