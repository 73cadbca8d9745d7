"""Validation with the API server's rules and exact messages: the public entry points.

``validate(obj)`` gives the errors the API server would return when creating the (defaulted)
object; ``validate_update(old, new)`` the update-only rules (immutable fields). Both are called
only by the admission gate (``kproxy/api/admission.py``). The rules live where upstream keeps
them, one module a seam:

- ``common``: apimachinery's validation utilities (formats, IPs, ports), ObjectMeta, labels,
  selectors, and the small field readers every kind uses;
- ``service``: ValidateService and the Service registry's allocation checks that run before it;
- ``workloads``: Pods, containers, probes and Deployments;
- ``endpoints``: Endpoints and EndpointSlices;
- ``pools``: MetalLB IPAddressPools;
- ``update``: the update rules.

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

from typing import Callable, Sequence

from kproxy.api import meta
from kproxy.api.errors import FieldError, internal_error
from kproxy.api.schema import type_errors
from kproxy.api.validation.common import (
    Errors,
    is_dns1123_label,
    is_dns1123_subdomain,
    parse_cidr,
    parse_ip,
    validate_ip,
    validate_labels,
    validate_object_meta,
    validate_routable_ip,
)
from kproxy.api.validation.endpoints import validate_endpoint_slice, validate_endpoints
from kproxy.api.validation.pools import validate_ip_address_pool
from kproxy.api.validation.service import (
    DEFAULT_NODE_PORT_RANGE,
    DEFAULT_SERVICE_CIDR,
    NODE_PORT_ALLOCATED,
    cluster_ip_allocation_error,
    node_port_allocation_error,
    node_port_not_in_range,
    parse_service_cidrs,
    service_allocation_errors,
    validate_service,
)
from kproxy.api.validation.update import FIELD_IMMUTABLE, validate_update
from kproxy.api.validation.workloads import validate_deployment, validate_pod

__all__ = [
    "DEFAULT_NODE_PORT_RANGE", "DEFAULT_SERVICE_CIDR", "FIELD_IMMUTABLE", "NODE_PORT_ALLOCATED", "Errors",
    "cluster_ip_allocation_error", "node_port_allocation_error", "node_port_not_in_range", "parse_cidr",
    "parse_ip", "parse_service_cidrs", "service_allocation_errors", "validate", "validate_deployment",
    "validate_endpoint_slice", "validate_endpoints", "validate_ip", "validate_ip_address_pool", "validate_labels",
    "validate_namespace", "validate_node", "validate_object_meta", "validate_pod", "validate_routable_ip",
    "validate_service", "validate_update",
]


def validate_namespace(obj: dict) -> Errors:
    """Namespace names are DNS-1123 labels (NameIsDNSLabel), cluster-scoped."""
    return validate_object_meta(obj, is_dns1123_label, namespaced=False)


def validate_node(obj: dict) -> Errors:
    return validate_object_meta(obj, is_dns1123_subdomain, namespaced=False)


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
