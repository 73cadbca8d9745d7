"""Cluster DNS records, answered the way CoreDNS's `kubernetes` plugin answers them.

Pure: built from plain Kubernetes-shaped dicts (Services, EndpointSlices, Pods, Namespaces) and
queried with `resolve(qname, qtype)`; no sockets, no store. The server (server.py) turns an
`Answer` into a DNS message.

What is served follows the Kubernetes DNS-Based Service Discovery specification (schema 1.1.0)
and, where the spec leaves room, CoreDNS as kubeadm configures it:

    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }

The lookup mirrors CoreDNS's own steps (parseRequest, findServices, findPods, serviceRecordForIP)
because the NXDOMAIN / NOERROR-without-data split is decided there: a lookup either fails (the
name does not exist: NXDOMAIN) or yields a possibly empty list of targets (the name exists; an
empty list or no target of the asked type is NOERROR with no data). Both negative answers carry
the zone's SOA in the authority section, exactly as CoreDNS writes it.
"""
from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass, field
from typing import Iterable

from kproxy.api.meta import LABEL_SERVICE_NAME

SCHEMA_VERSION = "1.1.0"
SCHEMA_TTL = 28800                     # CoreDNS hard-codes this TTL for dns-version TXT
REVERSE_ZONES = ("in-addr.arpa.", "ip6.arpa.")
SERVICE_NAME_LABEL = LABEL_SERVICE_NAME
# Namespaces every cluster has, whether or not the store lists them.
BUILTIN_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
POD_MODES = ("insecure", "verified", "disabled")
MAX_CNAME_CHAIN = 8                    # CoreDNS stops following in-zone CNAMEs after 8

Record = tuple[str, int, str, str]     # (owner name, ttl, type, rdata in presentation format)


@dataclass
class Answer:
    """What to put in a response: rcode and the three record sections, as text tuples."""
    rcode: str = "NOERROR"
    answer: list[Record] = field(default_factory=list)
    authority: list[Record] = field(default_factory=list)
    additional: list[Record] = field(default_factory=list)


class _NoSuchName(Exception):
    """CoreDNS's errNoItems / errInvalidRequest / errNsNotExposed: the name does not exist."""


# ------------------------------------------------------------------ names


def fqdn(name: str) -> str:
    """`name` with exactly one trailing dot (the root stays '.')."""
    return name.rstrip(".") + "." if name.strip(".") else "."


def zone_of(qname: str, domain: str, reverse_zones: Iterable[str] = REVERSE_ZONES) -> str | None:
    """The served zone `qname` falls in (lower case, trailing dot), or None for other names."""
    name = fqdn(qname).lower()
    for zone in (fqdn(domain).lower(), *reverse_zones):
        if name == zone or name.endswith("." + zone):
            return zone
    return None


def is_reverse_name(qname: str) -> bool:
    """True for names under in-addr.arpa. / ip6.arpa. (where kubeadm's config falls through)."""
    name = fqdn(qname).lower()
    return any(name == z or name.endswith("." + z) for z in REVERSE_ZONES)


def dashed(ip: str) -> str:
    """The label CoreDNS names an endpoint or pod by when it has no hostname: 10-0-0-5, fd00--5."""
    return ip.replace(".", "-").replace(":", "-")


def _ip_from_dashed(label: str) -> str | None:
    """CoreDNS's pod-name parse: a-b-c-d is IPv4 (no '--'), anything else tries IPv6."""
    if label.count("-") == 3 and "--" not in label:
        text = label.replace("-", ".")
    else:
        text = label.replace("-", ":")
    return _canonical_ip(text)


