"""Kinds, resource names and label selectors for plain Kubernetes-shaped dicts.

Objects stay plain dicts everywhere in kproxy; these helpers only read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class KindInfo:
    """What the API server knows about one kind."""

    kind: str
    api_versions: tuple[str, ...]  # accepted apiVersion values, preferred first
    namespaced: bool
    plural: str
    short_names: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        """API group ("" for the core group), e.g. "apps"."""
        version = self.api_versions[0]
        return version.split("/", 1)[0] if "/" in version else ""

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def resource_names(self) -> tuple[str, ...]:
        """Every word kubectl accepts for this kind (plural, singular, short)."""
        names = (self.plural, self.singular) + self.short_names
        if self.group:
            names += (f"{self.plural}.{self.group}", f"{self.singular}.{self.group}")
        return names


KINDS: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo("Pod", ("v1",), True, "pods", ("po",)),
        KindInfo("Deployment", ("apps/v1",), True, "deployments", ("deploy",)),
        KindInfo("Service", ("v1",), True, "services", ("svc",)),
        KindInfo("Endpoints", ("v1",), True, "endpoints", ("ep",)),
        KindInfo("EndpointSlice", ("discovery.k8s.io/v1",), True, "endpointslices"),
        KindInfo("Namespace", ("v1",), False, "namespaces", ("ns",)),
        KindInfo("Node", ("v1",), False, "nodes", ("no",)),
        KindInfo("IPAddressPool", ("metallb.io/v1beta1",), True, "ipaddresspools"),
        KindInfo("L2Advertisement", ("metallb.io/v1beta1",), True, "l2advertisements"),
        # read-only here: ReplicaSets are derived from Deployments, Events and Leases are kproxy's own
        KindInfo("ReplicaSet", ("apps/v1",), True, "replicasets", ("rs",)),
        KindInfo("Event", ("v1",), True, "events", ("ev",)),
        KindInfo("Lease", ("coordination.k8s.io/v1",), True, "leases"),
    )
}

# What a lab admits from manifests, in the order one load admits them (namespaces and pools
# first); anything else is refused as kubectl refuses a kind the server does not serve.
ADMITTED_KINDS = ("Namespace", "IPAddressPool", "L2Advertisement", "Service", "Deployment", "Pod", "Endpoints",
                  "EndpointSlice")
# Kubernetes' own kinds a lab does not serve: refused plainly (no CRD could add them).
BUILTIN_NOT_SERVED = ("StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "ConfigMap", "Secret",
                      "Ingress", "NetworkPolicy", "ServiceAccount", "PersistentVolumeClaim", "PersistentVolume",
                      "HorizontalPodAutoscaler", "PodDisruptionBudget", "Role", "RoleBinding", "ClusterRole",
                      "ClusterRoleBinding", "IngressClass", "ReplicationController", "LimitRange", "ResourceQuota")
# Namespaces that always exist in a lab.
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease", "metallb-system")
# The label tying an EndpointSlice to its Service (discoveryv1.LabelServiceName).
LABEL_SERVICE_NAME = "kubernetes.io/service-name"

_BY_NAME: dict[str, str] = {
    name: info.kind for info in KINDS.values() for name in info.resource_names
}


def resolve_kind(word: str) -> str | None:
    """Map a kubectl resource word ("svc", "deployments.apps", "Pod") to its kind.

    Returns None for unknown words; kubectl then says
    ``the server doesn't have a resource type "<word>"``.
    """
    if word in KINDS:
        return word
    return _BY_NAME.get(word.lower())


def kind_info(kind: str) -> KindInfo | None:
    """The KINDS entry for ``kind``, or None when kproxy does not know it."""
    return KINDS.get(kind)


def is_namespaced(kind: str) -> bool:
    """Unknown kinds count as namespaced, like most Kubernetes kinds."""
    info = KINDS.get(kind)
    return True if info is None else info.namespaced


def metadata_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def name_of(obj: Mapping[str, Any]) -> str:
    return metadata_of(obj).get("name") or ""


def namespace_of(obj: Mapping[str, Any]) -> str:
    """The object's namespace: "default" when unset, "" for cluster-scoped kinds."""
    if not is_namespaced(obj.get("kind", "")):
        return ""
    return metadata_of(obj).get("namespace") or "default"


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    labels = metadata_of(obj).get("labels")
    return dict(labels) if isinstance(labels, Mapping) else {}


def obj_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name): the identity of an object in the store."""
    return obj.get("kind", ""), namespace_of(obj), name_of(obj)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """The pod's Ready condition is True (podutil.IsPodReady): what Services, Deployments and
    `kubectl get` count as ready."""
    status = pod.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    return any(isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
               for c in conditions or [])


def is_label_selector(selector: Mapping[str, Any]) -> bool:
    """Tell a LabelSelector (matchLabels/matchExpressions) from a plain label map."""
    if not selector:
        return False
    allowed = {"matchLabels": Mapping, "matchExpressions": list}
    return all(k in allowed and isinstance(v, allowed[k]) for k, v in selector.items())


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy a Service selector map or a LabelSelector.

    As upstream: a None selector matches nothing and an empty one matches
    everything (metav1.LabelSelectorAsSelector / labels.SelectorFromSet).
    """
    if selector is None:
        return False
    if not is_label_selector(selector):
        return all(labels.get(k) == v for k, v in selector.items())
    match_labels = selector.get("matchLabels") or {}
    if not all(labels.get(k) == v for k, v in match_labels.items()):
        return False
    return all(_requirement_matches(r, labels) for r in selector.get("matchExpressions") or [])


def _requirement_matches(req: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op = req.get("key"), req.get("operator")
    values = req.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    return False


def no_match_error(obj: Mapping[str, Any], source: str, hint: bool = True) -> str | None:
    """kubectl's refusal of an object no served resource matches, or None when one does.

    A kind the lab admits in one of its apiVersions matches; anything else,
    including a known kind in an unknown version (``apps/v2``), is refused as
    kubectl refuses it when discovery has no such resource::

        resource mapping not found for name: "web" namespace: "" from "web.yaml":
        no matches for kind "Deployment" in version "apps/v2"
        ensure CRDs are installed first

    (one line up to the hint). The CLI (``apply``) and the daemon (the
    manifests folder) both call this, so the two refuse the same objects.
    """
    kind, version = obj.get("kind"), obj.get("apiVersion")
    info = KINDS.get(kind) if isinstance(kind, str) else None
    if info is not None and kind in ADMITTED_KINDS and version in info.api_versions:
        return None
    metadata = metadata_of(obj)
    name, namespace = metadata.get("name") or "", metadata.get("namespace") or ""
    message = (f'resource mapping not found for name: "{name}" namespace: "{namespace}" from "{source}": '
               f'no matches for kind "{kind}" in version "{version}"')
    return message + "\nensure CRDs are installed first" if hint else message
