"""The one admission gate: what the API server does to an object between kubectl and etcd.

Every path that takes an object from a user goes through ``Admission.admit``: the daemon
loading the manifests folder, ``kproxy apply`` before it writes the folder, ``kproxy rules
--render`` (and the coming API server). Nothing else defaults or validates, so the folder, the
CLI and the renderer refuse the same objects with the same words. The steps, in the API
server's order:

1. discovery: a kind (or version) the lab does not serve is refused as kubectl refuses it
   before sending anything (``no matches for kind ...``);
2. decoding: fields of the wrong type are refused alone (``schema.type_errors``, inside
   ``validation.validate``);
3. defaulting (``defaults.apply_defaults``);
4. validation on create (``validation.validate``: a Service's allocations first, then fields);
5. on update, the update rules against the admitted object (``validation.validate_update``:
   immutable fields), after carrying the allocated clusterIPs and nodePorts into a manifest that
   leaves them empty (``defaults.patch_allocated_values``), so re-applying an unchanged file is
   never "an update of clusterIP";
6. the namespace must exist (the NamespaceLifecycle admission plugin runs after validation);
7. an IPAddressPool's addresses must parse (MetalLB's webhook);
8. the object must fit in one etcd request (``MAX_STORED_BYTES``): etcd refuses a bigger one with
   "request is too large", and a 2 MB Pod the gate took stopped every pass of the controller.

The verdict carries the defaulted object *as declared* (allocations are the allocator's job:
the daemon's store keeps them), and the refusal worded as the API server words it
(``Service "web" is invalid: ...``); ``kubectl_message`` adds what kubectl prints around it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Container, Mapping, Sequence

from kproxy.api import errors, meta
from kproxy.api.defaults import apply_defaults, patch_allocated_values
from kproxy.api.validation import DEFAULT_NODE_PORT_RANGE, DEFAULT_SERVICE_CIDR, validate, validate_update

NO_MATCH, INVALID, NOT_FOUND, INTERNAL = "NoMatch", "Invalid", "NotFound", "InternalError"
TOO_LARGE = "RequestEntityTooLarge"
# etcd's default --max-request-bytes (1.5 MiB) less room for the status, key and request around it
MAX_STORED_BYTES = 1536 * 1024 - 64 * 1024


@dataclass(frozen=True)
class Verdict:
    """What the gate says about one object."""

    obj: Any                   # the defaulted object (the document itself when step 1 refused it)
    message: str | None = None  # the refusal as the API server words it; None: admitted
    reason: str = ""           # NO_MATCH, INVALID, NOT_FOUND, TOO_LARGE or INTERNAL (a kproxy bug, named)
    update: bool = False       # judged as an update of an admitted object
    field_errors: tuple = ()   # INVALID: the FieldErrors (the API server's 422 details.causes)

    @property
    def ok(self) -> bool:
        return self.message is None

    def kubectl_message(self, source: str = "") -> str:
        """The refusal as `kubectl apply` prints it on stderr."""
        if self.reason == INVALID:
            return f"The {self.message}"
        if self.reason == NOT_FOUND:
            verb = "applying" if self.update else "creating"
            return f'Error from server (NotFound): error when {verb} "{source}": {self.message}'
        if self.reason == TOO_LARGE:
            verb = "applying" if self.update else "creating"
            return f'Error from server: error when {verb} "{source}": {self.message}'
        return f"error: {self.message}"


def unserved_error(obj: dict, source: str, hint: bool = True) -> str | None:
    """Step 1: kubectl's refusal of a kind (or version) the lab does not serve, or None.

    A Node is made by kproxy itself; Kubernetes' own kinds a lab does not serve are named
    plainly (no CRD could add them); anything else is kubectl's no-match error.
    """
    kind = obj.get("kind")
    m = meta.metadata_of(obj)
    if kind == "Node":
        return (f'Node "{m.get("name", "")}" from "{source}" is not applied: kproxy makes its node itself '
                "(--node-name at `kproxy up`)")
    if meta.no_match_error(obj, source) is None:
        return None
    if kind in meta.BUILTIN_NOT_SERVED:
        return (f'{kind} "{m.get("name", "")}" from "{source}" is not applied: the lab serves '
                f'{", ".join(meta.ADMITTED_KINDS)}, not {kind}')
    return meta.no_match_error(obj, source, hint=hint)


def default(obj: dict) -> dict:
    """Step 3 alone, for readers that compare a manifest with what the lab stored (``--wait``)
    or build the lab's own objects (the ``kubernetes`` Service, cluster DNS)."""
    return apply_defaults(obj)


