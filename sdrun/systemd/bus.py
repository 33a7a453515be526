"""systemd's manager over D-Bus, with blocking calls. The only module that imports dbus-next.

Methods are called by hand-built messages rather than introspected proxies:
introspecting systemd on every call would cost a round trip and ~100 KiB of XML.
Jobs are waited for as crun does: subscribe to JobRemoved *before* the call
that creates the job, then wait for that job's result and fail unless "done".

sdrun uses dbus-next's message layer (Message, its marshaller and unmarshaller,
EXTERNAL authentication) over a plain blocking socket. A command makes a few
calls in a row and, at most, waits on the bus and the journal together (see
sdrun.run), which a selector does; an asyncio loop would cost every command its
import (~40 ms of a ~150 ms run) and buy nothing.
"""

from __future__ import annotations

import array
import contextlib
import importlib
import os
import socket
from collections.abc import Sequence
from typing import Any, NamedTuple

from sdrun.errors import BusUnavailable, NotFound, SdrunError
from sdrun.imports import skip_package_init


def _load_message_layer() -> None:
    skip_package_init("dbus_next")  # its __init__ imports its asyncio and GLib front-ends
    # First of all: dbus_next.errors and dbus_next.message import each other, and only this
    # order resolves (the package __init__ would otherwise have set it).
    importlib.import_module("dbus_next.errors")


_load_message_layer()
from dbus_next._private.unmarshaller import Unmarshaller  # noqa: E402
from dbus_next.auth import AuthExternal  # noqa: E402
from dbus_next.constants import MessageType  # noqa: E402
from dbus_next.errors import AuthError, InvalidMessageError  # noqa: E402
from dbus_next.message import Message  # noqa: E402
from dbus_next.signature import Variant  # noqa: E402

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
DEFAULT_ADDRESS = "unix:path=/run/dbus/system_bus_socket"
REPLY_TYPES = (MessageType.METHOD_RETURN, MessageType.ERROR)
CONNECT_TIMEOUT = 30.0  # seconds for connect and authentication; calls then block as systemctl's do

# A transient unit property: (name, D-Bus signature, value). Built elsewhere
# without dbus-next; wrapped into Variants here.
Property = tuple[str, str, Any]


class JobFailed(SdrunError):
    """A job systemd ran for us ended with a result other than "done"."""

    def __init__(self, what: str, result: str) -> None:
        super().__init__(f"{what}: systemd's job ended with result '{result}'")
        self.result = result


class BusError(SdrunError):
    """A D-Bus call failed; `name` is the D-Bus error name. The names sdrun acts on have a class
    of their own (BUS_ERRORS), which callers catch instead of comparing names."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name


class UnknownObject(BusError):
    """No object at the path called: a unit systemd has not loaded, asked by its object path."""


class NoSuchUnit(BusError):
    """The manager has no unit of that name loaded."""


class UnitExists(BusError):
    """A transient unit of that name exists already (a failed one not yet reset, say)."""


class NoSuchMachine(BusError):
    """machined has no machine of that name."""


class MachineExists(BusError):
    """machined has a machine of that name already."""


BUS_ERRORS: dict[str, type[BusError]] = {
    "org.freedesktop.DBus.Error.UnknownObject": UnknownObject,
    "org.freedesktop.systemd1.NoSuchUnit": NoSuchUnit,
    "org.freedesktop.systemd1.UnitExists": UnitExists,
    "org.freedesktop.machine1.NoSuchMachine": NoSuchMachine,
    "org.freedesktop.machine1.MachineExists": MachineExists,
}


def bus_error(name: str, text: str) -> BusError:
    """The exception for a D-Bus error reply: its name's class, else a plain BusError."""
    return BUS_ERRORS.get(name, BusError)(name, text)


class UnitStatus(NamedTuple):
    name: str
    load_state: str
    active_state: str
    sub_state: str
    description: str = ""


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", DEFAULT_ADDRESS)


