"""The one table of resources the lab's API server serves.

Discovery (``/api/v1``, ``/apis/apps/v1``, the aggregated form), OpenAPI, the request router
and `kubectl api-resources` all read this table, so a resource is served exactly when it is
listed here. It is derived from :data:`kproxy.api.meta.KINDS` (kinds, plurals, short names,
scope) and adds what only the API server knows: verbs, categories and subresources, copied from
upstream's discovery documents of v1.32 (kubernetes/kubernetes ``api/discovery/api__v1.json``
and ``aggregated_v2.json``), so `kubectl api-resources -o wide` reads like a real cluster's.

Verbs are honest: kinds kproxy derives or writes itself (ReplicaSets from Deployments, Events,
Leases, Nodes) are read-only here, because a client's write to them would be undone at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from kproxy.api import meta

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
READ_VERBS = ("get", "list", "watch")
STATUS_VERBS = ("get", "patch", "update")
PROXY_VERBS = ("create", "delete", "get", "patch", "update")


@dataclass(frozen=True)
class Subresource:
    """One subresource (``pods/log``): the kind it answers with and its verbs.

    ``group``/``version`` are set when the answer's kind lives in another group, as
    ``deployments/scale`` answers with ``autoscaling/v1`` Scale and ``pods/eviction`` takes a
    ``policy/v1`` Eviction.
    """

    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class Resource:
    """One served resource in one group-version."""

    group: str            # "" for the core group
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    verbs: tuple[str, ...]
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[Subresource, ...] = field(default_factory=tuple)

    @property
    def group_version(self) -> str:
        """``v1`` for the core group, ``apps/v1`` otherwise (the apiVersion of its objects)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    api_version = group_version

    @property
    def path_prefix(self) -> str:
        """``/api/v1`` or ``/apis/apps/v1``."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def subresource(self, name: str) -> Subresource | None:
        return next((s for s in self.subresources if s.name == name), None)

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """The URL path of a collection or object, as kubectl builds it."""
        parts = [self.path_prefix]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
            if subresource:
                parts.append(subresource)
        return "/".join(parts)


def _from_meta(kind: str, verbs: tuple[str, ...], categories: tuple[str, ...] = (),
               subresources: tuple[Subresource, ...] = ()) -> Resource:
    info = meta.KINDS[kind]
    group_version = info.api_versions[0]
    version = group_version.split("/", 1)[1] if "/" in group_version else group_version
    return Resource(info.group, version, kind, info.plural, info.singular, info.namespaced, verbs,
                    info.short_names, categories, subresources)


_POD_SUBRESOURCES = (  # upstream's list for pods, less checkpoint/ephemeralcontainers/resize
    Subresource("attach", "PodAttachOptions", ("create", "get")),
    Subresource("binding", "Binding", ("create",)),
    Subresource("eviction", "Eviction", ("create",), "policy", "v1"),
    Subresource("exec", "PodExecOptions", ("create", "get")),
    Subresource("log", "Pod", ("get",)),
    Subresource("portforward", "PodPortForwardOptions", ("create", "get")),
    Subresource("proxy", "PodProxyOptions", PROXY_VERBS),
    Subresource("status", "Pod", STATUS_VERBS),
)

RESOURCES: tuple[Resource, ...] = (
    # core/v1, in upstream's (alphabetical) order
    _from_meta("Endpoints", ALL_VERBS),
    _from_meta("Event", READ_VERBS),
    _from_meta("Namespace", ("create", "delete", "get", "list", "patch", "update", "watch"),
               subresources=(Subresource("status", "Namespace", STATUS_VERBS),)),
    _from_meta("Node", READ_VERBS, subresources=(Subresource("status", "Node", ("get",)),)),
    _from_meta("Pod", ALL_VERBS, ("all",), _POD_SUBRESOURCES),
    _from_meta("Service", ALL_VERBS, ("all",),
               (Subresource("proxy", "ServiceProxyOptions", PROXY_VERBS),
                Subresource("status", "Service", STATUS_VERBS))),
    # apps/v1
    _from_meta("Deployment", ALL_VERBS, ("all",),
               (Subresource("scale", "Scale", STATUS_VERBS, "autoscaling", "v1"),
                Subresource("status", "Deployment", STATUS_VERBS))),
    _from_meta("ReplicaSet", READ_VERBS, ("all",),
               (Subresource("status", "ReplicaSet", ("get",)),)),
    # events.k8s.io/v1: the same events as core/v1, in the newer shape
    Resource("events.k8s.io", "v1", "Event", "events", "event", True, READ_VERBS, ("ev",)),
    _from_meta("Lease", READ_VERBS),
    _from_meta("EndpointSlice", ALL_VERBS),
    _from_meta("IPAddressPool", ALL_VERBS),
    _from_meta("L2Advertisement", ALL_VERBS),
)

# Groups in the order `/apis` lists them (upstream's priority order: apps first; MetalLB's CRD
# group last, as an aggregated CRD group comes after the built-in ones).
GROUP_ORDER = ("apps", "events.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "metallb.io")


def group_versions() -> list[tuple[str, list[str]]]:
    """[(group, [versions, preferred first])] for every served group, core ("") first."""
    seen: dict[str, list[str]] = {}
    for r in RESOURCES:
        versions = seen.setdefault(r.group, [])
        if r.version not in versions:
            versions.append(r.version)
    order = [""] + [g for g in GROUP_ORDER if g in seen] + sorted(g for g in seen if g and g not in GROUP_ORDER)
    return [(g, seen[g]) for g in order if g in seen]


def resources_in(group: str, version: str) -> list[Resource]:
    """The resources of one group-version, sorted by plural as the API server lists them."""
    return sorted((r for r in RESOURCES if r.group == group and r.version == version), key=lambda r: r.plural)


def find(group: str, version: str, plural: str) -> Resource | None:
    """The resource a URL names (``("apps", "v1", "deployments")``), or None."""
    return next((r for r in RESOURCES if (r.group, r.version, r.plural) == (group, version, plural)), None)


def for_kind(kind: str, api_version: str | None = None) -> Resource | None:
    """The resource serving ``kind`` (in ``api_version`` when given; else its first listing)."""
    for r in RESOURCES:
        if r.kind == kind and (api_version is None or r.group_version == api_version):
            return r
    return None


def served_kinds() -> Iterable[tuple[str, str, str]]:
    """(group, version, kind) of every served top-level kind."""
    return [(r.group, r.version, r.kind) for r in RESOURCES]
