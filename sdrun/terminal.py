"""A terminal of its own for a command run inside a pod (`sdrun enter` on a terminal, `run -t`).

Handing the pod the caller's own terminal would let the pod keep it: any process
there that may ptrace the entered command (container root may) can copy its
descriptors with pidfd_getfd(2) and read what the user types long after `enter`
returned, a password for sudo included. So the command gets a new pseudo-terminal,
and sdrun copies between it and the caller's terminal, raw, until the command
ends (as `docker exec -t` and `machinectl shell` do); then the pseudo-terminal
is closed, and whatever the pod kept of it reads nothing more of the user's.

The namespace stage1 makes that pseudo-terminal in the pod's own devpts (so that
`tty` names it inside) and sends its master here (TerminalRelay); PseudoTerminal
makes one on the host, for a stage1 that shares the host's /dev (fly) or keeps
it out of the pod's reach (kvm).
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
STDIO = (0, 1, 2)


def terminal_stdio(*, forced: bool) -> tuple[int, ...]:
    """Which of our stdin, stdout and stderr an entered command gets a pseudo-terminal on: every
    one that is a terminal (the caller's is never handed to the pod), and with forced (`enter -t`)
    stdin and stdout whatever they are. () for none: the command gets our stdio as it is."""
    return tuple(fd for fd in STDIO if os.isatty(fd) or (forced and fd in (0, 1)))


def output_of(stdio: tuple[int, ...]) -> int:
    """Where what the command writes to its terminal goes: our stdout, if its stdout is the
    terminal; else our stderr, else our stdin (the echo of what is typed, on the caller's terminal)."""
    return next(fd for fd in (1, 2, 0) if fd in stdio)


class PseudoTerminal:
    """A pseudo-terminal pair of the host's whose other end becomes a child's controlling terminal
    and its stdio (those of stdio)."""

    def __init__(self, stdio: tuple[int, ...]) -> None:
        self.master, self.slave = os.openpty()
        os.set_inheritable(self.master, False)
        self.stdio = stdio
        _copy_window_size(_window_source(), self.master)

    def become_child_stdio(self) -> None:
        """In the forked child: a session of its own, whose controlling terminal is the slave, on
        each of stdin, stdout and stderr in stdio (a redirected one stays so)."""
        os.close(self.master)
        os.setsid()
        fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)
        for fd in self.stdio:
            os.dup2(self.slave, fd)
        os.close(self.slave)

    def relay_until_exit(self, child: int) -> None:
        """In the parent: relay_until_exit() of the master; it is closed after."""
        os.close(self.slave)
        with TerminalRelay(self.master, output_of(self.stdio)) as relay:
            relay_until_exit(relay, child, copy_input=0 in self.stdio)


def relay_until_exit(relay: TerminalRelay, child: int, *, copy_input: bool) -> None:
    """Copy the caller's keystrokes in (copy_input: the command's stdin is the terminal) and the
    command's output out until child has exited and its last output is out, or no process has the
    terminal open any more (a command left running in the pod keeps it: the child's end is ours)."""
    child_exited = os.pidfd_open(child)
    sources = [relay.master, child_exited, *([0] if copy_input else [])]
    try:
        while True:
            readable, _, _ = select.select(sources, [], [])
            if relay.master in readable and not relay.copy_output():
                return  # no process has the slave open any more
            if child_exited in readable:
                relay.copy_output()  # what the command wrote before it ended
                return
            if 0 in readable and not relay.copy_input():
                sources.remove(0)  # the end of our input: the command may still finish
    finally:
        os.close(child_exited)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _window_source() -> int:
    """Which of our stdio tells the window's size: the first that is a terminal."""
    return next((fd for fd in STDIO if os.isatty(fd)), 0)


def _copy_window_size(source: int, target: int) -> None:
    try:
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return  # not a terminal
    fcntl.ioctl(target, termios.TIOCSWINSZ, size)


class TerminalRelay:
    """`sdrun run -t`, `sdrun enter`: the caller's stdin and stdout relayed to and from the master
    of the pseudo-terminal the pod made for its app or the entered command (stage1.namespace.entry,
    stage1.namespace.enter), the caller's terminal raw meanwhile, so that the pod's terminal does
    the line editing and turns ^C into SIGINT."""

    def __init__(self, master: int, output: int = 1) -> None:
        self.master = master
        self.output = output  # where the app's output goes: our stdout, as a rule
        self._saved: list[Any] | None = None
        self._previous: object = None

    def __enter__(self) -> TerminalRelay:
        source = _window_source()
        _copy_window_size(source, self.master)
        self._previous = signal.signal(signal.SIGWINCH, lambda _number, _frame: _copy_window_size(source, self.master))
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
                _write_all(self.output, data)
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
