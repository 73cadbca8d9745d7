"""`get` and `describe`: the kubectl verbs that read the lab's store and print it as kubectl
does (tables from kproxy/tables.py, `describe` text from kproxy/describe.py, `-o yaml` with
go-yaml's quoting), with kubectl's `-l` selector syntax.
"""
from __future__ import annotations

import json
import re
import sys

import click
import yaml

from kproxy import tables
from kproxy.api import meta
from kproxy.cli.common import (CLUSTER_SCOPED, fail, kubectl_name, list_objects, need_root, not_found,
                               parse_targets, resolve_kinds, resource_name, running_lab, singular_name,
                               state_dir_option)


# -- label selectors (kubectl -l) ---------------------------------------------------------
class SelectorError(ValueError):
    pass


_KEY = r"[A-Za-z0-9](?:[A-Za-z0-9._/-]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)?"
_REQ = re.compile(rf"""^\s*(?:
      !\s*(?P<notkey>{_KEY})
    | (?P<setkey>{_KEY})\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\)
    | (?P<key>{_KEY})\s*(?:(?P<op>==|=|!=|>|<)\s*(?P<value>{_VALUE}))?
)\s*$""", re.X)


def _split_requirements(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def parse_selector(text: str | None) -> list[tuple[str, str, tuple[str, ...]]]:
    """kubectl's label selector syntax as (key, op, values) requirements: `k=v`, `k==v`, `k!=v`,
    `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (does not exist), `k>1`, `k<1`."""
    if text is None or not text.strip():
        return []
    reqs = []
    for part in _split_requirements(text):
        m = _REQ.match(part)
        if not m or not part.strip():
            raise SelectorError(f'unable to parse requirement: "{part.strip()}" in selector "{text}"')
        if m["notkey"]:
            reqs.append((m["notkey"], "!", ()))
        elif m["setkey"]:
            values = tuple(v.strip() for v in m["values"].split(",") if v.strip())
            if not values:
                raise SelectorError(f'unable to parse requirement: "{part.strip()}": for \'in\', \'notin\' '
                                    "operators, values set can't be empty")
            reqs.append((m["setkey"], m["setop"], values))
        elif m["op"]:
            op = "=" if m["op"] == "==" else m["op"]
            if op in "<>" and not re.fullmatch(r"-?\d+", m["value"] or ""):
                raise SelectorError(f'unable to parse requirement: "{part.strip()}": for \'Gt\', \'Lt\' '
                                    "operators, the value must be an integer")
            reqs.append((m["key"], op, (m["value"] or "",)))
        else:
            reqs.append((m["key"], "exists", ()))
    return reqs


def requirements_match(reqs: list[tuple[str, str, tuple[str, ...]]], labels: dict | None) -> bool:
    """Whether labels satisfy `-l` requirements from parse_selector (kubectl's selector syntax,
    with `!=`, `notin`, `>`...); a LabelSelector object is matched by meta.selector_matches."""
    labels = labels or {}
    for key, op, values in reqs:
        have = key in labels
        value = labels.get(key)
        ok = {"=": lambda: have and value == values[0],
              "!=": lambda: not have or value != values[0],
              "in": lambda: have and value in values,
              "notin": lambda: not have or value not in values,
              "exists": lambda: have,
              "!": lambda: not have,
              ">": lambda: have and re.fullmatch(r"-?\d+", value or "") is not None and int(value) > int(values[0]),
              "<": lambda: have and re.fullmatch(r"-?\d+", value or "") is not None and int(value) < int(values[0]),
              }[op]()
        if not ok:
            return False
    return True


# -- YAML as kubectl writes it ------------------------------------------------------------
class KubeDumper(yaml.SafeDumper):
    """go-yaml's choices, which `kubectl -o yaml` shows: a string that would read back as another
    type is double-quoted (`status: "True"`, `resourceVersion: ""`, `name: "80"`), one that
    only needs quoting for its characters single-quoted, and multi-line strings as blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None
    if "\n" in value:
        style = "|"
    elif value == "" or dumper.resolve(yaml.ScalarNode, value, (True, False)) != "tag:yaml.org,2002:str":
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


KubeDumper.add_representer(str, _represent_str)


def to_yaml(doc) -> str:
    return yaml.dump(doc, Dumper=KubeDumper, sort_keys=True, allow_unicode=True, default_flow_style=False,
                     width=1 << 30)


# -- get ----------------------------------------------------------------------------------
@click.command()
@click.argument("args", nargs=-1)
@click.option("-n", "--namespace", default="default")
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-o", "--output", type=click.Choice(["wide", "json", "yaml", "name"]), default=None)
@click.option("-l", "--selector", default=None, help="Label selector: k=v, k!=v, k, !k, k in (a,b), comma-separated.")
@click.option("--show-labels", is_flag=True, help="Add a LABELS column.")
@state_dir_option
def get(args, namespace, all_namespaces, output, selector, show_labels, state_dir):
    """Show objects like kubectl: pods (po), deployments (deploy), replicasets (rs), services (svc),
    endpoints (ep), endpointslices, nodes (no), namespaces (ns), events (ev), leases (node
    heartbeats, multi-node), `all`; several
    kinds as `pods,svc`; names as `get pod NAME` or `get pod/NAME`."""
    need_root()
    cfg, store = running_lab(state_dir)
    if not args:
        fail('You must specify the type of resource to get. Use "kproxy get --help" for the supported types.')
    try:
        reqs = parse_selector(selector)
    except SelectorError as e:
        fail(str(e))
    if any("/" in a for a in args):
        named = parse_targets(args, namespace, allow_all=False)
        kinds = list(dict.fromkeys(k for k, _, _ in named))
        names = {k: [n for kk, _, n in named if kk == k] for k in kinds}
        multi = len(kinds) > 1
    else:
        kinds = resolve_kinds(args[0])
        names = {k: list(args[1:]) for k in kinds}
        multi = len(kinds) > 1 or "all" in args[0].split(",")
    named = any(names.values())
    if named and (selector or "all" in args[0].split(",")):
        fail("selectors and the all flag cannot be used when passing resource/name arguments")
    if named and all_namespaces:
        fail("a resource cannot be retrieved by name across all namespaces")
    ns = None if all_namespaces else namespace
    sections: list[tuple[str, list[dict]]] = []
    missing: list[str] = []
    for kind in kinds:
        items = [o for o in list_objects(store, kind, ns) if requirements_match(reqs, o["metadata"].get("labels"))]
        if names[kind]:
            by_name = {o["metadata"]["name"]: o for o in items}
            items = [by_name[n] for n in dict.fromkeys(names[kind]) if n in by_name]
            missing += [not_found(kind, n) for n in dict.fromkeys(names[kind]) if n not in by_name]
        for o in items:
            o.setdefault("kind", kind)
        sections.append((kind, items))
    everything = [o for _, items in sections for o in items]
    if output in ("json", "yaml"):
        single = len(everything) == 1 and len(kinds) == 1 and len(names[kinds[0]]) == 1
        if everything or not missing:
            doc = everything[0] if single else {"apiVersion": "v1", "items": everything, "kind": "List",
                                                 "metadata": {"resourceVersion": ""}}
            click.echo(json.dumps(doc, indent=4) if output == "json" else to_yaml(doc), nl=output == "json")
    elif output == "name":
        for o in everything:
            click.echo(kubectl_name(o))
    elif everything:
        texts = []
        for kind, items in sections:
            if items:
                scoped = kind in CLUSTER_SCOPED
                texts.append(tables.render(kind, items, wide=output == "wide",
                                           with_namespace=all_namespaces and not scoped, show_labels=show_labels,
                                           name_prefix=f"{singular_name(kind)}/" if multi else ""))
        click.echo("\n\n".join(texts))
    elif not missing:
        scoped = all(k in CLUSTER_SCOPED for k in kinds)
        click.echo("No resources found" + (f" in {namespace} namespace." if ns and not scoped else "."), err=True)
    for line in missing:
        click.echo(line, err=True)
    sys.exit(1 if missing else 0)


# -- describe -----------------------------------------------------------------------------
@click.command()
@click.argument("args", nargs=-1, required=True)
@click.option("-n", "--namespace", default="default")
@click.option("-A", "--all-namespaces", is_flag=True)
@state_dir_option
def describe(args, namespace, all_namespaces, state_dir):
    """Show an object in detail, with its events: pods, services, deployments, nodes, namespaces.

    `describe KIND [NAME...]` or `describe KIND/NAME`; without a name, every object of the kind."""
    from kproxy import describe as d
    need_root()
    cfg, store = running_lab(state_dir)
    ns = None if all_namespaces else namespace
    if any("/" in a for a in args):
        wanted = parse_targets(args, namespace)
    else:
        kinds = resolve_kinds(args[0], allow_all=False)
        wanted = [(k, namespace, n) for k in kinds for n in args[1:]] or [(k, None, None) for k in kinds]
    supported = ("Pod", "Service", "Deployment", "Node", "Namespace")
    for kind, _, _ in wanted:
        if kind not in supported:
            fail(f"kproxy describe supports pods, services, deployments, nodes and namespaces, not {resource_name(kind)}"
                 f" (try: kproxy get {resource_name(kind).split('.')[0]} -o yaml)")
    events = [e for _, e in store.list("/registry/events/")]
    texts, rc = [], 0
    for kind, _, name in wanted:
        objs = list_objects(store, kind, ns)
        if name is not None:
            objs = [o for o in objs if o["metadata"]["name"] == name]
            if not objs:
                click.echo(not_found(kind, name), err=True)
                rc = 1
                continue
        for o in sorted(objs, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])):
            o_ns = o["metadata"].get("namespace", "")
            evs = d.events_for(events, kind, "" if kind in CLUSTER_SCOPED else o_ns, o["metadata"]["name"])
            if kind == "Pod":
                texts.append(d.describe_pod(o, evs))
            elif kind == "Service":
                slices = [s for s in list_objects(store, "EndpointSlice", o_ns)
                          if (s["metadata"].get("labels") or {}).get(meta.LABEL_SERVICE_NAME) == o["metadata"]["name"]]
                texts.append(d.describe_service(o, slices, evs))
            elif kind == "Deployment":
                rss = tables.replica_sets([o], list_objects(store, "Pod", o_ns))
                texts.append(d.describe_deployment(o, rss, evs))
            elif kind == "Node":
                pods = [p for p in list_objects(store, "Pod", None)
                        if p.get("spec", {}).get("nodeName") == o["metadata"]["name"]]
                texts.append(d.describe_node(o, pods, evs))
            else:
                texts.append(d.describe_namespace(o))
    if texts:
        click.echo("\n\n".join(t.rstrip("\n") for t in texts))
    elif rc == 0:
        click.echo("No resources found" + (f" in {namespace} namespace." if ns else "."), err=True)
    sys.exit(rc)

