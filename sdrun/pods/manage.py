"""Pods of several apps: create and remove a pod, add, stop and remove its apps, collect leftovers.

Each step is ordered so that a kill -9 at any point leaves what `sdrun gc` (collect) takes apart:
a pod's or app's directory comes first (PodStore: staged, then renamed into place, locked by its
creator), then what it names (the slice, the namespace files, the network lease; an app's unit),
and its `ready` file last. A failure undoes what was made, at once.
"""

from __future__ import annotations

import contextlib
import re
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from sdrun.errors import NotFound, SdrunError, SpecError
from sdrun.net import NETNS_DIR, netns_name, on_network
from sdrun.pod import Pod
from sdrun.pods import (
    APP_LABEL,
    POD_LABEL,
    SLICE_PATTERN,
    Stores,
    app_named,
    app_unit_name,
    apps_of,
    is_ready,
    mark_ready,
    namespaces,
    namespaces_dir,
    slice_unit,
)
from sdrun.settings import APP, POD, POD_AND_APP, RUN, Setting, of_level
from sdrun.spec import DEFAULT_STAGE1, SETTINGS_TABLE, PodSpec, assemble_spec, check_settings, parse_name
from sdrun.systemd.propertytable import prop

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sdrun.image.pullsettings import PullSettings
    from sdrun.paths import Paths
    from sdrun.systemd.bus import Property, Systemd

SUPPORTED_STAGE1 = "namespace"  # the one stage1 whose apps join a pod's namespaces, so far


def pod_settings() -> tuple[Setting, ...]:
    """The options of `sdrun pod create`: the table's rows that are the pod's."""
    return tuple(row for row in of_level(SETTINGS_TABLE, POD, POD_AND_APP) if RUN in row.front_ends)


def app_settings() -> tuple[Setting, ...]:
    """The options (and IMAGE, CMD) of `sdrun app add`: the table's rows that are an app's."""
    return tuple(row for row in of_level(SETTINGS_TABLE, APP, POD_AND_APP) if RUN in row.front_ends)


def check_level(given: Mapping[str, object], allowed: tuple[Setting, ...], command: str, other: str) -> None:
    """One line for an option of the other level (`app add --net`): the table says whose it is."""
    keys = {row.dest for row in allowed}
    for key in given:
        if key not in keys:
            flag = next((row.flag for row in SETTINGS_TABLE if row.dest == key), key)
            raise SpecError(f"{flag} is an option of '{other}', not of '{command}'")


# --- the pod ---


def create_pod(systemd: Systemd, paths: Paths, given: Mapping[str, Any]) -> Pod:
    """`sdrun pod create`: the pod's directory, slice and namespaces, and no app."""
    check_level(given, pod_settings(), "sdrun pod create", "sdrun app add")
    settings = check_settings(given, "command line")
    stage1 = str(settings.get("stage1", DEFAULT_STAGE1))
    if stage1 != SUPPORTED_STAGE1:
        raise SpecError(f"a pod of several apps needs the {SUPPORTED_STAGE1} stage1, not {stage1}")
    from stage1.interface import Stage1

    net = str(settings.get("net") or Stage1.named(stage1).default_network)
    name = str(settings["name"])
    _refuse_taken_name(paths, name)
    # assemble_spec wants a root for the app a one-app spec has: the pod has none of its own.
    spec = assemble_spec({**settings, "rootfs": "/"}, SETTINGS_TABLE, name=name, stage1=stage1, net=net)
    spec = spec._replace(rootfs=None)
    stores = Stores.of(paths)
    group = stores.groups.create(spec)
    with group.locked():
        try:
            _make_pod(systemd, paths, group)
        except BaseException:
            _take_apart(systemd, stores, group)
            raise
    return group


def _refuse_taken_name(paths: Paths, name: str) -> None:
    from sdrun.pod import PodStore

    if PodStore(paths).named(name) is not None:
        raise SdrunError(f"a pod named '{name}' already exists", hint=f"'sdrun rm {name}' or choose another --name")


def _make_pod(systemd: Systemd, paths: Paths, group: Pod) -> None:
    spec = group.spec
    systemd.wait_for_job(
        systemd.start_transient_unit(slice_unit(group.name), _slice_properties(group)),
        f"starting {slice_unit(group.name)}",
    )
    namespaces.hold(paths.root, group.uuid, pod_hostname(spec), own_network=spec.net == "none")
    if on_network(spec):
        from sdrun.net.pod import setup

        setup(paths.root, group)
    mark_ready(group)


