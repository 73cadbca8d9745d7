"""scripts/vagrant-test: the Vagrant lab booted for real, checked, and torn down (issue 17).

    scripts/vagrant-test [--nodes 2] [--driver qemu|kvm] [--deadline 19:55] [--remove-box] ...
    scripts/vagrant-test --teardown        only remove what an earlier (interrupted) run left

Phases (each with a time limit, printed with its duration): install (scripts/setup --vagrant's
Debian packages), box (a Debian 12 box made with debootstrap from this host's mirror, cached in the
work folder), host-up (libvirtd, two isolated libvirt networks, apt-cacher-ng and a wheelhouse for
the VMs), lab-up (`vagrant up` of vagrant/Vagrantfile with its offline classroom settings), checks
(checks.py), teardown (always: on success, failure, Ctrl-C or SIGTERM; `--keep` skips it after a
success only). Exit status 0 only when every check passed and teardown left nothing behind.
"""
from __future__ import annotations

import argparse
import calendar
import json
import os
import signal
import sys
import time
from pathlib import Path

from kproxy.vagrantlab import checks, host
from kproxy.vagrantlab.run import CheckFailed, Interrupted, Runner, die

BUDGETS = {"install": 900, "box": 900, "host-up": 600, "lab-up": 2400, "checks": 1500, "teardown": 600}


def parse_deadline(text: str | None) -> float | None:
    """HH:MM (UTC, today; tomorrow if already past) or seconds from now (+600)."""
    if not text:
        return None
    if text.startswith("+"):
        return time.time() + float(text[1:])
    hh, mm = (int(x) for x in text.split(":"))
    now = time.gmtime()
    t = calendar.timegm((now.tm_year, now.tm_mon, now.tm_mday, hh, mm, 0, 0, 0, 0))
    return t if t > time.time() else t + 86400


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/vagrant-test", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.environ.get("KPROXY_VAGRANT_WORK", "/var/tmp/kproxy-vagrant-test"),
                   help="work folder: the box cache, wheelhouse, checkout copy, log (default %(default)s)")
    p.add_argument("--nodes", type=int, default=2, help="VMs (default %(default)s)")
    p.add_argument("--cpus", type=int, default=1, help="vCPUs per VM (default %(default)s)")
    p.add_argument("--memory", type=int, default=1024, help="MiB per VM (default %(default)s)")
    p.add_argument("--driver", choices=["qemu", "kvm"], default=os.environ.get("KPROXY_LIBVIRT_DRIVER", "qemu"),
                   help="libvirt driver: qemu (software, works everywhere) or kvm (default %(default)s)")
    p.add_argument("--deadline", help="HH:MM UTC (or +SECONDS): no phase starts or runs past it; teardown then")
    p.add_argument("--rebuild-box", action="store_true", help="build the box even if the cached one exists")
    p.add_argument("--remove-box", action="store_true", help="teardown also removes the box from vagrant and libvirt")
    p.add_argument("--keep", action="store_true", help="leave the lab up after a success (then: --teardown)")
    p.add_argument("--teardown", action="store_true", help="only tear down what an earlier run left")
    p.add_argument("--until", choices=["install", "box", "host-up", "lab-up"],
                   help="stop after this phase (then teardown): e.g. host-up tries libvirt and the networks without a VM")
    p.add_argument("-v", "--verbose", action="store_true", help="print every command, not only to the log")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if os.geteuid() != 0:
        die("run as root (libvirt, networks, the box's loop device)")
    if not 1 <= args.nodes <= 9:
        die("--nodes must be 1..9")
    work = Path(args.work).resolve()
    r = Runner(work, deadline=parse_deadline(args.deadline), verbose=args.verbose)
    lab = host.Lab(work=work, nodes=args.nodes, cpus=args.cpus, memory=args.memory, driver=args.driver)
    r.say(f"scripts/vagrant-test: {lab.nodes} nodes, driver {lab.driver}, work folder {work} (log: {r.log_path})")
    rc = 1
    try:
        if args.teardown:
            rc = 0
            return rc
        if host.load_state(lab):
            with r.phase("cleanup", BUDGETS["teardown"], past_deadline=True):
                left = host.teardown(r, lab, remove_box=False)
                if left:
                    raise CheckFailed(f"an earlier run's leftovers remain: {left}")
        phases = [("install", lambda: host.install(r, lab)),
                  ("box", lambda: host.box(r, lab, rebuild=args.rebuild_box)),
                  ("host-up", lambda: host.host_up(r, lab)),
                  ("lab-up", lambda: host.lab_up(r, lab)),
                  ("checks", lambda: run_checks(r, lab))]
        for name, step in phases:
            with r.phase(name, BUDGETS[name]):
                step()
            if name == args.until:
                break
        rc = 0
    except KeyboardInterrupt:
        r.say("interrupted (Ctrl-C): tearing down")
        rc = 130
    except Interrupted as e:
        r.say(f"interrupted ({e}): tearing down")
        rc = 143
    except Exception as e:  # noqa: BLE001 - the phase printed it; teardown follows
        if not r.results or r.results[-1][2] == "ok":
            r.say(f"FAILED: {type(e).__name__}: {e}")
        rc = 1
    finally:
        if not (args.keep and rc == 0):
            rc = final_teardown(r, lab, args.remove_box, rc)
        else:
            r.say(f"--keep: the lab stays up (cd {lab.vagrant_dir} && VAGRANT_HOME={lab.work / 'vagrant.d'} vagrant status);"
                  " scripts/vagrant-test --teardown removes it")
        report(r, lab, rc)
    return rc


def run_checks(r: Runner, lab: host.Lab) -> None:
    if not checks.run_checks(r, lab):
        raise CheckFailed(f"{sum(1 for *_, res in r.checks if res != 'ok')} of {len(r.checks)} checks failed")


def final_teardown(r: Runner, lab: host.Lab, remove_box: bool, rc: int) -> int:
    """Teardown whatever happened; a second Ctrl-C meanwhile is ignored (with a word)."""
    def patience(_sig, _frame):
        print("\nscripts/vagrant-test: tearing down, please wait (it is bounded in time)", file=sys.stderr, flush=True)
    old = {s: signal.signal(s, patience) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with r.phase("teardown", BUDGETS["teardown"], past_deadline=True):
            left = host.teardown(r, lab, remove_box=remove_box)
            if left:
                raise CheckFailed("left on the host: " + "; ".join(left))
            r.say("  host clean: no VM, network, bridge, libvirt chain or process of this run left")
    except Exception:  # noqa: BLE001 - printed by the phase; the exit status says it
        rc = rc or 1
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return rc


def report(r: Runner, lab: host.Lab, rc: int) -> None:
    text = r.summary() + f"\n\nresult: {'PASSED' if rc == 0 else f'FAILED (exit {rc})'}\n"
    print(text, flush=True)
    runs = lab.work / "runs"
    runs.mkdir(exist_ok=True)
    name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (runs / f"{name}.txt").write_text(text)
    (runs / f"{name}.json").write_text(json.dumps({"rc": rc, "phases": r.results, "checks": r.checks}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
