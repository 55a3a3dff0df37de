"""The zygote: a pre-imported process that forks function instances on the worker's request.

`python -m worker.zygote <control fd> <worker pid>`, started once per worker by
`worker.forking.Zygote`. It imports everything `worker.bootstrap` needs, freezes the heap
(`gc.freeze`, so children do not dirty shared pages by collecting them), then loops:

- a `Fork` packet on the control socket (SOCK_SEQPACKET: one message per packet) carries
  the instance's environment and cwd, with its frame socket and output pipe as SCM_RIGHTS
  fds; the zygote hands them to a spare child it forked ahead of time (or forks one now),
  and that child becomes `worker.bootstrap` on them;
- it answers `Forked{pid}` at once, and `Exited{pid, returncode}` when it reaps the child,
  since the worker cannot wait for a grandchild.

It dies with the worker (PR_SET_PDEATHSIG) and its children die with it, so the chain
worker → zygote → instance leaves no orphans. Imported by the zygote only: stdlib, msgspec
and what bootstrap imports; no asyncio.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import sys
import traceback
from typing import NamedTuple, NoReturn

import msgspec

from worker import bootstrap

MAX_PACKET = 256 * 1024  # far above FC's 4 KB of environment variables
_CHILD_FAILED = 70  # EX_SOFTWARE: the child could not become an instance
# The next spare is forked once the control socket has been quiet this long: a fork right
# after a request would compete for the CPUs with the instance just handed out.
REFILL_DELAY = 0.003


class Fork(msgspec.Struct, tag=True, kw_only=True):
    """Worker → zygote: fork an instance; fds (SCM_RIGHTS): frame socket, output pipe."""

    request_id: int
    env: dict[str, str]
    cwd: str


class Forked(msgspec.Struct, tag=True, kw_only=True):
    """Zygote → worker: the instance for `request_id` runs as `pid` (0: see `error`)."""

    request_id: int
    pid: int = 0
    error: str = ""


class Exited(msgspec.Struct, tag=True, kw_only=True):
    """Zygote → worker: a child was reaped; `returncode` as subprocess has it (<0: signal)."""

    pid: int
    returncode: int


class Ready(msgspec.Struct, tag=True, kw_only=True):
    """Zygote → worker, once: imports done, forks from now on are fast."""


Reply = Ready | Forked | Exited

encode = msgspec.msgpack.Encoder().encode
decode_fork = msgspec.msgpack.Decoder(Fork).decode
decode_reply = msgspec.msgpack.Decoder(Reply).decode


def instance_path(cwd: str, pythonpath: str, base: list[str]) -> list[str]:
    """`sys.path` of `python -m worker.bootstrap` run in `cwd` with `pythonpath`.

    `-m` puts the cwd first, then PYTHONPATH, then the interpreter's own entries (`base`).
    """
    front = [cwd, *(p for p in pythonpath.split(os.pathsep) if p)]
    return front + [p for p in base if p not in front]


def _prepare_child(control: socket.socket, wake: list[int], zygote_pid: int) -> None:
    """First thing in any forked child: none of the zygote's fds or signal handling."""
    control.close()
    for fd in wake:
        os.close(fd)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Own session and process group, as spawn's start_new_session: the instance's kill
    # takes what the function spawned along, and the worker's Ctrl-C does not reach it.
    os.setsid()
    bootstrap._die_with_parent(zygote_pid)


def _become_instance(request: Fork, sock_fd: int, out_fd: int, zygote_pid: int) -> NoReturn:
    """In the forked child: look exactly like a freshly spawned bootstrap, then run it."""
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.close(out_fd)
    os.environ.clear()
    os.environ.update(request.env)
    os.chdir(request.cwd)
    sys.path[:] = instance_path(request.cwd, request.env.get("PYTHONPATH", ""), sys.path[1:])
    argv = [bootstrap.__file__, str(sock_fd), str(zygote_pid)]
    sys.argv[:] = argv
    bootstrap.main(argv)


def _fork() -> int:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    return os.fork()


