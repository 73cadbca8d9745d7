"""Which user a container runs as: pod- and container-level securityContext, as the kubelet reads it.

`runAsUser`, `runAsGroup` and `runAsNonRoot` of the container override the pod's. There is no
image here, so "the image's user" is root (uid 0), and a uid's primary group comes from the
host's /etc/passwd (0 when the uid has no entry, as containerd does for an image without it).
Supplementary groups are the primary group, the pod's `supplementalGroups` and `fsGroup`; the
host's /etc/group memberships of that user are NOT added (a host user may be in `sudo` or
`docker`).

What this isolates is the uid/gid only: the filesystem is the host's, no capability is dropped
beyond what a non-zero uid loses, no seccomp or AppArmor profile applies, and a container left
as root is root on the host.
"""
from __future__ import annotations

import pwd
from dataclasses import dataclass


class CreateContainerConfigError(Exception):
    """The kubelet refuses to create the container (status waiting reason CreateContainerConfigError)."""


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    groups: tuple[int, ...]

    def arg(self) -> str:
        """`uid:gid:g1,g2`: how in_pod's step and the pod server are told (podserver.drop_privileges)."""
        return f"{self.uid}:{self.gid}:{','.join(map(str, self.groups))}"


def _pod_ref(pod: dict) -> str:
    m = pod["metadata"]
    return f'"{m["name"]}_{m["namespace"]}({m.get("uid", "")})"'  # the kubelet's format.Pod, quoted


def run_as(pod: dict, container: dict) -> RunAs | None:
    """The identity to start `container` of `pod` with; None: as root, unchanged (no runAsUser
    nor runAsGroup). Raises CreateContainerConfigError with the kubelet's words when
    runAsNonRoot cannot hold (verifyRunAsNonRoot)."""
    psc = pod.get("spec", {}).get("securityContext") or {}
    csc = container.get("securityContext") or {}

    def pick(key: str):
        return csc[key] if csc.get(key) is not None else psc.get(key)
    uid, gid, non_root = pick("runAsUser"), pick("runAsGroup"), pick("runAsNonRoot")
    where = f"(pod: {_pod_ref(pod)}, container: {container.get('name', '')})"
    try:
        uid = None if uid is None else _id(uid)
        gid = None if gid is None else _id(gid)
        extra = [_id(g) for g in psc.get("supplementalGroups") or []]
        if psc.get("fsGroup") is not None:
            extra.append(_id(psc["fsGroup"]))
    except (TypeError, ValueError) as e:  # admission should have refused it; never start as root instead
        raise CreateContainerConfigError(f"invalid securityContext: {e} {where}") from None
    if non_root is True:
        if uid is None:
            raise CreateContainerConfigError(f"container has runAsNonRoot and image will run as root {where}")
        if uid == 0:
            raise CreateContainerConfigError(f"container's runAsUser breaks non-root policy {where}")
    if uid is None and gid is None:
        return None
    uid = 0 if uid is None else uid
    if gid is None:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = 0
    return RunAs(uid, gid, tuple(dict.fromkeys([gid, *extra])))


def _id(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**31 - 1:
        raise ValueError(f"{value!r} is not a user or group ID (0 to 2147483647)")
    return value