def unit_object_path(unit: str) -> str:
    """The object path systemd gives a unit (sd-bus's bus_label_escape)."""
    escaped = "".join(
        char if char.isascii() and (char.isalpha() or (char.isdigit() and index)) else f"_{ord(char):02x}"
        for index, char in enumerate(unit)
    )
    return f"{MANAGER_PATH}/unit/{escaped}"


def socket_path(address: str) -> str:
    """The socket of a `unix:path=...` address (the only kind a system bus has)."""
    for entry in address.split(";"):
        kind, _, options = entry.partition(":")
        values = dict(option.partition("=")[::2] for option in options.split(","))
        if kind == "unix" and "path" in values:
            return values["path"]
    raise BusUnavailable(f"unsupported bus address '{address}'", hint="expected unix:path=/path/to/socket")


class Connection:
    """One authenticated connection to a bus: numbered messages out, whole messages in."""

    def __init__(self, sock: socket.socket, *, unix_fds: bool = False) -> None:
        self.sock = sock
        self.unix_fds = unix_fds  # the bus agreed to carry file descriptors (NEGOTIATE_UNIX_FD)
        self._serial = 0
        self._unmarshaller = Unmarshaller(None, sock)

    @classmethod
    def open(cls, path: str, *, unix_fds: bool = False) -> Connection:
        """unix_fds: negotiate passing file descriptors, which costs the handshake a round trip."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(path)
            _authenticate(sock, unix_fds=unix_fds)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return cls(sock, unix_fds=unix_fds)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, message: Message) -> int:
        self._serial += 1
        message.serial = self._serial
        if not message.unix_fds:
            self.sock.sendall(message._marshall())
            return self._serial
        if not self.unix_fds:
            raise SdrunError("internal: file descriptors on a bus connection that did not negotiate them")
        data = message._marshall(negotiate_unix_fd=True)
        # The descriptors go with the message's first byte; the rest of it follows as any data.
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", message.unix_fds).tobytes())]
        sent = self.sock.sendmsg([data], rights)
        self.sock.sendall(data[sent:])
        return self._serial

    def receive(self, *, block: bool) -> Message | None:
        """The next whole message; without block, None if none has fully arrived yet."""
        self.sock.setblocking(block)
        try:
            while True:
                try:
                    message: Message | None = self._unmarshaller.unmarshall()
                except (EOFError, ConnectionError):
                    raise SdrunError("systemd's bus closed the connection") from None
                except InvalidMessageError as error:
                    raise SdrunError(f"a malformed message on systemd's bus: {error}") from None
                if message is not None:
                    self._unmarshaller = Unmarshaller(None, self.sock)
                    return message
                if not block:
                    return None
        finally:
            self.sock.setblocking(True)


def _authenticate(sock: socket.socket, *, unix_fds: bool = False) -> None:
    """The D-Bus SASL handshake, EXTERNAL (our uid, which the kernel vouches for); with unix_fds,
    then NEGOTIATE_UNIX_FD, which the bus answers AGREE_UNIX_FD before we BEGIN."""
    auth = AuthExternal()
    sock.sendall(b"\0" + auth._format_line(auth._authentication_start(negotiate_unix_fd=unix_fds)))
    while True:
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(256)
            if not chunk:
                raise AuthError("the bus closed the connection during authentication")
            reply += chunk
        line = auth._receive_line(reply.decode().rstrip("\r\n"))
        sock.sendall(auth._format_line(line))
        if line == "BEGIN":
            return


class Systemd:
    """One connection to systemd's manager. Signals that arrive while a call waits for its
    reply are recorded (finished jobs, units that became inactive) for later waits."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._finished_jobs: dict[str, str] = {}
        self._watched: set[str] = set()  # object paths of units whose end we watch
        self._ended: set[str] = set()  # ... and of those seen inactive or failed since

    @classmethod
    def connect(cls, address: str | None = None, *, unix_fds: bool = False) -> Systemd:
        """unix_fds: the connection may pass file descriptors (start_transient_unit's fds)."""
        address = address or system_bus_address()
        path = socket_path(address)
        try:
            connection = Connection.open(path, unix_fds=unix_fds)
        except (OSError, AuthError) as error:
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise BusUnavailable(
                f"cannot reach systemd's bus at {path}: {reason}",
                hint="sdrun needs a running systemd with its system bus (set DBUS_SYSTEM_BUS_ADDRESS to use another)",
            ) from None
        systemd = cls(connection)
        # Three calls, sent at once and answered in order: one round trip's wait instead of three.
        systemd.call_all(
            [
                _call("Hello", path=DBUS_PATH, interface=DBUS, destination=DBUS),
                _add_match(f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='JobRemoved'"),
                _call("Subscribe"),
            ]
        )
        return systemd

    def close(self) -> None:
        self.connection.close()

    def fileno(self) -> int:
        return self.connection.fileno()

    def call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        path: str = MANAGER_PATH,
        interface: str = MANAGER,
        destination: str = SYSTEMD,
    ) -> list[Any]:
        (reply,) = self.call_all(
            [_call(member, signature, body, path=path, interface=interface, destination=destination)]
        )
        return reply

    def call_all(self, messages: Sequence[Message]) -> list[list[Any]]:
        """Send every message, then collect their replies' bodies, in order; the first error raises."""
        serials = {self.connection.send(message): message.member for message in messages}
        replies: dict[int, Message] = {}
        while len(replies) < len(serials):
            message = self.connection.receive(block=True)
            assert message is not None
            if message.reply_serial in serials and message.message_type in REPLY_TYPES:
                replies[message.reply_serial] = message
            else:
                self._on_message(message)
        bodies = []
        for serial, member in serials.items():
            reply = replies[serial]
            if reply.message_type == MessageType.ERROR:
                text = reply.body[0] if reply.body else reply.error_name
                raise bus_error(str(reply.error_name), f"{member}: {text}")
            bodies.append(list(reply.body))
        return bodies

    def dispatch_pending(self) -> None:
        """Handle every signal that has arrived; call when fileno() is readable."""
        while (message := self.connection.receive(block=False)) is not None:
            self._on_message(message)

    def _on_message(self, message: Message) -> None:
        if message.message_type != MessageType.SIGNAL:
            return
        if message.member == "JobRemoved":
            _, job, _, result = message.body
            self._finished_jobs[job] = result
        elif message.member == "PropertiesChanged" and message.path in self._watched:
            interface, changed, _ = message.body
            state = changed.get("ActiveState") if interface == UNIT else None
            if state is not None and state.value in ("inactive", "failed"):
                self._ended.add(message.path)

    def wait_for_job(self, job: str, what: str) -> None:
        """Block until the job is removed; JobFailed unless its result is "done"."""
        while job not in self._finished_jobs:
            message = self.connection.receive(block=True)
            assert message is not None
            self._on_message(message)
        result = self._finished_jobs.pop(job)
        if result != "done":
            raise JobFailed(what, result)

    # --- the manager's methods ---

    def start_transient_unit(self, unit: str, properties: Sequence[Property], fds: Sequence[int] = ()) -> str:
        """Create a transient unit and queue its start; return the job, for wait_for_job().
        Between the two, systemd starts the unit while the caller does other work. fds: the
        descriptors that properties of type "h" name by their index in it (StandardInputFileDescriptor=...),
        on a connection made with unix_fds. A property systemd 252 would not keep across a
        daemon-reload is refused (propertytable, loaded already by whoever made the properties)."""
        from sdrun.systemd.propertytable import refuse_unreloadable

        refuse_unreloadable(properties)
        wrapped = [[name, Variant(signature, value)] for name, signature, value in properties]
        message = _call("StartTransientUnit", "ssa(sv)a(sa(sv))", [unit, "fail", wrapped, []])
        message.unix_fds = list(fds)
        try:
            ((job,),) = self.call_all([message])
        except UnitExists:
            raise SdrunError(
                f"unit {unit} already exists", hint=f"'systemctl reset-failed {unit}' or 'sdrun gc'"
            ) from None
        return str(job)

    def stop_unit(self, unit: str) -> None:
        try:
            (job,) = self.call("StopUnit", "ss", [unit, "replace"])
        except NoSuchUnit:
            return  # already gone: stopping is done
        self.wait_for_job(job, f"stopping {unit}")

    def kill_unit(self, unit: str, signal_number: int, whom: str = "all") -> None:
        try:
            self.call("KillUnit", "ssi", [unit, whom, signal_number])
        except (NoSuchUnit, UnknownObject):
            raise NotFound(f"{unit} is not running") from None

    def reset_failed_unit(self, unit: str) -> None:
        with contextlib.suppress(NoSuchUnit):
            self.call("ResetFailedUnit", "s", [unit])

    def set_unit_properties(self, unit: str, properties: Sequence[Property]) -> None:
        """Change a unit's properties while it runs (runtime only, as a transient unit's are: sdrun-oci's update)."""
        wrapped = [[name, Variant(signature, value)] for name, signature, value in properties]
        self.call("SetUnitProperties", "sba(sv)", [unit, True, wrapped])

    def attach_processes(self, unit: str, pids: Sequence[int]) -> None:
        self.call("AttachProcessesToUnit", "ssau", [unit, "", list(pids)])

    def list_units(self, patterns: Sequence[str]) -> list[UnitStatus]:
        (units,) = self.call("ListUnitsByPatterns", "asas", [[], list(patterns)])
        return [UnitStatus(unit[0], unit[2], unit[3], unit[4], unit[1]) for unit in units]

    def unit_processes(self, unit: str) -> list[int]:
        (processes,) = self.call("GetUnitProcesses", "s", [unit])
        return [int(process[1]) for process in processes]

    def unit_properties(self, unit: str, interface: str = UNIT) -> dict[str, Any]:
        """All properties of a loaded unit on one interface; NotFound if systemd has no such unit."""
        (values,) = self._call_on_unit(unit, "GetAll", "s", [interface])
        return {name: variant.value for name, variant in values.items()}

    def unit_property(self, unit: str, interface: str, name: str) -> Any:
        """One property of a loaded unit. Cheaper than unit_properties on a hot path: GetAll on the
        Service interface returns ~200 values, ~6 ms to unmarshal; a Get ~0.6 ms."""
        (variant,) = self._call_on_unit(unit, "Get", "ss", [interface, name])
        return variant.value

    def _call_on_unit(self, unit: str, member: str, signature: str, body: Sequence[Any]) -> list[Any]:
        try:
            return self.call(member, signature, body, path=unit_object_path(unit), interface=PROPERTIES)
        except (UnknownObject, NoSuchUnit):
            raise NotFound(f"{unit} is not loaded") from None

    def watch_unit(self, unit: str) -> None:
        """Start noting when the unit reaches inactive or failed; watch before the change can happen."""
        path = unit_object_path(unit)
        self._watched.add(path)
        # arg0: the Unit interface's changes only (ActiveState is there). The Service interface's
        # come with every state change too, with dozens of values each, ~10 ms of unmarshalling a run.
        rule = f"type='signal',sender='{SYSTEMD}',path='{path}',interface='{PROPERTIES}',member='PropertiesChanged'"
        self.call_all([_add_match(f"{rule},arg0='{UNIT}'")])

    def unit_has_ended(self, unit: str) -> bool:
        """Whether a watched unit was seen inactive or failed (signals are read by the calls
        and by dispatch_pending)."""
        return unit_object_path(unit) in self._ended

    def check_unit_ended(self, unit: str) -> bool:
        """Whether a watched unit whose start job is done has ended, asked afresh. The signals
        read so far may be stale (a new unit starts out inactive): those are dropped."""
        state = self.unit_property(unit, UNIT, "ActiveState")
        # Signals sent before the reply are older than the state it reports; those after, newer.
        self._ended.discard(unit_object_path(unit))
        if state in ("inactive", "failed"):
            self._ended.add(unit_object_path(unit))
        return self.unit_has_ended(unit)


