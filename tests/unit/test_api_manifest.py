"""Reading manifests: multi-document YAML, Lists, folders and bad input."""

import json
import textwrap

import yaml

from kproxy.api.manifest import Document, dump_documents, read_path, read_text

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: 80
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def kinds(docs):
    return [d.obj["kind"] for d in docs if d.obj]


def test_multi_document_file_skips_empty_documents(tmp_path):
    path = write(tmp_path, "web.yaml", "---\n" + SERVICE + "---\n# only a comment\n---\n" + DEPLOYMENT)
    docs = read_path(path)
    assert [(d.source, d.index, d.error) for d in docs] == [(str(path), 0, None), (str(path), 1, None)]
    assert kinds(docs) == ["Service", "Deployment"]
    assert docs[0].obj["spec"]["ports"] == [{"port": 80}]


def test_list_kinds_are_expanded_into_their_items():
    text = textwrap.dedent("""\
        apiVersion: v1
        kind: List
        items:
        - {apiVersion: v1, kind: Service, metadata: {name: a}}
        - {apiVersion: v1, kind: Pod, metadata: {name: b}}
        ---
        apiVersion: v1
        kind: ServiceList
        items:
        - metadata: {name: c}
        """)
    docs = read_text(text, "list.yaml")
    assert kinds(docs) == ["Service", "Pod", "Service"]
    assert [(d.index, d.item) for d in docs] == [(0, 0), (0, 1), (1, 0)]
    assert docs[2].obj == {"metadata": {"name": "c"}, "kind": "Service", "apiVersion": "v1"}


def test_folder_is_read_recursively_sorted_skipping_hidden_and_other_files(tmp_path):
    write(tmp_path, "b.yml", DEPLOYMENT)
    write(tmp_path, "a/z.yaml", SERVICE)
    write(tmp_path, "c.json", json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}))
    write(tmp_path, ".hidden.yaml", SERVICE)
    write(tmp_path, ".git/config.yaml", SERVICE)
    write(tmp_path, "notes.txt", "hello")
    docs = read_path(tmp_path)
    assert [d.source.removeprefix(str(tmp_path) + "/") for d in docs] == ["a/z.yaml", "b.yml", "c.json"]
    assert kinds(docs) == ["Service", "Deployment", "Namespace"]


def test_a_bad_document_does_not_hide_the_good_ones(tmp_path):
    text = SERVICE + "---\napiVersion: v1\nmetadata:\n  name: nokind\n---\n" + DEPLOYMENT
    docs = read_path(write(tmp_path, "web.yaml", text))
    assert [d.ok for d in docs] == [True, False, True]
    assert docs[1].error == (
        f"error parsing {tmp_path}/web.yaml (document 2): "
        """Object 'Kind' is missing in '{"apiVersion":"v1","metadata":{"name":"nokind"}}'"""
    )
    assert kinds(docs) == ["Service", "Deployment"]


def test_missing_api_version_and_non_mapping_documents():
    docs = read_text("kind: Service\nmetadata: {name: a}\n---\n- just\n- a list\n", "x.yaml")
    assert docs[0].error == (
        "error parsing x.yaml (document 1): "
        """Object 'apiVersion' is missing in '{"kind":"Service","metadata":{"name":"a"}}'"""
    )
    assert docs[1].error == "error parsing x.yaml (document 2): expected an object with apiVersion and kind, got a list"


def test_yaml_syntax_error_names_file_document_and_line():
    text = SERVICE + "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: a: b\n---\n" + DEPLOYMENT
    docs = read_text(text, "web.yaml")
    assert [d.ok for d in docs] == [True, False, True]
    assert docs[1].index == 1
    assert docs[1].error == (
        "error parsing web.yaml (document 2): error converting YAML to JSON: "
        "yaml: line 12: mapping values are not allowed in this context"
    )


def test_duplicate_keys_are_errors_and_timestamps_stay_strings():
    docs = read_text("apiVersion: v1\nkind: Pod\nkind: Service\n", "d.yaml")
    assert docs[0].error == (
        "error parsing d.yaml (document 1): error converting YAML to JSON: "
        'yaml: line 3: key "kind" already set in map'
    )
    docs = read_text("apiVersion: v1\nkind: Pod\nmetadata: {name: a, annotations: {at: 2024-01-02}}\n", "t.yaml")
    assert docs[0].obj["metadata"]["annotations"]["at"] == "2024-01-02"


def test_bad_json_and_missing_path(tmp_path):
    docs = read_path(write(tmp_path, "bad.json", '{"apiVersion": "v1", "kind": "Pod",}'))
    assert len(docs) == 1 and docs[0].error.startswith(f"error parsing {tmp_path}/bad.json (document 1): ")
    missing = tmp_path / "nope.yaml"
    assert read_path(missing) == [Document(str(missing), 0, error=f'the path "{missing}" does not exist')]


def test_dump_documents_round_trips():
    objs = [yaml.safe_load(SERVICE), yaml.safe_load(DEPLOYMENT)]
    text = dump_documents(objs)
    assert text.count("---\n") == 1
    assert [d.obj for d in read_text(text, "out.yaml")] == objs
    assert text.startswith("apiVersion: v1\nkind: Service\n")
