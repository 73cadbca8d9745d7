"""Validation with the API server's rules and exact messages.

Sources (kubernetes/kubernetes): pkg/apis/core/validation/validation.go,
pkg/apis/apps/validation/validation.go, pkg/apis/discovery/validation,
staging/.../apimachinery/pkg/util/validation, .../api/validation/objectmeta.go,
.../apis/meta/v1/validation, and the Service registry's allocators
(pkg/registry/core/service/storage/alloc.go, ipallocator, portallocator).

For Services the API server allocates clusterIPs and nodePorts *before* it
runs validation, and an allocation failure is reported alone; ``validate``
reproduces that order so the first error a student sees is the real one.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Iterable, Sequence

from kproxy.api import meta
from kproxy.api.defaults import externally_accessible
from kproxy.api.errors import (
    FieldError,
    duplicate,
    forbidden,
    go_label_selector,
    go_service_port,
    go_string_map,
    go_string_slice,
    invalid,
    not_supported,
    required,
    internal_error,
    too_long,
    too_many,
    type_invalid,
)
from kproxy.api.schema import type_errors

Errors = list[FieldError]

DEFAULT_NODE_PORT_RANGE = (30000, 32767)
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"

FIELD_IMMUTABLE = "field is immutable"
NEGATIVE = "must be greater than or equal to 0"

PROTOCOLS = ("SCTP", "TCP", "UDP")
SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
SESSION_AFFINITIES = ("ClientIP", "None")
TRAFFIC_POLICIES = ("Cluster", "Local")
IP_FAMILIES = ("IPv4", "IPv6")
IP_FAMILY_POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")
MAX_CLIENT_IP_AFFINITY_SECONDS = 86400
TOTAL_ANNOTATION_SIZE = 256 * 1024  # bytes of keys and values (ValidateAnnotationsSize)
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")
TERMINATION_MESSAGE_POLICIES = ("File", "FallbackToLogsOnError")
HTTP_SCHEMES = ("HTTP", "HTTPS")
ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")
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
HTTP_HEADER_FMT = "[-A-Za-z0-9]+"

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


def _matches(fmt: str, value: str) -> bool:
    return re.fullmatch(fmt, value) is not None


def is_dns1123_label(value: str) -> list[str]:
    errs = [max_len_error(63)] if len(value) > 63 else []
    if not _matches(DNS1123_LABEL_FMT, value):
        if _matches(DNS1123_SUBDOMAIN_FMT, value):
            errs.append("must not contain dots")
        else:
            errs.append(regex_error(_DNS1123_LABEL_MSG, DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errs


def is_dns1123_subdomain(value: str) -> list[str]:
    errs = [max_len_error(253)] if len(value) > 253 else []
    if not _matches(DNS1123_SUBDOMAIN_FMT, value):
        errs.append(regex_error(_DNS1123_SUBDOMAIN_MSG, DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errs


def is_dns1035_label(value: str) -> list[str]:
    errs = [max_len_error(63)] if len(value) > 63 else []
    if not _matches(DNS1035_LABEL_FMT, value):
        errs.append(regex_error(_DNS1035_LABEL_MSG, DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errs


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
    if not _matches(LABEL_KEY_FMT, name):
        errs.append("name part " + regex_error(_LABEL_KEY_MSG, LABEL_KEY_FMT, "MyName", "my.name", "123-abc"))
    return errs


def is_label_value(value: str) -> list[str]:
    errs = [max_len_error(63)] if len(value) > 63 else []
    if not _matches(LABEL_VALUE_FMT, value):
        errs.append(regex_error(_LABEL_VALUE_MSG, LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


def is_valid_port_num(port: int) -> list[str]:
    return [] if 1 <= port <= 65535 else [inclusive_range_error(1, 65535)]


def is_valid_port_name(port: str) -> list[str]:
    """IANA_SVC_NAME: at most 15 chars of [-a-z0-9], one letter, no '--', no edge '-'."""
    errs = []
    if len(port) > 15:
        errs.append(max_len_error(15))
    if not _matches("[-a-z0-9]+", port):
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
# Small field validators
# ==========================================================================

def _int(errs: Errors, path: str, value: Any, default: int | None = 0) -> int | None:
    """``value`` as an int (``default`` when unset); records a type error otherwise."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        errs.append(type_invalid(path, value, "must be of type integer"))
        return None
    return value


def _str(errs: Errors, path: str, value: Any) -> str | None:
    """``value`` as a str ("" when unset); records a type error otherwise."""
    if value is None:
        return ""
    if not isinstance(value, str):
        errs.append(type_invalid(path, value, "must be of type string"))
        return None
    return value


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _dict_items(errs: Errors, path: str, value: Any) -> list[tuple[int, dict]]:
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


def _format(path: str, value: str, checker: Callable[[str], list[str]]) -> Errors:
    return [invalid(path, value, msg) for msg in checker(value)]


def _nonnegative(errs: Errors, path: str, value: Any) -> None:
    number = _int(errs, path, value)
    if number is not None and number < 0:
        errs.append(invalid(path, number, NEGATIVE))


def _enum(errs: Errors, path: str, value: Any, valid: Sequence[str]) -> None:
    """Required when empty, NotSupported when not one of ``valid``."""
    text = _str(errs, path, value)
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
        return _format(path, value, is_valid_port_name)
    errs: Errors = []
    number = _int(errs, path, value)
    if number is not None:
        errs += [invalid(path, number, msg) for msg in is_valid_port_num(number)]
    return errs


def validate_labels(labels: Any, path: str) -> Errors:
    """metav1 ValidateLabels; keys in sorted order (Go maps have none)."""
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [type_invalid(path, labels, "must be of type object")]
    errs: Errors = []
    for key in sorted(labels, key=str):
        errs += _format(path, str(key), is_qualified_name)
        value = labels[key]
        if not isinstance(value, str):
            errs.append(type_invalid(path, value, "must be of type string"))
        else:
            errs += _format(path, value, is_label_value)
    return errs


def validate_annotations(annotations: Any, path: str) -> Errors:
    """Annotation keys are qualified names, compared lower-cased."""
    if annotations is None:
        return []
    if not isinstance(annotations, dict):
        return [type_invalid(path, annotations, "must be of type object")]
    errs: Errors = []
    for key in sorted(annotations, key=str):
        errs += [invalid(path, key, msg) for msg in is_qualified_name(str(key).lower())]
    size = sum(len(str(k).encode()) + len(str(v or "").encode()) for k, v in annotations.items())
    if size > TOTAL_ANNOTATION_SIZE:
        errs.append(too_long(path, "", TOTAL_ANNOTATION_SIZE))
    return errs


