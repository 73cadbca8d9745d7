"""The lab's certificates (finding 8) and its private state (finding 9), without root."""
from __future__ import annotations

import os
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kproxy.cluster import lab
from kproxy.cluster.pki import Pki, coredns_files, ensure_node_pki
from kproxy.config import LabConfig, private_dir
from kproxy.store.sqlite import SqliteStore


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(open(path, "rb").read())


def _sans(cert: x509.Certificate) -> tuple[set, set]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ({str(i) for i in san.get_values_for_type(x509.IPAddress)}, set(san.get_values_for_type(x509.DNSName)))


def test_a_lab_gets_a_ca_and_a_certificate_for_every_etcd_client(tmp_path):
    cfg = LabConfig(state_dir=str(tmp_path / "state"), sandbox=True, nodes=3)
    private_dir(cfg.state_dir)
    pki = lab.make_pki(cfg)
    assert _mode(pki.root) == 0o700
    files = sorted(p.name for p in pki.root.iterdir() if not p.name.startswith("."))
    assert files == sorted(["ca.crt", "ca.key", "controller.crt", "controller.key", "coredns.crt", "coredns.key",
                            "etcd-peer-node-1.crt", "etcd-peer-node-1.key", "etcd-server-node-1.crt",
                            "etcd-server-node-1.key", *(f"node-node-{i}.{e}" for i in (1, 2, 3) for e in ("crt", "key"))])
    for name in files:
        assert _mode(pki.root / name) == 0o600, name
    ca = _cert(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in files:
        if name.endswith(".crt") and name != "ca.crt":
            _cert(pki.root / name).verify_directly_issued_by(ca)  # raises when the chain is broken
    server = _cert(pki.root / "etcd-server-node-1.crt")
    assert _sans(server) == ({"192.168.49.2", "127.0.0.1"}, {"localhost", "node-1"})
    usages = set(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}  # the gateway dials etcd
    assert _sans(_cert(pki.root / "etcd-peer-node-1.crt"))[0] == {"192.168.49.2", "127.0.0.1"}
    cn = lambda n: _cert(pki.root / n).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value  # noqa: E731
    assert cn("controller.crt") == "kproxy-controller"
    assert cn("node-node-2.crt") == "system:node:node-2"
    assert cn("coredns.crt") == "system:serviceaccount:kube-system:coredns"
    client_only = set(_cert(pki.root / "node-node-2.crt").extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value)
    assert client_only == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert coredns_files(str(pki.ca_cert)).cert == str(pki.root / "coredns.crt")
    openssl = subprocess.run(["openssl", "verify", "-CAfile", str(pki.ca_cert), str(pki.root / "controller.crt")],
                             capture_output=True, text=True)
    assert openssl.returncode == 0, openssl.stdout + openssl.stderr


def test_certificates_are_kept_and_issued_again_only_when_stale(tmp_path):
    pki = Pki(tmp_path / "pki")
    ensure_node_pki(pki, "node-1", "10.0.0.1", control_plane=True)
    before = {p.name: p.read_bytes() for p in pki.root.iterdir()}
    ensure_node_pki(pki, "node-1", "10.0.0.1", control_plane=True)  # a second `up`: nothing changes
    assert {p.name: p.read_bytes() for p in pki.root.iterdir()} == before
    ensure_node_pki(pki, "node-1", "10.0.0.9", control_plane=True)  # the node moved: etcd's SANs follow
    assert _sans(_cert(pki.root / "etcd-server-node-1.crt"))[0] == {"10.0.0.9", "127.0.0.1"}
    assert (pki.root / "controller.crt").read_bytes() == before["controller.crt"]


def test_a_node_adopts_the_lab_ca_from_a_folder(tmp_path):
    """The Vagrant lab: one CA, made elsewhere, for every node; each issues its own certificates."""
    first = Pki(tmp_path / "first")
    first.ensure_ca()
    other = Pki(tmp_path / "node-2")
    ensure_node_pki(other, "node-2", "10.0.0.2", control_plane=False, ca_source=first.root)
    assert other.ca_cert.read_bytes() == first.ca_cert.read_bytes() and _mode(other.ca_key) == 0o600
    _cert(other.root / "node-node-2.crt").verify_directly_issued_by(_cert(first.ca_cert))
    assert not (other.root / "etcd-server-node-2.crt").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ca.crt").write_bytes(first.ca_cert.read_bytes())
    (tmp_path / "bad" / "ca.key").write_text("not a key")
    with pytest.raises(RuntimeError, match="unusable"):
        Pki(tmp_path / "third").ensure_ca(tmp_path / "bad")


def test_the_state_dir_and_the_store_are_root_only(tmp_path):
    """Finding 9: the state dir was 0755 and store.db 0644: any user read every object and error."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    private_dir(state)
    assert _mode(state) == 0o700
    fresh = private_dir(tmp_path / "fresh" / "state")
    assert _mode(fresh) == 0o700
    old = os.umask(0o022)  # even from a process with a loose umask
    try:
        store = SqliteStore(state / "store.db")
        store.put("k", {"v": 1})
        cfg = LabConfig(state_dir=str(state))
        cfg.save()
    finally:
        os.umask(old)
    for name in ("store.db", "store.db-wal", "store.db-shm", "config.json"):
        if (state / name).exists():
            assert _mode(state / name) == 0o600, name
    store.close()
    os.chmod(state / "store.db", 0o644)  # an old lab's file is made private when opened
    SqliteStore(state / "store.db").close()
    assert _mode(state / "store.db") == 0o600


def test_a_pods_resolv_conf_stays_world_readable_under_the_daemons_umask(tmp_path, monkeypatch):
    """The daemon's umask is 077 (its state is private); /etc/netns/<pod>/ is the pod's /etc, which
    a pod running as a non-root user must read."""
    from kproxy.node import dnsconfig
    monkeypatch.setattr(dnsconfig, "ETC_NETNS", tmp_path / "netns")
    old = os.umask(0o077)
    try:
        dnsconfig.write_pod_files("kp1234-default-web", {"resolv.conf": "nameserver 10.96.0.10\n", "hosts": "x\n"})
    finally:
        os.umask(old)
    d = tmp_path / "netns" / "kp1234-default-web"
    assert _mode(d) == 0o755 and _mode(d / "resolv.conf") == 0o644 and _mode(d / "hosts") == 0o644
