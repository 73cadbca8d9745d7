"""Running an exec'd command and wiring it to the client's channels, whatever carries them
(wschannel.WsExecChannels, or SpdyExecChannels below for pre-1.30 clients).

Without a TTY the command gets pipes (stdin only with -i: otherwise /dev/null, as kubectl
promises) and stdout and stderr stay apart. With one (-t) it gets a pseudo-terminal as its
controlling terminal (`setsid -c`), TERM=xterm as container runtimes set it, and the client's
resize messages become TIOCSWINSZ; its output is one stream. Either way the command leads a
session of its own, so when the client goes away the command and what it started are killed
(its process group), not left running without anyone to read them. The result goes to the error
channel as the kubelet words it (wschannel.exit_status).
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import struct
import termios

from kproxy.apiserver import spdy, wschannel

FIRST_RESIZE_WAIT = 1.0  # seconds a TTY command waits for the client's terminal size


class SpdyExecChannels(wschannel.ExecChannels):
    """The same channels as SPDY streams named by their `streamtype` header."""

    def __init__(self, protocol: str, streams: dict[str, spdy.Stream], session: spdy.Session, tty: bool):
        super().__init__(protocol, False, tty)
        self.streams, self.session = streams, session
        self.stdin = streams["stdin"].reader if "stdin" in streams else None
        if "resize" in streams:
            asyncio.ensure_future(self._resizes(streams["resize"]))
        asyncio.ensure_future(self._watch())

    async def _resizes(self, stream: spdy.Stream) -> None:
        while chunk := await stream.reader.read(4096):
            self.resize_json(chunk)

    async def _watch(self) -> None:
        await self.session.done
        self.gone.set()

    def stdout(self, data: bytes) -> None:
        if "stdout" in self.streams:
            self.streams["stdout"].write(data)

    def stderr(self, data: bytes) -> None:
        target = self.streams.get("stderr") or (self.streams.get("stdout") if self.tty else None)
        if target is not None:
            target.write(data)

    async def drain(self) -> None:
        await self.session.drain()

    async def finish(self, status: dict) -> None:
        for name in ("stdout", "stderr"):
            if name in self.streams:
                self.streams[name].close()
        err = self.streams["error"]
        payload = wschannel.error_payload(self.protocol, status)
        if payload:
            err.write(payload)
        err.close()
        await self.session.drain()


async def attach(path, alive, chans: wschannel.ExecChannels) -> None:
    """`kubectl attach`: what the container writes from now on (its log file's new bytes),
    until the pod is gone (`alive()` false) or the client leaves."""
    f = open(path, "rb") if path is not None else None
    try:
        if f is not None:
            f.seek(0, os.SEEK_END)
        while not chans.gone.is_set():
            chunk = f.read(1 << 16) if f is not None else b""
            if chunk:
                chans.stdout(chunk)
                await chans.drain()
                continue
            if not alive():
                break
            try:
                await asyncio.wait_for(chans.gone.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
    finally:
        if f is not None:
            f.close()
    await chans.finish(wschannel.success_status())


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N: 128+N, as a shell says


async def run(argv: list[str], command: list[str], tty: bool, chans: wschannel.ExecChannels) -> None:
    """Run argv (the in-pod command line of `command`) with the client's channels; report its end."""
    try:
        code = await (_run_tty(argv, chans) if tty else _run_pipes(argv, chans))
    except OSError as e:
        await chans.finish(wschannel.failure_status(
            f"error executing command in container: failed to exec in container: {e.strerror or e}"))
        return
    if code is None:  # the client left: nobody to tell
        await chans.finish(wschannel.failure_status("the client closed the connection", "InternalError"))
        return
    await chans.finish(wschannel.success_status() if code == 0 else wschannel.exit_status(command, code))


async def _copy_out(stream: asyncio.StreamReader, write, chans: wschannel.ExecChannels) -> None:
    while chunk := await stream.read(1 << 16):
        write(chunk)
        await chans.drain()


async def _run_pipes(argv: list[str], chans: wschannel.ExecChannels) -> int | None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if chans.stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)

    async def feed() -> None:
        try:
            while chunk := await chans.stdin.read(1 << 16):
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        except (ConnectionError, BrokenPipeError):
            return
        finally:
            proc.stdin.close()
    feeder = asyncio.ensure_future(feed()) if chans.stdin is not None else None
    outputs = asyncio.gather(_copy_out(proc.stdout, chans.stdout, chans), _copy_out(proc.stderr, chans.stderr, chans))
    return await _wait(proc, outputs, feeder, chans)


async def _wait(proc, outputs, feeder, chans) -> int | None:
    gone = asyncio.ensure_future(chans.gone.wait())
    done_out = asyncio.ensure_future(outputs)
    await asyncio.wait({done_out, gone}, return_when=asyncio.FIRST_COMPLETED)
    left = not done_out.done()
    if left:  # the whole group: a shell's children too (the command leads its own session)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        done_out.cancel()
    gone.cancel()
    code = await proc.wait()
    if feeder is not None:
        feeder.cancel()
    return None if left else _exit_code(code)


async def _run_tty(argv: list[str], chans: wschannel.ExecChannels) -> int | None:
    master, slave = os.openpty()
    try:  # kubectl sends the terminal's size right after connecting: start the command with it
        width, height = await asyncio.wait_for(chans.resizes.get(), FIRST_RESIZE_WAIT)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    except asyncio.TimeoutError:
        pass
    try:
        proc = await asyncio.create_subprocess_exec(
            "setsid", "-c", *argv, stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "TERM": "xterm"})
    finally:
        os.close(slave)
    loop = asyncio.get_running_loop()
    out = asyncio.StreamReader()
    os.set_blocking(master, False)

    def readable() -> None:
        try:
            data = os.read(master, 1 << 16)
        except BlockingIOError:
            return
        except OSError:  # EIO: every holder of the terminal's other side closed it
            data = b""
        if data:
            out.feed_data(data)
        else:
            loop.remove_reader(master)
            out.feed_eof()
    loop.add_reader(master, readable)

    async def feed() -> None:
        while chunk := await chans.stdin.read(1 << 16):
            while chunk:
                try:
                    chunk = chunk[os.write(master, chunk):]
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                except OSError:
                    return

    async def resize() -> None:
        while True:
            width, height = await chans.resizes.get()
            try:
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
            except OSError:
                return
    feeder = asyncio.ensure_future(feed()) if chans.stdin is not None else None
    resizer = asyncio.ensure_future(resize())
    try:
        return await _wait(proc, _copy_out(out, chans.stdout, chans), feeder, chans)
    finally:
        resizer.cancel()
        loop.remove_reader(master)
        os.close(master)
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