def _slice_properties(group: Pod) -> list[Property]:
    from sdrun.systemd.properties import _cpu_quota

    resources = group.spec.resources
    limits = [
        ("MemoryMax", resources.memory),
        ("CPUQuotaPerSecUSec", _cpu_quota(resources.cpus)),
        ("TasksMax", resources.pids),
    ]
    return [
        prop("Description", slice_description(group)),
        *[prop(name, value) for name, value in limits if value is not None],
    ]


def slice_description(group: Pod) -> str:
    """Whose the slice is, for gc: the pod's name and UUID, and its sdrun root."""
    from sdrun.paths import Paths

    return f"sdrun pod {group.name} ({group.uuid}) of {Paths.root_of(group.dir)}"


def pod_hostname(spec: PodSpec) -> str:
    return spec.isolation.hostname or spec.name


def pod_namespaces(group: Pod) -> dict[str, str]:
    """The namespace files an app of the pod joins, by kind: none of the network's on the host's."""
    directory = namespaces_dir(group.uuid)
    files = {"ipc": str(directory / "ipc"), "uts": str(directory / "uts")}
    if group.spec.net == "none":
        files["net"] = str(directory / "net")
    elif on_network(group.spec):
        files["net"] = str(NETNS_DIR / netns_name(group.uuid))
    return files


def get_pod(stores: Stores, ref: str) -> Pod:
    group = stores.groups.named(ref)
    if group is None or not is_ready(group):
        raise NotFound(f"no such pod of apps: '{ref}'", hint="'sdrun pod create NAME' makes one")
    return group


def remove_pod(systemd: Systemd, stores: Stores, group: Pod) -> None:
    """`sdrun rm POD`: every app, then the pod's network, namespaces, slice and directory."""
    with group.locked():
        _take_apart(systemd, stores, group)


def _take_apart(systemd: Systemd, stores: Stores, group: Pod) -> bool:
    """Remove what the pod has, whatever of it was made; True if its network was left."""
    for app in apps_of(stores, group):
        _discard_app(systemd, stores, app)
    from sdrun.net import release

    released = release(group)
    namespaces.release(group.uuid)
    systemd.stop_unit(slice_unit(group.name))
    systemd.reset_failed_unit(slice_unit(group.name))
    stores.groups.remove(group)
    return released


# --- its apps ---


class AppView(NamedTuple):
    name: str
    unit: str
    state: str  # the unit's ActiveState; "stopped" when it has none


def add_app(
    systemd: Systemd,
    paths: Paths,
    pod_ref: str,
    given: Mapping[str, Any],
    args: tuple[str, ...],
    pull: PullSettings | None = None,
) -> Pod:
    """`sdrun app add`: a service in the pod's slice that joins its namespaces."""
    check_level(given, app_settings(), "sdrun app add", "sdrun pod create")
    if "name" not in given:
        raise SpecError("sdrun app add: --name APP is required")
    stores = Stores.of(paths)
    group = get_pod(stores, pod_ref)
    app_name = parse_name(given["name"])
    if app_named(stores, group, app_name) is not None:
        raise SdrunError(f"pod '{group.name}' has an app named '{app_name}' already")
    with group.locked():
        spec = _app_spec(group, app_name, given, args)
        return _start_app(systemd, paths, stores, group, spec, pull)


def _app_spec(group: Pod, app_name: str, given: Mapping[str, Any], args: tuple[str, ...]) -> PodSpec:
    from sdrun.specbuild import build_spec, settings_table

    full_name = app_unit_name(group.name, app_name)
    parse_name(full_name)  # POD-APP is a pod's name too: its length
    labels = [*given.get("label", ()), f"{POD_LABEL}={group.uuid}", f"{APP_LABEL}={app_name}"]
    settings = {
        **given,
        "name": full_name,
        "label": tuple(labels),
        "net": "host" if group.spec.net == "host" else "none",  # the pod's network: joined, not set up
        "stage1": group.spec.stage1,
    }
    checked = check_settings(settings, "command line", settings_table(settings))
    if not checked.get("rootfs") and args:  # IMAGE [CMD...], as `run` reads them
        checked["image"], args = args[0], args[1:]
    if args:
        checked["exec"] = tuple(args)
    spec = build_spec(checked, default_name=full_name, default_stage1=DEFAULT_STAGE1)
    pod_isolation = group.spec.isolation
    isolation = spec.isolation._replace(
        hostname=pod_hostname(group.spec),
        dns=pod_isolation.dns,
        dns_search=pod_isolation.dns_search,
        dns_option=pod_isolation.dns_option,
        add_host=pod_isolation.add_host,
    )
    return spec._replace(isolation=isolation, pod_namespaces=pod_namespaces(group))