def validate_object_meta(obj: dict, name_check: Callable[[str], list[str]], namespaced: bool,
                         path: str = "metadata") -> Errors:
    """ValidateObjectMeta: name, namespace, labels and annotations."""
    metadata = _dict(obj.get("metadata"))
    errs: Errors = []
    name = _str(errs, f"{path}.name", metadata.get("name"))
    if name == "":
        errs.append(required(f"{path}.name", "name or generateName is required"))
    elif name is not None:
        errs += _format(f"{path}.name", name, name_check)
    namespace = _str(errs, f"{path}.namespace", metadata.get("namespace"))
    if namespaced and namespace == "":
        errs.append(required(f"{path}.namespace"))
    elif namespaced and namespace:
        errs += _format(f"{path}.namespace", namespace, is_dns1123_label)
    elif not namespaced and namespace:
        errs.append(forbidden(f"{path}.namespace", "not allowed on this type"))
    errs += validate_labels(metadata.get("labels"), f"{path}.labels")
    errs += validate_annotations(metadata.get("annotations"), f"{path}.annotations")
    return errs


def validate_label_selector(selector: dict, path: str) -> Errors:
    """metav1 ValidateLabelSelector (label values checked strictly)."""
    errs = validate_labels(selector.get("matchLabels"), f"{path}.matchLabels")
    for i, expr in _dict_items(errs, f"{path}.matchExpressions", selector.get("matchExpressions")):
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
    errs += _format(f"{path}.key", str(expr.get("key") or ""), is_qualified_name)
    for i, value in enumerate(values if isinstance(values, list) else []):
        errs += _format(f"{path}.values[{i}]", str(value), is_label_value)
    return errs


# ==========================================================================
# Namespaces and Nodes
# ==========================================================================

def validate_namespace(obj: dict) -> Errors:
    """Namespace names are DNS-1123 labels (NameIsDNSLabel), cluster-scoped."""
    return validate_object_meta(obj, is_dns1123_label, namespaced=False)


def validate_node(obj: dict) -> Errors:
    return validate_object_meta(obj, is_dns1123_subdomain, namespaced=False)


# ==========================================================================
# Pods and pod templates
# ==========================================================================

def validate_pod(obj: dict) -> Errors:
    errs = validate_object_meta(obj, is_dns1123_subdomain, namespaced=True)
    return errs + validate_pod_spec(_dict(obj.get("spec")), "spec")


def validate_pod_spec(spec: dict, path: str) -> Errors:
    """The parts of ValidatePodSpec that matter for networking labs."""
    errs: Errors = []
    containers = _dict_items(errs, f"{path}.containers", spec.get("containers"))
    init_containers = _dict_items(errs, f"{path}.initContainers", spec.get("initContainers"))
    errs += _validate_containers(containers, f"{path}.containers", spec.get("containers"))
    errs += _validate_init_containers(init_containers, containers, f"{path}.initContainers")
    _enum(errs, f"{path}.restartPolicy", spec.get("restartPolicy"), RESTART_POLICIES)
    _enum(errs, f"{path}.dnsPolicy", spec.get("dnsPolicy"), DNS_POLICIES)
    if spec.get("terminationGracePeriodSeconds") is not None:
        _nonnegative(errs, f"{path}.terminationGracePeriodSeconds", spec["terminationGracePeriodSeconds"])
    errs += _validate_security_context(spec.get("securityContext"), f"{path}.securityContext")
    for key, items in (("containers", containers), ("initContainers", init_containers)):
        for i, container in items:
            errs += _validate_security_context(container.get("securityContext"), f"{path}.{key}[{i}].securityContext")
    return errs


def _validate_security_context(sc: Any, path: str) -> Errors:
    """User and group IDs as the API server's IsValidUserID/IsValidGroupID check them (the kubelet
    then runs the container as that uid: a negative or huge one must never reach it)."""
    errs: Errors = []
    if not isinstance(sc, dict):
        return errs
    for field in ("runAsUser", "runAsGroup"):
        value = sc.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= 2147483647:
            errs.append(invalid(f"{path}.{field}", value, "must be between 0 and 2147483647, inclusive"))
    return errs


def _validate_containers(containers: list[tuple[int, dict]], path: str, raw: Any) -> Errors:
    if not raw:
        return [required(path)]
    errs: Errors = []
    names: set[str] = set()
    for i, container in containers:
        cpath = f"{path}[{i}]"
        errs += _validate_container_common(container, cpath)
        name = container.get("name")
        if name in names:
            errs.append(duplicate(f"{cpath}.name", name))
        else:
            names.add(name)
        errs += _validate_probes(container, cpath)
        if container.get("restartPolicy") is not None:
            errs.append(forbidden(f"{cpath}.restartPolicy", "may not be set for non-init containers"))
    return errs + _host_port_conflicts(containers, path)


def _validate_init_containers(inits: list[tuple[int, dict]], regular: list[tuple[int, dict]],
                              path: str) -> Errors:
    errs: Errors = []
    names = {c.get("name") for _, c in regular}
    for i, container in inits:
        cpath = f"{path}[{i}]"
        errs += _validate_container_common(container, cpath)
        name = container.get("name")
        if name in names:
            errs.append(duplicate(f"{cpath}.name", name))
        elif name:
            names.add(name)
        if container.get("restartPolicy") == "Always":
            errs += _validate_probes(container, cpath)
        else:
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if container.get(probe) is not None:
                    errs.append(forbidden(f"{cpath}.{probe}",
                                          "may not be set for init containers without restartPolicy=Always"))
    return errs


def _validate_container_common(container: dict, path: str) -> Errors:
    errs: Errors = []
    name = _str(errs, f"{path}.name", container.get("name"))
    if name == "":
        errs.append(required(f"{path}.name"))
    elif name is not None:
        errs += _format(f"{path}.name", name, is_dns1123_label)
    if not container.get("image"):
        errs.append(required(f"{path}.image"))
    _enum(errs, f"{path}.terminationMessagePolicy", container.get("terminationMessagePolicy"),
          TERMINATION_MESSAGE_POLICIES)
    errs += _validate_container_ports(container.get("ports"), f"{path}.ports")
    _enum(errs, f"{path}.imagePullPolicy", container.get("imagePullPolicy"), PULL_POLICIES)
    return errs


def _validate_container_ports(ports: Any, path: str) -> Errors:
    errs: Errors = []
    names: set[str] = set()
    for i, port in _dict_items(errs, path, ports):
        ppath = f"{path}[{i}]"
        name = port.get("name")
        if name:
            messages = is_valid_port_name(str(name))
            if messages:
                errs += [invalid(f"{ppath}.name", name, m) for m in messages]
            elif name in names:
                errs.append(duplicate(f"{ppath}.name", name))
            else:
                names.add(name)
        container_port = _int(errs, f"{ppath}.containerPort", port.get("containerPort"))
        if container_port == 0:
            errs.append(required(f"{ppath}.containerPort"))
        elif container_port is not None:
            errs += [invalid(f"{ppath}.containerPort", container_port, m)
                     for m in is_valid_port_num(container_port)]
        host_port = _int(errs, f"{ppath}.hostPort", port.get("hostPort"))
        if host_port:
            errs += [invalid(f"{ppath}.hostPort", host_port, m) for m in is_valid_port_num(host_port)]
        _enum(errs, f"{ppath}.protocol", port.get("protocol"), PROTOCOLS)
    return errs


