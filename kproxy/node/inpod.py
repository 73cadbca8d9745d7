"""How a process is started inside a pod: its network namespace, its own hostname."""
from __future__ import annotations

import sys

# sets the hostname (and $HOSTNAME, as a container sees it), then becomes the command; a command
# that does not exist fails with the container runtime's words, not a Python traceback
_SET_HOSTNAME = """import os, socket, sys
socket.sethostname(sys.argv[1]); os.environ["HOSTNAME"] = sys.argv[1]
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as e:
    sys.exit(f'exec: "{sys.argv[2]}": {e.strerror.lower()}: StartError')
"""


def in_pod(netns: str, hostname: str, argv: list[str]) -> list[str]:
    """Run argv in the pod's network namespace and in a UTS namespace of its own whose hostname
    is the pod's name (`ip netns exec` also binds /etc/netns/<netns>/* over /etc, as the kubelet
    mounts a pod's resolv.conf and hosts)."""
    return ["ip", "netns", "exec", netns, "unshare", "--uts", "--",
            sys.executable, "-c", _SET_HOSTNAME, hostname, *argv]
