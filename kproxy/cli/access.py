"""Access to what runs in the lab: `exec` (a pod, a node, the sandbox client), `logs` and
`port-forward`, with TARGET spelled as kubectl takes it (NAME, pod/NAME, deploy/NAME, svc/NAME).

`exec` replaces this process (os.execvp) with the command inside the target's network
namespace; in a pod it also gets the pod's hostname, resolv.conf, hosts and user
(kproxy/node/inpod.py), as a command in its containers does.
"""
from __future__ import annotations

import os
import sys
import time

import click

from kproxy import tables
from kproxy.api import meta
from kproxy.cli.common import (daemon_pid, fail, list_objects, need_root, node_netns, not_found,
                               resolve_kind, running_lab, singular_name, state_dir_option)
from kproxy.node import access
from kproxy.node.access import pod_netns  # noqa: F401  (kproxy/cli/observe.py takes it from here)
from kproxy.store.base import Store, object_key


def detach_stdin() -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def _rank(pod: dict) -> tuple:
    """kubectl's pick among several pods: Ready and Running first, then the oldest."""
    st = pod.get("status", {})
    return (not tables.pod_ready(pod), st.get("phase") != "Running", pod["metadata"].get("creationTimestamp", ""),
            pod["metadata"]["name"])


def resolve_pod(store: Store, target: str, namespace: str, verb: str) -> tuple[dict, int]:
    """The pod that `exec`/`logs` TARGET means (NAME, pod/NAME, deploy/NAME, svc/NAME), and how
    many pods it chose from."""
    word, _, name = target.rpartition("/")
    kind = resolve_kind(word) if word else "Pod"
    if kind is None:
        fail(f'the server doesn\'t have a resource type "{word}"')
    if kind == "Pod":
        pod = store.get(object_key("Pod", namespace, name))
        if pod is None:
            click.echo(not_found("Pod", name), err=True)
            sys.exit(1)
        return pod, 1
    if kind not in ("Deployment", "Service", "ReplicaSet"):
        fail(f"cannot {verb} a {singular_name(kind)}: give a pod, deploy/NAME or svc/NAME")
    if kind == "ReplicaSet":
        owner = next((o for o in list_objects(store, "ReplicaSet", namespace) if o["metadata"]["name"] == name), None)
    else:
        owner = store.get(object_key(kind, namespace, name))
    if owner is None:
        click.echo(not_found(kind, name), err=True)
        sys.exit(1)
    selector = owner.get("spec", {}).get("selector") or {}
    pods = [p for p in list_objects(store, "Pod", namespace) if not p["metadata"].get("deletionTimestamp")
            and meta.selector_matches(selector, p["metadata"].get("labels") or {})]
    if not pods:
        fail(f'no pods found for {singular_name(kind)} "{name}" in namespace "{namespace}"')
    return sorted(pods, key=_rank)[0], len(pods)


def _container_of(pod: dict, container: str | None) -> str:
    names = [c["name"] for c in pod.get("spec", {}).get("containers", [])]
    if container is None:
        if len(names) > 1:
            click.echo(f'Defaulted container "{names[0]}" out of: {", ".join(names)}', err=True)
        return names[0] if names else ""
    if container not in names:
        fail(f"container {container} is not valid for pod {pod['metadata']['name']}")
    return container


@click.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-i", "--stdin", "stdin", is_flag=True, help="Pass stdin to the command.")
@click.option("-t", "--tty", "tty", is_flag=True, help="stdin is a terminal (with -i).")
@click.option("-c", "--container", default=None)
@click.option("-n", "--namespace", default="default")
@state_dir_option
def exec_(target, command, stdin, tty, container, namespace, state_dir):
    """Run a command in a pod (NAME, pod/NAME, deploy/NAME: its first pod, svc/NAME), the node
    (node/NAME) or the sandbox client (outside): `kproxy exec [-it] TARGET -- CMD...`."""
    need_root()
    cfg, store = running_lab(state_dir)
    argv = list(command)
    in_pod_argv = None
    if not argv:
        fail("you must specify at least one command for the container")
    word, _, name = target.rpartition("/")
    if target == "outside":
        if not cfg.sandbox:
            fail("`outside` exists only in a --sandbox lab")
        netns = cfg.naming.outside_netns
    elif word and resolve_kind(word) == "Node":
        if store.get(object_key("Node", None, name)) is None and name != cfg.node_name:
            fail(f'nodes "{name}" not found')
        netns = node_netns(cfg, store, name)
    else:
        pod, _ = resolve_pod(store, target, namespace, "exec into")
        pname = pod["metadata"]["name"]
        cname = _container_of(pod, container)
        phase = pod.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            fail(f"cannot exec into a container in a completed pod; current phase is {phase}")
        in_pod_argv = access.exec_argv(cfg, pod, cname, argv)
        if in_pod_argv is None:
            fail(f'unable to upgrade connection: container not found ("{cname}")')
    if stdin and tty and not sys.stdin.isatty():
        click.echo("Unable to use a TTY - input is not a terminal or the right kind of file", err=True)
    if not stdin:  # as kubectl: without -i the command gets no input
        detach_stdin()
    sys.stdout.flush()
    sys.stderr.flush()
    if in_pod_argv:  # as in its containers: the pod's network, hostname, resolv.conf, hosts and user
        os.execvp(in_pod_argv[0], in_pod_argv)
    if netns is None:
        os.execvp(argv[0], argv)
    os.execvp("ip", ["ip", "netns", "exec", netns, *argv])