def _host_port_conflicts(containers: list[tuple[int, dict]], path: str) -> Errors:
    """checkHostPortConflicts: "protocol/hostIP/hostPort" must be unique."""
    errs: Errors = []
    seen: set[str] = set()
    for ci, container in containers:
        for pi, port in _dict_items([], "", container.get("ports")):
            if not port.get("hostPort"):
                continue
            key = f"{port.get('protocol', '')}/{port.get('hostIP', '')}/{port['hostPort']}"
            if key in seen:
                errs.append(duplicate(f"{path}[{ci}].ports[{pi}].hostPort", key))
            seen.add(key)
    return errs


def _validate_probes(container: dict, path: str) -> Errors:
    errs: Errors = []
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = container.get(probe_name)
        if probe is None:
            continue
        ppath = f"{path}.{probe_name}"
        if not isinstance(probe, dict):
            errs.append(type_invalid(ppath, probe, "must be of type object"))
            continue
        errs += _validate_probe(probe, ppath)
        if probe_name in ("livenessProbe", "startupProbe") and probe.get("successThreshold") != 1:
            errs.append(invalid(f"{ppath}.successThreshold", probe.get("successThreshold"), "must be 1"))
    return errs


def _validate_probe(probe: dict, path: str) -> Errors:
    errs = _validate_handler(probe, path, ("exec", "httpGet", "tcpSocket", "grpc"))
    for key in ("initialDelaySeconds", "timeoutSeconds", "periodSeconds",
                "successThreshold", "failureThreshold"):
        _nonnegative(errs, f"{path}.{key}", probe.get(key))
    return errs


def _validate_handler(handler: dict, path: str, kinds: Iterable[str]) -> Errors:
    """Exactly one handler type: the first one counts, extra ones are forbidden."""
    errs: Errors = []
    found = 0
    for kind in kinds:
        if handler.get(kind) is None:
            continue
        if found:
            errs.append(forbidden(f"{path}.{kind}", "may not specify more than 1 handler type"))
            continue
        found += 1
        errs += _validate_action(kind, _dict(handler[kind]), f"{path}.{kind}")
    if not found:
        errs.append(required(path, "must specify a handler type"))
    return errs


def _validate_action(kind: str, action: dict, path: str) -> Errors:
    errs: Errors = []
    if kind == "exec" and not action.get("command"):
        errs.append(required(f"{path}.command"))
    elif kind == "httpGet":
        if not action.get("path"):
            errs.append(required(f"{path}.path"))
        errs += validate_port_num_or_name(f"{path}.port", action.get("port", 0))
        scheme = action.get("scheme", "")
        if scheme not in HTTP_SCHEMES:
            errs.append(not_supported(f"{path}.scheme", scheme, HTTP_SCHEMES))
        for header in action.get("httpHeaders") or []:
            name = str(_dict(header).get("name", ""))
            if not _matches(HTTP_HEADER_FMT, name):
                errs.append(invalid(f"{path}.httpHeaders", name, regex_error(
                    "a valid HTTP header must consist of alphanumeric characters or '-'",
                    HTTP_HEADER_FMT, "X-Header-Name")))
    elif kind in ("tcpSocket", "grpc"):
        errs += validate_port_num_or_name(f"{path}.port", action.get("port", 0))
    return errs


# ==========================================================================
# Deployments
# ==========================================================================

def validate_deployment(obj: dict) -> Errors:
    errs = validate_object_meta(obj, is_dns1123_subdomain, namespaced=True)
    return errs + _validate_deployment_spec(_dict(obj.get("spec")), "spec")


def _validate_deployment_spec(spec: dict, path: str) -> Errors:
    errs: Errors = []
    _nonnegative(errs, f"{path}.replicas", spec.get("replicas"))
    selector = spec.get("selector")
    selector_ok = True
    if selector is None:
        errs.append(required(f"{path}.selector"))
    elif not isinstance(selector, dict):
        errs.append(type_invalid(f"{path}.selector", selector, "must be of type object"))
        selector_ok = False
    else:
        selector_errs = validate_label_selector(selector, f"{path}.selector")
        selector_ok = not selector_errs
        errs += selector_errs
        if not selector.get("matchLabels") and not selector.get("matchExpressions"):
            errs.append(invalid(f"{path}.selector", go_label_selector(selector),
                                "empty selector is invalid for deployment"))
    if not selector_ok:
        errs.append(invalid(f"{path}.selector", go_label_selector(_dict(selector)), "invalid label selector"))
    else:
        errs += _validate_template_for_selector(spec, f"{path}.template")
    errs += _validate_strategy(_dict(spec.get("strategy")), f"{path}.strategy")
    _nonnegative(errs, f"{path}.minReadySeconds", spec.get("minReadySeconds"))
    if spec.get("revisionHistoryLimit") is not None:
        _nonnegative(errs, f"{path}.revisionHistoryLimit", spec["revisionHistoryLimit"])
    deadline = spec.get("progressDeadlineSeconds")
    if deadline is not None:
        _nonnegative(errs, f"{path}.progressDeadlineSeconds", deadline)
        min_ready = spec.get("minReadySeconds") or 0
        if isinstance(deadline, int) and isinstance(min_ready, int) and deadline <= min_ready:
            errs.append(invalid(f"{path}.progressDeadlineSeconds", deadline,
                                "must be greater than minReadySeconds"))
    return errs


def _validate_template_for_selector(spec: dict, path: str) -> Errors:
    """ValidatePodTemplateSpecForReplicaSet: labels must match the selector."""
    errs: Errors = []
    template = spec.get("template")
    if not isinstance(template, dict):
        return [required(path)]
    selector = spec.get("selector")
    labels = _dict(template.get("metadata")).get("labels")
    # A missing selector selects nothing; an empty one everything (and is reported above).
    if selector is None or (selector and not meta.selector_matches(selector, _dict(labels))):
        errs.append(invalid(f"{path}.metadata.labels", go_string_map(labels),
                            "`selector` does not match template `labels`"))
    metadata = _dict(template.get("metadata"))
    errs += validate_labels(metadata.get("labels"), f"{path}.metadata.labels")
    errs += validate_annotations(metadata.get("annotations"), f"{path}.metadata.annotations")
    pod_spec = _dict(template.get("spec"))
    errs += validate_pod_spec(pod_spec, f"{path}.spec")
    if pod_spec.get("restartPolicy") != "Always":
        errs.append(not_supported(f"{path}.spec.restartPolicy", pod_spec.get("restartPolicy"), ["Always"]))
    if pod_spec.get("activeDeadlineSeconds") is not None:
        errs.append(forbidden(f"{path}.spec.activeDeadlineSeconds",
                              "activeDeadlineSeconds in ReplicaSet is not Supported"))
    return errs