def _call(
    member: str,
    signature: str = "",
    body: Sequence[Any] = (),
    *,
    path: str = MANAGER_PATH,
    interface: str = MANAGER,
    destination: str = SYSTEMD,
) -> Message:
    return Message(
        destination=destination, path=path, interface=interface, member=member, signature=signature, body=list(body)
    )


def _add_match(rule: str) -> Message:
    return _call("AddMatch", "s", [rule], path=DBUS_PATH, interface=DBUS, destination=DBUS)


# --- systemd-machined: pods as machines (`machinectl list`); the logic is in sdrun.systemd.machined ---

MACHINED = "org.freedesktop.machine1"
MACHINED_PATH = "/org/freedesktop/machine1"
MACHINED_MANAGER = "org.freedesktop.machine1.Manager"


def register_machine(
    systemd: Systemd, name: str, machine_id: bytes, leader: int, root_directory: str, interfaces: Sequence[int]
) -> None:
    """RegisterMachineWithNetwork: machined adopts the unit that holds `leader` and forgets the
    machine when it stops. interfaces: the host-side indexes of the machine's links (machinectl's
    "Iface:"); its addresses machined reads itself, in the leader's network namespace.

    The reply is awaited: a call written without one is lost when the caller closes its
    connection first, or while the bus is still starting machined (it is bus-activated)."""
    systemd.call(
        "RegisterMachineWithNetwork",
        "sayssusai",
        [name, machine_id, "sdrun", "container", leader, root_directory, list(interfaces)],
        path=MACHINED_PATH,
        interface=MACHINED_MANAGER,
        destination=MACHINED,
    )


