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


# -- issue 12: hostile input (#2, #3, #5, #13) ---------------------------------------------------

import os  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from kproxy.api.manifest import MAX_FILE_BYTES, manifest_files, read_file  # noqa: E402

HEAD = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n"


def only_error(text, source="x.yaml"):
    [doc] = read_text(text, source)
    assert doc.error is not None, doc.obj
    return doc.error


@pytest.mark.parametrize("text, words", [
    (HEAD + "spec: {a: !!binary aGk=}\n", "line 4: spec.a: tag !!binary is not allowed"),
    (HEAD + "spec: !!set {a, b}\n", "line 4: spec: tag !!set is not allowed"),
    (HEAD + "spec: !!omap [{a: 1}]\n", "spec: tag !!omap is not allowed"),
    (HEAD + "spec: !!python/object/apply:os.system [true]\n", "tag !!python/object/apply:os.system is not allowed"),
    (HEAD + "spec: !custom {a: 1}\n", "tag !custom is not allowed"),
    (HEAD + "spec:\n  ~: 1\n", "line 5: spec: map keys must be strings, found the null key null"),
    (HEAD + "spec:\n  12345: 1\n", "spec: map keys must be strings, found the number key 12345"),
    (HEAD + "spec:\n  yes: 1\n", "spec: map keys must be strings, found the boolean key true"),
    (HEAD + "spec: &s {type: ClusterIP, loop: *s}\n", "spec.loop: recursive alias *s"),
    (HEAD + "spec: {port: " + "9" * 5000 + "}\n", "spec.port: 99999"),
    (HEAD + "spec: {port: 9223372036854775808}\n", "integers must fit in 64 bits"),
    (HEAD + "spec: {port: .inf}\n", "spec.port: .inf is not a finite number"),
])
def test_only_json_compatible_yaml_is_admitted(text, words):
    error = only_error(text)
    assert error.startswith("error parsing x.yaml (document 1): error converting YAML to JSON: yaml: ")
    assert words in error


def test_billion_laughs_is_refused_in_milliseconds():
    text = HEAD + 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join(["*" + chr(97 + i)] * 9) + "]\n" for i in range(8))
    started = time.monotonic()
    assert "document contains excessive aliasing" in only_error(text)
    assert time.monotonic() - started < 0.5


def test_merge_keys_are_accepted_as_kubectl_accepts_them():
    text = ("apiVersion: v1\nkind: Service\nmetadata: {name: a, labels: &l {app: a, tier: web}}\n"
            "spec:\n  selector:\n    <<: *l\n    tier: front\n  ports:\n  - &p {name: a, port: 80}\n"
            "  - <<: *p\n    name: b\n")
    [doc] = read_text(text, "m.yaml")
    assert doc.ok, doc.error
    assert doc.obj["spec"]["selector"] == {"app": "a", "tier": "front"}
    assert doc.obj["spec"]["ports"] == [{"name": "a", "port": 80}, {"name": "b", "port": 80}]
    doc.obj["spec"]["ports"][1]["port"] = 81  # aliases are copies: a JSON document is a tree
    assert doc.obj["spec"]["ports"][0]["port"] == 80


@pytest.mark.parametrize("depth, ok", [(97, True), (99, False), (100_000, False)])
def test_nesting_is_bounded_in_yaml_and_json(depth, ok):
    for source, text in (("d.yaml", HEAD + "spec: {x: " + "[" * depth + "]" * depth + "}\n"),
                         ("d.json", '{"apiVersion": "v1", "kind": "Service", "spec": {"x": '
                          + "[" * depth + "]" * depth + "}}")):
        [doc] = read_text(text, source)
        assert doc.ok is ok, (source, doc.error)
        if not ok:
            assert "nesting deeper than 100 levels is not accepted" in doc.error


def test_json_duplicate_keys_huge_numbers_and_nan_are_refused():
    assert only_error('{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "name": "b"}}', "d.json") == (
        'error parsing d.json (document 1): metadata: key "name" already set in map')
    assert "does not fit in 64 bits" in only_error('{"apiVersion": "v1", "kind": "S", "x": ' + "1" * 5000 + "}", "n.json")
    assert "NaN is not a JSON number" in only_error('{"apiVersion": "v1", "kind": "S", "x": NaN}', "n.json")
    assert "x: is not a finite number" in only_error('{"apiVersion": "v1", "kind": "S", "x": 1e999}', "n.json")


@pytest.mark.parametrize("name, go_type", [("12345", "number"), ("yes", "bool"), ("[a]", "array")])
def test_a_name_must_be_a_string_in_kubectls_words(name, go_type):
    assert only_error(f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n") == (
        f"error parsing x.yaml (document 1): json: cannot unmarshal {go_type} into Go struct field "
        "ObjectMeta.metadata.name of type string")


