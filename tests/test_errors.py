"""The one-line error every front end prints, and D-Bus error names as exception classes."""

from __future__ import annotations

import pytest

from sdrun.errors import error_line
from sdrun.systemd import bus


def test_an_error_line_names_the_program_and_its_hint_on_one_line() -> None:
    assert error_line("no such pod: 'web'", "'sdrun list' shows the pods") == (
        "sdrun: no such pod: 'web' (hint: 'sdrun list' shows the pods)\n"
    )
    assert error_line("cannot add veth", program="sdrun network") == "sdrun network: cannot add veth\n"


@pytest.mark.parametrize(("name", "kind"), sorted(bus.BUS_ERRORS.items()))
def test_each_known_bus_error_name_raises_its_own_class(name: str, kind: type[bus.BusError]) -> None:
    error = bus.bus_error(name, "StopUnit: nope")
    assert type(error) is kind and error.name == name and error.message == "StopUnit: nope"


def test_an_unknown_bus_error_name_is_a_plain_bus_error() -> None:
    error = bus.bus_error("org.freedesktop.DBus.Error.AccessDenied", "StartTransientUnit: denied")
    assert type(error) is bus.BusError and error.name == "org.freedesktop.DBus.Error.AccessDenied"
