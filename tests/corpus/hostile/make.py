"""The hostile manifest corpus: static files here, plus cases that must be made on the spot.

``materialize(folder)`` writes every case into ``folder`` (copies of the static
files, and the generated ones: symlinks, a FIFO, a socket, a device when root,
non-UTF-8 bytes, a 100,000-deep JSON file, a file over 3 MiB...) and returns
the name -> expectation map of expect.yaml::

    {error: "<substring the error must contain>", field: "<field path it must name>"}
    {accepted: "<why this input is a documented acceptance>"}

Each case holds at most one object, named ``bad-NNN`` after its number, so
cases can be dropped into a live lab's manifests folder one at a time. A case
that cannot be made here (a device when not root, a socket path too long) is
left out of the returned map.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def _service(n: int, meta: str = "") -> str:
    return (f"apiVersion: v1\nkind: Service\nmetadata:\n  name: bad-{n:03d}\n{meta}"
            f"spec:\n  selector: {{app: bad-{n:03d}}}\n  ports:\n  - port: 80\n")


def _write(path: Path, data: bytes | str) -> None:
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))  # the socket file outlives the closed socket
    finally:
        sock.close()


def _device(path: Path) -> None:
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null


# name -> how to make it in the folder; expectations are in expect.yaml
GENERATED = {
    "173-symlink-outside.yaml": lambda p: p.symlink_to("/etc/hostname"),
    "174-symlink-inside.yaml": lambda p: (_write(p.parent / ".174-target.yaml", _service(174)),
                                          p.symlink_to(".174-target.yaml")),
    "175-symlink-dev-zero.yaml": lambda p: p.symlink_to("/dev/zero"),
    "176-symlink-root-only.yaml": lambda p: p.symlink_to("/etc/shadow"),
    "177-broken-symlink.yaml": lambda p: p.symlink_to("does-not-exist.yaml"),
    "178-fifo.yaml": lambda p: os.mkfifo(p),
    "179-socket.yaml": _socket,
    "180-directory-named.yaml": lambda p: p.mkdir(),
    "181-symlinked-directory.yaml": lambda p: p.symlink_to("/etc"),
    "182-non-utf8.yaml": lambda p: _write(p, _service(182, "  annotations: {a: 'caf\xe9'}\n").encode("latin-1")),
    "183-nul-bytes.yaml": lambda p: _write(p, _service(183).replace("port: 80", "port: 8\x000")),
    "184-too-large.yaml": lambda p: _write(p, _service(184) + "#" * (3 * 1024 * 1024) + "\n"),
    "185-deep-json-100000.json": lambda p: _write(p, '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad-185"}, '
                                                     '"spec": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"),
    "186-deep-yaml-100000.yaml": lambda p: _write(p, _service(186) + "  x: " + "[" * 100_000 + "]" * 100_000 + "\n"),
    "187-annotations-300k.yaml": lambda p: _write(p, _service(187, "  annotations:\n" + "".join(
        f"    a{i}: '{'x' * 1000}'\n" for i in range(300)))),
    "188-name-100k.yaml": lambda p: _write(p, _service(188).replace("name: bad-188", "name: bad-188-" + "a" * 100_000, 1)),
    "189-label-value-100k.yaml": lambda p: _write(p, _service(189, f"  labels: {{big: {'b' * 100_000}}}\n")),
    "190-device.yaml": _device,
    "191-file-under-cap-accepted.yaml": lambda p: _write(p, _service(191) + "#" * (3 * 1024 * 1024 - 400) + "\n"),
    "192-ten-thousand-separators-accepted.yaml": lambda p: _write(p, "---\n" * 10_000 + _service(192)),
    "193-five-thousand-digit-int.json": lambda p: _write(p, '{"apiVersion": "v1", "kind": "Service", "metadata": '
                                                             '{"name": "bad-193"}, "spec": {"ports": [{"port": '
                                                             + "7" * 5000 + "}]}}"),
}


def expectations() -> dict[str, dict]:
    """The name -> expectation map of every case (static and generated)."""
    return yaml.safe_load((HERE / "expect.yaml").read_text())


def materialize(folder: Path, names: list[str] | None = None) -> dict[str, dict]:
    """Write the cases (all, or ``names``) into ``folder``; return name -> expectation for those made."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, expect in expectations().items():
        if names is not None and name not in names:
            continue
        target = folder / name
        try:
            if name in GENERATED:
                GENERATED[name](target)
            else:
                shutil.copyfile(HERE / name, target)
        except OSError:  # e.g. mknod without root, a socket path over 107 bytes
            continue
        made[name] = expect
    return made
