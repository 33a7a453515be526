# sdrun: `make test` and `make demo` do all set-up themselves (apt packages, .venv).
SHELL := /bin/bash
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
BOOT := $(PY) -m tests.harness.sdboot --
ROOTFS := build/rootfs
PYTEST_ARGS ?=
BENCH_ARGS ?=

# Debian packages. What an installed sdrun needs (`make install`): systemd and machined, the bus,
# netlink and nftables for networks, tini for --init, gpg and gpgv for image signatures, and what building
# systemd-python takes.
RUNTIME_APT_PACKAGES := python3-venv gcc pkg-config libsystemd-dev python3-dev dbus systemd systemd-container \
	util-linux iproute2 nftables tini libseccomp2 zstd gpg gpgv
# ... and for development: the test rootfs, the kvm stage1's guest, the peers tests and benchmarks drive for real.
APT_PACKAGES := $(RUNTIME_APT_PACKAGES) busybox-static crun runc podman skopeo umoci docker-registry gnupg \
	qemu-system-x86 linux-image-cloud-amd64 hyperfine bubblewrap apache2-utils

.PHONY: setup apt venv bytecode wheels test lint unit demo bench install uninstall clean

setup: apt venv bytecode $(ROOTFS)/bin/busybox

# Install the Debian packages named in $(1) that are missing.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt-get install $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

apt: build/.apt-stamp
build/.apt-stamp: Makefile
	@mkdir -p build
	$(call apt_install,$(APT_PACKAGES))
	@touch $@

venv: $(VENV)/.stamp
# editable_mode=compat: a plain path entry in a .pth. The default editable finder imports ~17 ms of
# modules in site at every Python start (the CLI's, and the stage1 entry's inside each unit).
$(VENV)/.stamp: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]' --config-settings editable_mode=compat
	@touch $@

# Byte-compile sdrun: an editable install leaves that to the first import, which a
# PYTHONDONTWRITEBYTECODE environment never does, so every command would compile its modules.
bytecode: venv
	$(PY) -m compileall -q sdrun stage1

$(ROOTFS)/bin/busybox: tools/mkrootfs.sh | apt
	rm -rf $(ROOTFS) && tools/mkrootfs.sh $(ROOTFS)

PY_SOURCES := $(wildcard sdrun stage1 tests bench tools)

lint: venv
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/mypy

# sdrun's dependencies as wheels, for tests/test_install.py: `make install` inside the throwaway
# systemd, whose network namespace reaches no package index.
wheels: build/wheels/.stamp
build/wheels/.stamp: pyproject.toml | venv
	rm -rf build/wheels
	$(PY) -m pip wheel -q -w build/wheels . 'setuptools>=77' pip
	rm -f build/wheels/sdrun-*.whl
	@touch $@

# Everything runs under a real systemd: the host's if it is PID 1, else a throwaway one.
test: setup wheels lint
	$(BOOT) $(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS) tests

demo: setup
	$(BOOT) tools/demo.sh

# BENCH_ARGS=--quick for a fast check; the full run rewrites docs/benchmarks.md (about 15 minutes).
bench: setup
	$(BOOT) $(PY) -m bench $(BENCH_ARGS)

# Only what sdrun needs at run time: no test packages, no dev or bench extras, no test rootfs.
install:
	$(call apt_install,$(RUNTIME_APT_PACKAGES))
	tools/install.sh

uninstall:
	tools/install.sh --uninstall

clean:
	rm -rf build $(VENV)
