"""`kproxy`: kubectl-like commands for a lab whose Services are real iptables rules.

This package is the command line, one module per kind of work:

    common.py     what every command shares: fail/need_root, the lab, its daemon and store,
                  kinds and names as kubectl spells them, reading -f paths
    lifecycle.py  up, down, status, cleanup; controller and agent (a multi-node lab's processes)
    apply.py      apply, delete: admit, then edit the manifests folder; apply --wait
    get.py        get, describe: printers, -l selectors, -o yaml
    access.py     exec, logs, port-forward
    rules.py      rules (live, or --render offline)
    observe.py    trace, explain, graph, dashboard: the path a packet takes
    kubeconfig.py kubeconfig: the admin kubeconfig of the lab's API server

This file is the click group: it turns any unexpected exception into one `error:` line and
registers the commands (`python -m kproxy.cli` runs it through __main__.py).
"""
from __future__ import annotations

import os
import sys

import click

from kproxy.cli import access, apply, get, kubeconfig, lifecycle, observe, rules
from kproxy.cluster.units import units  # `kproxy units`, for the Vagrant lab's provisioning


def unexpected_error(e: BaseException, command: str | None) -> str:
    """One line for a failure no command foresaw: what failed and why, never a traceback."""
    from kproxy.store.manifests import WriteError
    if isinstance(e, WriteError):
        return f"error: {e}"
    what = f"kproxy {command}" if command else "kproxy"
    if isinstance(e, OSError) and e.filename:
        cause = f"{e.filename}: {e.strerror or e}"
    else:
        detail = " ".join(str(e).split()) or " ".join(str(e.__cause__ or e.__context__ or "").split())
        cause = detail or type(e).__name__
        if type(e).__module__.split(".")[0] in ("etcd3gw", "requests", "urllib3"):
            cause = f"the lab's etcd does not answer ({type(e).__name__}{': ' + detail if detail else ''})"
        elif type(e).__module__ != "builtins" or isinstance(e, (KeyError, AttributeError, TypeError)):
            cause = f"{type(e).__name__}: {cause}"
    if len(cause) > 300:  # never a whole file (or anything secret) in a message
        cause = cause[:300] + "..."
    return f"error: {what} failed: {cause}"


PASS_THROUGH: tuple = ()  # exceptions a test wants to see raised (a fake exec)


class _Main(click.Group):
    """Every command's unexpected exception ends as one `error:` line and exit code 1; the
    traceback only with KPROXY_DEBUG=1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                SystemExit, KeyboardInterrupt, *PASS_THROUGH):
            raise
        except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback
            command = ctx.invoked_subcommand
            # a daemon run in the foreground (systemd) writes its log to stderr: keep the whole story
            daemon = command in ("controller", "agent") or (command == "up" and "--foreground" in sys.argv)
            if os.environ.get("KPROXY_DEBUG") == "1" or daemon:
                import traceback
                traceback.print_exc()
            click.echo(unexpected_error(e, command), err=True)
            sys.exit(1)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """A real-network kube-proxy emulator: Kubernetes Services as real iptables rules."""


# `kproxy --help` lists them sorted by name; a command module never imports this one
for _command in (lifecycle.up, lifecycle.down, lifecycle.cleanup, apply.apply, apply.delete, get.get,
                 get.describe, access.exec_, access.port_forward, access.logs, rules.rules, lifecycle.status,
                 lifecycle.controller, lifecycle.agent, units, observe.trace, observe.explain, observe.graph,
                 observe.dashboard, kubeconfig.kubeconfig):
    main.add_command(_command)