class Admission:
    """The lab's admission settings and the gate itself.

    ``remember=True`` (the daemon) keeps steps 2-4 and 7 of each document until it changes
    (a file parsed once keeps its objects): at 1,000 Services re-validating every reload cost
    0.5-1 s. Call ``end_round`` after each reload so forgotten documents are dropped.
    """

    def __init__(self, node_port_range: Sequence[int] = DEFAULT_NODE_PORT_RANGE,
                 service_cidr: str | Sequence[str] = DEFAULT_SERVICE_CIDR,
                 system_namespaces: Sequence[str] = meta.SYSTEM_NAMESPACES, remember: bool = False,
                 reserved: Callable[[], Mapping[str, str]] | Mapping[str, str] | None = None):
        self.node_port_range = (int(node_port_range[0]), int(node_port_range[1]))
        self.service_cidr = service_cidr
        self.system_namespaces = frozenset(system_namespaces)
        self._memo: dict[int, tuple] | None = {} if remember else None
        self._last: dict[int, tuple] = {}
        self.reserved = reserved  # ip -> what holds it: the lab's own addresses, no pool may hold them

    def admit(self, obj: Any, source: str = "", *, old: dict | None = None,
              namespaces: Container[str] | Callable[[str], bool] | None = None, hint: bool = True) -> Verdict:
        """Judge ``obj`` (a parsed document): create when ``old`` is None, else an update of the
        admitted ``old``. ``namespaces``: the ones that exist (a container or a predicate;
        None skips step 6, as ``rules --render`` has no lab). ``hint``: kubectl's second line of a
        no-match error (the folder's reports keep one line)."""
        if not isinstance(obj, dict):
            return Verdict(obj, f"{source}: expected an object, got {type(obj).__name__}", NO_MATCH)
        unserved = unserved_error(obj, source, hint)
        if unserved:
            return Verdict(obj, unserved, NO_MATCH)
        update = old is not None
        try:
            new, errs, size = self._create_checks(obj)
            if not errs and new.get("kind") == "IPAddressPool" and self.reserved is not None:
                errs = self._reserved_errors(new)  # not memoized: the lab's addresses change
            if not errs and update:
                errs = self._update_errors(old, new)
        except Exception as exc:  # noqa: BLE001 - a kproxy bug refuses one object, never stops the caller
            cause = " ".join(str(exc).split())[:300] or type(exc).__name__
            return Verdict(obj, f'error validating "{source}": {obj.get("kind")} "{meta.name_of(obj)}": {cause}',
                           INTERNAL, update)
        kind, ns, name = meta.obj_key(new)
        if errs:
            return Verdict(new, str(errors.InvalidError(str(kind), str(name), errs)), INVALID, update, tuple(errs))
        if size > MAX_STORED_BYTES:
            return Verdict(new, "etcdserver: request is too large", TOO_LARGE, update)
        if ns and kind != "Namespace" and namespaces is not None and not self._namespace_exists(ns, namespaces):
            return Verdict(new, f'namespaces "{ns}" not found', NOT_FOUND, update)
        return Verdict(new, None, "", update)

    def end_round(self) -> None:
        """Forget the documents not judged since the previous call (``remember=True`` only)."""
        if self._memo is not None:
            self._last, self._memo = self._memo, {}

    # -- steps ------------------------------------------------------------------------------
    def _create_checks(self, obj: dict) -> tuple[dict, list, int]:
        """Steps 2-4, 7 and 8's measure: the defaulted object, the errors of creating it, its size
        as JSON (0 when already refused)."""
        if self._memo is not None:
            hit = self._memo.get(id(obj)) or self._last.get(id(obj))
            if hit is not None and hit[0] is obj:
                self._memo[id(obj)] = hit
                return hit[1], hit[2], hit[3]
        new = apply_defaults(obj)
        errs = validate(new, node_port_range=self.node_port_range, service_cidr=self.service_cidr)
        if not errs and new.get("kind") == "IPAddressPool":
            errs = _pool_errors(new)
        size = 0 if errs else len(json.dumps(new, separators=(",", ":")).encode())
        if self._memo is not None:
            self._memo[id(obj)] = (obj, new, errs, size)
        return new, errs, size

    def _update_errors(self, old: dict, new: dict) -> list:
        """Step 5: the update rules, on the manifest with the allocated values carried over."""
        if new.get("kind") == "Service":
            new = patch_allocated_values(old, new)
        return validate_update(old, new)

    def _reserved_errors(self, pool: dict) -> list:
        """Step 7 for this lab: a pool range holding a node's or the lab's own address (issue 12
        #11: a LoadBalancer IP there would take over that host's own traffic)."""
        from kproxy.controllers.loadbalancer import conflict_message, pool_conflicts
        reserved = self.reserved() if callable(self.reserved) else self.reserved
        ranges = (pool.get("spec") or {}).get("addresses") or []
        return [errors.invalid(f"spec.addresses[{i}]", ranges[i], conflict_message(ip, what))
                for i, ip, what in pool_conflicts(ranges, dict(reserved))]

    def _namespace_exists(self, ns: str, namespaces: Container[str] | Callable[[str], bool]) -> bool:
        if ns in self.system_namespaces:
            return True
        return bool(namespaces(ns)) if callable(namespaces) else ns in namespaces


def _pool_errors(pool: dict) -> list:
    """Step 7: addresses MetalLB's webhook would refuse (validate checked their types)."""
    from kproxy.controllers.loadbalancer import pool_from_object  # the parser the allocator uses

    try:
        pool_from_object(pool)
    except ValueError as e:
        return [errors.invalid("spec.addresses", (pool.get("spec") or {}).get("addresses"), str(e))]
    return []
