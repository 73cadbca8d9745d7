"""How a process is started inside a pod: its network namespace, its own hostname."""
from __future__ import annotations

import sys

_SET_HOSTNAME = "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execvp(sys.argv[2], sys.argv[2:])"


def in_pod(netns: str, hostname: str, argv: list[str]) -> list[str]:
    """Run argv in the pod's network namespace and in a UTS namespace of its own whose hostname
    is the pod's name (`ip netns exec` also binds /etc/netns/<netns>/* over /etc, as the kubelet
    mounts a pod's resolv.conf and hosts)."""
    return ["ip", "netns", "exec", netns, "unshare", "--uts", "--",
            sys.executable, "-c", _SET_HOSTNAME, hostname, *argv]
