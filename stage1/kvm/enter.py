"""`sdrun enter` for a kvm pod: run a command in the guest through the sdrun.agent port.

The port's host side is a pair of FIFOs in the pod's stage1 directory (qemu's
pipe chardev: it reads agent.in and writes agent.out). We send one line,
"NONCE BASE64(shell-quoted argv)"; the guest init answers "NONCE\\n", the
command's output (stdout and stderr together; its stdin is /dev/null), then
"\\nNONCE:STATUS\\n". Output an interrupted earlier session left in the pipe
comes before our nonce and is skipped. One session at a time (agent.lock).
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import secrets
import select
import shlex
from typing import TYPE_CHECKING, NoReturn

from sdrun.errors import SdrunError
from stage1.kvm.backend import stage1_dir

if TYPE_CHECKING:
    from sdrun.pod import Pod

POLL_SECONDS = 0.5  # how often a wait for output checks that the VM still runs


def enter(pod: Pod, leader: int, argv: list[str]) -> NoReturn:
    scratch = stage1_dir(pod)
    lock = os.open(scratch / "agent.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    replies = os.open(scratch / "agent.out", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        requests = os.open(scratch / "agent.in", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # ENXIO: nobody holds the pipe open for reading, so qemu is gone
        raise SdrunError(f"pod '{pod.name}': its VM is not running") from None
    nonce = secrets.token_hex(8)
    os.write(requests, f"{nonce} {base64.b64encode(shlex.join(argv).encode()).decode()}\n".encode())
    os._exit(relay(replies, nonce.encode(), leader))


def relay(replies: int, nonce: bytes, leader: int) -> int:
    """Copy the command's output to our stdout; return its exit status."""
    start = nonce + b"\n"
    end = re.compile(rb"\n" + nonce + rb":(\d+)\n")
    longest_end = len(nonce) + 6  # "\n" NONCE ":" up to 3 digits "\n"
    pending = b""
    started = False
    while True:
        chunk = read_some(replies, leader)
        pending += chunk
        if not started:
            position = pending.find(start)
            if position < 0:
                pending = pending[-len(start) :]
                continue
            pending, started = pending[position + len(start) :], True
        if match := end.search(pending):
            os.write(1, pending[: match.start()])
            return int(match[1])
        # Keep back what could be the start of the end marker.
        ready = max(0, len(pending) - longest_end)
        os.write(1, pending[:ready])
        pending = pending[ready:]


def read_some(fd: int, leader: int) -> bytes:
    while True:
        readable, _, _ = select.select([fd], [], [], POLL_SECONDS)
        if readable:
            data = os.read(fd, 65536)
            if data:
                return data
        try:
            os.kill(leader, 0)
        except ProcessLookupError:
            raise SdrunError("the VM stopped while the command ran") from None
