"""Published ports: `-p [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]`, parsed without heavy imports (spec.py uses it)."""

from __future__ import annotations

from typing import NamedTuple

from sdrun.errors import SpecError

PROTOCOLS = ("tcp", "udp")


class PortMapping(NamedTuple):
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""  # "" = every address of the host

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        spec, _, protocol = text.partition("/")
        protocol = protocol or "tcp"
        host_ip, _, ports = spec.partition(":") if spec.count(":") == 2 else ("", "", spec)
        host_port, _, container_port = ports.partition(":")
        usage = f"invalid port '{text}': expected [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]"
        if protocol not in PROTOCOLS or not _is_port(host_port) or not _is_port(container_port):
            raise SpecError(usage)
        if host_ip:
            import socket  # here: a pod's tear-down reads ports, and parses none

            try:
                socket.inet_pton(socket.AF_INET, host_ip)
            except OSError:
                raise SpecError(f"{usage} (the host IP must be an IPv4 address)") from None
        return cls(int(host_port), int(container_port), protocol, "" if host_ip == "0.0.0.0" else host_ip)

    def __str__(self) -> str:
        prefix = f"{self.host_ip}:" if self.host_ip else ""
        return f"{prefix}{self.host_port}:{self.container_port}/{self.protocol}"

    def clashes_with(self, other: PortMapping) -> bool:
        """Both would take the same host port: same protocol and port, and an address in common."""
        same_port = (self.protocol, self.host_port) == (other.protocol, other.host_port)
        return same_port and (not self.host_ip or not other.host_ip or self.host_ip == other.host_ip)


def _is_port(text: str) -> bool:
    return text.isdigit() and 0 < int(text) < 65536
