"""The stub stage1's planner: check the pod, resolve its app, write the entry's plan."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sdrun.errors import SpecError
from sdrun.paths import Paths
from sdrun.settings import field_value
from sdrun.spec import SETTINGS_TABLE
from sdrun.systemd.propertytable import prop
from stage1 import INTERFACE_VERSION, write_plan
from stage1.app import resolve_pod_app
from stage1.interface import Stage1, UnitPlan, entry_command, refuse_flags
from tests.stub_stage1.entry import PLAN_FILE

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from sdrun.spec import PodSpec
    from tests.stub_stage1.entry import Plan


def isolation_given(spec: PodSpec) -> dict[str, bool]:
    """Each isolation setting of the shared table (--hostname, --cap-add...) by flag, and whether it
    is given: a chroot honours none of them."""
    return {
        setting.flag: setting.given(field_value(spec, setting))
        for setting in SETTINGS_TABLE
        if (setting.field or "").startswith("isolation.")
    }


class Stub(Stage1, name="stub"):
    default_network = "host"  # it makes no network namespace

    def refuse_unsupported(self, spec: PodSpec) -> None:
        if spec.rootfs is None:
            raise SpecError("the stub stage1 runs --rootfs pods only")
        given = {
            "notify = true": spec.service.notify,  # a chroot of the host's: no socket of its own to pass
            "--net": spec.net != "host",
            "--volume": bool(spec.app.volumes),
            "--ulimit": bool(spec.app.ulimits),
            **isolation_given(spec),
        }
        refuse_flags(given, "is not for the stub stage1", hint="--stage1 namespace")

    def plan(self, pod: Pod) -> UnitPlan:
        self.refuse_unsupported(pod.spec)
        app = resolve_pod_app(pod)  # a missing command fails here, before the unit exists
        assert pod.spec.rootfs is not None
        plan: Plan = {"interface": INTERFACE_VERSION, "rootfs": pod.spec.rootfs, "app": app.plan_fields()}
        scratch = Paths.stage1_dir(pod.dir)
        scratch.mkdir(mode=0o700, exist_ok=True)
        write_plan(str(Path(scratch, PLAN_FILE)), plan)
        # READY=1 comes from the entry right before its exec: `run -d` returns with the app running.
        properties = (prop("Type", "notify"), prop("NotifyAccess", "main"))
        return UnitPlan(*entry_command("tests.stub_stage1", pod), properties)