def _validate_strategy(strategy: dict, path: str) -> Errors:
    kind = strategy.get("type")
    if kind == "Recreate":
        if strategy.get("rollingUpdate") is not None:
            return [forbidden(f"{path}.rollingUpdate",
                              "may not be specified when strategy `type` is 'Recreate'")]
        return []
    if kind != "RollingUpdate":
        return [not_supported(path, kind, ["Recreate", "RollingUpdate"])]
    rolling = strategy.get("rollingUpdate")
    if not isinstance(rolling, dict):
        return [required(f"{path}.rollingUpdate", "this should be defaulted and never be nil")]
    return _validate_rolling_update(rolling, f"{path}.rollingUpdate")


def _validate_rolling_update(rolling: dict, path: str) -> Errors:
    errs: Errors = []
    unavailable, surge = rolling.get("maxUnavailable"), rolling.get("maxSurge")
    errs += _validate_int_or_percent(unavailable, f"{path}.maxUnavailable")
    errs += _validate_int_or_percent(surge, f"{path}.maxSurge")
    if _int_or_percent_value(unavailable) == 0 and _int_or_percent_value(surge) == 0:
        errs.append(invalid(f"{path}.maxUnavailable", unavailable, "may not be 0 when `maxSurge` is 0"))
    if isinstance(unavailable, str) and (_int_or_percent_value(unavailable) or 0) > 100:
        errs.append(invalid(f"{path}.maxUnavailable", unavailable, "must not be greater than 100%"))
    return errs


def _validate_int_or_percent(value: Any, path: str) -> Errors:
    if isinstance(value, str):
        if not _matches("[0-9]+%", value):
            return [invalid(path, value, regex_error(
                "a valid percent string must be a numeric string followed by an ending '%'",
                "[0-9]+%", "1%", "93%"))]
        return []
    errs: Errors = []
    _nonnegative(errs, path, value)
    return errs


def _int_or_percent_value(value: Any) -> int | None:
    if isinstance(value, str) and _matches("[0-9]+%", value):
        return int(value[:-1])
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ==========================================================================
# Services
# ==========================================================================

def _is_headless(spec: dict) -> bool:
    return spec.get("clusterIPs") == ["None"]


def validate_service(obj: dict) -> Errors:
    """ValidateService, in upstream order."""
    spec = _dict(obj.get("spec"))
    errs = validate_object_meta(obj, is_dns1035_label, namespaced=True)
    svc_type = spec.get("type")
    ports = _dict_items(errs, "spec.ports", spec.get("ports"))
    if not spec.get("ports") and not _is_headless(spec) and svc_type != "ExternalName":
        errs.append(required("spec.ports"))
    errs += _validate_type_specific(spec)
    names: set[str] = set()
    for i, port in ports:
        errs += _validate_service_port(port, len(spec.get("ports")) > 1, names, f"spec.ports[{i}]")
    if spec.get("selector") is not None:
        errs += validate_labels(spec.get("selector"), "spec.selector")
    errs += _validate_session_affinity(spec)
    errs += validate_cluster_ips_related_fields(spec)
    for i, ip in enumerate(spec.get("externalIPs") or []):
        ip_errs = validate_ip(f"spec.externalIPs[{i}]", ip)
        errs += ip_errs or validate_non_special_ip(f"spec.externalIPs[{i}]", ip)
    _enum(errs, "spec.type", svc_type, SERVICE_TYPES)
    if svc_type == "ClusterIP":
        for i, port in ports:
            if port.get("nodePort"):
                errs.append(forbidden(f"spec.ports[{i}].nodePort", "may not be used when `type` is 'ClusterIP'"))
    errs += _duplicate_service_ports(ports)
    errs += _validate_load_balancer_fields(spec)
    errs += _validate_traffic_policies(spec)
    errs += validate_service_addresses(obj)
    return errs


# Beyond ValidateNonSpecialIP (which upstream applies to spec.externalIPs): kproxy programs these
# addresses into the node's nat table, so a broadcast or multicast destination is refused too.
BROADCAST_V4 = ipaddress.IPv4Address("255.255.255.255")


def _broadcast_or_multicast(path: str, value: Any) -> Errors:
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
    return validate_non_special_ip(path, value) + _broadcast_or_multicast(path, value)


def validate_service_addresses(obj: dict) -> Errors:
    """Addresses kproxy would program that must never be a destination rule: a broadcast or
    multicast spec.externalIPs entry (the special ranges upstream refuses are checked above), and
    every status.loadBalancer.ingress[].ip written in a manifest (a cloud's status is trusted
    upstream; here a file could otherwise take over the node's localhost:80, issue 12 #11)."""
    spec = _dict(obj.get("spec"))
    errs: Errors = []
    external = spec.get("externalIPs")
    for i, ip in enumerate(external if isinstance(external, list) else []):
        errs += _broadcast_or_multicast(f"spec.externalIPs[{i}]", ip)
    ingress = _dict(_dict(obj.get("status")).get("loadBalancer")).get("ingress")
    for i, ing in enumerate(ingress if isinstance(ingress, list) else []):
        if isinstance(ing, dict) and ing.get("ip") is not None:
            path = f"status.loadBalancer.ingress[{i}].ip"
            errs += validate_ip(path, ing["ip"]) or validate_routable_ip(path, ing["ip"])
    return errs


def _validate_type_specific(spec: dict) -> Errors:
    svc_type = spec.get("type")
    if svc_type in ("LoadBalancer", "NodePort") and _is_headless(spec):
        return [invalid("spec.clusterIPs[0]", "None", f"may not be set to 'None' for {svc_type} services")]
    if svc_type != "ExternalName":
        return []
    errs: Errors = []
    for key in ("clusterIPs", "ipFamilies"):
        if spec.get(key):
            errs.append(forbidden(f"spec.{key}", "may not be set for ExternalName services"))
    if spec.get("ipFamilyPolicy") is not None:
        errs.append(forbidden("spec.ipFamilyPolicy", "may not be set for ExternalName services"))
    cname = str(spec.get("externalName") or "").removesuffix(".")
    if cname:
        errs += _format("spec.externalName", cname, is_dns1123_subdomain)
    else:
        errs.append(required("spec.externalName"))
    return errs


def _validate_service_port(port: dict, require_name: bool, names: set[str], path: str) -> Errors:
    errs: Errors = []
    name = port.get("name") or ""
    if require_name and not name:
        errs.append(required(f"{path}.name"))
    elif name:
        errs += _format(f"{path}.name", str(name), is_dns1123_label)
        if name in names:
            errs.append(duplicate(f"{path}.name", name))
        else:
            names.add(name)
    number = _int(errs, f"{path}.port", port.get("port"))
    if number is not None:
        errs += [invalid(f"{path}.port", number, m) for m in is_valid_port_num(number)]
    _enum(errs, f"{path}.protocol", port.get("protocol"), PROTOCOLS)
    errs += validate_port_num_or_name(f"{path}.targetPort", port.get("targetPort"))
    if port.get("appProtocol") is not None:
        errs += _format(f"{path}.appProtocol", str(port["appProtocol"]), is_qualified_name)
    return errs


