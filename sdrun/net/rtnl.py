"""Route netlink, encoded by hand: the few requests a pod's network needs, each acknowledged.

A pod's set-up creates a veth pair (its peer moved into the pod's namespace),
sets links up and on a bridge, adds an address and a default route; its
tear-down deletes the veth. Each is a fixed header (rtnetlink(7)) and a few
attributes, which this module packs with struct: pyroute2's message classes
cost every set-up ~17 ms of imports for the same bytes. The imports here are
C modules only, so the unit's tear-down (sdrun.net.unplug) can use it too. The
kernel deletes both ends of a veth pair before it acknowledges: once
delete_link returns, the pod's interface is gone from the bridge.

A refusal is an OSError with the kernel's errno, the request's name and the
interface it was about: `create veth: File exists: sdv0123456789ab`.
"""

from __future__ import annotations

import _socket  # socket's C module: socket.py's own imports (enum...) would cost every tear-down
import errno
import os
import struct

RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 20, 24
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
CREATE = NLM_F_CREATE | NLM_F_EXCL
IFF_UP = 0x1
# Attributes (linux/if_link.h, if_addr.h, rtnetlink.h, veth.h).
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD = 1, 3, 10, 18, 20, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02  # ifaddrmsg's flags (u8), and IFA_FLAGS (u32) for the kernel's newer ones
RTA_OIF, RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1

NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence number, port id
IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst len, src len, tos, table, protocol, scope, type, flags
RTATTR = struct.Struct("=HH")  # length, type
U32 = struct.Struct("=I")
ERROR_CODE = struct.Struct("=i")  # after the header of an NLMSG_ERROR: 0 (done) or -errno
RECEIVE_BUFFER = 65536


def attribute(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes (attributes nest by putting attributes in the payload)."""
    packed = RTATTR.pack(RTATTR.size + len(payload), kind) + payload
    return packed + b"\0" * (-len(packed) % 4)


def text(value: str) -> bytes:
    return value.encode() + b"\0"


def u32(value: int) -> bytes:
    return U32.pack(value)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ip_bytes(address: str) -> tuple[int, bytes]:
    """(address family, packed address) of an IPv4 or IPv6 address."""
    family = _socket.AF_INET6 if ":" in address else _socket.AF_INET
    return family, _socket.inet_pton(family, address)


def link_message(index: int = 0, flags: int = 0, change: int = 0, attributes: bytes = b"") -> bytes:
    return IFINFOMSG.pack(_socket.AF_UNSPEC, 0, index, flags, change) + attributes


class Socket:
    """A route netlink socket in the network namespace of the thread that opened it. The socket is
    in no multicast group, so all it receives are the answers to its own requests."""

    def __init__(self) -> None:
        self.sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, _socket.NETLINK_ROUTE)
        self._sequence = 0
        try:
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, body: bytes, what: str, interface: str, flags: int = 0) -> None:
        """Send one request and wait for its acknowledgement; raise OSError if the kernel refuses."""
        self._sequence += 1
        header = NLMSG_HEADER.pack(
            NLMSG_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self._sequence, 0
        )
        self.sock.send(header + body)
        error = self._acknowledgement(self._sequence)
        if error:
            raise OSError(error, f"{what}: {os.strerror(error)}", interface)

    def _acknowledgement(self, sequence: int) -> int:
        """The errno of the request's acknowledgement (0: done)."""
        while True:
            data = self.sock.recv(RECEIVE_BUFFER)
            offset = 0
            while offset + NLMSG_HEADER.size <= len(data):
                length, kind, _, number, _ = NLMSG_HEADER.unpack_from(data, offset)
                if kind == NLMSG_ERROR and number == sequence:
                    return -int(ERROR_CODE.unpack_from(data, offset + NLMSG_HEADER.size)[0])
                offset += (length + 3) & ~3 or len(data)  # messages are 4-aligned; a zero length ends the batch


def delete_link(name: str) -> bool:
    """Delete the interface called name (a veth takes its peer along); False if there is none.
    Raises OSError if the kernel refuses."""
    with Socket() as sock:
        try:
            sock.request(
                RTM_DELLINK, link_message(attributes=attribute(IFLA_IFNAME, text(name))), "delete interface", name
            )
        except OSError as error:
            if error.errno == errno.ENODEV:
                return False
            raise
    return True
