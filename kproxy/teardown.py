"""Finds and removes what an instance left behind, even when its daemon died.

Everything is found by the instance's prefix (netns and links) or in its state dir (pids), so
nothing of another lab or of the host is touched. Processes are ended by pid, and only those
living in this instance's namespaces.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from kproxy.config import LabConfig
from kproxy.node.network import NodeConfig, NodeNetwork, list_netns, netns_pids


def _running(pid: int) -> bool:
    """Still running: a zombie (dead, its parent not told yet) is done, not worth waiting for."""
    from kproxy.control import _proc_state
    return _proc_state(pid, "/proc") not in (None, "Z", "X", "x")


def kill_pids(pids: list[int], grace: float = 3) -> None:
    """SIGTERM, then SIGKILL what is still alive after `grace` s: processes this instance started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            alive = [p for p in alive if _running(p)]
            if not alive:
                return
            time.sleep(0.05)
        pids = alive


def remove_leftovers(cfg: LabConfig) -> list[str]:
    """Remove this instance's processes, namespaces, links and (host mode) rules; returns names."""
    naming = cfg.naming
    removed = []
    ours = [ns for ns in list_netns() if naming.owns_netns(ns)]
    # pods first: their processes, then their namespaces; the node's last
    ours.sort(key=lambda ns: ns in (naming.node_netns, naming.outside_netns))
    for ns in ours:
        pids = [p for p in netns_pids(ns) if p != os.getpid()]
        kill_pids(pids)
        os.system(f"ip netns delete {ns} 2>/dev/null")
        removed.append(ns)
    from kproxy.node import dnsconfig
    for d in dnsconfig.owned_dirs(naming.prefix):  # pods' resolv.conf and hosts
        dnsconfig.remove_pod_files(d.name)
        removed.append(str(d))
    if not cfg.sandbox:
        NodeNetwork(naming, NodeConfig(sandbox=False), Path(cfg.state_dir) / "host-sysctls.json").teardown()
        from kproxy.proxy.applier import Applier, have_iptables
        if have_iptables():
            Applier().cleanup()
        from kproxy.proxy.nft.syncer import remove_table  # the nftables mode's table, if any
        try:
            remove_table()
        except RuntimeError as e:
            logging.getLogger("kproxy").warning("%s", e)
    return removed
