"""What every kind's validation is made of: apimachinery's validation utilities and ObjectMeta.

The equivalents of k8s.io/apimachinery/pkg/util/validation (name, label and port formats with
their exact messages, IP and CIDR parsing), .../api/validation/objectmeta.go and
.../apis/meta/v1/validation (metadata, labels, annotations, label selectors), plus the small
field readers the kind modules share: a wrong-typed field gives a type error, never an exception,
which keeps ``validate`` total. Kind modules (service, workloads, endpoints, pools) build on
these and on nothing of each other's.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Sequence

from kproxy.api.errors import (
    FieldError,
    duplicate,
    forbidden,
    invalid,
    not_supported,
    required,
    too_long,
    type_invalid,
)

Errors = list[FieldError]

NEGATIVE = "must be greater than or equal to 0"
PROTOCOLS = ("SCTP", "TCP", "UDP")
TOTAL_ANNOTATION_SIZE = 256 * 1024  # bytes of keys and values (ValidateAnnotationsSize)
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


# ==========================================================================
# Format checks (k8s.io/apimachinery/pkg/util/validation): lists of messages
# ==========================================================================

def regex_error(msg: str, fmt: str, *examples: str) -> str:
    """Upstream RegexError, including its double space before each "or"."""
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def inclusive_range_error(lo: int, hi: int) -> str:
    return f"must be between {lo} and {hi}, inclusive"


DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + "(\\." + DNS1123_LABEL_FMT + ")*"
DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
LABEL_KEY_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE_FMT = "(" + LABEL_KEY_FMT + ")?"

_DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character"
)
_DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character"
)
_DNS1035_LABEL_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
    "start with an alphabetic character, and end with an alphanumeric character"
)
_LABEL_KEY_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, "
    "'-', '_' or '.', and must start and end with an alphanumeric character"
)


def matches(fmt: str, value: str) -> bool:
    return re.fullmatch(fmt, value) is not None


def is_dns1123_label(value: str) -> list[str]:
    errs = [max_len_error(63)] if len(value) > 63 else []
    if not matches(DNS1123_LABEL_FMT, value):
        if matches(DNS1123_SUBDOMAIN_FMT, value):
            errs.append("must not contain dots")
        else:
            errs.append(regex_error(_DNS1123_LABEL_MSG, DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errs


def _length_and_format(value: str, limit: int, fmt: str, msg: str, *examples: str) -> list[str]:
    """At most ``limit`` characters, and matching ``fmt`` (the shape of most Is* checks)."""
    errs = [max_len_error(limit)] if len(value) > limit else []
    if not matches(fmt, value):
        errs.append(regex_error(msg, fmt, *examples))
    return errs


def is_dns1123_subdomain(value: str) -> list[str]:
    return _length_and_format(value, 253, DNS1123_SUBDOMAIN_FMT, _DNS1123_SUBDOMAIN_MSG, "example.com")


def is_dns1035_label(value: str) -> list[str]:
    return _length_and_format(value, 63, DNS1035_LABEL_FMT, _DNS1035_LABEL_MSG, "my-name", "abc-123")


def is_qualified_name(value: str) -> list[str]:
    """A label key: optional DNS-subdomain prefix and '/', then a name part."""
    parts = value.split("/")
    if len(parts) > 2:
        return [
            "a valid label key "
            + regex_error(_LABEL_KEY_MSG, LABEL_KEY_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    errs = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in is_dns1123_subdomain(prefix))
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + max_len_error(63))
    if not matches(LABEL_KEY_FMT, name):
        errs.append("name part " + regex_error(_LABEL_KEY_MSG, LABEL_KEY_FMT, "MyName", "my.name", "123-abc"))
    return errs


def is_label_value(value: str) -> list[str]:
    return _length_and_format(value, 63, LABEL_VALUE_FMT, _LABEL_VALUE_MSG, "MyValue", "my_value", "12345")


def is_valid_port_num(port: int) -> list[str]:
    return [] if 1 <= port <= 65535 else [inclusive_range_error(1, 65535)]


def is_valid_port_name(port: str) -> list[str]:
    """IANA_SVC_NAME: at most 15 chars of [-a-z0-9], one letter, no '--', no edge '-'."""
    errs = []
    if len(port) > 15:
        errs.append(max_len_error(15))
    if not matches("[-a-z0-9]+", port):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search("[a-z]", port):
        errs.append("must contain at least one letter (a-z)")
    if "--" in port:
        errs.append("must not contain consecutive hyphens")
    if port and (port[0] == "-" or port[-1] == "-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def parse_ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse like Go's netip.ParseAddr: IPv4 octets with leading zeros are not addresses.

    (ParseIPSloppy read ``10.96.0.010`` as 10.96.0.10, but every later consumer,
    Python's ipaddress included, refuses it; the API server's strict IP
    validation refuses it too.) IPv4-mapped IPv6 addresses map to their IPv4.
    """
    if not isinstance(value, str) or not value or "%" in value or has_leading_zeros(value):
        return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def has_leading_zeros(value: str) -> bool:
    """Whether a dotted IPv4 address (or CIDR) has an octet such as ``010``."""
    address = value.partition("/")[0].rsplit(":", 1)[-1]
    parts = address.split(".")
    return len(parts) == 4 and any(len(p) > 1 and p.isdigit() and p[0] == "0" for p in parts)


