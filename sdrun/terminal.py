"""A terminal of its own for a command run inside a pod (`sdrun enter` on a terminal).

Handing the pod the caller's own terminal would let the pod keep it: any process
there that may ptrace the entered command (container root may) can copy its
descriptors with pidfd_getfd(2) and read what the user types long after `enter`
returned, a password for sudo included. So the command gets a new pseudo-terminal,
and sdrun copies between it and the caller's terminal, raw, until the command
ends (as `docker exec -t` and `machinectl shell` do); then the pseudo-terminal
is closed, and whatever the pod kept of it reads nothing more of the user's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import termios
import tty

TYPE_CHECKING = False  # not typing's: enter need not import it
if TYPE_CHECKING:
    from typing import Any

CHUNK = 65536


class PseudoTerminal:
    """A pseudo-terminal pair whose other end becomes a child's controlling terminal and stdio."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        os.set_inheritable(self.master, False)
        _copy_window_size(0, self.master)

    @classmethod
    def for_caller(cls) -> PseudoTerminal | None:
        """One when the caller is at a terminal (stdin and stdout are one); None: pass stdio as it is."""
        return cls() if os.isatty(0) and os.isatty(1) else None

    def become_child_stdio(self) -> None:
        """In the forked child: a session of its own, whose controlling terminal is the slave, on
        stdin, stdout and stderr (stderr only if it was a terminal: a redirected one stays so)."""
        os.close(self.master)
        os.setsid()
        fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2) if os.isatty(2) else (0, 1):
            os.dup2(self.slave, fd)
        os.close(self.slave)

    def relay_until_exit(self, child: int) -> None:
        """In the parent: copy the caller's keystrokes in and the command's output out until the
        child has exited and its last output is out; the caller's terminal is raw meanwhile (the
        pseudo-terminal does the line editing and signals) and restored after."""
        os.close(self.slave)
        saved = termios.tcgetattr(0)
        previous = signal.signal(signal.SIGWINCH, lambda _number, _frame: _copy_window_size(0, self.master))
        child_exited = os.pidfd_open(child)
        try:
            tty.setraw(0)
            self._copy(child_exited)
        finally:
            termios.tcsetattr(0, termios.TCSAFLUSH, saved)
            signal.signal(signal.SIGWINCH, previous)
            os.close(child_exited)
            os.close(self.master)

    def _copy(self, child_exited: int) -> None:
        sources = [0, self.master, child_exited]
        while True:
            readable, _, _ = select.select(sources, [], [])
            if self.master in readable and not self._drain():
                return  # no process has the slave open any more
            if child_exited in readable:
                self._drain()  # what the command wrote before it ended
                return
            if 0 in readable:
                typed = os.read(0, CHUNK)
                if typed:
                    _write_all(self.master, typed)
                else:
                    sources.remove(0)  # the caller's terminal hung up: the command may still finish

    def _drain(self) -> bool:
        """Copy to stdout what the command has written so far; False once no process has the slave
        open (the master then reads EIO)."""
        os.set_blocking(self.master, False)
        try:
            while data := os.read(self.master, CHUNK):
                _write_all(1, data)
        except BlockingIOError:
            return True
        except OSError as error:
            if error.errno != errno.EIO:
                raise
        finally:
            os.set_blocking(self.master, True)
        return False


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _copy_window_size(source: int, target: int) -> None:
    try:
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return  # not a terminal
    fcntl.ioctl(target, termios.TIOCSWINSZ, size)


class TerminalRelay:
    """`sdrun run -t`: the caller's stdin and stdout relayed to and from the master of the
    pseudo-terminal the pod made for its app (stage1.namespace.launch), the caller's terminal raw
    meanwhile, so that the pod's terminal does the line editing and turns ^C into SIGINT."""

    def __init__(self, master: int) -> None:
        self.master = master
        self._saved: list[Any] | None = None
        self._previous: object = None

    def __enter__(self) -> TerminalRelay:
        _copy_window_size(0, self.master)
        self._previous = signal.signal(signal.SIGWINCH, lambda _number, _frame: _copy_window_size(0, self.master))
        if os.isatty(0):
            self._saved = termios.tcgetattr(0)
            tty.setraw(0)
        return self

    def __exit__(self, *_: object) -> None:
        if self._saved is not None:
            termios.tcsetattr(0, termios.TCSAFLUSH, self._saved)
        signal.signal(signal.SIGWINCH, self._previous)  # type: ignore[arg-type]
        os.close(self.master)

    def copy_input(self) -> bool:
        """Copy what the caller typed to the app; False at the end of the caller's input."""
        typed = os.read(0, CHUNK)
        if typed:
            _write_all(self.master, typed)
        return bool(typed)

    def copy_output(self) -> bool:
        """Copy to stdout what the app has written; False once no process has its terminal open."""
        os.set_blocking(self.master, False)
        try:
            while data := os.read(self.master, CHUNK):
                _write_all(1, data)
        except BlockingIOError:
            return True
        except OSError as error:
            if error.errno != errno.EIO:
                raise
        finally:
            os.set_blocking(self.master, True)
        return False


def receive_terminal(channel: int) -> int | None:
    """The pseudo-terminal master a pod's stage1 sent on channel (a socket); None if it closed
    without one."""
    import array
    import socket

    fds = array.array("i")
    with socket.socket(fileno=os.dup(channel)) as sock:
        _, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    for extra in fds[1:]:
        os.close(extra)
    if not fds:
        return None
    os.set_inheritable(fds[0], False)
    return fds[0]
