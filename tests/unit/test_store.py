"""The SQLite key/value store (store/sqlite.py) and the manifests folder (store/manifests.py)."""

from __future__ import annotations

import pytest
import yaml

from kproxy.store import manifests
from kproxy.store.base import kind_prefix, object_key
from kproxy.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "s.db")
    yield s
    s.close()


# ================================================================== SqliteStore


def test_get_put_delete(store):
    assert store.get("/registry/pods/default/a") is None
    store.put("/registry/pods/default/a", {"metadata": {"name": "a"}, "n": [1, 2]})
    assert store.get("/registry/pods/default/a") == {"metadata": {"name": "a"}, "n": [1, 2]}
    store.put("/registry/pods/default/a", "replaced")
    assert store.get("/registry/pods/default/a") == "replaced"
    assert store.delete("/registry/pods/default/a") is True
    assert store.get("/registry/pods/default/a") is None
    assert store.delete("/registry/pods/default/a") is False


def test_list_by_prefix_is_sorted_and_exact(store):
    for key in ["/registry/pods/default/b", "/registry/pods/default/a", "/registry/pods/kube-system/c",
                "/registry/podsx/default/z", "/registry/services/default/a"]:
        store.put(key, key.rsplit("/", 1)[1])
    assert store.list("/registry/pods/") == [("/registry/pods/default/a", "a"), ("/registry/pods/default/b", "b"),
                                             ("/registry/pods/kube-system/c", "c")]
    assert store.list("/registry/pods/default/") == [("/registry/pods/default/a", "a"),
                                                     ("/registry/pods/default/b", "b")]
    assert store.values("/registry/services/") == ["a"]
    assert store.list("/registry/nodes/") == []


def test_revision_grows_only_on_real_changes(store):
    r0 = store.revision()
    store.put("/k", {"a": 1})
    r1 = store.revision()
    assert r1 == r0 + 1
    store.put("/k", {"a": 1})  # same value: no change
    assert store.revision() == r1
    store.put("/k", {"a": 2})
    assert store.revision() == r1 + 1
    assert store.delete("/missing") is False
    assert store.revision() == r1 + 1
    assert store.delete("/k") is True
    assert store.revision() == r1 + 2
    store.get("/k")
    store.list("/")
    assert store.revision() == r1 + 2


def test_one_transaction_is_one_revision(store):
    r0 = store.revision()
    with store.transaction() as txn:
        txn.put("/a", 1)
        txn.put("/b", 2)
        txn.delete("/a")
    assert store.revision() == r0 + 1


def test_json_key_order_does_not_count_as_a_change(store):
    store.put("/k", {"a": 1, "b": 2})
    r = store.revision()
    store.put("/k", {"b": 2, "a": 1})
    assert store.revision() == r


def test_transaction_rolls_back_on_exception(store):
    store.put("/keep", "old")
    r = store.revision()
    with pytest.raises(ValueError), store.transaction() as txn:
        txn.put("/keep", "new")
        txn.put("/new", 1)
        assert txn.get("/keep") == "new"  # visible inside the transaction
        raise ValueError("boom")
    assert store.get("/keep") == "old"
    assert store.get("/new") is None
    assert store.revision() == r
    # the store is still usable afterwards
    store.put("/new", 2)
    assert store.get("/new") == 2


def test_two_stores_on_one_file_see_each_others_writes(tmp_path):
    a, b = SqliteStore(tmp_path / "s.db"), SqliteStore(tmp_path / "s.db")
    try:
        a.put("/x", {"from": "a"})
        assert b.get("/x") == {"from": "a"}
        b.put("/y", [1])
        assert a.list("/") == [("/x", {"from": "a"}), ("/y", [1])]
        assert a.revision() == b.revision() == 2
        b.delete("/x")
        assert a.get("/x") is None
    finally:
        a.close()
        b.close()


def test_data_survives_reopening(tmp_path):
    s = SqliteStore(tmp_path / "sub" / "s.db")  # parent directories are created
    s.put("/k", "v")
    rev = s.revision()
    s.close()
    again = SqliteStore(tmp_path / "sub" / "s.db")
    assert again.get("/k") == "v"
    assert again.revision() == rev
    again.close()


