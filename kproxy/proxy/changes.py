"""Which Services changed, so a sync looks at those alone: the proxy's change tracker.

kube-proxy's ServiceChangeTracker and EndpointsChangeTracker record, from informer events, which
Services changed since the last sync; its proxier then looks at those alone. Two halves here:

- ChangeTracker: kproxy's daemon keeps its objects in plain dicts written in many places, so the
  record is kept by the dicts themselves: a Tracked dict notes the Service ("ns/name") of every
  object written to or removed from it, before and after. The Proxier gets the noted keys as its
  ``changed`` hint, which turns a one-Service change at 10,000 Services from comparing every
  object (~0.15 s) into comparing one. A change the record cannot vouch for (a whole cache
  replaced by a re-list, a failed sync) makes the next sync compare everything; periodic full
  syncs ignore the record anyway.
- ServiceChanges: the Proxier's own record, a signature per Service of the objects its rules
  were last rendered from; the Services (of the hinted ones, or of all) whose signature differs
  are digested (model.digest), and the Proxier compares their digests with what it rendered.
"""
from __future__ import annotations

import marshal
from typing import Any, Iterable, Mapping

from kproxy.proxy.model import LABEL_SERVICE_NAME, Digest, ProxyConfig, digest, split_digest


def service_key(svc: Mapping[str, Any]) -> str:
    """A Service's "ns/name"."""
    m = svc.get("metadata") or {}
    return f"{m.get('namespace') or 'default'}/{m.get('name')}"


def slice_service_key(sl: Mapping[str, Any]) -> str | None:
    """The "ns/name" of an EndpointSlice's Service (its service-name label), None without one."""
    m = sl.get("metadata") or {}
    name = (m.get("labels") or {}).get(LABEL_SERVICE_NAME)
    return f"{m.get('namespace') or 'default'}/{name}" if name else None


def proxy_key(obj: Mapping[str, Any] | None) -> str | None:
    """The Service an object belongs to, for the Proxier: a Service's own "ns/name", an
    EndpointSlice's Service (its service-name label)."""
    if not obj:
        return None
    return slice_service_key(obj) if obj.get("kind") == "EndpointSlice" else service_key(obj)


class ChangeTracker:
    """The Services changed since the last successful sync; None: not known, compare all."""

    def __init__(self) -> None:
        self.keys: set[str] | None = None

    def note(self, *objs: Mapping[str, Any] | None) -> None:
        if self.keys is not None:
            self.keys.update(k for k in map(proxy_key, objs) if k)

    def forget_all(self) -> None:
        self.keys = None

    def take(self) -> set[str] | None:
        """What changed since the last take (None: not known), and start a new record."""
        keys, self.keys = self.keys, set()
        return keys

    def tracked(self, objects: Mapping[str, Mapping] | None = None) -> "Tracked":
        return Tracked(self, objects or {})


class Tracked(dict):
    """A dict of objects that tells its ChangeTracker about every write and removal."""

    def __init__(self, tracker: ChangeTracker, objects: Mapping[str, Mapping]):
        super().__init__(objects)
        self.tracker = tracker

    def __setitem__(self, key, value) -> None:
        self.tracker.note(self.get(key), value)
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self.tracker.note(self.get(key))
        super().__delitem__(key)

    def pop(self, key, *default):
        self.tracker.note(self.get(key))
        return super().pop(key, *default)

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args, **kw) -> None:
        for key, value in dict(*args, **kw).items():
            self[key] = value

    def __ior__(self, other):
        self.update(other)
        return self

    def clear(self) -> None:
        self.tracker.note(*self.values())
        super().clear()

    def popitem(self):
        key, value = super().popitem()
        self.tracker.note(value)
        return key, value

    def replace_with(self, fresh: Mapping[str, Mapping]) -> "Tracked":
        """A re-listed cache: notes every object that differs (deep compare) in a new Tracked."""
        for key in self.keys() | fresh.keys():
            old, new = self.get(key), fresh.get(key)
            if old != new:
                self.tracker.note(old, new)
        return Tracked(self.tracker, fresh)



