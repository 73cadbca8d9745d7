"""Pods, their containers and probes, and Deployments (pkg/apis/core and apps validation).

What the kubelet will run: container names, images, ports and host-port conflicts, probe
handlers, security-context IDs; and for a Deployment its selector, its pod template (which must
match the selector and restart Always), strategy and rollout bounds.
"""

from __future__ import annotations

from typing import Any, Iterable

from kproxy.api import meta
from kproxy.api.errors import (
    duplicate,
    forbidden,
    go_label_selector,
    go_string_map,
    invalid,
    not_supported,
    required,
    type_invalid,
)
from kproxy.api.validation.common import (
    PROTOCOLS,
    Errors,
    as_dict,
    dict_items,
    enum_field,
    format_errors,
    int_field,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_valid_port_name,
    matches,
    nonnegative,
    port_number_errors,
    regex_error,
    str_field,
    validate_annotations,
    validate_label_selector,
    validate_labels,
    validate_object_meta,
    validate_port_num_or_name,
)

PULL_POLICIES = ("Always", "IfNotPresent", "Never")
RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")
TERMINATION_MESSAGE_POLICIES = ("File", "FallbackToLogsOnError")
HTTP_SCHEMES = ("HTTP", "HTTPS")
HTTP_HEADER_FMT = "[-A-Za-z0-9]+"


# ==========================================================================
# Pods and pod templates
# ==========================================================================

def validate_pod(obj: dict) -> Errors:
    errs = validate_object_meta(obj, is_dns1123_subdomain, namespaced=True)
    return errs + validate_pod_spec(as_dict(obj.get("spec")), "spec")


def validate_pod_spec(spec: dict, path: str) -> Errors:
    """The parts of ValidatePodSpec that matter for networking labs."""
    errs: Errors = []
    containers = dict_items(errs, f"{path}.containers", spec.get("containers"))
    init_containers = dict_items(errs, f"{path}.initContainers", spec.get("initContainers"))
    errs += _validate_containers(containers, f"{path}.containers", spec.get("containers"))
    errs += _validate_init_containers(init_containers, containers, f"{path}.initContainers")
    enum_field(errs, f"{path}.restartPolicy", spec.get("restartPolicy"), RESTART_POLICIES)
    enum_field(errs, f"{path}.dnsPolicy", spec.get("dnsPolicy"), DNS_POLICIES)
    if isinstance(spec.get("nodeName"), str) and spec["nodeName"]:  # ValidateNodeName ("../../etc" was taken)
        errs += format_errors(f"{path}.nodeName", spec["nodeName"], is_dns1123_subdomain)
    if spec.get("terminationGracePeriodSeconds") is not None:
        nonnegative(errs, f"{path}.terminationGracePeriodSeconds", spec["terminationGracePeriodSeconds"])
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
    name = str_field(errs, f"{path}.name", container.get("name"))
    if name == "":
        errs.append(required(f"{path}.name"))
    elif name is not None:
        errs += format_errors(f"{path}.name", name, is_dns1123_label)
    if not container.get("image"):
        errs.append(required(f"{path}.image"))
    enum_field(errs, f"{path}.terminationMessagePolicy", container.get("terminationMessagePolicy"),
          TERMINATION_MESSAGE_POLICIES)
    errs += _validate_container_ports(container.get("ports"), f"{path}.ports")
    enum_field(errs, f"{path}.imagePullPolicy", container.get("imagePullPolicy"), PULL_POLICIES)
    return errs


def _validate_container_ports(ports: Any, path: str) -> Errors:
    errs: Errors = []
    names: set[str] = set()
    for i, port in dict_items(errs, path, ports):
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
        container_port = int_field(errs, f"{ppath}.containerPort", port.get("containerPort"))
        if container_port == 0:
            errs.append(required(f"{ppath}.containerPort"))
        elif container_port is not None:
            errs += port_number_errors(f"{ppath}.containerPort", container_port)
        host_port = int_field(errs, f"{ppath}.hostPort", port.get("hostPort"))
        if host_port:
            errs += port_number_errors(f"{ppath}.hostPort", host_port)
        enum_field(errs, f"{ppath}.protocol", port.get("protocol"), PROTOCOLS)
    return errs


def _host_port_conflicts(containers: list[tuple[int, dict]], path: str) -> Errors:
    """checkHostPortConflicts: "protocol/hostIP/hostPort" must be unique."""
    errs: Errors = []
    seen: set[str] = set()
    for ci, container in containers:
        for pi, port in dict_items([], "", container.get("ports")):
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
        nonnegative(errs, f"{path}.{key}", probe.get(key))
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
        errs += _validate_action(kind, as_dict(handler[kind]), f"{path}.{kind}")
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
            name = str(as_dict(header).get("name", ""))
            if not matches(HTTP_HEADER_FMT, name):
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
    return errs + _validate_deployment_spec(as_dict(obj.get("spec")), "spec")


def _validate_deployment_spec(spec: dict, path: str) -> Errors:
    errs: Errors = []
    nonnegative(errs, f"{path}.replicas", spec.get("replicas"))
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
        errs.append(invalid(f"{path}.selector", go_label_selector(as_dict(selector)), "invalid label selector"))
    else:
        errs += _validate_template_for_selector(spec, f"{path}.template")
    errs += _validate_strategy(as_dict(spec.get("strategy")), f"{path}.strategy")
    nonnegative(errs, f"{path}.minReadySeconds", spec.get("minReadySeconds"))
    if spec.get("revisionHistoryLimit") is not None:
        nonnegative(errs, f"{path}.revisionHistoryLimit", spec["revisionHistoryLimit"])
    deadline = spec.get("progressDeadlineSeconds")
    if deadline is not None:
        nonnegative(errs, f"{path}.progressDeadlineSeconds", deadline)
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
    labels = as_dict(template.get("metadata")).get("labels")
    # A missing selector selects nothing; an empty one everything (and is reported above).
    if selector is None or (selector and not meta.selector_matches(selector, as_dict(labels))):
        errs.append(invalid(f"{path}.metadata.labels", go_string_map(labels),
                            "`selector` does not match template `labels`"))
    metadata = as_dict(template.get("metadata"))
    errs += validate_labels(metadata.get("labels"), f"{path}.metadata.labels")
    errs += validate_annotations(metadata.get("annotations"), f"{path}.metadata.annotations")
    pod_spec = as_dict(template.get("spec"))
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
        if not matches("[0-9]+%", value):
            return [invalid(path, value, regex_error(
                "a valid percent string must be a numeric string followed by an ending '%'",
                "[0-9]+%", "1%", "93%"))]
        return []
    errs: Errors = []
    nonnegative(errs, path, value)
    return errs


def _int_or_percent_value(value: Any) -> int | None:
    if isinstance(value, str) and matches("[0-9]+%", value):
        return int(value[:-1])
    return value if isinstance(value, int) and not isinstance(value, bool) else None