def test_registry_keys():
    assert object_key("Service", "default", "web") == "/registry/services/default/web"
    assert object_key("Namespace", None, "prod") == "/registry/namespaces/prod"
    assert kind_prefix("Pod") == "/registry/pods/"
    assert kind_prefix("Pod", "default") == "/registry/pods/default/"


# ================================================================== manifests folder


def svc(name, ns=None, port=80):
    meta = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"ports": [{"port": port}]}}


MULTI = """\
# the shop app
apiVersion: v1
kind: Service
metadata:
  name: web  # the front door
spec:
  ports:
  - port: 80
---
# backend, keep this comment
apiVersion: v1
kind: Service
metadata:   {name: api, namespace: default}
spec:
  ports: [{port: 8080}]   # flow style stays
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec: {}  # trailing comment
"""

API_DOC = """\
# backend, keep this comment
apiVersion: v1
kind: Service
metadata:   {name: api, namespace: default}
spec:
  ports: [{port: 8080}]   # flow style stays
"""

DEPLOY_DOC = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec: {}  # trailing comment
"""


def test_upsert_creates_a_file_named_after_the_object(tmp_path):
    folder = tmp_path / "manifests"  # created on demand
    assert manifests.upsert(folder, svc("web", "shop")) == "created"
    path = folder / "service-shop-web.yaml"
    assert sorted(p.name for p in folder.iterdir()) == ["service-shop-web.yaml"]
    assert yaml.safe_load(path.read_text()) == svc("web", "shop")
    # key order is kept as written (sort_keys=False)
    assert path.read_text().splitlines()[:2] == ["apiVersion: v1", "kind: Service"]


def test_upsert_cluster_scoped_file_name(tmp_path):
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    assert manifests.upsert(tmp_path, ns, cluster_scoped=True) == "created"
    assert [p.name for p in tmp_path.iterdir()] == ["namespace-shop.yaml"]


def test_upsert_unchanged_then_configured(tmp_path):
    assert manifests.upsert(tmp_path, svc("web", "shop")) == "created"
    assert manifests.upsert(tmp_path, svc("web", "shop")) == "unchanged"
    assert manifests.upsert(tmp_path, svc("web", "shop", port=81)) == "configured"
    assert yaml.safe_load((tmp_path / "service-shop-web.yaml").read_text()) == svc("web", "shop", port=81)
    assert len(list(tmp_path.iterdir())) == 1


def test_missing_namespace_counts_as_default(tmp_path):
    (tmp_path / "app.yaml").write_text(MULTI)
    # "web" has no namespace in the file; a default/web object is the same object
    assert manifests.upsert(tmp_path, svc("web", "default", port=80)) == "configured"
    # "api" says default in the file; an object without namespace is the same object
    assert manifests.upsert(tmp_path, svc("api", None, port=8080)) == "configured"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.yaml"]
    # a same-named object in another namespace is another object
    assert manifests.upsert(tmp_path, svc("web", "shop")) == "created"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.yaml", "service-shop-web.yaml"]


def test_unchanged_when_the_file_says_the_same(tmp_path):
    (tmp_path / "app.yaml").write_text(MULTI)
    before = (tmp_path / "app.yaml").read_text()
    assert manifests.upsert(tmp_path, svc("web", None, port=80)) == "unchanged"
    assert (tmp_path / "app.yaml").read_text() == before


def test_configured_replaces_only_that_document(tmp_path):
    (tmp_path / "app.yaml").write_text(MULTI)
    assert manifests.upsert(tmp_path, svc("web", None, port=8000)) == "configured"
    text = (tmp_path / "app.yaml").read_text()
    new_doc = yaml.safe_dump(svc("web", None, port=8000), sort_keys=False)
    assert text == new_doc + "---\n" + API_DOC + "---\n" + DEPLOY_DOC
    assert [p.name for p in tmp_path.iterdir()] == ["app.yaml"]


def test_configured_middle_document_keeps_neighbours(tmp_path):
    (tmp_path / "app.yaml").write_text(MULTI)
    assert manifests.upsert(tmp_path, svc("api", "default", port=9090)) == "configured"
    first, middle, last = (tmp_path / "app.yaml").read_text().split("---\n")
    assert first == MULTI.split("---\n")[0]
    assert yaml.safe_load(middle) == svc("api", "default", port=9090)
    assert last == DEPLOY_DOC


def test_remove_deletes_only_that_document(tmp_path):
    (tmp_path / "app.yaml").write_text(MULTI)
    assert manifests.remove(tmp_path, "Service", "default", "web") is True
    assert (tmp_path / "app.yaml").read_text() == API_DOC + "---\n" + DEPLOY_DOC
    assert manifests.remove(tmp_path, "Service", "default", "web") is False
    assert manifests.remove(tmp_path, "Deployment", "default", "web") is True
    assert (tmp_path / "app.yaml").read_text() == API_DOC
    assert manifests.remove(tmp_path, "Service", "default", "api") is True
    assert list(tmp_path.iterdir()) == []


def test_remove_of_unknown_object_touches_nothing(tmp_path):
    (tmp_path / "app.yaml").write_text(MULTI)
    assert manifests.remove(tmp_path, "Service", "other", "web") is False
    assert manifests.remove(tmp_path, "Pod", "default", "web") is False
    assert (tmp_path / "app.yaml").read_text() == MULTI
    assert manifests.remove(tmp_path / "missing", "Service", "default", "web") is False


LIST = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
  spec: {ports: [{port: 80}]}
- apiVersion: v1
  kind: Service
  metadata: {name: b, namespace: default}
  spec: {ports: [{port: 80}]}
---
# keep me
kind: Namespace
apiVersion: v1
metadata: {name: other}
"""