# ------------------------------------------------------------------ the Proxier's signatures


def group(services: Iterable[Mapping], endpoint_slices: Iterable[Mapping], wanted: set[str] | None
          ) -> tuple[dict[str, Mapping], dict[str, list[Mapping]]]:
    """Services by "ns/name", and EndpointSlices by their Service's (only ``wanted`` keys)."""
    names = None if wanted is None else {k.partition("/")[2] for k in wanted}
    svcs: dict[str, Mapping] = {}
    for svc in services:
        if names is not None and (svc.get("metadata") or {}).get("name") not in names:
            continue  # cheap filter before the key
        key = service_key(svc)
        if wanted is None or key in wanted:
            svcs[key] = svc
    slices: dict[str, list[Mapping]] = {}
    for sl in endpoint_slices:
        if names is not None and ((sl.get("metadata") or {}).get("labels") or {}).get(LABEL_SERVICE_NAME) \
                not in names:
            continue
        key = slice_service_key(sl)
        if key is not None and (wanted is None or key in wanted):
            slices.setdefault(key, []).append(sl)
    return svcs, slices


def _slice_name(sl: Mapping[str, Any]) -> str:
    return str((sl.get("metadata") or {}).get("name"))


def signature(svc: Mapping | None, own: list[Mapping]) -> bytes:
    """Equal bytes for a Service and its EndpointSlices (``own``, sorted here by name) equal
    to the ones signed before."""
    if len(own) > 1:
        own.sort(key=_slice_name)
    return _marshal((svc, own))


def _marshal(obj: Any) -> bytes:
    """Equal bytes for equal objects (parsed YAML/JSON: dicts, lists, scalars). Version 2:
    later versions write back-references for objects referenced elsewhere, so equal objects
    could give different bytes."""
    try:
        return marshal.dumps(obj, 2)
    except ValueError:  # something marshal does not know: slower, still exact enough
        return repr(obj).encode()


class ServiceChanges:
    """Each Service's signature as of the last successful sync (``sigs``: "ns/name" -> bytes)."""

    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.sigs: dict[str, bytes] = {}

    def find(self, services: Iterable[Mapping], endpoint_slices: Iterable[Mapping],
             changed: Iterable[str] | None) -> dict[str, tuple[bytes | None, Digest | None]]:
        """Keys whose objects changed since the last successful sync (of ``changed``; None: of
        all): their new signature and digest (None, None: gone)."""
        wanted = None if changed is None else set(changed)
        svcs, slices = group(services, endpoint_slices, wanted)
        keys = (svcs.keys() | slices.keys() | self.sigs.keys()) if wanted is None else wanted
        out: dict[str, tuple[bytes | None, Digest | None]] = {}
        todo: list[str] = []
        for key in keys:
            svc, own = svcs.get(key), slices.get(key, [])
            if svc is None and not own:
                if key in self.sigs:
                    out[key] = (None, None)
                continue
            sig = signature(svc, own)
            if sig != self.sigs.get(key):
                out[key] = (sig, None)
                todo.append(key)
        for key, d in self.digest(todo, svcs, slices).items():
            out[key] = (out[key][0], d)
        return out

    def digest(self, keys: list[str], svcs: Mapping[str, Mapping], slices: Mapping[str, list[Mapping]]
               ) -> dict[str, Digest]:
        """Each key's Digest (its own ``skipped``), from one digest of all their objects:
        Services digest independently of each other."""
        if not keys:
            return {}
        whole = digest([svcs[k] for k in keys if k in svcs], [sl for k in keys for sl in slices.get(k, ())],
                       self.cfg)
        parts = split_digest(whole)
        out = {}
        for key in keys:
            d = parts.get(key) or Digest([], {}, {})
            d.skipped = {key: whole.skipped[key]} if key in whole.skipped else {}
            out[key] = d
        return out

    def remember(self, key: str, sig: bytes | None) -> None:
        """Record what a successful sync rendered ``key`` from (None: gone)."""
        if sig is None:
            self.sigs.pop(key, None)
        else:
            self.sigs[key] = sig
