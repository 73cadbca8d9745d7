"""Make ``protobuf_v1_32.json.gz``: the protobuf layout of the served kinds, from upstream's Go types.

Run once by a developer::

    python -m kproxy.apiserver.protobuf_trim API_DIR APIMACHINERY_DIR

(checkouts of kubernetes/api and kubernetes/apimachinery at v0.32.9, the libraries of Kubernetes
v1.32, e.g. ``git -C api.git archive v0.32.9 | tar -x -C API_DIR``). kubectl 1.32's typed clients (`kubectl create deployment`,
`create namespace`, `create service ...`) send their bodies as protobuf and do not fall back to
JSON on 415, so the lab's server must read protobuf. The layout comes from the Go structs
themselves (``types.go``), not from ``generated.proto``, because only the Go source says what the
JSON form needs: a field's JSON name, ``omitempty``, whether it is a pointer (gogo-protobuf writes
every non-pointer scalar, even empty, and a pointer only when set) and whether it is ``inline``
(a nested message on the wire, merged into its parent in JSON, as ``Probe.ProbeHandler``).

Each field is ``[number, json_name, kind, type, flags]``: kind ``string``/``bytes``/``int``/
``bool``/``double``/``msg``/``map``; type: the message name (msg), ``[key_kind, value_kind,
value_type]`` (map), else ""; flags: ``r`` repeated, ``p`` pointer, ``o`` omitempty, ``i`` inline.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from kproxy.apiserver import datafile

DATA_FILE = Path(__file__).with_name("protobuf_v1_32.json.gz")

API_PACKAGES = [("core/v1", "core/v1"), ("apps/v1", "apps/v1"), ("discovery/v1", "discovery/v1"),
                ("coordination/v1", "coordination/v1"), ("events/v1", "events/v1"),
                ("autoscaling/v1", "autoscaling/v1"), ("policy/v1", "policy/v1")]
MACHINERY_PACKAGES = [("pkg/apis/meta/v1", "meta/v1")]
# Types with a JSON form of their own: decoded by kproxy.apiserver.protobuf by name.
SPECIAL = {"meta/v1.Time", "meta/v1.MicroTime", "meta/v1.Duration", "meta/v1.FieldsV1", "intstr.IntOrString",
           "resource.Quantity", "runtime.RawExtension", "meta/v1.TypeMeta"}
_IMPORT_KEYS = {"k8s.io/api/core/v1": "core/v1", "k8s.io/apimachinery/pkg/apis/meta/v1": "meta/v1",
                "k8s.io/apimachinery/pkg/util/intstr": "intstr", "k8s.io/apimachinery/pkg/api/resource": "resource",
                "k8s.io/apimachinery/pkg/types": "types", "k8s.io/apimachinery/pkg/runtime": "runtime",
                "k8s.io/api/autoscaling/v1": "autoscaling/v1"}
# apiVersion, kind -> message, for the envelope's TypeMeta
TOP_KINDS = {
    ("v1", "Pod"): "core/v1.Pod", ("v1", "Service"): "core/v1.Service", ("v1", "Namespace"): "core/v1.Namespace",
    ("v1", "Endpoints"): "core/v1.Endpoints", ("v1", "Event"): "core/v1.Event", ("v1", "Node"): "core/v1.Node",
    ("v1", "Binding"): "core/v1.Binding", ("apps/v1", "Deployment"): "apps/v1.Deployment",
    ("apps/v1", "ReplicaSet"): "apps/v1.ReplicaSet",
    ("discovery.k8s.io/v1", "EndpointSlice"): "discovery/v1.EndpointSlice",
    ("coordination.k8s.io/v1", "Lease"): "coordination/v1.Lease",
    ("events.k8s.io/v1", "Event"): "events/v1.Event", ("autoscaling/v1", "Scale"): "autoscaling/v1.Scale",
    ("policy/v1", "Eviction"): "policy/v1.Eviction", ("v1", "DeleteOptions"): "meta/v1.DeleteOptions",
    ("meta.k8s.io/v1", "DeleteOptions"): "meta/v1.DeleteOptions",
}

_STRUCT = re.compile(r"^type (\w+) struct \{\n(.*?)^\}", re.S | re.M)
_ALIAS = re.compile(r"^type (\w+) (?:= )?(\S+)$", re.M)
_FIELD = re.compile(r"^\s*(?:(\w+)\s+)?(\S+)\s+`(.*)`\s*$")
_TAG = re.compile(r'(\w+):"([^"]*)"')
_SCALARS = {"string": "string", "bool": "bool", "int32": "int", "int64": "int", "int": "int", "uint32": "int",
            "uint64": "int", "float64": "double", "float32": "double", "byte": "int"}


def _go_files(root: Path, pkg: str) -> list[Path]:
    return sorted(p for p in (root / pkg).glob("*.go") if not p.name.endswith("_test.go")
                  and not p.name.startswith("zz_") and p.name != "generated.pb.go")


def _imports(src: str) -> dict[str, str]:
    out = {}
    for alias, path in re.findall(r'^\s*(\w+)?\s*"(k8s\.io/[^"]+)"', src, re.M):
        key = _IMPORT_KEYS.get(path)
        if key:
            out[alias or path.rsplit("/", 1)[1]] = key
    return out


class Types:
    """The structs and named types of the packages read, and the wire table built from them."""

    def __init__(self):
        self.structs: dict[str, list] = {}
        self.aliases: dict[str, tuple[str, dict, str]] = {}

    def read(self, src: str, pkg: str) -> None:
        imports = _imports(src)
        for name, body in _STRUCT.findall(src):
            fields = []
            for line in body.splitlines():
                m = _FIELD.match(line)
                if m and "protobuf:" in m.group(3):
                    fields.append((m.group(2), dict(_TAG.findall(m.group(3))), imports, pkg))
            self.structs[f"{pkg}.{name}"] = fields
        for name, target in _ALIAS.findall(src):
            if target not in ("struct", "interface"):
                self.aliases[f"{pkg}.{name}"] = (target, imports, pkg)

    @staticmethod
    def qualify(go_type: str, imports: dict, pkg: str) -> str:
        if "." in go_type:
            alias, name = go_type.split(".", 1)
            return f"{imports.get(alias, alias)}.{name}"
        return go_type if go_type in _SCALARS else f"{pkg}.{go_type}"

    def kind_of(self, go_type: str, imports: dict, pkg: str, depth: int = 0) -> tuple[str, object]:
        if go_type in _SCALARS:
            return _SCALARS[go_type], ""
        if go_type.startswith("map["):
            key, value = re.match(r"map\[([^\]]+)\](.+)", go_type).groups()
            kk, _ = self.kind_of(key, imports, pkg, depth + 1)
            vk, vt = self.kind_of(value.lstrip("*"), imports, pkg, depth + 1)
            return "map", [kk, vk, vt]
        q = self.qualify(go_type, imports, pkg)
        if q in SPECIAL or q in self.structs:
            return "msg", q
        if q.startswith("types."):
            return "string", ""
        if q in self.aliases and depth < 5:
            target, imps, p = self.aliases[q]
            return self.kind_of(target, imps, p, depth + 1)
        raise KeyError(f"unknown Go type {go_type} ({q})")

    def table(self, roots: list[str]) -> dict[str, list]:
        out: dict[str, list] = {}
        todo = list(roots)
        while todo:
            name = todo.pop()
            if name in out or name in SPECIAL:
                continue
            fields = []
            for go_type, tags, imports, pkg in self.structs[name]:
                wire, number, *rest = tags["protobuf"].split(",")
                opts = dict(o.split("=", 1) for o in rest if "=" in o)
                json_name, _, json_opts = tags.get("json", "").partition(",")
                flags, t = "", go_type
                if t.startswith("*"):
                    flags, t = flags + "p", t[1:]
                if t == "[]byte":
                    kind, typ = "bytes", ""
                else:
                    if t.startswith("[]"):
                        flags, t = flags + "r", t[2:].lstrip("*")
                    kind, typ = self.kind_of(t, imports, pkg)
                flags += "o" if "omitempty" in json_opts else ""
                flags += "i" if "inline" in json_opts else ""
                fields.append([int(number), json_name or opts.get("name", ""), kind, typ, flags])
                if kind == "msg":
                    todo.append(typ)
                elif kind == "map" and typ[1] == "msg":
                    todo.append(typ[2])
            out[name] = sorted(fields)
        return out


def build(api_dir: str, machinery_dir: str, tag: str = "v0.32.9") -> dict:
    types = Types()
    for root, packages in ((api_dir, API_PACKAGES), (machinery_dir, MACHINERY_PACKAGES)):
        for path, key in packages:
            for f in _go_files(Path(root), path):
                types.read(f.read_text(), key)
    return {"source": f"k8s.io/api and k8s.io/apimachinery {tag} types.go (Kubernetes v1.32)",
            "kinds": {f"{gv} {kind}": msg for (gv, kind), msg in TOP_KINDS.items()},
            "messages": dict(sorted(types.table(sorted(set(TOP_KINDS.values()))).items()))}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    data = build(argv[0], argv[1])
    size = datafile.write(DATA_FILE, data)
    print(f"{DATA_FILE}: {len(data['messages'])} messages, {size} bytes JSON, "
          f"{DATA_FILE.stat().st_size} gzipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