def test_object_inside_a_list_is_replaced(tmp_path):
    (tmp_path / "list.yaml").write_text(LIST)
    assert manifests.upsert(tmp_path, svc("a", None, port=80)) == "unchanged"
    assert manifests.upsert(tmp_path, svc("a", None, port=8080)) == "configured"
    list_doc, ns_doc = (tmp_path / "list.yaml").read_text().split("---\n")
    assert yaml.safe_load(list_doc) == {"apiVersion": "v1", "kind": "List",
                                        "items": [svc("a", None, port=8080), svc("b", "default")]}
    assert ns_doc == LIST.split("---\n")[1]
    assert [p.name for p in tmp_path.iterdir()] == ["list.yaml"]


def test_object_inside_a_list_is_removed(tmp_path):
    (tmp_path / "list.yaml").write_text(LIST)
    assert manifests.remove(tmp_path, "Service", "default", "b") is True
    list_doc, ns_doc = (tmp_path / "list.yaml").read_text().split("---\n")
    assert yaml.safe_load(list_doc)["items"] == [svc("a")]
    assert ns_doc == LIST.split("---\n")[1]
    assert manifests.remove(tmp_path, "Namespace", "", "other", cluster_scoped=True) is True
    assert yaml.safe_load((tmp_path / "list.yaml").read_text())["items"] == [svc("a")]


def test_hidden_and_non_yaml_files_are_ignored(tmp_path):
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.yaml").write_text(yaml.safe_dump(svc("web", "default")))
    (tmp_path / "notes.txt").write_text(yaml.safe_dump(svc("web", "default")))
    assert manifests.upsert(tmp_path, svc("web", "default")) == "created"
    assert (tmp_path / "service-default-web.yaml").exists()
    assert manifests.remove(tmp_path, "Service", "default", "web") is True
    assert (tmp_path / ".hidden" / "x.yaml").exists()
    assert (tmp_path / "notes.txt").exists()


def test_objects_in_subfolders_are_found(tmp_path):
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "web.yml").write_text(yaml.safe_dump(svc("web", "default")))
    assert manifests.upsert(tmp_path, svc("web", "default", port=81)) == "configured"
    assert yaml.safe_load((tmp_path / "apps" / "web.yml").read_text()) == svc("web", "default", port=81)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["apps", "apps/web.yml"]


def test_comment_on_a_separator_line_is_kept(tmp_path):
    text = MULTI.replace("---\n# backend", "--- # api\n# backend")
    (tmp_path / "app.yaml").write_text(text)
    assert manifests.upsert(tmp_path, svc("web", None, port=8000)) == "configured"
    assert "--- # api\n" + API_DOC in (tmp_path / "app.yaml").read_text()


def test_created_file_never_overwrites_another_object(tmp_path):
    assert manifests.upsert(tmp_path, svc("web", "prod")) == "created"
    assert manifests.upsert(tmp_path, svc("prod-web")) == "created"
    # prod/web must still be in the folder
    assert manifests.upsert(tmp_path, svc("web", "prod")) == "unchanged"
