"""Endpoints and EndpointSlices (pkg/apis/core/validation, pkg/apis/discovery/validation).

The addresses the proxier turns into DNAT targets: each must be an IP of the slice's family and
not a special one (unspecified, loopback, link-local), ports named and numbered as upstream.
"""

from __future__ import annotations

from typing import Any

from kproxy.api.errors import duplicate, invalid, not_supported, required, too_many
from kproxy.api.validation.common import (
    PROTOCOLS,
    Errors,
    dict_items,
    enum_field,
    format_errors,
    ip_family,
    is_dns1123_label,
    is_dns1123_subdomain,
    parse_ip,
    validate_app_protocol,
    validate_ip,
    validate_named_port,
    validate_non_special_ip,
    validate_object_meta,
)

ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")


def validate_endpoints(obj: dict) -> Errors:
    errs = validate_object_meta(obj, is_dns1123_subdomain, namespaced=True)
    for i, subset in dict_items(errs, "subsets", obj.get("subsets")):
        errs += _validate_subset(subset, f"subsets[{i}]")
    return errs


def _validate_subset(subset: dict, path: str) -> Errors:
    errs: Errors = []
    if not subset.get("addresses") and not subset.get("notReadyAddresses"):
        errs.append(required(path, "must specify `addresses` or `notReadyAddresses`"))
    for key in ("addresses", "notReadyAddresses"):
        for i, address in dict_items(errs, f"{path}.{key}", subset.get(key)):
            errs += _validate_endpoint_address(address, f"{path}.{key}[{i}]")
    ports = dict_items(errs, f"{path}.ports", subset.get("ports"))
    for i, port in ports:
        errs += _validate_endpoint_port(port, len(ports) > 1, f"{path}.ports[{i}]")
    return errs


def _validate_endpoint_address(address: dict, path: str) -> Errors:
    ip = address.get("ip")
    errs = validate_ip(f"{path}.ip", ip)
    if address.get("hostname"):
        errs += format_errors(f"{path}.hostname", str(address["hostname"]), is_dns1123_label)
    if address.get("nodeName") is not None:
        errs += format_errors(f"{path}.nodeName", str(address["nodeName"]), is_dns1123_subdomain)
    return errs + validate_non_special_ip(f"{path}.ip", ip)


def _validate_endpoint_port(port: dict, require_name: bool, path: str) -> Errors:
    return validate_named_port(port, require_name, path) + validate_app_protocol(port, path)


def validate_endpoint_slice(obj: dict) -> Errors:
    errs = validate_object_meta(obj, is_dns1123_subdomain, namespaced=True)
    address_type = obj.get("addressType")
    enum_field(errs, "addressType", address_type, ADDRESS_TYPES)
    endpoints = dict_items(errs, "endpoints", obj.get("endpoints"))
    if len(endpoints) > 1000:
        errs.append(too_many("endpoints", len(endpoints), 1000))
    else:
        for i, endpoint in endpoints:
            errs += _validate_slice_endpoint(endpoint, address_type, f"endpoints[{i}]")
    errs += _validate_slice_ports(obj.get("ports"))
    return errs


def _validate_slice_endpoint(endpoint: dict, address_type: Any, path: str) -> Errors:
    errs: Errors = []
    addresses = endpoint.get("addresses") or []
    if not addresses:
        errs.append(required(f"{path}.addresses", "must contain at least 1 address"))
    elif len(addresses) > 100:
        errs.append(too_many(f"{path}.addresses", len(addresses), 100))
    for i, address in enumerate(addresses):
        errs += _validate_slice_address(address, address_type, f"{path}.addresses[{i}]")
    if endpoint.get("hostname") is not None:
        errs += format_errors(f"{path}.hostname", str(endpoint["hostname"]), is_dns1123_label)
    return errs


def _validate_slice_address(address: Any, address_type: Any, path: str) -> Errors:
    if address_type in ("IPv4", "IPv6"):
        ip = parse_ip(address)
        errs = [] if ip and ip_family(ip) == address_type else [
            invalid(path, address, f"must be a valid {address_type} address")]
        return errs + validate_non_special_ip(path, address)
    if address_type == "FQDN":
        return _validate_fqdn(path, str(address or ""))
    return []


def _validate_fqdn(path: str, name: str) -> Errors:
    """IsFullyQualifiedDomainName."""
    if not name:
        return [required(path)]
    name = name.removesuffix(".")
    messages = is_dns1123_subdomain(name)
    if messages:
        return [invalid(path, name, ",".join(messages))]
    if len(name.split(".")) < 2:
        return [invalid(path, name, "should be a domain with at least two segments separated by dots")]
    for label in name.split("."):
        messages = is_dns1123_label(label)
        if messages:
            return [invalid(path, label, ",".join(messages))]
    return []


def _validate_slice_ports(ports: Any) -> Errors:
    errs: Errors = []
    items = dict_items(errs, "ports", ports)
    if len(items) > 100:
        return errs + [too_many("ports", len(items), 100)]
    names: set[str] = set()
    for i, port in items:
        name = port.get("name") or ""
        if name:
            errs += format_errors(f"ports[{i}].name", str(name), is_dns1123_label)
        if name in names:
            errs.append(duplicate(f"ports[{i}].name", name))
        names.add(name)
        protocol = port.get("protocol")
        if protocol is None:
            errs.append(required(f"ports[{i}].protocol"))
        elif protocol not in PROTOCOLS:
            errs.append(not_supported(f"ports[{i}].protocol", protocol, PROTOCOLS))
    return errs
