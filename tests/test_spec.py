"""Pure logic: spec parsing and the unit properties derived from a spec. No systemd needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdrun.errors import SpecError
from sdrun.linux import syscalls as sc
from sdrun.pod import Pod, exit_status_of
from sdrun.spec import (
    NO_PIDS_LIMIT,
    NO_PIDS_LIMIT_WORDS,
    RLIMITS,
    PodSpec,
    Resources,
    Volume,
    check_settings,
    load_spec_file,
    parse_memory,
    parse_pids_limit,
    parse_tmpfs,
    parse_ulimit,
)
from sdrun.specbuild import build_spec
from sdrun.systemd.bus import unit_object_path
from sdrun.systemd.properties import DEFAULT_PIDS_LIMIT, escape_variables, resource_properties
from sdrun.systemd.propertytable import TASKS_MAX_INFINITY


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("4K", 4096),
        ("256M", 256 << 20),
        ("2G", 2 << 30),
        ("1.5G", 3 << 29),
        ("64Mi", 64 << 20),
        ("64mb", 64 << 20),
    ],
)
def test_memory_sizes(text: str, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "12Q", "-1M", "M", "0", "0.5", "1.2.3G"])
def test_bad_memory_sizes(text: str) -> None:
    with pytest.raises(SpecError, match="invalid memory value"):
        parse_memory(text)


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("nofile=1024:4096", "nofile=1024:4096"),
        ("CORE=0", "core=0:0"),
        ("memlock=-1:unlimited", "memlock=unlimited:unlimited"),
        ("stack=8192:-1", "stack=8192:unlimited"),
    ],
)
def test_ulimits(text: str, written: str) -> None:
    assert tuple(sorted(sc.RLIMIT_NAMES)) == RLIMITS
    assert parse_ulimit(text) == written
    assert check_settings({"ulimit": [text]}, "test") == {"ulimit": (written,)}


@pytest.mark.parametrize(
    "text", ["nofile", "nofile=", "files=10", "nofile=x", "nofile=10:5", "nofile=unlimited:5", "nofile=1:2:3"]
)
def test_bad_ulimits(text: str) -> None:
    with pytest.raises(SpecError, match="invalid ulimit"):
        parse_ulimit(text)


def test_volume_parsing(tmp_path: Path) -> None:
    assert Volume.parse(f"{tmp_path}:/data") == Volume(str(tmp_path), "/data", False)
    assert Volume.parse(f"{tmp_path}/:/data/../data:ro") == Volume(str(tmp_path), "/data", True)
    for bad in ("relative:/x", f"{tmp_path}:relative", f"{tmp_path}:/x:rx", "a:b:c:d"):
        with pytest.raises(SpecError):
            Volume.parse(bad)
    idmapped = Volume.parse(f"{tmp_path}:/data:idmap,ro")
    assert (
        idmapped == Volume(str(tmp_path), "/data", True, False, True) and str(idmapped) == f"{tmp_path}:/data:ro,idmap"
    )
    assert Volume.parse(str(idmapped)) == idmapped
    assert str(Volume.parse(f"{tmp_path}:/data:U")) == f"{tmp_path}:/data:rw,U"
    with pytest.raises(SpecError, match=r"U \(chown the source\) and idmap \(map its ids\) exclude each other"):
        Volume.parse(f"{tmp_path}:/data:U,idmap")


@pytest.mark.parametrize("target", ["/", "//", "/x/..", "/proc", "//proc/sys/kernel", "/sys/fs", "/proc/../sys"])
def test_volumes_and_tmpfs_go_neither_over_the_root_nor_into_proc_or_sys(tmp_path: Path, target: str) -> None:
    with pytest.raises(SpecError, match=r"root|/proc or /sys"):
        Volume.parse(f"{tmp_path}:{target}")
    with pytest.raises(SpecError, match=r"root|/proc or /sys"):
        parse_tmpfs(f"{target}:size=1m")
    assert Volume.parse(f"{tmp_path}://srv//data/").target == parse_tmpfs("//srv//data/") == "/srv/data"


@pytest.mark.parametrize("key", ["scope", "read_only", "init", "notify"])
def test_flags_in_spec_files_must_be_booleans(key: str) -> None:
    assert check_settings({key: False}, "web.toml") == {key: False}
    with pytest.raises(SpecError, match=rf"web\.toml: invalid {key} 'false': expected true or false"):
        check_settings({key: "false"}, "web.toml")


def test_unknown_keys_are_rejected_with_their_origin() -> None:
    with pytest.raises(SpecError, match=r"web\.toml: unknown key 'colour'"):
        check_settings({"colour": "red"}, "web.toml")


def test_spec_file_round_trips_through_the_manifest(tmp_path: Path) -> None:
    spec_file = tmp_path / "web.toml"
    spec_file.write_text(
        f'name = "web"\nrootfs = "{tmp_path}"\nexec = ["/bin/httpd", "-f"]\nenv = {{ A = "1" }}\n'
        f'volume = ["{tmp_path}:/srv:ro"]\nmemory = "64M"\ncpus = 0.5\npids_limit = 10\nrestart = "always"\n'
        'label = { tier = "web" }\n'
    )
    spec = build_spec(load_spec_file(spec_file), default_name="unused", default_stage1="fly")
    assert spec.name == "web"
    assert spec.app.argv == ("/bin/httpd", "-f")
    assert spec.app.env["A"] == "1" and "PATH" in spec.app.env
    assert spec.app.volumes == (Volume(str(tmp_path), "/srv", True),)
    assert spec.resources == Resources(64 << 20, 0.5, 10)
    assert spec.labels == {"tier": "web"}
    assert PodSpec.from_json(spec.to_json()) == spec


def test_a_command_in_a_spec_file_is_a_list(tmp_path: Path) -> None:
    spec_file = tmp_path / "web.toml"
    spec_file.write_text('healthcheck = "wget -q http://127.0.0.1/"\n')
    with pytest.raises(SpecError, match=r"web\.toml: invalid healthcheck 'wget -q http://127.0.0.1/'") as raised:
        load_spec_file(spec_file)
    assert raised.value.hint == 'healthcheck = ["wget", "-q", "http://127.0.0.1/"]'
    spec_file.write_text("exec = 7\n")
    with pytest.raises(SpecError, match=r"web\.toml: invalid exec 7: expected a list of words"):
        load_spec_file(spec_file)
    spec_file.write_text('exec = ["true"]\nhealthcheck = ["true"]\n')
    assert load_spec_file(spec_file) == {"exec": ("true",), "healthcheck": ("true",)}


def test_invalid_toml_is_one_clear_error(tmp_path: Path) -> None:
    spec_file = tmp_path / "broken.toml"
    spec_file.write_text("name = \n")
    with pytest.raises(SpecError, match=r"broken\.toml: invalid TOML"):
        load_spec_file(spec_file)


def test_rootfs_or_image_but_not_both(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="exactly one"):
        build_spec({}, default_name="x", default_stage1="fly")
    with pytest.raises(SpecError, match="exactly one"):
        build_spec({"rootfs": str(tmp_path), "image": "busybox"}, default_name="x", default_stage1="fly")


def test_resource_properties_table(tmp_path: Path) -> None:
    spec = PodSpec(name="web", stage1="fly", rootfs=str(tmp_path), resources=Resources(64 << 20, 1.5, 20))
    pod = Pod("0" * 36, tmp_path, spec, 0.0)
    assert resource_properties(pod) == [
        ("MemoryMax", "t", 64 << 20),
        ("CPUQuotaPerSecUSec", "t", 1_500_000),
        ("TasksMax", "t", 20),
        ("Restart", "s", "no"),
    ]
    default = Pod("0" * 36, tmp_path, PodSpec(name="web", stage1="fly", rootfs=str(tmp_path)), 0.0)
    assert resource_properties(default) == [("TasksMax", "t", DEFAULT_PIDS_LIMIT), ("Restart", "s", "no")]
    for words in NO_PIDS_LIMIT_WORDS:
        unlimited = PodSpec(name="web", stage1="fly", rootfs=str(tmp_path), resources=Resources(pids=0))
        assert parse_pids_limit(words) == NO_PIDS_LIMIT == unlimited.resources.pids
        pod = Pod("0" * 36, tmp_path, unlimited, 0.0)
        assert resource_properties(pod) == [("TasksMax", "t", TASKS_MAX_INFINITY), ("Restart", "s", "no")]
    with pytest.raises(SpecError, match="invalid pids limit '-2'"):
        parse_pids_limit("-2")


def test_exit_status_mapping() -> None:
    assert exit_status_of("exited", "3") == 3
    assert exit_status_of("killed", "9") == 137
    assert exit_status_of("killed", "TERM") == 143
    assert exit_status_of("dumped", "SEGV") == 139


def test_dollars_survive_systemds_variable_expansion() -> None:
    assert escape_variables("kill -9 $$; echo $HOME ${X}") == "kill -9 $$$$; echo $$HOME $${X}"


def test_unit_object_paths_are_escaped_like_sd_bus() -> None:
    assert unit_object_path("sdrun-web.service") == "/org/freedesktop/systemd1/unit/sdrun_2dweb_2eservice"
    assert unit_object_path("0pod.scope").endswith("/_30pod_2escope")