def _validate_session_affinity(spec: dict) -> Errors:
    errs: Errors = []
    affinity = spec.get("sessionAffinity")
    _enum(errs, "spec.sessionAffinity", affinity, SESSION_AFFINITIES)
    config = spec.get("sessionAffinityConfig")
    if affinity == "ClientIP":
        errs += _validate_client_ip_config(config)
    elif affinity == "None" and config is not None:
        errs.append(forbidden("spec.sessionAffinityConfig", "must not be set when session affinity is None"))
    return errs


def _validate_client_ip_config(config: Any) -> Errors:
    path, when = "spec.sessionAffinityConfig", "when session affinity type is ClientIP"
    if not isinstance(config, dict):
        return [required(path, when)]
    client_ip = config.get("clientIP")
    if not isinstance(client_ip, dict):
        return [required(f"{path}.clientIP", when)]
    tpath = f"{path}.clientIP.timeoutSeconds"
    if client_ip.get("timeoutSeconds") is None:
        return [required(tpath, when)]
    errs: Errors = []
    timeout = _int(errs, tpath, client_ip["timeoutSeconds"])
    if timeout is not None and not 0 < timeout <= MAX_CLIENT_IP_AFFINITY_SECONDS:
        errs.append(invalid(tpath, timeout,
                            f"must be greater than 0 and less than {MAX_CLIENT_IP_AFFINITY_SECONDS}"))
    return errs


def validate_cluster_ips_related_fields(spec: dict) -> Errors:
    """ValidateServiceClusterIPsRelatedFields: clusterIP(s), ipFamilies, ipFamilyPolicy."""
    if spec.get("type") == "ExternalName":
        return []
    errs: Errors = []
    cluster_ip, cluster_ips = spec.get("clusterIP") or "", spec.get("clusterIPs") or []
    if not isinstance(cluster_ips, list):
        return [type_invalid("spec.clusterIPs", cluster_ips, "must be of type array")]
    ips_value = go_string_slice(cluster_ips)
    if cluster_ip:
        if not cluster_ips:
            errs.append(required("spec.clusterIPs"))
        elif cluster_ips[0] != cluster_ip:
            errs.append(invalid("spec.clusterIPs", ips_value, "first value must match `clusterIP`"))
    elif cluster_ips:
        errs.append(invalid("spec.clusterIPs", ips_value, "must be empty when `clusterIP` is not specified"))
    errs += _validate_ip_family_fields(spec)
    bad_ips = False
    for i, ip in enumerate(cluster_ips):
        if i == 0 and ip == "None":
            if len(cluster_ips) > 1:
                bad_ips = True
                errs.append(invalid("spec.clusterIPs", ips_value, "'None' must be the first and only value"))
            continue
        ip_errs = validate_ip(f"spec.clusterIPs[{i}]", ip)
        bad_ips = bad_ips or bool(ip_errs)
        errs += ip_errs
    if len(cluster_ips) > 2:
        errs.append(invalid("spec.clusterIPs", ips_value, "may only hold up to 2 values"))
    if bad_ips:
        return errs
    return errs + _validate_cluster_ip_families(spec, cluster_ips, ips_value)


def _validate_ip_family_fields(spec: dict) -> Errors:
    errs: Errors = []
    seen: set[str] = set()
    for i, family in enumerate(spec.get("ipFamilies") or []):
        if family not in IP_FAMILIES:
            errs.append(not_supported(f"spec.ipFamilies[{i}]", family, IP_FAMILIES))
        if family in seen:
            errs.append(duplicate(f"spec.ipFamilies[{i}]", family))
        seen.add(family)
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in IP_FAMILY_POLICIES:
        errs.append(not_supported("spec.ipFamilyPolicy", policy, IP_FAMILY_POLICIES))
    return errs


def _validate_cluster_ip_families(spec: dict, cluster_ips: list, ips_value: Any) -> Errors:
    errs: Errors = []
    if len(cluster_ips) > 1:
        families = {ip_family(parse_ip(ip)) for ip in cluster_ips}
        if len(families) != len(cluster_ips):
            errs.append(invalid("spec.clusterIPs", ips_value, "may specify no more than one IP for each IP family"))
    families = spec.get("ipFamilies") or []
    if _is_headless(spec) or not cluster_ips:
        return errs
    for i, (ip, family) in enumerate(zip(cluster_ips, families)):
        actual = ip_family(parse_ip(ip))
        if family in IP_FAMILIES and actual != family:
            errs.append(invalid(f"spec.clusterIPs[{i}]", ip,
                                f"expected an {family} value as indicated by `ipFamilies[{i}]`"))
    return errs


def _duplicate_service_ports(ports: list[tuple[int, dict]]) -> Errors:
    """(protocol, nodePort) and (protocol, port) pairs must be unique."""
    errs: Errors = []
    node_ports: set[tuple] = set()
    for i, port in ports:
        node_port = port.get("nodePort")
        if node_port:
            key = (port.get("protocol"), node_port)
            if key in node_ports:
                errs.append(duplicate(f"spec.ports[{i}].nodePort", node_port))
            node_ports.add(key)
    seen: set[tuple] = set()
    for i, port in ports:
        key = (port.get("protocol"), port.get("port"))
        if key in seen:
            errs.append(duplicate(f"spec.ports[{i}]", go_service_port(str(key[0] or ""), key[1] or 0)))
        seen.add(key)
    return errs


def _validate_load_balancer_fields(spec: dict) -> Errors:
    """loadBalancerSourceRanges and allocateLoadBalancerNodePorts (paths as upstream)."""
    errs: Errors = []
    is_lb = spec.get("type") == "LoadBalancer"
    ranges = spec.get("loadBalancerSourceRanges") or []
    if ranges:
        path = "spec.LoadBalancerSourceRanges"  # sic: upstream capitalises this path
        if not is_lb:
            errs.append(forbidden(path, "may only be used when `type` is 'LoadBalancer'"))
        for i, value in enumerate(ranges):
            errs += validate_cidr(f"{path}[{i}]", str(value).strip())
    allocate = spec.get("allocateLoadBalancerNodePorts")
    if allocate is not None and not is_lb:
        errs.append(forbidden("spec.allocateLoadBalancerNodePorts", "may only be used when `type` is 'LoadBalancer'"))
    if is_lb and allocate is None:
        errs.append(required("allocateLoadBalancerNodePorts"))  # sic: no "spec." upstream
    return errs


