"""The nftables mode's reach into the kernel: the `nft` runner, the table's listing and
removal, and the error a refused transaction raises (split from syncer.py, which decides what
to send). Everything goes through an injectable runner, so unit tests need no root.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
from typing import Callable

from kproxy.proxy.applier import IptablesError
from kproxy.proxy.nft.names import FAMILY, TABLE

log = logging.getLogger(__name__)

# run(argv, stdin text or None) -> the finished process (stdout, stderr, returncode)
NftRunner = Callable[[list[str], "str | None"], subprocess.CompletedProcess]
TABLE_REF = f"{FAMILY} {TABLE}"
LISTING = f"list chains {FAMILY}\nlist sets {FAMILY}\nlist maps {FAMILY}\n"


class NftError(IptablesError):
    """`nft -f` refused the transaction: the role reports it as it does a failed iptables-restore."""


def run_nft(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, input=stdin, capture_output=True, text=True)


def have_nft() -> bool:
    return shutil.which("nft") is not None


def remove_table(run: NftRunner | None = None) -> bool:
    """Delete `table ip kube-proxy` of the current netns if there is one (kube-proxy's cleanup
    of the nftables mode; `kproxy down` on a host). Whether one was deleted; raises NftError."""
    if not have_nft() and run is None:
        return False
    run = run or run_nft
    if run(["nft", "-t", "list", "table", *TABLE_REF.split()], None).returncode != 0:
        return False
    res = run(["nft", "delete", "table", *TABLE_REF.split()], None)
    if res.returncode != 0:
        raise NftError(f"nft delete table failed: {(res.stderr or '').strip()}")
    return True


def listed_objects(listing: str) -> dict[str, set[str]]:
    """Chains, sets and maps of `table ip kube-proxy` in an `nft list` output (of that table,
    or of `list chains/sets/maps ip`, which print every ip table: the others are skipped)."""
    out: dict[str, set[str]] = {"chain": set(), "set": set(), "map": set()}
    ours = False
    for line in listing.splitlines():
        if line.startswith("table "):
            ours = line.split()[1:3] == [FAMILY, TABLE]
            continue
        m = re.match(r"^\s*(chain|set|map) (\S+) \{", line)
        if m and ours:
            out[m.group(1)].add(m.group(2))
    return out


class Listing:
    """The full sync's listing of the table's chains, sets and maps, run on a thread (the
    `nft` process works while Python digests and renders); None when it failed to run."""

    def __init__(self, run: NftRunner):
        self._res: subprocess.CompletedProcess | None = None
        self._thread = threading.Thread(target=self._list, args=(run,), daemon=True)
        self._thread.start()

    def _list(self, run: NftRunner) -> None:
        try:
            self._res = run(["nft", "-t", "-f", "-"], LISTING)
        except Exception as e:  # noqa: BLE001 - listed again synchronously, which reports it
            log.warning("listing the table failed: %s", e)

    def get(self) -> subprocess.CompletedProcess | None:
        self._thread.join()
        return self._res


def last_line(res: subprocess.CompletedProcess) -> str:
    lines = (res.stderr or "").strip().splitlines()
    return lines[-1] if lines else "no message"
