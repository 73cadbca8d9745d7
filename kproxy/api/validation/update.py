"""Update rules: what may not change between the admitted object and a new one.

Sources: ValidateImmutableField (apimachinery), ValidateObjectMetaUpdate, ValidateServiceUpdate,
ValidatePodUpdate (pkg/apis/core/validation), ValidateDeploymentUpdate (pkg/apis/apps/validation),
with the API server's wording ("field is immutable", "may not change once set", ...).
``validate_update`` holds only these rules: callers run ``validate`` on the new object as well.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from kproxy.api.errors import forbidden, go_label_selector, go_string_slice, invalid
from kproxy.api.validation.common import Errors, as_dict
from kproxy.api.validation.service import is_headless

FIELD_IMMUTABLE = "field is immutable"


def validate_update(old: dict, new: dict) -> Errors:
    """Update-only rules: immutable fields. Run ``validate`` on ``new`` as well."""
    errs = _immutable(new, old, "metadata.name", lambda o: as_dict(o.get("metadata")).get("name"))
    errs += _immutable(new, old, "metadata.namespace", lambda o: as_dict(o.get("metadata")).get("namespace"))
    kind = new.get("kind")
    if kind == "Deployment":
        errs += _deployment_update_errors(old, new)
    elif kind == "Service":
        errs += _service_update_errors(as_dict(old.get("spec")), as_dict(new.get("spec")))
    elif kind == "Pod":
        errs += _pod_update_errors(as_dict(old.get("spec")), as_dict(new.get("spec")))
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
    return _immutable(new, old, "spec.selector", lambda o: as_dict(o.get("spec")).get("selector"),
                      render=lambda s: go_label_selector(as_dict(s)))


def _service_update_errors(old: dict, new: dict) -> Errors:
    """validateUpgradeDowngradeClusterIPs/IPFamilies, validateLoadBalancerClassField and
    healthCheckNodePort, in ValidateServiceUpdate's order."""
    errs: Errors = []
    if "ExternalName" not in (old.get("type"), new.get("type")):
        if not (is_headless(old) and is_headless(new)):
            errs += _upgrade_downgrade("spec.clusterIPs", old.get("clusterIPs") or [],
                                       new.get("clusterIPs") or [], new, "clusterIP", per_index=True)
        if is_headless(old) == is_headless(new) and not is_headless(new):
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
