#!/bin/bash
# Install sdrun on a host (make install), or remove it (make uninstall / tools/install.sh --uninstall).
#
#   /opt/sdrun/venv                          a virtualenv with sdrun in it (its interpreter is what units run)
#   /opt/sdrun/docs                          docs/*.md, which the units name as their Documentation=
#   /usr/local/bin/sdrun                     -> /opt/sdrun/venv/bin/sdrun
#   /usr/local/bin/sdrun-oci                 -> /opt/sdrun/venv/bin/sdrun-oci (the OCI runtime: docs/oci.md)
#   /usr/local/lib/systemd/system-generators/sdrun-generator
#                                            /etc/sdrun/NAME.toml -> sdrun-NAME.service at each daemon-reload
#   /usr/local/lib/systemd/system/sdrun-gc.{service,timer}
#                                            a daily `sdrun gc` (enabled)
#   /usr/local/lib/systemd/system/sdrun@.service
#                                            sdrun@NAME: the pod of /etc/sdrun/NAME.toml, by name
#   /etc/sdrun                               the spec files
#
# sdrun alone, with its run-time dependencies: no dev or bench extras. Idempotent: running it
# again upgrades in place. PREFIX and SDRUN_HOME override the locations; pip's own environment
# (PIP_INDEX_URL, PIP_FIND_LINKS...) applies.
set -euo pipefail

SOURCE=$(cd "$(dirname "$0")/.." && pwd)
SDRUN_HOME=${SDRUN_HOME:-/opt/sdrun}
PREFIX=${PREFIX:-/usr/local}
VENV=$SDRUN_HOME/venv
GENERATOR_DIR=$PREFIX/lib/systemd/system-generators
UNIT_DIR=$PREFIX/lib/systemd/system
PYTHON=${PYTHON:-python3}

systemd_running() { [ -d /run/systemd/system ]; }

install_sdrun() {
	if [ ! -x "$VENV/bin/python" ]; then
		"$PYTHON" -m venv "$VENV"
	fi
	"$VENV/bin/python" -m pip install -q --upgrade pip
	"$VENV/bin/python" -m pip install -q --upgrade "$SOURCE"
	install -d "$PREFIX/bin" "$GENERATOR_DIR" "$UNIT_DIR" /etc/sdrun
	ln -sfn "$VENV/bin/sdrun" "$PREFIX/bin/sdrun"
	ln -sfn "$VENV/bin/sdrun-oci" "$PREFIX/bin/sdrun-oci"
	# The generator runs with the virtualenv's interpreter, named on its first line.
	{ echo "#!$VENV/bin/python"; tail -n +2 "$SOURCE/units/sdrun-generator"; } >"$GENERATOR_DIR/sdrun-generator.new"
	chmod 0755 "$GENERATOR_DIR/sdrun-generator.new"
	mv -f "$GENERATOR_DIR/sdrun-generator.new" "$GENERATOR_DIR/sdrun-generator"
	sed "s|@SDRUN@|$VENV/bin/sdrun|g" "$SOURCE/units/sdrun-gc.service" >"$UNIT_DIR/sdrun-gc.service"
	install -m 0644 "$SOURCE/units/sdrun-gc.timer" "$SOURCE/units/sdrun@.service" "$UNIT_DIR/"
	install -d "$SDRUN_HOME/docs"  # the units' Documentation=
	install -m 0644 "$SOURCE"/docs/*.md "$SDRUN_HOME/docs/"
	if systemd_running; then
		systemctl daemon-reload
		systemctl enable --now sdrun-gc.timer
	else
		systemctl enable sdrun-gc.timer >/dev/null 2>&1 || true
	fi
	echo "sdrun installed: $PREFIX/bin/sdrun ($("$VENV/bin/sdrun" --help >/dev/null && echo ok))"
}

uninstall_sdrun() {
	if systemd_running; then
		systemctl disable --now sdrun-gc.timer >/dev/null 2>&1 || true
	else
		systemctl disable sdrun-gc.timer >/dev/null 2>&1 || true
	fi
	rm -f "$PREFIX/bin/sdrun" "$PREFIX/bin/sdrun-oci" "$GENERATOR_DIR/sdrun-generator" "$UNIT_DIR/sdrun-gc.service" "$UNIT_DIR/sdrun-gc.timer" \
		"$UNIT_DIR/sdrun@.service"
	rm -rf "$VENV" "$SDRUN_HOME/docs"
	rmdir "$SDRUN_HOME" 2>/dev/null || true
	if systemd_running; then
		systemctl daemon-reload
	fi
	echo "sdrun uninstalled (pods in /var/lib/sdrun, specs in /etc/sdrun and units from 'sdrun install' are kept)"
}

case "${1:-}" in
	"") install_sdrun ;;
	--uninstall) uninstall_sdrun ;;
	*) echo "usage: $0 [--uninstall]" >&2; exit 2 ;;
esac