def _canonical_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _ip_from_reverse(name: str) -> str | None:
    """The address a full reverse name stands for; None for a partial or malformed one."""
    labels = name.rstrip(".").split(".")
    if labels[-2:] == ["in-addr", "arpa"] and len(labels) == 6:
        if all(x.isdigit() for x in labels[:4]):
            return _canonical_ip(".".join(reversed(labels[:4])))
    if labels[-2:] == ["ip6", "arpa"] and len(labels) == 34:
        nibbles = labels[:32]
        if all(len(n) == 1 and n in "0123456789abcdef" for n in nibbles):
            hexits = "".join(reversed(nibbles))
            return _canonical_ip(":".join(hexits[i:i + 4] for i in range(0, 32, 4)))
    return None


def _strip_underscore(label: str) -> str:
    return label[1:] if label.startswith("_") else label


def _address_type(ip: str) -> str:
    return "AAAA" if ":" in ip else "A"


# ------------------------------------------------------------------ the model CoreDNS keeps


@dataclass(frozen=True)
class _Port:
    name: str
    protocol: str
    port: int                          # -1: CoreDNS's sentinel for "no ports declared"

    def matches(self, name: str, protocol: str) -> bool:
        """CoreDNS's matchPortAndProtocol: an empty query part matches anything."""
        return ((not name or name == self.name.lower())
                and (not protocol or protocol == self.protocol.lower()))


NO_PORTS = (_Port("", "", -1),)


@dataclass(frozen=True)
class _Address:
    ip: str
    hostname: str                      # explicit hostname, else the dashed IP (endpointHostname)


@dataclass(frozen=True)
class _Subset:
    """One EndpointSlice as CoreDNS keeps it: its published addresses times its ports."""
    addresses: tuple[_Address, ...]
    ports: tuple[_Port, ...]


@dataclass(frozen=True)
class _Service:
    namespace: str
    name: str
    cluster_ips: tuple[str, ...]
    headless: bool
    external_name: str | None          # set for type ExternalName
    ports: tuple[_Port, ...]
    publish_not_ready: bool


@dataclass(frozen=True)
class _Target:
    """CoreDNS's msg.Service: an address (or a CNAME target name) and port, known by `fqdn`."""
    host: str
    port: int
    fqdn: str

    @property
    def is_name(self) -> bool:
        return _canonical_ip(self.host) is None


@dataclass(frozen=True)
class _Question:
    name: str                          # as asked (case kept, as CoreDNS echoes it), fully qualified
    qtype: str

    @property
    def lower(self) -> str:
        return self.name.lower()


def _ports(raw: list[dict] | None) -> tuple[_Port, ...]:
    """Service or EndpointSlice ports; protocol defaults to TCP, as the API server defaults it."""
    ports = tuple(_Port(p.get("name") or "", p.get("protocol") or "TCP",
                        p["port"] if p.get("port") is not None else -1)
                  for p in raw or ())
    return ports or NO_PORTS


def _service(obj: dict) -> _Service:
    meta, spec = obj.get("metadata", {}), obj.get("spec", {})
    ips = tuple(spec.get("clusterIPs") or [spec.get("clusterIP") or ""])
    external = spec.get("type") == "ExternalName"
    return _Service(
        namespace=meta.get("namespace", "default").lower(), name=meta["name"].lower(),
        cluster_ips=tuple(_canonical_ip(ip) or ip for ip in ips),
        headless=not external and ips[0] == "None",
        external_name=spec.get("externalName", "") if external else None,
        ports=_ports(spec.get("ports")),
        publish_not_ready=bool(spec.get("publishNotReadyAddresses")))


def _endpoint_ready(endpoint: dict) -> bool:
    """EndpointSlice API: a missing `ready` condition means unknown, to be read as ready."""
    ready = (endpoint.get("conditions") or {}).get("ready")
    return ready is None or bool(ready)


# ------------------------------------------------------------------ records