def test_metadata_must_decode_as_object_meta():
    assert only_error("apiVersion: v1\nkind: Service\nmetadata: [a]\n").endswith(
        "json: cannot unmarshal array into Go struct field Service.metadata of type v1.ObjectMeta")
    assert "cannot unmarshal bool into Go struct field ObjectMeta.metadata.labels of type string" in only_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a, labels: {app: true}}\n")


def test_errors_quote_an_excerpt_never_the_file():
    secret = "s3cr3t-" + "x" * 500
    error = only_error(f"password: {secret}\nmore: stuff\n")
    assert "Object 'Kind' is missing" in error and len(error) < 200 and secret not in error


def test_symlinks_are_refused_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.yaml").write_text("apiVersion: v1\nkind: Secret\ntoken: hunter2\n")
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "svc.yaml").write_text(SERVICE)
    (folder / "link.yaml").symlink_to(outside / "secret.yaml")
    (folder / "zero.yaml").symlink_to("/dev/zero")
    (folder / "inside.yaml").symlink_to("svc.yaml")
    (folder / "dir.yaml").symlink_to(outside)
    docs = read_path(folder)
    refused = {os.path.basename(d.source): d.error for d in docs if d.error}
    assert set(refused) == {"link.yaml", "zero.yaml", "inside.yaml", "dir.yaml"}
    assert all("is a symbolic link: kproxy reads only regular files" in e for e in refused.values())
    assert not any("hunter2" in e for e in refused.values())
    assert kinds(docs) == ["Service"]


def test_a_fifo_a_socket_and_a_directory_named_yaml_never_block_nor_crash(tmp_path):
    os.mkfifo(tmp_path / "fifo.yaml")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.yaml"))
    sock.close()
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "dir.yaml" / "svc.yaml").write_text(SERVICE)
    result = []
    reader = threading.Thread(target=lambda: result.append(read_path(tmp_path)), daemon=True)
    reader.start()
    reader.join(5)
    assert result, "reading a folder with a FIFO blocked"
    errors = sorted(d.error.split(": ", 1)[1] for d in result[0] if d.error)
    assert errors == ["is a FIFO, not a regular file: kproxy reads only regular files",
                      "is a socket, not a regular file: kproxy reads only regular files"]
    assert kinds(result[0]) == ["Service"]
    assert "is a directory" in read_file(tmp_path / "dir.yaml")[0].error


def test_non_utf8_and_oversized_files_are_named_errors(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"apiVersion: v1\nkind: Service\nmetadata: {name: caf\xe9}\n")
    assert read_file(latin)[0].error == f"error reading {latin}: invalid UTF-8 at byte 49: manifests must be UTF-8 text"
    big = tmp_path / "big.yaml"
    big.write_bytes(SERVICE.encode() + b"#" * MAX_FILE_BYTES)
    assert "the file is larger than 3145728 bytes (3 MiB)" in read_file(big)[0].error
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(yaml.safe_load(SERVICE)).encode())
    assert kinds(read_file(bom)) == ["Service"]


def test_symlinked_folders_are_listed_to_be_reported(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "linked.yaml").symlink_to(tmp_path / "real")
    assert [p.name for p in manifest_files(tmp_path)] == ["linked.yaml"]


def test_the_folder_signature_follows_the_readers_listing(tmp_path):
    """The poller's signature lists what manifest_files lists (one listing of the folder), so a
    symlinked folder the reader reports changes it too; hidden files and other suffixes do not."""
    from kproxy.api.manifest import folder_signature
    assert folder_signature(tmp_path / "absent") == ()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "svc.yaml").write_text(SERVICE)
    (tmp_path / ".hidden.yaml").write_text(SERVICE)
    (tmp_path / "notes.txt").write_text("x")
    before = folder_signature(tmp_path)
    assert [(d, n) for d, n, _, _ in before] == [(str(p.parent), p.name) for p in manifest_files(tmp_path)]
    assert [n for _, n, _, _ in before] == ["svc.yaml"]
    (tmp_path / "real").mkdir()
    (tmp_path / "linked.yaml").symlink_to(tmp_path / "real")
    after = folder_signature(tmp_path)
    assert after != before and [n for _, n, _, _ in after] == ["linked.yaml", "svc.yaml"]
    (tmp_path / "sub" / "svc.yaml").write_text(SERVICE + "# more\n")
    assert folder_signature(tmp_path)[1][2] == len(SERVICE) + len("# more\n")