def _start_app(
    systemd: Systemd, paths: Paths, stores: Stores, group: Pod, spec: PodSpec, pull: PullSettings | None
) -> Pod:
    from sdrun import run as running
    from stage1.interface import Stage1

    backend = Stage1.named(spec.stage1)
    backend.refuse_unsupported(spec)
    if spec.image:
        from sdrun.image.usage import create_image_pod

        app = create_image_pod(paths, stores.apps, spec, sys.stderr, pull)
    else:
        app = stores.apps.create(spec)
    try:
        with app.locked():
            running._start_service(systemd, backend, app, hold=False, slice_unit=slice_unit(group.name))
            running._wait_until_only_the_app_runs(systemd, app)
            mark_ready(app)
    except BaseException:
        _discard_app(systemd, stores, app)
        raise
    return app


def get_app(stores: Stores, group: Pod, name: str) -> Pod:
    app = app_named(stores, group, name)
    if app is None:
        raise NotFound(f"pod '{group.name}' has no app '{name}'", hint=f"'sdrun app list {group.name}'")
    return app


def list_apps(systemd: Systemd, stores: Stores, group: Pod) -> list[AppView]:
    apps = sorted(apps_of(stores, group), key=lambda app: app.name)
    units = {unit.name: unit for unit in systemd.list_units([app.unit for app in apps])} if apps else {}
    return [
        AppView(app.spec.labels[APP_LABEL], app.unit, units[app.unit].active_state if app.unit in units else "stopped")
        for app in apps
    ]


def stop_app(systemd: Systemd, app: Pod) -> None:
    systemd.stop_unit(app.unit)


def remove_app(systemd: Systemd, stores: Stores, app: Pod) -> None:
    with app.locked():
        _discard_app(systemd, stores, app)


def _discard_app(systemd: Systemd, stores: Stores, app: Pod) -> None:
    from stage1.interface import Stage1

    with contextlib.suppress(NotFound):
        systemd.stop_unit(app.unit)
    systemd.reset_failed_unit(app.unit)
    Stage1.named(app.spec.stage1).gc(app)
    stores.apps.remove(app)


# --- gc ---


def collect(systemd: Systemd, paths: Paths) -> tuple[list[str], set[str]]:
    """`sdrun gc`'s part: pods and apps half made (no `ready`, nobody's lock), apps of no pod, and
    namespace files and slices of no pod. Returns what went, and the UUIDs of the pods left, whose
    networks gc keeps."""
    stores = Stores.of(paths)
    removed = stores.groups.remove_leftovers() + stores.apps.remove_leftovers()
    for group in stores.groups.all():
        if not is_ready(group):
            with contextlib.suppress(SdrunError), group.locked():
                _take_apart(systemd, stores, group)
                removed.append(f"half-made pod {group.name} ({group.uuid})")
    live = set(stores.groups.uuids())
    for app in stores.apps.all():
        if app.spec.labels.get(POD_LABEL) not in live or not is_ready(app):
            with contextlib.suppress(SdrunError), app.locked():
                _discard_app(systemd, stores, app)
                removed.append(f"app {app.name} ({app.uuid})")
    for pod_uuid in namespaces.held(paths.root):
        if pod_uuid not in live and namespaces.release(pod_uuid):
            removed.append(f"namespaces of pod {pod_uuid}")
    ours = re.compile(rf"^sdrun pod .* \(([0-9a-f-]{{36}})\) of {re.escape(str(paths.root))}$")
    for unit in systemd.list_units([SLICE_PATTERN]):
        if (match := ours.match(unit.description)) and match[1] not in live:
            systemd.stop_unit(unit.name)
            systemd.reset_failed_unit(unit.name)
            removed.append(f"slice {unit.name}")
    return removed, live
