"""PodAccess: how the API server's streams reach a pod, the kubelet's part of exec, logs and
port-forward.

The server runs in the lab's node network namespace (its threads entered it at start), so a
connection to a pod IP is made from the node, where pod IPs route, exactly as `kproxy
port-forward` connects after entering it. Commands start through the same command line `kproxy
exec` uses (kproxy/node/access.py), so both run in the pod's netns with its hostname and its
securityContext user.

Tests replace it with a subclass that runs a local command, reads a temporary log file and
connects to a loopback server: the handlers only call these methods.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from kproxy.config import LabConfig
from kproxy.node import access


class PodAccess:
    def __init__(self, cfg: LabConfig):
        self.cfg = cfg

    def elsewhere(self, pod: dict) -> str | None:
        """Why this server cannot reach the pod's processes and files, or None. Only a real
        multi-node lab has that case: a pod on another machine (there is no kubelet API to
        ask; the sandbox's nodes all share this machine)."""
        node = pod.get("spec", {}).get("nodeName")
        if self.cfg.store_url and not self.cfg.sandbox and node and node != self.cfg.node_name:
            return (f'pod "{pod["metadata"]["name"]}" runs on node {node}, another machine: its logs and '
                    f"exec are reached there (`vagrant ssh {node}`, then `kproxy logs` / `kproxy exec`)")
        return None

    def exec_argv(self, pod: dict, container: str, command: list[str]) -> list[str] | None:
        """The command line for `command` in `container` of `pod`; None: it is not running here."""
        return access.exec_argv(self.cfg, pod, container, command)

    def log_path(self, pod: dict, container: str) -> Path | None:
        """Where `container`'s output is kept; None before it first started."""
        return access.log_path(self.cfg, pod, container)

    async def open_connection(self, pod: dict, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to `port` of the pod (its podIP, from the node)."""
        ip = pod.get("status", {}).get("podIP")
        if not ip:
            raise OSError(f"pod {pod['metadata']['name']} has no IP address")
        return await asyncio.wait_for(asyncio.open_connection(ip, port), timeout=5)