class ClusterRecords:
    """The cluster's DNS data, indexed once, answering `resolve()` like CoreDNS's kubernetes plugin.

    `namespaces` lists Namespace objects or names; the namespaces of the given objects and the
    built-in ones exist too, since CoreDNS answers NXDOMAIN for anything in a namespace that
    does not exist. `serial` is the SOA serial (CoreDNS uses the time the data last changed).
    `pod_mode` is CoreDNS's `pods` option; kubeadm sets `insecure`.
    """

    def __init__(self, services: Iterable[dict], endpoint_slices: Iterable[dict], pods: Iterable[dict], *,
                 domain: str = "cluster.local", ttl: int = 30, namespaces: Iterable[dict | str] = (),
                 serial: int | None = None, pod_mode: str = "insecure"):
        if pod_mode not in POD_MODES:
            raise ValueError(f"pod_mode must be one of {POD_MODES}")
        self.domain = fqdn(domain).lower()
        self.ttl = ttl
        self.serial = int(time.time()) if serial is None else serial
        self.pod_mode = pod_mode
        pods = list(pods)
        self._services = {(s.namespace, s.name): s for s in map(_service, services)}
        self._pods = {((p.get("metadata") or {}).get("namespace", "default").lower(),
                       p["metadata"]["name"]): p for p in pods}
        self._pod_ips = self._index_pod_ips(pods)
        self._subsets = self._index_slices(endpoint_slices)
        self._namespaces = self._index_namespaces(namespaces)
        self._by_cluster_ip = self._index_cluster_ips()
        self._by_endpoint_ip = self._index_endpoint_ips()

    # -------------------------------------------------------------- indexing

    @staticmethod
    def _index_pod_ips(pods: list[dict]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for pod in pods:
            ns = (pod.get("metadata") or {}).get("namespace", "default").lower()
            status = pod.get("status") or {}
            ips = [x.get("ip") for x in status.get("podIPs") or []] or [status.get("podIP")]
            out.setdefault(ns, set()).update(filter(None, (_canonical_ip(ip or "") for ip in ips)))
        return out

    def _index_slices(self, slices: Iterable[dict]) -> dict[tuple[str, str], list[_Subset]]:
        """Slices grouped by Service, each reduced to the addresses DNS publishes."""
        out: dict[tuple[str, str], list[_Subset]] = {}
        for sl in sorted(slices, key=lambda s: (s["metadata"].get("namespace", ""), s["metadata"]["name"])):
            meta = sl["metadata"]
            svc_name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
            if not svc_name or sl.get("addressType") == "FQDN":
                continue
            key = (meta.get("namespace", "default").lower(), svc_name.lower())
            svc = self._services.get(key)
            addresses = tuple(self._published(sl.get("endpoints") or [], key, svc))
            ports = _ports(sl.get("ports"))
            out.setdefault(key, []).append(_Subset(addresses, ports))
        return out

    def _published(self, endpoints: list[dict], key: tuple[str, str], svc: _Service | None):
        """Ready endpoints (all of them for publishNotReadyAddresses), with their DNS hostname."""
        for ep in endpoints:
            if not (_endpoint_ready(ep) or (svc and svc.publish_not_ready)):
                continue
            for raw_ip in ep.get("addresses") or []:
                ip = _canonical_ip(raw_ip)
                if ip:
                    yield _Address(ip, self._endpoint_hostname(ep, ip, key))

    def _endpoint_hostname(self, ep: dict, ip: str, key: tuple[str, str]) -> str:
        """The endpoint's hostname, else the one the EndpointSlice controller would have set
        from its pod (spec.hostname when spec.subdomain names this Service), else the dashed IP."""
        if ep.get("hostname"):
            return ep["hostname"].lower()
        pod = self._endpoint_pod(ep, ip, key[0])
        spec = (pod or {}).get("spec") or {}
        if spec.get("hostname") and (spec.get("subdomain") or "").lower() == key[1]:
            return spec["hostname"].lower()
        return dashed(ip)

    def _endpoint_pod(self, ep: dict, ip: str, namespace: str) -> dict | None:
        ref = ep.get("targetRef") or {}
        if ref.get("kind", "Pod") == "Pod" and ref.get("name"):
            return self._pods.get(((ref.get("namespace") or namespace).lower(), ref["name"]))
        for (ns, _), pod in self._pods.items():
            if ns == namespace and _canonical_ip((pod.get("status") or {}).get("podIP") or "") == ip:
                return pod
        return None

    def _index_namespaces(self, namespaces: Iterable[dict | str]) -> set[str]:
        names = {n if isinstance(n, str) else n["metadata"]["name"] for n in namespaces}
        names.update(BUILTIN_NAMESPACES)
        names.update(ns for ns, _ in self._services)
        names.update(ns for ns, _ in self._subsets)
        names.update(ns for ns, _ in self._pods)
        return {n.lower() for n in names}

    def _index_cluster_ips(self) -> dict[str, str]:
        """ClusterIP -> Service FQDN (first Service by namespace/name wins, as only one can hold it)."""
        out: dict[str, str] = {}
        for key in sorted(self._services):
            svc = self._services[key]
            if svc.headless or svc.external_name is not None:
                continue
            for ip in svc.cluster_ips:
                if _canonical_ip(ip):
                    out.setdefault(ip, self._service_fqdn(svc.namespace, svc.name))
        return out

    def _index_endpoint_ips(self) -> dict[str, list[str]]:
        """Endpoint IP -> endpoint FQDNs, for PTR (CoreDNS answers these for every Service)."""
        out: dict[str, list[str]] = {}
        for (ns, name), subsets in sorted(self._subsets.items()):
            for subset in subsets:
                for addr in subset.addresses:
                    target = f"{addr.hostname}.{self._service_fqdn(ns, name)}"
                    if target not in out.setdefault(addr.ip, []):
                        out[addr.ip].append(target)
        return out

    def _service_fqdn(self, namespace: str, name: str) -> str:
        return f"{name}.{namespace}.svc.{self.domain}"

    # -------------------------------------------------------------- queries

    def is_cluster_name(self, qname: str) -> bool:
        """True when this plugin answers `qname` (the cluster domain and the reverse zones);
        anything else is for the upstream resolvers."""
        return zone_of(qname, self.domain) is not None

    def resolve(self, qname: str, qtype: str) -> Answer:
        """Answer `qname`/`qtype` (case-insensitive, trailing dot optional) as CoreDNS would.

        Names outside the served zones get rcode REFUSED and no records.
        """
        q = _Question(fqdn(qname), qtype.upper())
        zone = zone_of(q.name, self.domain)
        if zone is None:
            return Answer("REFUSED")
        if zone in REVERSE_ZONES:
            return self._resolve_reverse(q, zone)
        return self._resolve_forward(q, ())

    def _resolve_forward(self, q: _Question, chain: tuple[str, ...]) -> Answer:
        relative = q.lower[: -len(self.domain)].rstrip(".")
        labels = relative.split(".") if relative else []
        if labels == ["dns-version"]:
            if q.qtype == "TXT":
                return Answer(answer=[(q.name, SCHEMA_TTL, "TXT", f'"{SCHEMA_VERSION}"')])
            return self._negative(q, self.domain, "NOERROR")
        if not labels and q.qtype == "SOA":
            return Answer(answer=[self._soa(q, self.domain)])
        try:
            targets = self._lookup(labels)
        except _NoSuchName:
            return self._negative(q, self.domain, "NXDOMAIN")
        answer, additional = self._records(q, targets, chain)
        if not answer:
            return self._negative(q, self.domain, "NOERROR")
        return Answer(answer=answer, additional=additional)

    def _resolve_reverse(self, q: _Question, zone: str) -> Answer:
        ip = _ip_from_reverse(q.lower)
        if ip is None:
            # CoreDNS: the zone apex has no data; any other non-address name is invalid.
            return self._negative(q, zone, "NOERROR" if q.lower == zone else "NXDOMAIN")
        targets = self._ptr_targets(ip)
        if not targets:
            return self._negative(q, zone, "NXDOMAIN")
        if q.qtype != "PTR":
            return self._negative(q, zone, "NOERROR")
        return Answer(answer=[(q.name, self.ttl, "PTR", t) for t in targets])

    def _ptr_targets(self, ip: str) -> list[str]:
        """CoreDNS's serviceRecordForIP: a ClusterIP names its Service; otherwise every
        published endpoint with that IP names itself (hostname or dashed IP) under its Service."""
        if ip in self._by_cluster_ip:
            return [self._by_cluster_ip[ip]]
        return list(self._by_endpoint_ip.get(ip, []))

    # -------------------------------------------------------------- lookup (CoreDNS Records)

    def _lookup(self, labels: list[str]) -> list[_Target]:
        """Targets for a name below the cluster domain, or _NoSuchName.

        Shapes (CoreDNS parseRequest): [_port._proto.|endpoint.]service.namespace.(svc|pod)
        """
        if not labels:
            return []                                  # the zone apex: no data
        kind = labels[-1]
        if kind not in ("svc", "pod"):
            raise _NoSuchName
        if len(labels) == 1:
            return []                                  # svc.<zone>, pod.<zone>: no data
        if len(labels) > 5:
            raise _NoSuchName                          # too long to be anything
        namespace = labels[-2]
        if namespace not in self._namespaces:
            raise _NoSuchName
        rest = labels[:-2]
        if kind == "pod":
            return self._pod_targets(namespace, rest)
        return self._service_targets(namespace, rest)

    def _pod_targets(self, namespace: str, rest: list[str]) -> list[_Target]:
        """CoreDNS findPods: a-b-c-d.ns.pod.<zone> -> a.b.c.d (any labels left of it are ignored)."""
        if self.pod_mode == "disabled":
            raise _NoSuchName
        if not rest:
            return []                                  # ns.pod.<zone>: no data
        podname = rest[-1]
        ip = _ip_from_dashed(podname)
        if ip is None:
            raise _NoSuchName
        if self.pod_mode == "verified" and ip not in self._pod_ips.get(namespace, ()):
            raise _NoSuchName
        return [_Target(ip, -1, f"{podname}.{namespace}.pod.{self.domain}")]

    def _service_targets(self, namespace: str, rest: list[str]) -> list[_Target]:
        """CoreDNS findServices for service, endpoint.service or _port._proto.service."""
        if not rest:
            return []                                  # ns.svc.<zone>: no data
        endpoint = port = protocol = ""
        if len(rest) == 2:
            endpoint = rest[0]
        elif len(rest) == 3:
            port, protocol = _strip_underscore(rest[0]), _strip_underscore(rest[1])
        svc = self._services.get((namespace, rest[-1]))
        if svc is None:
            raise _NoSuchName
        if svc.external_name is not None:
            return self._external_targets(svc, endpoint)
        if svc.headless or endpoint:
            return self._endpoint_targets(svc, endpoint, port, protocol)
        return self._cluster_ip_targets(svc, port, protocol)

    def _external_targets(self, svc: _Service, endpoint: str) -> list[_Target]:
        """ExternalName: one CNAME target. CoreDNS has no endpoints here, and an IP in
        externalName is not a name it can CNAME to, so both are NXDOMAIN."""
        if endpoint or not svc.external_name or _canonical_ip(svc.external_name):
            raise _NoSuchName
        return [_Target(fqdn(svc.external_name), 0, self._service_fqdn(svc.namespace, svc.name))]

    def _endpoint_targets(self, svc: _Service, endpoint: str, port: str, protocol: str) -> list[_Target]:
        """Published endpoints (of a headless Service, or named by `endpoint`) x matching ports;
        none at all is NXDOMAIN, as the spec asks for a headless Service without ready endpoints."""
        targets = []
        for subset in self._subsets.get((svc.namespace, svc.name), []):
            for addr in subset.addresses:
                if endpoint and endpoint != addr.hostname:
                    continue
                name = f"{addr.hostname}.{self._service_fqdn(svc.namespace, svc.name)}"
                targets += [_Target(addr.ip, p.port, name) for p in subset.ports if p.matches(port, protocol)]
        if not targets:
            raise _NoSuchName
        return targets

    def _cluster_ip_targets(self, svc: _Service, port: str, protocol: str) -> list[_Target]:
        """The ClusterIP(s) once per matching Service port; no matching port is NXDOMAIN."""
        ports = [p for p in svc.ports if p.matches(port, protocol)]
        if not ports:
            raise _NoSuchName
        name = self._service_fqdn(svc.namespace, svc.name)
        return [_Target(ip, p.port, name) for p in ports for ip in svc.cluster_ips if _canonical_ip(ip)]

    # -------------------------------------------------------------- records from targets

    def _records(self, q: _Question, targets: list[_Target], chain: tuple[str, ...]):
        """(answer, additional) records of q.qtype from the lookup's targets."""
        names = [t for t in targets if t.is_name]
        if names:
            return self._cname(q, names[0].host, chain), []
        if q.qtype in ("A", "AAAA"):
            return self._addresses(q, targets), []
        if q.qtype == "SRV":
            return self._srv(q, targets)
        return [], []

    def _addresses(self, q: _Question, targets: list[_Target]) -> list[Record]:
        seen: list[str] = []
        for t in targets:
            if _address_type(t.host) == q.qtype and t.host not in seen:
                seen.append(t.host)
        return [(q.name, self.ttl, q.qtype, ip) for ip in seen]

    def _srv(self, q: _Question, targets: list[_Target]):
        """CoreDNS's SRV: priority 0, weight 100/n (n counts every target, as CoreDNS does),
        target = the name the address is known by, that name's address in additional."""
        weight = max(1, math.floor(100.0 / (100 * len(targets)) * 100))
        answer: list[Record] = []
        additional: list[Record] = []
        for t in targets:
            if t.port == -1:
                continue
            srv = (q.name, self.ttl, "SRV", f"0 {weight} {t.port} {t.fqdn}")
            glue = (t.fqdn, self.ttl, _address_type(t.host), t.host)
            if srv not in answer:
                answer.append(srv)
            if glue not in additional:
                additional.append(glue)
        return answer, additional

    def _cname(self, q: _Question, target: str, chain: tuple[str, ...]) -> list[Record]:
        """The ExternalName CNAME, followed inside the cluster domain as CoreDNS does (the
        CNAME is dropped when the in-zone target has nothing of the type). A target outside
        the cluster is left for the server to complete from its upstream."""
        if target.lower() == q.lower:
            return []                                  # x CNAME x
        record = (q.name, self.ttl, "CNAME", target)
        if q.qtype == "CNAME" or zone_of(target, self.domain, ()) is None:
            return [record]
        if len(chain) >= MAX_CNAME_CHAIN - 1 or target.lower() in chain:
            return []
        inner = self._resolve_forward(_Question(target, q.qtype), chain + (q.lower,))
        if inner.rcode != "NOERROR" or not inner.answer:
            return []
        return [record] + inner.answer

    # -------------------------------------------------------------- negative answers

    def _soa(self, q: _Question, zone: str) -> Record:
        """CoreDNS's SOA: owner the zone as the client spelled it, TTL min(ttl, 300)."""
        owner = q.name[len(q.name) - len(zone):]
        return (owner, min(self.ttl, 300), "SOA",
                f"ns.dns.{owner} hostmaster.{owner} {self.serial} 7200 1800 86400 {self.ttl}")

    def _negative(self, q: _Question, zone: str, rcode: str) -> Answer:
        return Answer(rcode, authority=[self._soa(q, zone)])
