"""`kproxy kubeconfig [--path]`: the lab's admin kubeconfig, so that

    export KUBECONFIG=$(kproxy kubeconfig --path)

is all it takes to drive the lab with the real kubectl. The daemon's API server writes the file
(STATE/kubeconfig, 0600: it holds the admin's client key) when it starts and removes it when it
stops, so an existing file means an API server is (or was just) answering at its address.
"""
from __future__ import annotations

import click

from kproxy.cli.common import daemon_pid, fail, lab, need_root, not_running, state_dir_option
from kproxy.config import state_dir_from_env


@click.command()
@click.option("--path", "path_only", is_flag=True, help="Print the file's path instead of its contents.")
@state_dir_option
def kubeconfig(path_only, state_dir):
    """The admin kubeconfig of the lab's API server (export KUBECONFIG=$(kproxy kubeconfig --path))."""
    from kproxy.apiserver.server import kubeconfig_path
    need_root()
    state_dir = state_dir_from_env(state_dir)
    cfg = lab(state_dir)
    path = kubeconfig_path(state_dir)
    if daemon_pid(state_dir) is None:
        fail(not_running(state_dir))
    if cfg.extra.get("role") == "agent":
        fail("this node runs only an agent: the API server runs with the controller (its state dir)")
    if not path.exists():
        fail(f"the lab's API server has not written {path} (yet): `kproxy status` shows whether it failed")
    click.echo(str(path) if path_only else path.read_text(), nl=path_only)