class _Spare(NamedTuple):
    """A child forked ahead of demand, waiting on `sock` for its `Fork` and fds."""

    pid: int
    sock: socket.socket


class _Server:
    """Forks instances; keeps one spare child forked ahead, so a request skips the fork."""

    def __init__(self, control: socket.socket, wake: list[int]) -> None:
        self.control = control
        self.wake = wake
        self.spare: _Spare | None = None

    def refill(self) -> None:
        """Fork the next spare (after the reply went out: the worker need not wait for it)."""
        if self.spare is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        zygote_pid = os.getpid()
        try:
            pid = _fork()
        except OSError:
            traceback.print_exc()  # the next request forks directly
            ours.close()
            theirs.close()
            return
        if pid:
            theirs.close()
            self.spare = _Spare(pid, ours)
            return
        try:
            ours.close()
            _prepare_child(self.control, self.wake, zygote_pid)
            data, fds, _, _ = socket.recv_fds(theirs, MAX_PACKET, 2, socket.MSG_CMSG_CLOEXEC)
            if not data:  # the zygote is gone without using us
                os._exit(0)
            theirs.close()
            _become_instance(decode_fork(data), fds[0], fds[1], zygote_pid)
        except BaseException:
            traceback.print_exc()
        os._exit(_CHILD_FAILED)

    def launch(self, data: bytes, request: Fork, fds: list[int]) -> int:
        """The pid now running `request`: the spare if it takes it, else a fresh fork."""
        spare, self.spare = self.spare, None
        if spare is not None:
            try:
                socket.send_fds(spare.sock, [data], fds)
                return spare.pid
            except OSError:  # it died; the reaper reports it
                pass
            finally:
                spare.sock.close()
        zygote_pid = os.getpid()
        pid = _fork()
        if pid:
            return pid
        try:
            _prepare_child(self.control, self.wake, zygote_pid)
            _become_instance(request, fds[0], fds[1], zygote_pid)
        except BaseException:
            traceback.print_exc()
        os._exit(_CHILD_FAILED)

    def answer(self, data: bytes, fds: list[int]) -> Forked:
        try:
            request = decode_fork(data)
        except msgspec.DecodeError as e:
            return Forked(request_id=-1, error=f"undecodable request: {e}")
        if len(fds) != 2:
            return Forked(request_id=request.request_id, error=f"expected 2 fds, got {len(fds)}")
        try:
            pid = self.launch(data, request, fds)
        except OSError as e:
            return Forked(request_id=request.request_id, error=f"fork failed: {e}")
        return Forked(request_id=request.request_id, pid=pid)

    def serve_one(self) -> None:
        control = self.control
        data, fds, _, _ = socket.recv_fds(control, MAX_PACKET, 2, socket.MSG_CMSG_CLOEXEC)
        if not data:  # the worker closed the socket: it is gone or shutting us down
            os._exit(0)
        try:
            reply = self.answer(data, fds)
        finally:
            for fd in fds:  # the child has its copies
                os.close(fd)
        control.sendall(encode(reply))


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control.sendall(encode(Exited(pid=pid, returncode=os.waitstatus_to_exitcode(status))))


def main(argv: list[str]) -> NoReturn:
    """Zygote entry point; see the module docstring for the arguments."""
    control_fd, worker_pid = int(argv[1]), int(argv[2])
    bootstrap._die_with_parent(worker_pid)
    control = socket.socket(fileno=control_fd)
    control.set_inheritable(False)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    wake = [wake_read, wake_write]
    # Everything imported so far is shared with every child: keep the collector off it.
    gc.collect()
    gc.freeze()
    server = _Server(control, wake)
    server.refill()
    control.sendall(encode(Ready()))
    while True:
        quiet = REFILL_DELAY if server.spare is None else None
        ready, _, _ = select.select([control_fd, wake_read], [], [], quiet)
        if not ready:
            server.refill()
        if wake_read in ready:
            while True:
                try:
                    os.read(wake_read, 512)
                except BlockingIOError:
                    break
            _reap(control)
        if control_fd in ready:
            server.serve_one()


if __name__ == "__main__":
    main(sys.argv)