def machine_id(systemd: Systemd, name: str) -> bytes | None:
    """The id of the machine registered as name; None if there is none."""
    try:
        (path,) = systemd.call(
            "GetMachine", "s", [name], path=MACHINED_PATH, interface=MACHINED_MANAGER, destination=MACHINED
        )
        (variant,) = systemd.call(
            "Get",
            "ss",
            ["org.freedesktop.machine1.Machine", "Id"],
            path=path,
            interface=PROPERTIES,
            destination=MACHINED,
        )
    except NoSuchMachine:
        return None
    return bytes(variant.value)


def unregister_machine(systemd: Systemd, name: str) -> None:
    """Forget the machine; its unit and processes are left alone (TerminateMachine would stop them)."""
    systemd.call("UnregisterMachine", "s", [name], path=MACHINED_PATH, interface=MACHINED_MANAGER, destination=MACHINED)


# --- unit files: what `sdrun install` and `uninstall` ask of the manager ---


def reload(systemd: Systemd) -> None:
    """daemon-reload; systemd replies once it has re-read every unit file."""
    systemd.call("Reload")


def enable_unit_files(systemd: Systemd, units: Sequence[str]) -> None:
    systemd.call("EnableUnitFiles", "asbb", [list(units), False, True])


def disable_unit_files(systemd: Systemd, units: Sequence[str]) -> None:
    systemd.call("DisableUnitFiles", "asb", [list(units), False])


def start_unit(systemd: Systemd, unit: str, *, wait: bool = True) -> None:
    (job,) = systemd.call("StartUnit", "ss", [unit, "replace"])
    if wait:
        systemd.wait_for_job(job, f"starting {unit}")


def restart_unit(systemd: Systemd, unit: str, *, wait: bool = False, only_if_running: bool = False) -> None:
    """Queue a restart (TryRestartUnit with only_if_running: none for a unit that does not run);
    without wait, return at once: the caller may be a unit the restart would wait for."""
    (job,) = systemd.call("TryRestartUnit" if only_if_running else "RestartUnit", "ss", [unit, "replace"])
    if wait:
        systemd.wait_for_job(job, f"restarting {unit}")
