"""The daemon's record of which Services changed since the last proxy sync (kproxy/proxy/changes.py)."""
from __future__ import annotations

from kproxy.proxy.changes import ChangeTracker, proxy_key


def svc(ns: str, name: str, ip: str = "10.96.0.1") -> dict:
    return {"kind": "Service", "metadata": {"namespace": ns, "name": name}, "spec": {"clusterIP": ip}}


def eps(ns: str, name: str, service: str, *ips: str) -> dict:
    return {"kind": "EndpointSlice", "metadata": {"namespace": ns, "name": name,
                                                  "labels": {"kubernetes.io/service-name": service}},
            "endpoints": [{"addresses": [ip]} for ip in ips]}


def test_proxy_keys():
    assert proxy_key(svc("shop", "web")) == "shop/web"
    assert proxy_key(eps("shop", "web-abc12", "web")) == "shop/web"
    assert proxy_key({"kind": "EndpointSlice", "metadata": {"name": "x"}}) is None  # no Service label
    assert proxy_key(None) is None


def test_nothing_is_known_until_the_first_take():
    t = ChangeTracker()
    objs = t.tracked()
    objs["a"] = svc("ns", "a")
    assert t.take() is None  # the first sync compares everything
    assert t.take() == set()


def test_writes_and_removals_note_their_services_old_and_new():
    t = ChangeTracker()
    services, slices = t.tracked(), t.tracked()
    t.take()
    services["/s/ns/a"] = svc("ns", "a")
    slices["/e/ns/b-1"] = eps("ns", "b-1", "b", "10.0.0.1")
    assert t.take() == {"ns/a", "ns/b"}
    slices["/e/ns/b-1"] = eps("ns", "b-1", "c", "10.0.0.1")  # relabelled: both Services change
    assert t.take() == {"ns/b", "ns/c"}
    services.pop("/s/ns/a")
    del slices["/e/ns/b-1"]
    services.pop("/s/ns/missing", None)
    assert t.take() == {"ns/a", "ns/c"}
    services.setdefault("/s/ns/d", svc("ns", "d"))
    services.update({"/s/ns/e": svc("ns", "e")})
    assert t.take() == {"ns/d", "ns/e"}
    services.clear()
    assert t.take() == {"ns/d", "ns/e"}


def test_a_relisted_cache_notes_only_what_differs():
    t = ChangeTracker()
    services = t.tracked({"/s/ns/a": svc("ns", "a"), "/s/ns/b": svc("ns", "b")})
    t.take()
    fresh = {"/s/ns/a": svc("ns", "a"), "/s/ns/b": svc("ns", "b", "10.96.0.9"), "/s/ns/c": svc("ns", "c")}
    services = services.replace_with(fresh)
    assert t.take() == {"ns/b", "ns/c"}
    services["/s/ns/a"] = svc("ns", "a", "10.96.0.5")  # the new dict is tracked too
    assert t.take() == {"ns/a"}


def test_after_a_failed_sync_everything_is_compared_again():
    t = ChangeTracker()
    services = t.tracked()
    t.take()
    services["x"] = svc("ns", "x")
    t.take()
    t.forget_all()
    services["y"] = svc("ns", "y")
    assert t.take() is None


def test_an_in_place_union_is_noted():
    t = ChangeTracker()
    services = t.tracked()
    t.take()
    services |= {"/s/ns/u": svc("ns", "u")}
    assert t.take() == {"ns/u"} and "/s/ns/u" in services
