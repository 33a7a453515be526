"""Published ports: `-p [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]`, parsed without heavy imports (spec.py uses it).

HOSTIP is an IPv4 address, or an IPv6 one in brackets (`[fd00::1]:8080:80`); `0.0.0.0`
is the same as none (every address of the host), `[::]` every IPv6 address alone."""

from __future__ import annotations

from typing import NamedTuple

from sdrun.errors import SpecError

PROTOCOLS = ("tcp", "udp")
ANY_IPV6 = "::"


class PortMapping(NamedTuple):
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""  # "" = every address of the host; "::" = every IPv6 address

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        spec, _, protocol = text.partition("/")
        protocol = protocol or "tcp"
        usage = f"invalid port '{text}': expected [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]"
        host_ip, ports = _split_host_ip(spec)
        host_port, _, container_port = ports.partition(":")
        if protocol not in PROTOCOLS or not _is_port(host_port) or not _is_port(container_port):
            raise SpecError(usage)
        if host_ip:
            host_ip = _canonical_address(host_ip, bracketed=spec.startswith("["), text=text)
        return cls(int(host_port), int(container_port), protocol, "" if host_ip == "0.0.0.0" else host_ip)

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host_ip

    def __str__(self) -> str:
        address = f"[{self.host_ip}]" if self.is_ipv6 else self.host_ip
        prefix = f"{address}:" if address else ""
        return f"{prefix}{self.host_port}:{self.container_port}/{self.protocol}"

    def clashes_with(self, other: PortMapping) -> bool:
        """Both would take the same host port: same protocol and port, and an address in common."""
        same_port = (self.protocol, self.host_port) == (other.protocol, other.host_port)
        return same_port and _addresses_overlap(self, other)


def _addresses_overlap(one: PortMapping, other: PortMapping) -> bool:
    if not one.host_ip or not other.host_ip or one.host_ip == other.host_ip:
        return True
    return ANY_IPV6 in (one.host_ip, other.host_ip) and one.is_ipv6 and other.is_ipv6


def _split_host_ip(spec: str) -> tuple[str, str]:
    """(HOSTIP, HOSTPORT:CTRPORT): HOSTIP in brackets when it is IPv6, else before the first of two colons."""
    if spec.startswith("["):
        address, closed, ports = spec[1:].partition("]:")
        return (address, ports) if closed else ("", "")
    if spec.count(":") == 2:
        address, _, ports = spec.partition(":")
        return address, ports
    return "", spec


def _canonical_address(address: str, *, bracketed: bool, text: str) -> str:
    """The address in its canonical text (IPv6 compressed and lower-case), or SpecError. An IPv6
    loopback address is refused: the kernel never routes ::1 to another interface (there is no
    route_localnet for IPv6), so a DNAT from it to a pod cannot work (docs/networking.md, "IPv6")."""
    import socket  # here: a pod's tear-down reads ports, and parses none

    family = socket.AF_INET6 if bracketed else socket.AF_INET
    try:
        canonical = socket.inet_ntop(family, socket.inet_pton(family, address))
    except OSError:
        kind = "an IPv6 address in brackets" if bracketed or ":" in address else "an IPv4 address"
        raise SpecError(f"invalid port '{text}': the host IP must be {kind}") from None
    if canonical == "::1":
        raise SpecError(
            f"cannot publish port '{text}' on [::1]: the kernel does not forward IPv6 loopback "
            "traffic to a pod; publish on 127.0.0.1, or on every address (the port then answers on the host's "
            "other IPv6 addresses)"
        )
    return canonical


def _is_port(text: str) -> bool:
    return text.isdigit() and 0 < int(text) < 65536
