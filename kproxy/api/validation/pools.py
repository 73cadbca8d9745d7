"""MetalLB IPAddressPools: the form of ``spec.addresses`` (what the pool parser reads).

Which ranges a lab allows is the admission gate's own check (``admission.py``), not this one.
"""

from __future__ import annotations

from kproxy.api.errors import invalid, required
import ipaddress

from kproxy.api.validation.common import (
    Errors,
    as_dict,
    is_dns1123_subdomain,
    parse_cidr,
    parse_ip,
    validate_object_meta,
    validate_routable_ip,
)

POOL_ADDRESS_FORMAT = "must be an IPv4 CIDR (192.168.10.0/24) or range (192.168.10.1-192.168.10.9)"


def validate_ip_address_pool(obj: dict) -> Errors:
    """The form of ``spec.addresses`` (what the pool parser reads); which ranges a lab allows is its own check."""
    errs = validate_object_meta(obj, is_dns1123_subdomain, namespaced=True)
    addresses = as_dict(obj.get("spec")).get("addresses")
    if not addresses:
        return errs + [required("spec.addresses")]
    for i, text in enumerate(addresses):
        errs += _pool_address_errors(f"spec.addresses[{i}]", text)
    return errs


def _pool_address_errors(path: str, text: str) -> Errors:
    if "-" in text:
        first, _, last = text.partition("-")
        a, b = parse_ip(first.strip()), parse_ip(last.strip())
        if a is None or b is None or a.version != 4 or b.version != 4:
            return [invalid(path, text, POOL_ADDRESS_FORMAT)]
        if b < a:
            return [invalid(path, text, "the range ends before it starts")]
        return special_address_errors(path, text, int(a), int(b))
    text = text.strip()
    cidr = parse_cidr(text) if "/" in text else parse_ip(text)  # a bare address is a /32, as the parser reads it
    if cidr is None or cidr.version != 4:
        return [invalid(path, text, POOL_ADDRESS_FORMAT)]
    net = ipaddress.IPv4Network(text, strict=False)
    return special_address_errors(path, text, int(net.network_address), int(net.broadcast_address))


# What validate_routable_ip refuses in a Service's LoadBalancer ingress: a pool holding one of these
# would hand it out and the allocator would program it (a 127.0.0.0/30 pool gave 127.0.0.0).
_SPECIAL_V4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/32", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32"))


def special_address_errors(path: str, text: str, lo: int, hi: int) -> Errors:
    """The first special address the range [lo, hi] holds, refused in the ingress' own words."""
    for net in _SPECIAL_V4:
        first, last = int(net.network_address), int(net.broadcast_address)
        if lo <= last and first <= hi:
            ip = str(ipaddress.IPv4Address(max(lo, first)))
            return [invalid(path, text, f"holds {ip}: a LoadBalancer IP {e.detail}")
                    for e in validate_routable_ip(path, ip)][:1]
    return []
