"""Names of everything one lab instance creates, all carrying the instance's prefix.

The prefix comes from the state dir, so two labs (or a leftover one) never collide, and
`kproxy down` can find every netns and link of its own instance by name.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass


def instance_prefix(state_dir: str) -> str:
    digest = hashlib.sha1(os.path.realpath(state_dir).encode()).hexdigest()
    return f"kp{digest[:4]}"


@dataclass(frozen=True)
class Naming:
    prefix: str
    node: str = ""  # a node's index in a multi-node lab ("" for the single node)

    @property
    def node_netns(self) -> str:
        return f"{self.prefix}-node{self.node}"

    def for_node(self, index: int) -> "Naming":
        return Naming(self.prefix, str(index))

    @property
    def switch(self) -> str:
        """The lab network's bridge (multi-node), in the `outside` namespace."""
        return f"{self.prefix}-sw"

    @property
    def switch_port(self) -> str:
        """The switch's end of this node's lab link (multi-node)."""
        return f"{self.prefix}-n{self.node}"

    @property
    def outside_netns(self) -> str:
        return f"{self.prefix}-outside"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br0"

    @property
    def lab_link(self) -> str:
        """The node's (and outside's) end of the lab network veth."""
        return f"{self.prefix}-eth0"

    def pod_netns(self, namespace: str, name: str) -> str:
        return f"{self.prefix}-{namespace}-{name}"

    def pod_veth(self, namespace: str, name: str) -> str:
        """The node-side veth of a pod: prefix + 8 hex, within IFNAMSIZ (15)."""
        return self.prefix + hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()[:15 - len(self.prefix)]

    def owns_netns(self, netns: str) -> bool:
        return netns.startswith(self.prefix + "-")
