"""The zygote: a pre-imported process that forks function instances on the worker's request.

`python -m worker.child.zygote <control fd> <worker pid>`, started once per worker by
`worker.forking.Zygote`. It imports everything `worker.child.bootstrap` needs, freezes the heap
(`gc.freeze`, so children do not dirty shared pages by collecting them), then loops on the
control socket (SOCK_SEQPACKET: one message per packet):

- `Prefork` carries one end of a socketpair (SCM_RIGHTS): the zygote forks a spare child
  that readies itself as an instance (`bootstrap.prepare`) and waits on that socket. The
  worker keeps the other end and later sends the spare its `Fork` itself, so a cold start
  does not pass through the zygote at all;
- `Fork` carries the instance's environment, cwd and user (`worker.child.isolation`), with its
  frame socket and output pipe as SCM_RIGHTS fds: the zygote forks a child for it now
  (when no spare was ready). The child drops to the user before it imports any user code;
- it answers `Forked{pid}` for either, and `Exited{pid, returncode}` when it reaps a child,
  since the worker cannot wait for a grandchild.

It dies with the worker (PR_SET_PDEATHSIG) and its children die with it, so the chain
worker → zygote → instance leaves no orphans. Run by a non-root worker, it makes itself
non-dumpable: its children keep its uid and must not read its memory or environment.
Imported by the zygote only: stdlib, msgspec and what bootstrap and `worker.child.isolation`
import; no asyncio.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import sys
import traceback
from typing import NoReturn

import msgspec

from worker.child import bootstrap, isolation

MAX_PACKET = 256 * 1024  # far above FC's 4 KB of environment variables
_CHILD_FAILED = 70  # EX_SOFTWARE: the child could not become an instance


class Fork(msgspec.Struct, tag=True, kw_only=True):
    """Worker → zygote, or → a spare child directly: become an instance with this
    environment and cwd, as `uid`/`gid` (-1: stay as the zygote); fds (SCM_RIGHTS):
    frame socket, output pipe."""

    request_id: int
    env: dict[str, str]
    cwd: str
    uid: int = -1
    gid: int = -1
    max_procs: int = 0
    hidden: list[str] = []


class Prefork(msgspec.Struct, tag=True, kw_only=True):
    """Worker → zygote: fork a spare child waiting for its `Fork` on the one fd passed."""

    request_id: int


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


Request = Fork | Prefork
Reply = Ready | Forked | Exited

encode = msgspec.msgpack.Encoder().encode
decode_fork = msgspec.msgpack.Decoder(Fork).decode
decode_request = msgspec.msgpack.Decoder(Request).decode
decode_reply = msgspec.msgpack.Decoder(Reply).decode


def instance_path(cwd: str, pythonpath: str, base: list[str]) -> list[str]:
    """`sys.path` of `python -m worker.child.bootstrap` run in `cwd` with `pythonpath`.

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
    if request.uid >= 0:
        isolation.become(
            isolation.InstanceUser(
                request.uid, request.gid, request.max_procs, tuple(request.hidden)
            )
        )
        # As an exec after a uid change would: its /proc entries belong to its own uid.
        isolation.set_dumpable(True)
        bootstrap._die_with_parent(zygote_pid)  # the uid change cleared it
    os.chdir(request.cwd)
    sys.path[:] = instance_path(request.cwd, request.env.get("PYTHONPATH", ""), sys.path[1:])
    sys.argv[:] = [bootstrap.__file__, str(sock_fd), str(zygote_pid)]
    sock = socket.socket(fileno=sock_fd)
    sock.set_inheritable(False)  # processes the function spawns must not hold it open
    bootstrap.run(sock)


def _wait_as_spare(sock: socket.socket, zygote_pid: int) -> NoReturn:
    """In a spare child: get ready to be an instance, then wait for the worker's `Fork`."""
    bootstrap.prepare()
    try:
        bootstrap.warm_up()
    except Exception:  # only slower without it
        traceback.print_exc()
    data, fds, _, _ = socket.recv_fds(sock, MAX_PACKET, 2, socket.MSG_CMSG_CLOEXEC)
    if not data:  # the worker dropped us, or is gone
        os._exit(0)
    sock.close()
    if len(fds) != 2:
        raise ValueError(f"a spare expects 2 fds with its Fork, got {len(fds)}")
    _become_instance(decode_fork(data), fds[0], fds[1], zygote_pid)


def _fork() -> int:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    return os.fork()


class _Server:
    """Forks instances (`Fork`) and spare children the worker hands out itself (`Prefork`)."""

    def __init__(self, control: socket.socket, wake: list[int]) -> None:
        self.control = control
        self.wake = wake

    def launch(self, request: Fork | Prefork, fds: list[int]) -> int:
        """Fork the child for `request`; its pid (in the parent; the child never returns)."""
        zygote_pid = os.getpid()
        pid = _fork()
        if pid:
            return pid
        try:
            _prepare_child(self.control, self.wake, zygote_pid)
            if isinstance(request, Prefork):
                _wait_as_spare(socket.socket(fileno=fds[0]), zygote_pid)
            bootstrap.prepare()
            _become_instance(request, fds[0], fds[1], zygote_pid)
        except BaseException:
            traceback.print_exc()
        os._exit(_CHILD_FAILED)

    def answer(self, data: bytes, fds: list[int]) -> Forked:
        try:
            request = decode_request(data)
        except msgspec.DecodeError as e:
            return Forked(request_id=-1, error=f"undecodable request: {e}")
        wanted = 1 if isinstance(request, Prefork) else 2
        if len(fds) != wanted:
            return Forked(
                request_id=request.request_id, error=f"expected {wanted} fds, got {len(fds)}"
            )
        try:
            pid = self.launch(request, fds)
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
    hidden = [path for path in (argv[3] if len(argv) > 3 else "").split(",") if path]
    if hidden and os.geteuid() == 0:
        # Once for every child: they share this mount namespace (no namespace per start).
        isolation.hide(hidden)
    if os.geteuid() != 0:  # our children keep our uid: they must not read us
        isolation.set_dumpable(False)
    isolation.prctl()  # looked up once here, not in every child
    isolation.mount_calls()
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
    control.sendall(encode(Ready()))
    while True:
        ready, _, _ = select.select([control_fd, wake_read], [], [])
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