def _validate_traffic_policies(spec: dict) -> Errors:
    errs: Errors = []
    policy = spec.get("externalTrafficPolicy")
    if not externally_accessible(spec):
        if policy:
            errs.append(invalid("spec.externalTrafficPolicy", policy,
                                "may only be set for externally-accessible services"))
    else:
        _enum(errs, "spec.externalTrafficPolicy", policy, TRAFFIC_POLICIES)
    needs_health_check = spec.get("type") == "LoadBalancer" and policy == "Local"
    hc_port = spec.get("healthCheckNodePort")
    if not needs_health_check and hc_port:
        errs.append(invalid("spec.healthCheckNodePort", hc_port,
                            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"))
    elif needs_health_check and hc_port:
        number = _int(errs, "spec.healthCheckNodePort", hc_port)
        if number is not None:
            errs += [invalid("spec.healthCheckNodePort", number, m) for m in is_valid_port_num(number)]
    internal = spec.get("internalTrafficPolicy")
    if internal is None and spec.get("type") in ("ClusterIP", "NodePort", "LoadBalancer"):
        errs.append(required("spec.internalTrafficPolicy"))
    elif internal is not None and internal not in TRAFFIC_POLICIES:
        errs.append(not_supported("spec.internalTrafficPolicy", internal, TRAFFIC_POLICIES))
    return errs


# --------------------------------------------------------------------------
# Service allocation (runs before validation on the API server)
# --------------------------------------------------------------------------

def parse_service_cidrs(service_cidr: str | Sequence[str]) -> list:
    """``--service-cluster-ip-range`` value(s): "10.96.0.0/12" or "v4cidr,v6cidr"."""
    texts = service_cidr.split(",") if isinstance(service_cidr, str) else list(service_cidr)
    networks = [parse_cidr(t.strip()) for t in texts if t.strip()]
    if any(n is None for n in networks):
        raise ValueError(f"invalid service CIDR: {service_cidr!r}")
    return networks


def node_port_not_in_range(lo: int, hi: int) -> str:
    """portallocator.ErrNotInRange."""
    return f"provided port is not in the valid range. The range of valid ports is {lo}-{hi}"


NODE_PORT_ALLOCATED = "provided port is already allocated"


def node_port_allocation_error(index: int, node_port: int, reason: str) -> FieldError:
    """What the API server reports when nodePort ``spec.ports[index]`` cannot be allocated."""
    return invalid(f"spec.ports[{index}].nodePort", node_port, reason)


def cluster_ip_allocation_error(cluster_ips: Sequence[str], ip: str, reason: str) -> FieldError:
    """What the API server reports when a requested clusterIP cannot be allocated.

    ``reason`` is e.g. "provided IP is already allocated" (ipallocator.ErrAllocated).
    """
    return invalid("spec.clusterIPs", go_string_slice(cluster_ips), f"failed to allocate IP {ip}: {reason}")


def service_allocation_errors(obj: dict, *, node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
                              service_cidr: str | Sequence[str] = DEFAULT_SERVICE_CIDR) -> Errors:
    """Errors from IP family init, clusterIP and nodePort allocation, in that order.

    Only range and in-object conflicts are checked here; whether a clusterIP
    or nodePort is already used by *another* Service is the store's business
    (see cluster_ip_allocation_error / node_port_allocation_error).
    """
    spec = _dict(obj.get("spec"))
    if spec.get("type") == "ExternalName":
        return []
    cidrs = parse_service_cidrs(service_cidr)
    return (validate_cluster_ips_related_fields(spec)
            or _ip_family_allocation_errors(spec, cidrs)
            or _cluster_ip_range_errors(spec, cidrs)
            or _node_port_range_errors(spec, node_port_range))


def _ip_family_allocation_errors(spec: dict, cidrs: list) -> Errors:
    errs: Errors = []
    policy = spec.get("ipFamilyPolicy")
    cluster_ips, families = spec.get("clusterIPs") or [], spec.get("ipFamilies") or []
    if policy == "SingleStack":
        if len(cluster_ips) == 2:
            errs.append(invalid("spec.ipFamilyPolicy", policy,
                                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"))
        if len(families) == 2:
            errs.append(invalid("spec.ipFamilyPolicy", policy,
                                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"))
    if errs or (_is_headless(spec) and not spec.get("selector")):
        return errs
    configured = {ip_family(c.network_address) for c in cidrs}
    if policy == "RequireDualStack" and len(configured) < 2:
        errs.append(invalid("spec.ipFamilyPolicy", policy, "this cluster is not configured for dual-stack services"))
    for i, family in enumerate(families):
        if family not in configured:
            errs.append(invalid(f"spec.ipFamilies[{i}]", family, "not configured on this cluster"))
    return errs


def _cluster_ip_range_errors(spec: dict, cidrs: list) -> Errors:
    """ipallocator.ErrNotInRange for the first requested IP outside the service range."""
    cluster_ips = spec.get("clusterIPs") or []
    if cluster_ips[:1] == ["None"]:
        return []
    for i, text in enumerate(cluster_ips):
        ip = parse_ip(text)
        cidr = next((c for c in cidrs if c.version == ip.version), None)
        if cidr is None:
            reason = f"{ip_family(ip)} is not configured on this cluster"
            return [invalid(f"spec.clusterIPs[{i}]", go_string_slice(cluster_ips), reason)]
        if not _in_allocatable_range(ip, cidr):
            reason = (f"the provided IP ({ip}) is not in the valid range. "
                      f"The range of valid IPs is {cidr}")
            return [cluster_ip_allocation_error(cluster_ips, text, reason)]
    return []


def _in_allocatable_range(ip, cidr) -> bool:
    """In the CIDR, but not its network address nor (IPv4) its broadcast address."""
    if ip not in cidr or ip == cidr.network_address:
        return False
    return ip.version == 6 or ip != cidr.broadcast_address


def _node_port_range_errors(spec: dict, node_port_range: tuple[int, int]) -> Errors:
    """Mirror initNodePorts: ports sharing a port number share one nodePort."""
    if spec.get("type") not in ("NodePort", "LoadBalancer"):
        return []
    lo, hi = node_port_range
    allocate_all = spec["type"] == "NodePort" or spec.get("allocateLoadBalancerNodePorts") is not False
    ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
    by_port: dict[Any, int] = {}  # port number -> nodePort (-1: auto-allocated)
    taken: set[int] = set()
    for i, port in enumerate(ports):
        node_port = port.get("nodePort") or 0
        if not node_port and not allocate_all:
            continue
        number = port.get("port")
        if number not in by_port:
            node_port = node_port or _requested_node_port(number, ports)
            by_port[number] = node_port or -1
        elif not node_port or node_port == by_port[number]:
            continue
        if not isinstance(node_port, int) or not node_port:
            continue
        reason = _allocate_node_port(node_port, taken, lo, hi)
        if reason:
            return [node_port_allocation_error(i, node_port, reason)]
    return []


def _requested_node_port(number: Any, ports: list[dict]) -> int:
    """findRequestedNodePort: the first nodePort asked for by a port with this number."""
    return next((p["nodePort"] for p in ports if p.get("port") == number and p.get("nodePort")), 0)


def _allocate_node_port(node_port: int, taken: set[int], lo: int, hi: int) -> str | None:
    if not lo <= node_port <= hi:
        return node_port_not_in_range(lo, hi)
    if node_port in taken:
        return NODE_PORT_ALLOCATED
    taken.add(node_port)
    return None


# ==========================================================================
# Endpoints and EndpointSlices
# ==========================================================================

def validate_endpoints(obj: dict) -> Errors:
    errs = validate_object_meta(obj, is_dns1123_subdomain, namespaced=True)
    for i, subset in _dict_items(errs, "subsets", obj.get("subsets")):
        errs += _validate_subset(subset, f"subsets[{i}]")
    return errs


def _validate_subset(subset: dict, path: str) -> Errors:
    errs: Errors = []
    if not subset.get("addresses") and not subset.get("notReadyAddresses"):
        errs.append(required(path, "must specify `addresses` or `notReadyAddresses`"))
    for key in ("addresses", "notReadyAddresses"):
        for i, address in _dict_items(errs, f"{path}.{key}", subset.get(key)):
            errs += _validate_endpoint_address(address, f"{path}.{key}[{i}]")
    ports = _dict_items(errs, f"{path}.ports", subset.get("ports"))
    for i, port in ports:
        errs += _validate_endpoint_port(port, len(ports) > 1, f"{path}.ports[{i}]")
    return errs


def _validate_endpoint_address(address: dict, path: str) -> Errors:
    ip = address.get("ip")
    errs = validate_ip(f"{path}.ip", ip)
    if address.get("hostname"):
        errs += _format(f"{path}.hostname", str(address["hostname"]), is_dns1123_label)
    if address.get("nodeName") is not None:
        errs += _format(f"{path}.nodeName", str(address["nodeName"]), is_dns1123_subdomain)
    return errs + validate_non_special_ip(f"{path}.ip", ip)


def _validate_endpoint_port(port: dict, require_name: bool, path: str) -> Errors:
    errs: Errors = []
    name = port.get("name") or ""
    if require_name and not name:
        errs.append(required(f"{path}.name"))
    elif name:
        errs += _format(f"{path}.name", str(name), is_dns1123_label)
    number = _int(errs, f"{path}.port", port.get("port"))
    if number is not None:
        errs += [invalid(f"{path}.port", number, m) for m in is_valid_port_num(number)]
    _enum(errs, f"{path}.protocol", port.get("protocol"), PROTOCOLS)
    if port.get("appProtocol") is not None:
        errs += _format(f"{path}.appProtocol", str(port["appProtocol"]), is_qualified_name)
    return errs


def validate_endpoint_slice(obj: dict) -> Errors:
    errs = validate_object_meta(obj, is_dns1123_subdomain, namespaced=True)
    address_type = obj.get("addressType")
    _enum(errs, "addressType", address_type, ADDRESS_TYPES)
    endpoints = _dict_items(errs, "endpoints", obj.get("endpoints"))
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
        errs += _format(f"{path}.hostname", str(endpoint["hostname"]), is_dns1123_label)
    return errs


def _validate_slice_address(address: Any, address_type: Any, path: str) -> Errors:
    ip = parse_ip(address)
    if address_type == "IPv4":
        errs = [] if ip and ip.version == 4 else [invalid(path, address, "must be a valid IPv4 address")]
        return errs + validate_non_special_ip(path, address)
    if address_type == "IPv6":
        errs = [] if ip and ip.version == 6 else [invalid(path, address, "must be a valid IPv6 address")]
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
    items = _dict_items(errs, "ports", ports)
    if len(items) > 100:
        return errs + [too_many("ports", len(items), 100)]
    names: set[str] = set()
    for i, port in items:
        name = port.get("name") or ""
        if name:
            errs += _format(f"ports[{i}].name", str(name), is_dns1123_label)
        if name in names:
            errs.append(duplicate(f"ports[{i}].name", name))
        names.add(name)
        protocol = port.get("protocol")
        if protocol is None:
            errs.append(required(f"ports[{i}].protocol"))
        elif protocol not in PROTOCOLS:
            errs.append(not_supported(f"ports[{i}].protocol", protocol, PROTOCOLS))
    return errs


# ==========================================================================
# MetalLB address pools
# ==========================================================================

POOL_ADDRESS_FORMAT = "must be an IPv4 CIDR (192.168.10.0/24) or range (192.168.10.1-192.168.10.9)"


def validate_ip_address_pool(obj: dict) -> Errors:
    """The form of ``spec.addresses`` (what the pool parser reads); which ranges a lab allows is its own check."""
    errs = validate_object_meta(obj, is_dns1123_subdomain, namespaced=True)
    addresses = _dict(obj.get("spec")).get("addresses")
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
        return []
    text = text.strip()
    cidr = parse_cidr(text) if "/" in text else parse_ip(text)  # a bare address is a /32, as the parser reads it
    if cidr is None or cidr.version != 4:
        return [invalid(path, text, POOL_ADDRESS_FORMAT)]
    return []


# ==========================================================================
# Public entry points
# ==========================================================================

_VALIDATORS: dict[str, Callable[[dict], Errors]] = {
    "Pod": validate_pod,
    "Deployment": validate_deployment,
    "Service": validate_service,
    "Endpoints": validate_endpoints,
    "EndpointSlice": validate_endpoint_slice,
    "Namespace": validate_namespace,
    "Node": validate_node,
    "IPAddressPool": validate_ip_address_pool,
}


def _object_errors(obj: dict) -> Errors:
    validator = _VALIDATORS.get(obj.get("kind", ""))
    if validator:
        return validator(obj)
    namespaced = meta.is_namespaced(obj.get("kind", ""))
    return validate_object_meta(obj, is_dns1123_subdomain, namespaced)


def _allocation_errors(obj: dict, node_port_range: tuple[int, int], service_cidr: str | Sequence[str]) -> Errors:
    if obj.get("kind") != "Service":
        return []
    return service_allocation_errors(obj, node_port_range=node_port_range, service_cidr=service_cidr)


def validate(obj: dict, *, node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
             service_cidr: str | Sequence[str] = DEFAULT_SERVICE_CIDR) -> Errors:
    """Errors the API server would return when creating the (defaulted) ``obj``.

    For a Service, allocation failures come alone and first, as upstream;
    before both, fields of the wrong type come alone, as the API server's
    decoder refuses them before anything else. A total function: any
    JSON-compatible ``obj`` gives a list of errors, never an exception.
    """
    errs = type_errors(obj)
    if errs:
        return errs
    try:
        return _allocation_errors(obj, node_port_range, service_cidr) or _object_errors(obj)
    except Exception as exc:  # noqa: BLE001 - a kproxy bug must refuse one object, not stop the caller
        return [_internal(exc)]


def _internal(exc: Exception) -> FieldError:
    return internal_error("<object>", f"kproxy could not validate this object ({type(exc).__name__}); "
                                      "please report it")


def validate_update(old: dict, new: dict) -> Errors:
    """Update-only rules: immutable fields. Run ``validate`` on ``new`` as well."""
    errs = _immutable(new, old, "metadata.name", lambda o: _dict(o.get("metadata")).get("name"))
    errs += _immutable(new, old, "metadata.namespace", lambda o: _dict(o.get("metadata")).get("namespace"))
    kind = new.get("kind")
    if kind == "Deployment":
        errs += _deployment_update_errors(old, new)
    elif kind == "Service":
        errs += _service_update_errors(_dict(old.get("spec")), _dict(new.get("spec")))
    elif kind == "Pod":
        errs += _pod_update_errors(_dict(old.get("spec")), _dict(new.get("spec")))
    elif kind == "EndpointSlice":
        errs += _immutable(new, old, "addressType", lambda o: o.get("addressType"))
    return errs


def _immutable(new: dict, old: dict, path: str, get: Callable[[dict], Any], render=None) -> Errors:
    """ValidateImmutableField: Invalid(new value, "field is immutable") when changed."""
    new_value, old_value = get(new), get(old)
    if new_value == old_value:
        return []
    return [invalid(path, render(new_value) if render else new_value, FIELD_IMMUTABLE)]


def _deployment_update_errors(old: dict, new: dict) -> Errors:
    return _immutable(new, old, "spec.selector", lambda o: _dict(o.get("spec")).get("selector"),
                      render=lambda s: go_label_selector(_dict(s)))


def _service_update_errors(old: dict, new: dict) -> Errors:
    """validateUpgradeDowngradeClusterIPs/IPFamilies, validateLoadBalancerClassField and
    healthCheckNodePort, in ValidateServiceUpdate's order."""
    errs: Errors = []
    if "ExternalName" not in (old.get("type"), new.get("type")):
        if not (_is_headless(old) and _is_headless(new)):
            errs += _upgrade_downgrade("spec.clusterIPs", old.get("clusterIPs") or [],
                                       new.get("clusterIPs") or [], new, "clusterIP", per_index=True)
        if _is_headless(old) == _is_headless(new) and not _is_headless(new):
            errs += _upgrade_downgrade("spec.ipFamilies", old.get("ipFamilies") or [],
                                       new.get("ipFamilies") or [], new, "ipFamily", per_index=False)
    if old.get("type") == new.get("type") == "LoadBalancer" and \
            old.get("loadBalancerClass") != new.get("loadBalancerClass"):
        errs.append(invalid("spec.loadBalancerClass", new.get("loadBalancerClass"), "may not change once set"))
    needs_hc = [s.get("type") == "LoadBalancer" and s.get("externalTrafficPolicy") == "Local" for s in (old, new)]
    if all(needs_hc) and old.get("healthCheckNodePort") != new.get("healthCheckNodePort"):
        errs.append(forbidden("spec.healthCheckNodePort", FIELD_IMMUTABLE))
    return errs


# ValidatePodUpdate's words (pkg/apis/core/validation), in the API server's spelling.
POD_UPDATABLE = ("pod updates may not change fields other than `spec.containers[*].image`,"
                 "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions "
                 "to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
                 "previously negative)")
MAX_DIFF_LINES = 8


def _pod_update_errors(old: dict, new: dict) -> Errors:
    """ValidatePodUpdate: a running pod's spec changes only in its images, activeDeadlineSeconds,
    added tolerations and a negative grace period set to 1 ("spec: Forbidden: pod updates may not
    change fields other than ..."), followed, as upstream, by what differs (here one line a
    field, "-" the admitted value, "+" the new one, instead of Go's struct diff).

    The scheduler's ``nodeName`` stays when the manifest leaves it out, as `kubectl apply`'s
    patch keeps fields the file never had."""
    munged = {k: v for k, v in new.items()}
    if "nodeName" not in munged and "nodeName" in old:
        munged["nodeName"] = old["nodeName"]
    for field in ("containers", "initContainers"):
        mine, theirs = munged.get(field), old.get(field)
        if isinstance(mine, list) and isinstance(theirs, list):
            munged[field] = [_with_image_of(c, t) for c, t in zip(mine, theirs)] + mine[len(theirs):]
    for field in ("activeDeadlineSeconds",):
        munged.pop(field, None)
        if field in old:
            munged[field] = old[field]
    old_tol, new_tol = old.get("tolerations") or [], munged.get("tolerations") or []
    if isinstance(new_tol, list) and all(t in new_tol for t in old_tol):
        munged.pop("tolerations", None)
        if "tolerations" in old:
            munged["tolerations"] = old["tolerations"]
    grace = old.get("terminationGracePeriodSeconds")
    if isinstance(grace, int) and grace < 0 and munged.get("terminationGracePeriodSeconds") == 1:
        munged["terminationGracePeriodSeconds"] = grace
    if munged == old:
        return []
    diff = _diff("spec", old, munged)
    shown = diff[:MAX_DIFF_LINES] + ([f"  ... {len(diff) - MAX_DIFF_LINES} more"] if len(diff) > MAX_DIFF_LINES else [])
    return [forbidden("spec", POD_UPDATABLE + "".join("\n" + line for line in shown))]


def _with_image_of(container: Any, admitted: Any) -> Any:
    """``container`` with the admitted image; its pull policy too when the image changed, since
    `kubectl apply` patches the image alone into the live pod, whose defaulted policy stays."""
    if not (isinstance(container, dict) and isinstance(admitted, dict)):
        return container
    out = dict(container, image=admitted.get("image"))
    if container.get("image") != admitted.get("image") and "imagePullPolicy" in admitted:
        out["imagePullPolicy"] = admitted["imagePullPolicy"]
    return out


def _diff(path: str, old: Any, new: Any) -> list[str]:
    """One "-"/"+" pair of lines a changed leaf, by field path."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            if old.get(key, _MISSING) != new.get(key, _MISSING):
                out += _diff(f"{path}.{key}", old.get(key, _MISSING), new.get(key, _MISSING))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for i, (a, b) in enumerate(zip(old, new)) if a != b for line in _diff(f"{path}[{i}]", a, b)]
    lines = [] if old is _MISSING else [f"- {path}: {_shown(old)}"]
    return lines + ([] if new is _MISSING else [f"+ {path}: {_shown(new)}"])


_MISSING = object()


def _shown(value: Any) -> str:
    import json

    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _upgrade_downgrade(path: str, old: list, new: list, spec: dict, what: str, per_index: bool) -> Errors:
    """The primary value may never change; a secondary one may be added or released.

    Upstream reports changed clusterIPs at their own index but every changed
    ipFamily at index 0; ``per_index`` keeps that difference. It also quotes
    spec.clusterIPs (not ipFamilies) for a changed primary ipFamily when the
    number of families changed; that is kept too.
    """
    value = go_string_slice(new)
    changed = value if per_index or len(old) == len(new) else go_string_slice(spec.get("clusterIPs"))
    errs: Errors = []
    if len(old) == len(new):
        errs += [invalid(f"{path}[{i if per_index else 0}]", value, "may not change once set")
                 for i, (a, b) in enumerate(zip(old, new)) if a != b]
    elif len(old) > len(new):
        if not new:
            errs.append(invalid(f"{path}[0]", value, f"primary {what} can not be unset"))
        elif new[0] != old[0]:
            errs.append(invalid(f"{path}[0]", changed, "may not change once set"))
        if len(new) == 1 and spec.get("ipFamilyPolicy") != "SingleStack":
            errs.append(invalid("spec.ipFamilyPolicy", spec.get("ipFamilyPolicy"),
                                f"must be set to 'SingleStack' when releasing the secondary {what}"))
    elif old and new[0] != old[0]:
        errs.append(invalid(f"{path}[0]", changed, "may not change once set"))
    return errs
