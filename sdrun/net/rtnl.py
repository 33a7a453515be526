"""One rtnetlink request without pyroute2: deleting an interface by name, which every pod's
tear-down does to its veth.

sdrun.net.link builds its requests with pyroute2's message classes, whose import
(~20 ms) a tear-down would pay for 32 bytes of header and a name. The kernel
deletes both ends of a veth pair before it acknowledges: once this returns, the
pod's interface is gone from the bridge, without waiting for the kernel to
destroy the pod's network namespace (a workqueue, and RCU grace periods, later).
"""

from __future__ import annotations

import _socket  # socket's C module: socket.py's own imports (enum...) would cost every tear-down
import errno
import os
import struct

RTM_DELLINK = 17
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
IFLA_IFNAME = 3
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence number, port id
IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), type, index, flags, change
RTATTR = struct.Struct("=HH")  # length, type
ERROR_CODE = struct.Struct("=i")  # after the header of an NLMSG_ERROR: 0 (done) or -errno
SEQUENCE = 1


def delete_link(name: str) -> bool:
    """Delete the interface called name (a veth takes its peer along); False if there is none.
    Raises OSError if the kernel refuses."""
    encoded = name.encode() + b"\0"
    attribute = RTATTR.pack(RTATTR.size + len(encoded), IFLA_IFNAME) + encoded
    attribute += b"\0" * (-len(attribute) % 4)  # attributes are 4-aligned
    body = IFINFOMSG.pack(_socket.AF_UNSPEC, 0, 0, 0, 0) + attribute
    header = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, SEQUENCE, 0)
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, _socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        sock.send(header + body)
        error = _acknowledgement(sock)
    finally:
        sock.close()
    if error == errno.ENODEV:
        return False
    if error:
        raise OSError(error, f"delete interface: {os.strerror(error)}", name)
    return True


def _acknowledgement(sock: _socket.socket) -> int:
    """The errno of our request's acknowledgement. The socket is in no multicast group: all it
    receives is the answer to the one request sent on it."""
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + NLMSG_HEADER.size <= len(data):
            length, kind, _, sequence, _ = NLMSG_HEADER.unpack_from(data, offset)
            if kind == NLMSG_ERROR and sequence == SEQUENCE:
                return -int(ERROR_CODE.unpack_from(data, offset + NLMSG_HEADER.size)[0])
            offset += (length + 3) & ~3 or len(data)  # a zero length ends the batch
