"""Phases of scripts/vagrant-test: each one bounded in time, timed and logged.

WHY a runner of its own: a VM lab fails in slow ways (a boot that never ends, an apt-get waiting on
a dead proxy, an ssh that hangs). Every command here runs with the time left in its phase (and in
the whole run, `--deadline`), in its own process group so a timeout or Ctrl-C ends all of it, with
its output in the run's log; the summary table is what the README's Vagrant section quotes.
Standard library only: it runs before any venv exists.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class PhaseTimeout(Exception):
    """A phase used up its time (or the run its deadline)."""


class CheckFailed(Exception):
    """A check saw something other than what it asserts."""


class Interrupted(BaseException):
    """SIGTERM (or SIGHUP) arrived: stop the phase, tear down. A BaseException like Ctrl-C's
    KeyboardInterrupt, so no `except Exception` in a check swallows it."""


def _interrupted(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def stamp() -> str:
    return time.strftime("%H:%M:%S", time.gmtime())


class Runner:
    def __init__(self, work: Path, deadline: float | None = None, verbose: bool = False):
        """`deadline`: a time.time() after which no phase may run (teardown excepted)."""
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.log_path = work / "vagrant-test.log"
        self.log = open(self.log_path, "a", buffering=1)
        self.verbose = verbose
        self.deadline = deadline
        self.phase_end = float("inf")
        self.phase_name = ""
        self.results: list[tuple[str, float, str]] = []  # (phase, seconds, ok | FAILED: why)
        self.checks: list[tuple[str, float, str]] = []   # (check, seconds, ok | FAILED: why)
        self._proc: subprocess.Popen | None = None
        signal.signal(signal.SIGTERM, _interrupted)
        signal.signal(signal.SIGHUP, _interrupted)

    # -- output --------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        print(msg, flush=True)
        self.log.write(f"{stamp()} {msg}\n")

    def note(self, msg: str) -> None:
        """To the log only (or the terminal too with --verbose)."""
        self.log.write(f"{stamp()}   {msg}\n")
        if self.verbose:
            print(f"    {msg}", flush=True)

    # -- time ------------------------------------------------------------------------------
    def remaining(self) -> float:
        left = self.phase_end - time.monotonic()
        if self.deadline is not None:
            left = min(left, self.deadline - time.time())
        return left

    @contextlib.contextmanager
    def phase(self, name: str, budget: float, *, past_deadline: bool = False):
        """Time a phase; it may run `budget` seconds (less if the deadline comes first)."""
        if not past_deadline and self.deadline is not None and time.time() >= self.deadline:
            raise PhaseTimeout(f"{name}: the run's deadline has passed")
        saved_deadline = self.deadline
        if past_deadline:
            self.deadline = None  # teardown runs whatever the clock says
        self.phase_name, self.phase_end = name, time.monotonic() + budget
        self.say(f"=== {stamp()} {name} (at most {budget:.0f} s)")
        t0 = time.monotonic()
        try:
            yield
        except BaseException as e:
            took = time.monotonic() - t0
            self.results.append((name, took, f"FAILED: {type(e).__name__}: {e}"))
            self.say(f"=== {stamp()} {name} FAILED after {took:.0f} s: {type(e).__name__}: {e}")
            raise
        else:
            took = time.monotonic() - t0
            self.results.append((name, took, "ok"))
            self.say(f"=== {stamp()} {name} ok in {took:.0f} s")
        finally:
            self.deadline = saved_deadline
            self.phase_end = float("inf")

    def check(self, name: str, fn, *args) -> bool:
        """Run one check; a failure is recorded and reported, and the next check still runs
        (a timeout or an interrupt ends the phase)."""
        t0 = time.monotonic()
        try:
            detail = fn(*args)
        except PhaseTimeout:
            self.checks.append((name, time.monotonic() - t0, "FAILED: out of time"))
            raise
        except Exception as e:  # noqa: BLE001 - a check's failure, whatever it is, is reported
            why = e.stderr.strip().splitlines()[-1:] if isinstance(e, subprocess.CalledProcessError) and e.stderr else []
            self.checks.append((name, time.monotonic() - t0, f"FAILED: {e}" + (f" ({why[0]})" if why else "")))
            self.say(f"  FAIL {name}: {e}" + (f" ({why[0]})" if why else ""))
            return False
        took = time.monotonic() - t0
        self.checks.append((name, took, "ok"))
        self.say(f"  ok   {name} ({took:.0f} s){': ' + detail if detail else ''}")
        return True

    # -- commands --------------------------------------------------------------------------
    def run(self, argv: list[str], *, timeout: float | None = None, check: bool = True, capture: bool = False,
            input: str | None = None, env: dict | None = None, cwd: Path | str | None = None) -> subprocess.CompletedProcess:
        """Run argv within the phase's time (and `timeout`); output to the log unless captured."""
        left = self.remaining()
        by_phase = timeout is None or left <= timeout  # which limit ends this command
        limit = left if by_phase else timeout
        if limit <= 0:
            raise PhaseTimeout(f"{self.phase_name}: out of time before: {' '.join(argv)[:120]}")
        self.note("$ " + " ".join(argv)[:400])
        out = subprocess.PIPE if capture else self.log
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE if capture else self.log,
                                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                text=True, env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
        self._proc = proc
        try:
            stdout, stderr = proc.communicate(input, timeout=limit)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            if not by_phase:
                raise subprocess.TimeoutExpired(argv, timeout) from None
            raise PhaseTimeout(f"{self.phase_name}: out of time in: {' '.join(argv)[:120]}") from None
        except BaseException:
            self._kill(proc)
            raise
        finally:
            self._proc = None
        if capture:
            self.log.write(stdout[-4000:] + stderr[-2000:])
        res = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv, stdout, stderr)
        return res

    def out(self, argv: list[str], **kw) -> str:
        return self.run(argv, capture=True, **kw).stdout

    def ok(self, argv: list[str], **kw) -> bool:
        """True when argv exits 0 (a timeout counts as no)."""
        try:
            return self.run(argv, capture=True, check=False, **kw).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        return self.run(["bash", "-euo", "pipefail", "-c", script], **kw)

    def _kill(self, proc: subprocess.Popen) -> None:
        """End the command and everything it started (its own process group), TERM then KILL."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def wait_for(self, what: str, probe, *, timeout: float, interval: float = 3.0):
        """Poll `probe()` until it returns something true; CheckFailed after `timeout` seconds."""
        end = time.monotonic() + timeout
        last = None
        while True:
            try:
                last = probe()
            except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:
                last = None  # a command that failed or hung this time: ask again
                self.note(f"{what}: {e}")
            if last:
                return last
            if time.monotonic() >= end or self.remaining() <= interval:
                raise CheckFailed(f"{what}: not after {timeout:.0f} s")
            time.sleep(interval)

    # -- summary ---------------------------------------------------------------------------
    def summary(self) -> str:
        lines = ["", "phase            seconds  result"]
        lines += [f"{name:<16} {took:7.0f}  {res}" for name, took, res in self.results]
        total = sum(t for n, t, _ in self.results)
        lines.append(f"{'total':<16} {total:7.0f}")
        if self.checks:
            lines += ["", "check                                              seconds  result"]
            lines += [f"{name:<50} {took:7.0f}  {res}" for name, took, res in self.checks]
        return "\n".join(lines)


def die(msg: str, code: int = 2):
    print(f"scripts/vagrant-test: {msg}", file=sys.stderr)
    sys.exit(code)
