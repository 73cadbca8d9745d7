"""The lab's certificates: one CA, etcd's server and peer certificates, and a client certificate
for every process that talks to etcd.

etcd is the whole cluster's state: whoever can write a Pod into it makes an agent run that
Pod's command as root on a node. So etcd runs with client-certificate authentication (and peer
TLS), as kubeadm sets it up, and everything that reads or writes it presents a certificate of
the lab CA. The layout follows kubeadm's /etc/kubernetes/pki/etcd, flat in STATE/pki (0700,
every file 0600):

    ca.crt, ca.key                          the lab CA (EC P-256, 10 years)
    etcd-server-NODE.crt/.key               etcd's serving certificate (SANs: the node's IP,
                                            127.0.0.1, localhost, NODE)
    etcd-peer-NODE.crt/.key                 etcd's peer certificate (same SANs)
    controller.crt/.key                     CN kproxy-controller
    node-NODE.crt/.key                      CN system:node:NODE, O system:nodes (the agents)
    coredns.crt/.key                        CN system:serviceaccount:kube-system:coredns (DNS pods)
    apiserver.crt/.key                      the Kubernetes API server's serving certificate (SANs:
                                            127.0.0.1, the node IPs, the `kubernetes` Service's
                                            ClusterIP and DNS names), as kubeadm's apiserver.crt
    admin.crt/.key                          CN kubernetes-admin, O system:masters: the admin
                                            kubeconfig's client certificate

Leaf certificates last one year and are issued again by the next `up`/`units` when they are
missing, expire within 30 days, were signed by another CA, or name other addresses.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS, LEAF_DAYS, RENEW_DAYS = 3650, 365, 30
CONTROLLER = "controller"
COREDNS = "coredns"
APISERVER = "apiserver"
ADMIN = "admin"


class TlsFiles(NamedTuple):
    """What a client presents to etcd: the CA to trust and its own certificate and key."""
    ca: str
    cert: str
    key: str


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only (0600), atomically: never a moment world-readable."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Pki:
    """A lab's certificate folder (STATE/pki)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def of(cls, state_dir: str | Path) -> "Pki":
        return cls(Path(state_dir) / "pki")

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.crt", self.root / f"{name}.key"

    def client(self, name: str) -> TlsFiles:
        """The files a client named `name` (controller, node-NODE, coredns) gives etcd3gw."""
        cert, key = self.pair(name)
        return TlsFiles(str(self.ca_cert), str(cert), str(key))

    def etcd_server(self, node: str) -> tuple[Path, Path]:
        return self.pair(f"etcd-server-{node}")

    def etcd_peer(self, node: str) -> tuple[Path, Path]:
        return self.pair(f"etcd-peer-{node}")

    # -------------------------------------------------------------- the CA

    def _mkdir(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    def ensure_ca(self, source: str | Path | None = None) -> None:
        """The lab CA: copied from `source` (a folder with ca.crt and ca.key, e.g. the one the
        Vagrantfile makes on the host) when given, else made here once."""
        self._mkdir()
        if source is not None:
            src = Path(source)
            for name in ("ca.crt", "ca.key"):
                data = (src / name).read_bytes()
                dest = self.root / name
                if not dest.exists() or dest.read_bytes() != data:
                    _write_private(dest, data)
            self._load_ca()  # a broken or mismatched pair fails here, with the file named
            return
        if self.ca_cert.exists() and self.ca_key.exists():
            return
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kproxy-lab-ca")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - datetime.timedelta(minutes=5))
                .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        _write_private(self.ca_key, _key_pem(key))
        _write_private(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM))

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        try:
            cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
            key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise RuntimeError(f"the lab CA in {self.root} is unusable: {e}") from None
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise RuntimeError(f"{self.ca_key} is not the key of {self.ca_cert}")
        return cert, key

    # -------------------------------------------------------------- leaf certificates

    def _current(self, name: str, ca: x509.Certificate, sans: list[x509.GeneralName]) -> bool:
        """The certificate `name` exists, was signed by this CA, names these SANs and lasts a while."""
        cert_path, key_path = self.pair(name)
        if not (cert_path.exists() and key_path.exists()):
            return False
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, x509.InvalidSignature):
            return False
        if cert.not_valid_after_utc < _now() + datetime.timedelta(days=RENEW_DAYS):
            return False
        try:
            have = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            have = set()
        return have == set(sans)

    def issue(self, name: str, cn: str, orgs: tuple[str, ...] = (), ips: tuple[str, ...] = (),
              dns: tuple[str, ...] = (), server: bool = False) -> tuple[Path, Path]:
        """Certificate `name` for `cn`, signed by the lab CA (issued again only when not current).

        Every certificate may authenticate a client; server ones (etcd's) also serve: etcd's
        gRPC gateway dials etcd itself with the server certificate, as kubeadm's etcd-server."""
        ca, ca_key = self._load_ca()
        sans = [*(x509.DNSName(d) for d in dns), *(x509.IPAddress(ipaddress.ip_address(i)) for i in ips)]
        if self._current(name, ca, sans):
            return self.pair(name)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([*(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs),
                             x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(_now() - datetime.timedelta(minutes=5))
                   .not_valid_after(_now() + datetime.timedelta(days=LEAF_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=True, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=False, crl_sign=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_path, key_path = self.pair(name)
        _write_private(key_path, _key_pem(key))
        _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def issue_etcd_member(self, node: str, ip: str) -> None:
        """etcd's serving and peer certificates on `node` (reached at its IP and on loopback)."""
        for name in (f"etcd-server-{node}", f"etcd-peer-{node}"):
            self.issue(name, f"{node}-{name.split('-')[1]}", ips=(ip, "127.0.0.1"), dns=("localhost", node),
                       server=True)

    def issue_controller(self) -> TlsFiles:
        self.issue(CONTROLLER, "kproxy-controller", orgs=("kproxy:controllers",))
        return self.client(CONTROLLER)

    def issue_node(self, node: str) -> TlsFiles:
        self.issue(f"node-{node}", f"system:node:{node}", orgs=("system:nodes",))
        return self.client(f"node-{node}")

    def issue_coredns(self) -> TlsFiles:
        self.issue(COREDNS, "system:serviceaccount:kube-system:coredns", orgs=("system:serviceaccounts",))
        return self.client(COREDNS)

    def issue_apiserver(self, ips: tuple[str, ...], cluster_domain: str = "cluster.local") -> tuple[Path, Path]:
        """The API server's serving certificate: reached on loopback, at the node's address and
        behind the `kubernetes` Service (its ClusterIP, its DNS names), as kubeadm issues it."""
        dns = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
               f"kubernetes.default.svc.{cluster_domain}", "localhost")
        ips = tuple(dict.fromkeys(("127.0.0.1", *ips)))
        return self.issue(APISERVER, "kube-apiserver", ips=ips, dns=dns, server=True)

    def issue_admin(self) -> tuple[Path, Path]:
        """The admin kubeconfig's client certificate (kubeadm's admin.conf: group system:masters)."""
        return self.issue(ADMIN, "kubernetes-admin", orgs=("system:masters",))


def coredns_files(store_ca: str) -> TlsFiles:
    """The DNS pods' certificate, next to the CA a controller trusts (the lab's pki folder)."""
    return Pki(Path(store_ca).parent).client(COREDNS)


def ensure_node_pki(pki: Pki, node: str, node_ip: str, control_plane: bool, ca_source: str | Path | None = None) -> None:
    """Everything one node of the lab needs: etcd's and the controller's certificates on the
    control-plane node, the node's agent certificate and the DNS pods' one (they may run anywhere)."""
    pki.ensure_ca(ca_source)
    if control_plane:
        pki.issue_etcd_member(node, node_ip)
        pki.issue_controller()
    pki.issue_node(node)
    pki.issue_coredns()