@click.command(name="port-forward")
@click.argument("target")
@click.argument("ports", nargs=-1, required=True)
@click.option("--address", default="127.0.0.1", show_default=True, help="Local address to listen on.")
@click.option("-n", "--namespace", default="default")
@state_dir_option
def port_forward(target, ports, address, namespace, state_dir):
    """Forward local TCP ports into a pod: `port-forward svc/web 8080:80` (also pod/NAME, NAME,
    deploy/NAME), as kubectl does: a Service port maps to its pod's target port."""
    from kproxy import portforward
    need_root()
    cfg, store = running_lab(state_dir)
    pod, _ = resolve_pod(store, target, namespace, "forward to")
    word, _, name = target.rpartition("/")
    svc = store.get(object_key("Service", namespace, name)) if word and resolve_kind(word) == "Service" else None
    pod_ip = pod.get("status", {}).get("podIP")
    if not pod_ip or pod.get("status", {}).get("phase") != "Running":
        fail(f"unable to forward port because pod is not running. Current status={pod.get('status', {}).get('phase')}")
    listeners = []
    for spec in ports:
        try:
            local, remote = portforward.parse_ports(spec)
            port = portforward.target_port(pod, svc, remote)
            srv = portforward.listen(address, local)
        except (ValueError, OSError) as e:
            fail(str(e))
        click.echo(f"Forwarding from {address}:{srv.getsockname()[1]} -> {port}")
        listeners.append((srv, pod_ip, port))
    if cfg.sandbox:  # connections to the pod are made from the node, where pod IPs route
        from pyroute2 import netns as pr_netns
        pr_netns.setns(cfg.naming.node_netns, flags=0)
    portforward.serve(listeners, lambda msg: click.echo(msg, err=msg.startswith("E:")))


@click.command()
@click.argument("target")
@click.argument("container_arg", required=False, metavar="[CONTAINER]")
@click.option("-n", "--namespace", default="default")
@click.option("-c", "--container", default=None)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until Ctrl-C (or the pod ends).")
@click.option("--tail", default=-1, show_default=True, help="Lines of recent output to show; -1 for all.")
@state_dir_option
def logs(target, container_arg, namespace, container, follow, tail, state_dir):
    """Print a pod's container output: NAME, pod/NAME or deploy/NAME (its first pod)."""
    need_root()
    cfg, store = running_lab(state_dir)
    pod, count = resolve_pod(store, target, namespace, "get logs of")
    pname = pod["metadata"]["name"]
    if count > 1:
        click.echo(f"Found {count} pods, using pod/{pname}", err=True)
    cname = _container_of(pod, container or container_arg)
    path = access.log_path(cfg, pod, cname)
    if path is None:
        fail(f'container "{cname}" in pod "{pname}" is waiting to start: {access.waiting_reason(pod, cname)}')
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        f.seek(access.tail_offset(f, tail))
        while chunk := f.read(1 << 16):
            out.write(chunk)
        out.flush()
        if not follow:
            return
        uid = pod["metadata"].get("uid")
        try:
            while True:
                chunk = f.read()
                if chunk:
                    out.write(chunk)
                    out.flush()
                    continue
                now = store.get(object_key("Pod", namespace, pname))
                if now is None or now["metadata"].get("uid") != uid or not daemon_pid(cfg.state_dir):
                    return  # the pod (or the lab) is gone: so is its output
                time.sleep(0.2)
        except KeyboardInterrupt:
            out.flush()
            sys.exit(130)