def parse_cidr(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """Parse like Go's ParseCIDRSloppy: "ip/prefix", host bits allowed."""
    if not isinstance(value, str) or "/" not in value:
        return None
    address, _, prefix = value.partition("/")
    ip = parse_ip(address)
    if ip is None or not prefix.isdigit():
        return None
    try:
        return ipaddress.ip_network(f"{ip}/{int(prefix)}", strict=False)
    except ValueError:
        return None


def ip_family(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return "IPv4" if ip.version == 4 else "IPv6"


# ==========================================================================
# Small field validators: typed readers, IPs, ports
# ==========================================================================

def int_field(errs: Errors, path: str, value: Any, default: int | None = 0) -> int | None:
    """``value`` as an int (``default`` when unset); records a type error otherwise."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        errs.append(type_invalid(path, value, "must be of type integer"))
        return None
    return value


def str_field(errs: Errors, path: str, value: Any) -> str | None:
    """``value`` as a str ("" when unset); records a type error otherwise."""
    if value is None:
        return ""
    if not isinstance(value, str):
        errs.append(type_invalid(path, value, "must be of type string"))
        return None
    return value


def map_field(errs: Errors, path: str, value: Any) -> dict:
    """``value`` as a map ({} when unset); records a type error (and gives {}) otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        errs.append(type_invalid(path, value, "must be of type object"))
        return {}
    return value


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def dict_items(errs: Errors, path: str, value: Any) -> list[tuple[int, dict]]:
    """(index, item) for the mapping items of a list; type errors for others."""
    if value is None:
        return []
    if not isinstance(value, list):
        errs.append(type_invalid(path, value, "must be of type array"))
        return []
    items = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            items.append((i, item))
        else:
            errs.append(type_invalid(f"{path}[{i}]", item, "must be of type object"))
    return items


def format_errors(path: str, value: str, checker: Callable[[str], list[str]]) -> Errors:
    return [invalid(path, value, msg) for msg in checker(value)]


def nonnegative(errs: Errors, path: str, value: Any) -> None:
    number = int_field(errs, path, value)
    if number is not None and number < 0:
        errs.append(invalid(path, number, NEGATIVE))


def enum_field(errs: Errors, path: str, value: Any, valid: Sequence[str]) -> None:
    """Required when empty, NotSupported when not one of ``valid``."""
    text = str_field(errs, path, value)
    if text is None:
        return
    if not text:
        errs.append(required(path))
    elif text not in valid:
        errs.append(not_supported(path, text, valid))


def validate_ip(path: str, value: Any) -> Errors:
    """IsValidIP, with the API server's strict rule against leading zeros."""
    if isinstance(value, str) and has_leading_zeros(value) and ipaddress_sloppy(value):
        return [invalid(path, value, "must not have leading 0s")]
    if parse_ip(value) is None:
        return [invalid(path, value, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")]
    return []


def ipaddress_sloppy(value: str) -> bool:
    """Whether ParseIPSloppy would read ``value`` (dotted quad, octets up to 255)."""
    parts = value.partition("/")[0].split(".")
    return len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts)


def validate_cidr(path: str, value: Any) -> Errors:
    """IsValidCIDR."""
    if parse_cidr(value) is None:
        return [invalid(path, value, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")]
    return []


def validate_non_special_ip(path: str, value: Any) -> Errors:
    """ValidateNonSpecialIP: no unspecified, loopback or link-local addresses."""
    ip = parse_ip(value)
    if ip is None:
        return [invalid(path, value, "must be a valid IP address")]
    errs = []
    if ip.is_unspecified:
        errs.append(invalid(path, value, f"may not be unspecified ({value})"))
    if ip.is_loopback:
        errs.append(invalid(path, value, "may not be in the loopback range (127.0.0.0/8, ::1/128)"))
    if ip.is_link_local:
        errs.append(invalid(path, value, "may not be in the link-local range (169.254.0.0/16, fe80::/10)"))
    if _is_link_local_multicast(ip):
        errs.append(invalid(
            path, value, "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"))
    return errs


def _is_link_local_multicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.version == 4:
        return ip in ipaddress.IPv4Network("224.0.0.0/24")
    packed = ip.packed
    return packed[0] == 0xFF and packed[1] & 0x0F == 0x02


def validate_port_num_or_name(path: str, value: Any) -> Errors:
    """ValidatePortNumOrName: an int port, or an IANA_SVC_NAME string."""
    if isinstance(value, str):
        return format_errors(path, value, is_valid_port_name)
    errs: Errors = []
    port_field(errs, path, value)
    return errs


def port_number_errors(path: str, number: int) -> Errors:
    """IsValidPortNum as field errors."""
    return [invalid(path, number, msg) for msg in is_valid_port_num(number)]


def port_field(errs: Errors, path: str, value: Any) -> None:
    """A port number field (0 when unset): a type error, or IsValidPortNum's."""
    number = int_field(errs, path, value)
    if number is not None:
        errs += port_number_errors(path, number)


def validate_named_port(port: dict, require_name: bool, path: str, names: set[str] | None = None) -> Errors:
    """What a ServicePort and an EndpointPort share: a name (required when the object has several
    ports; a DNS-1123 label; unique when ``names`` collects them), a port number, a protocol."""
    errs: Errors = []
    name = port.get("name") or ""
    if require_name and not name:
        errs.append(required(f"{path}.name"))
    elif name:
        errs += format_errors(f"{path}.name", str(name), is_dns1123_label)
        if names is not None and name in names:
            errs.append(duplicate(f"{path}.name", name))
        elif names is not None:
            names.add(name)
    port_field(errs, f"{path}.port", port.get("port"))
    enum_field(errs, f"{path}.protocol", port.get("protocol"), PROTOCOLS)
    return errs


def validate_app_protocol(port: dict, path: str) -> Errors:
    """appProtocol, when set, is a qualified name."""
    if port.get("appProtocol") is None:
        return []
    return format_errors(f"{path}.appProtocol", str(port["appProtocol"]), is_qualified_name)


# ==========================================================================
# ObjectMeta, labels, annotations and label selectors
# ==========================================================================

def validate_labels(labels: Any, path: str) -> Errors:
    """metav1 ValidateLabels; keys in sorted order (Go maps have none)."""
    errs: Errors = []
    labels = map_field(errs, path, labels)
    for key in sorted(labels, key=str):
        errs += format_errors(path, str(key), is_qualified_name)
        value = labels[key]
        if not isinstance(value, str):
            errs.append(type_invalid(path, value, "must be of type string"))
        else:
            errs += format_errors(path, value, is_label_value)
    return errs


def validate_annotations(annotations: Any, path: str) -> Errors:
    """Annotation keys are qualified names, compared lower-cased."""
    errs: Errors = []
    annotations = map_field(errs, path, annotations)
    for key in sorted(annotations, key=str):
        errs += [invalid(path, key, msg) for msg in is_qualified_name(str(key).lower())]
    size = sum(len(str(k).encode()) + len(str(v or "").encode()) for k, v in annotations.items())
    if size > TOTAL_ANNOTATION_SIZE:
        errs.append(too_long(path, "", TOTAL_ANNOTATION_SIZE))
    return errs


def validate_object_meta(obj: dict, name_check: Callable[[str], list[str]], namespaced: bool,
                         path: str = "metadata") -> Errors:
    """ValidateObjectMeta: name, namespace, labels and annotations."""
    metadata = as_dict(obj.get("metadata"))
    errs: Errors = []
    name = str_field(errs, f"{path}.name", metadata.get("name"))
    if name == "":
        errs.append(required(f"{path}.name", "name or generateName is required"))
    elif name is not None:
        errs += format_errors(f"{path}.name", name, name_check)
    namespace = str_field(errs, f"{path}.namespace", metadata.get("namespace"))
    if namespaced and namespace == "":
        errs.append(required(f"{path}.namespace"))
    elif namespaced and namespace:
        errs += format_errors(f"{path}.namespace", namespace, is_dns1123_label)
    elif not namespaced and namespace:
        errs.append(forbidden(f"{path}.namespace", "not allowed on this type"))
    errs += validate_labels(metadata.get("labels"), f"{path}.labels")
    errs += validate_annotations(metadata.get("annotations"), f"{path}.annotations")
    return errs


def validate_label_selector(selector: dict, path: str) -> Errors:
    """metav1 ValidateLabelSelector (label values checked strictly)."""
    errs = validate_labels(selector.get("matchLabels"), f"{path}.matchLabels")
    for i, expr in dict_items(errs, f"{path}.matchExpressions", selector.get("matchExpressions")):
        errs += _validate_requirement(expr, f"{path}.matchExpressions[{i}]")
    return errs


def _validate_requirement(expr: dict, path: str) -> Errors:
    errs: Errors = []
    operator, values = expr.get("operator"), expr.get("values") or []
    if operator in ("In", "NotIn"):
        if not values:
            errs.append(required(f"{path}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
    elif operator in ("Exists", "DoesNotExist"):
        if values:
            errs.append(forbidden(f"{path}.values",
                                  "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"))
    else:
        errs.append(invalid(f"{path}.operator", operator, "not a valid selector operator"))
    errs += format_errors(f"{path}.key", str(expr.get("key") or ""), is_qualified_name)
    for i, value in enumerate(values if isinstance(values, list) else []):
        errs += format_errors(f"{path}.values[{i}]", str(value), is_label_value)
    return errs


# ==========================================================================
# Addresses kproxy programs (its own rule on top of upstream's)
# ==========================================================================

# Beyond ValidateNonSpecialIP (which upstream applies to spec.externalIPs): kproxy programs these
# addresses into the node's nat table, so a broadcast or multicast destination is refused too.
BROADCAST_V4 = ipaddress.IPv4Address("255.255.255.255")


def broadcast_or_multicast(path: str, value: Any) -> Errors:
    ip = parse_ip(value)
    if ip is None:
        return []
    if ip == BROADCAST_V4:
        return [invalid(path, value, "may not be the broadcast address (255.255.255.255)")]
    if ip.is_multicast and not _is_link_local_multicast(ip):  # link-local multicast: said above
        return [invalid(path, value, "may not be in the multicast range (224.0.0.0/4, ff00::/8)")]
    return []


def validate_routable_ip(path: str, value: Any) -> Errors:
    """ValidateNonSpecialIP, plus no broadcast and no multicast address (kproxy's own rule)."""
    return validate_non_special_ip(path, value) + broadcast_or_multicast(path, value)
