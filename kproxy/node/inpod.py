"""How a process is started inside a pod: its network namespace, its own hostname."""
from __future__ import annotations

import sys
from pathlib import Path

# sets the hostname (and $HOSTNAME, as a container sees it), then becomes the command; a command
# that does not exist fails with the container runtime's words, not a Python traceback
_SET_HOSTNAME = """import os, socket, sys, warnings  # (execvp imports warnings: before a new uid may not read it)
socket.sethostname(sys.argv[1]); os.environ["HOSTNAME"] = sys.argv[1]
cmd = sys.argv[2:]
if cmd[:1] == ["--user"]:  # securityContext: become uid:gid:groups, for good
    uid, gid, groups = cmd[1].split(":")
    os.setgroups([int(g) for g in groups.split(",") if g]); os.setgid(int(gid)); os.setuid(int(uid))
    cmd = cmd[2:]
try:
    os.execvp(cmd[0], cmd)
except OSError as e:
    sys.exit(f'exec: "{cmd[0]}": {e.strerror.lower()}: StartError')
"""


PODSERVER = [sys.executable, "-m", "kproxy.node.podserver"]
PODSERVER_FILE = str(Path(__file__).with_name("podserver.py"))


def in_pod(netns: str, hostname: str, argv: list[str], user: str | None = None) -> list[str]:
    """Run argv in the pod's network namespace and in a UTS namespace of its own whose hostname
    is the pod's name (`ip netns exec` also binds /etc/netns/<netns>/* over /etc, as the kubelet
    mounts a pod's resolv.conf and hosts).

    The hostname is set by a small Python step that then becomes the command; the built-in pod
    server sets it itself and starts as `python -S -I podserver.py` (it needs only the standard
    library): one interpreter start per pod instead of two, without site-packages.

    `user` (security.RunAs.arg, `uid:gid:groups`): the identity the command runs as, taken
    after the hostname is set (that needs root)."""
    as_user = ["--user", user] if user else []
    if argv[:3] == PODSERVER:
        return ["ip", "netns", "exec", netns, "unshare", "--uts", "--",
                sys.executable, "-S", "-I", PODSERVER_FILE, "--hostname", hostname, *as_user, *argv[3:]]
    return ["ip", "netns", "exec", netns, "unshare", "--uts", "--",
            sys.executable, "-S", "-I", "-c", _SET_HOSTNAME, hostname, *as_user, *argv]
