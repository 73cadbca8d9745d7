"""Names of everything one lab instance creates, all carrying the instance's prefix.

The prefix comes from the state dir, so two labs (or a leftover one) never collide, and
`kproxy down` can find every netns and link of its own instance by name.

Names made from a pod (its netns, /etc/netns/<netns>/, its log folder) come from `pod_slug`:
a pod's name may be 253 characters and a file name at most 255 bytes, so a pod whose
`<namespace>-<name>` does not fit POD_SLUG_MAX characters gets a readable start plus a hash of
the whole `namespace/name`, as kube-proxy names its chains. The hostname follows the kubelet's
own rule instead (`pod_hostname`: truncated to 63 characters).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass


def instance_prefix(state_dir: str) -> str:
    digest = hashlib.sha1(os.path.realpath(state_dir).encode()).hexdigest()
    return f"kp{digest[:4]}"


POD_SLUG_MAX = 56     # `kpXXXX-` + 56 = 63 characters: a pod's netns stays readable in `ip netns list`
HASH_MARK = "~"       # in no Kubernetes name: a hashed slug never equals a short one
HASH_LEN = 16         # hex digits of sha256 (64 bits): no two pods of a lab share a slug
HOSTNAME_MAX = 63     # the kubelet truncates a pod's hostname to a DNS label


def pod_slug(namespace: str, name: str, sep: str = "-") -> str:
    """The bounded, collision-free form of a pod's identity that everything named after a pod uses.

    `<namespace><sep><name>` when it has at most POD_SLUG_MAX characters and cannot be read two
    ways (a namespace holding `sep` could: `a-b`/`c` and `a`/`b-c`); otherwise its first
    characters, HASH_MARK and a hash of `namespace/name`, POD_SLUG_MAX characters in all."""
    short = f"{namespace}{sep}{name}"
    if len(short) <= POD_SLUG_MAX and sep not in namespace:
        return short
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:HASH_LEN]
    return f"{short[:POD_SLUG_MAX - HASH_LEN - 1]}{HASH_MARK}{digest}"


def pod_log_dir(namespace: str, name: str) -> str:
    """The folder (under the logs dir) holding a pod's container logs: `<namespace>_<name>`."""
    return pod_slug(namespace, name, sep="_")


def pod_hostname(pod: dict) -> str:
    """A pod's hostname as the kubelet sets it: spec.hostname, else the pod's name truncated to
    63 characters without a trailing `-` or `.` (truncatePodHostnameIfNeeded)."""
    name = pod["spec"].get("hostname") or pod["metadata"]["name"]
    return name[:HOSTNAME_MAX].rstrip("-.") if len(name) > HOSTNAME_MAX else name


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
        """Also the name of its /etc/netns/ folder: at most 63 characters (see pod_slug)."""
        return f"{self.prefix}-{pod_slug(namespace, name)}"

    def pod_veth(self, namespace: str, name: str) -> str:
        """The node-side veth of a pod: prefix + 8 hex, within IFNAMSIZ (15)."""
        return self.prefix + hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()[:15 - len(self.prefix)]

    def owns_netns(self, netns: str) -> bool:
        return netns.startswith(self.prefix + "-")
