"""Chaos (issue 12, "Done when"): kill -9 the daemon at a random point of a burst of applies,
`kproxy up` again, and check that nothing was lost or left behind: every Service keeps the
ClusterIP and NodePort it had, the node's nat table holds exactly the per-Service chains a fresh
render of the store gives (none stale, none missing), the lab's netns are exactly node +
outside + one per pod, and every process of the lab belongs to the daemon or to a live pod.

Only the daemon's own pid (STATE/daemon.pid) is killed. The random delays come from a seeded
generator whose seed is printed, so a failing run can be replayed (CHAOS_SEED=...)."""
from __future__ import annotations

import os
import random
import re
import signal
import threading
import time

from kproxy.store.base import kind_prefix
from kproxy.store.sqlite import SqliteStore

import pytest

from .chaos_checks import (DEPLOY, SVC, OrphanReaper, items, my_children, reap, reap_all, services_snapshot,
                           set_subreaper, wait_converged)

LAB_UP_ARGS = ("--no-cluster-dns",)  # what is killed and checked is the daemon's: a DNS pod only adds time
TRIALS = 10
SERVICES_PER_TRIAL = 4


def _burst(lab, trial: int, results: list) -> None:
    """Each object its own `kproxy apply` (no --wait): the kill may land inside any of them."""
    docs = [DEPLOY % {"replicas": 2 + trial % 2}]
    docs += [SVC % {"name": f"c{trial}-{i}"} for i in range(SERVICES_PER_TRIAL)]
    for text in docs:
        try:
            results.append(lab.apply(text, wait=False).returncode)
        except AssertionError:  # the daemon died under this apply: its answer may be an error
            results.append(1)


def _daemon_pid(lab) -> int:
    return int((lab.state_dir / "daemon.pid").read_text())


@pytest.fixture(scope="module", autouse=True)
def reaper():
    """Before the lab starts: its daemon, orphaned when `kproxy up` exits, is re-parented here."""
    set_subreaper(True)
    yield
    reap_all()
    set_subreaper(False)
    reap_all()


def _stored_services(lab) -> dict[str, tuple]:
    """What the store held when the daemon died: the allocations made before the kill."""
    store = SqliteStore(lab.state_dir / "store.db")
    try:
        return services_snapshot([obj for _, obj in store.list(kind_prefix("Service"))])
    finally:
        store.close()


def _wait_converged(lab, replicas: int) -> None:
    cfg = lab.cfg
    wait_converged(lab, timeout=40, nodes=[(cfg.node_name, "192.168.49.2", cfg.naming.node_netns)],
                   fixed_netns={cfg.naming.node_netns, cfg.naming.outside_netns}, roots={_daemon_pid(lab)},
                   replicas={"chaos": replicas})


def test_kill_9_during_a_burst_of_applies_converges(lab):
    seed = int(os.environ.get("CHAOS_SEED") or time.time())
    print(f"CHAOS_SEED={seed}")
    rng = random.Random(seed)
    lab.apply(DEPLOY % {"replicas": 2})
    _wait_converged(lab, 2)
    known = services_snapshot(items(lab, "svc"))
    timings = []
    for trial in range(TRIALS):
        start = time.monotonic()
        results: list = []
        burst = threading.Thread(target=_burst, args=(lab, trial, results), daemon=True)
        pid = _daemon_pid(lab)
        burst.start()
        time.sleep(rng.uniform(0, 2))
        os.kill(pid, signal.SIGKILL)  # only the lab's daemon, by its own pid file
        burst.join(timeout=60)
        assert not burst.is_alive(), "an apply hung after the daemon was killed"
        reap(pid)
        t_kill = time.monotonic()
        stored = _stored_services(lab)
        for name, alloc in known.items():
            assert stored.get(name) == alloc, f"trial {trial}: {name} was {alloc}, stored {stored.get(name)}"
        known.update(stored)
        with OrphanReaper(my_children()):  # the dead daemon's pods, re-parented here
            lab.up()
        t_up = time.monotonic()
        _wait_converged(lab, 2 + trial % 2)
        after = services_snapshot(items(lab, "svc"))
        for name, alloc in known.items():  # nothing allocated before the kill moved
            assert after.get(name) == alloc, f"trial {trial}: {name} was {alloc}, now {after.get(name)}"
        known = after
        timings.append((round(t_kill - start, 1), round(t_up - t_kill, 1), round(time.monotonic() - t_up, 1)))
    print(f"trials: {TRIALS}, seconds (burst+kill, up, converge) each: {timings}")
    assert len([n for n in known if n.startswith("default/c")]) == TRIALS * SERVICES_PER_TRIAL
