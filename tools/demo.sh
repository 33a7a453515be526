#!/bin/sh
# `make demo`: run a few containers under a real systemd and show what systemd and the journal see.
# make runs this inside the test harness's throwaway systemd when the host's PID 1 is not systemd.
set -eu
cd "$(dirname "$0")/.."
ROOT=/var/lib/sdrun/demo
ROOTFS=$PWD/build/rootfs
sdrun() { .venv/bin/sdrun --root "$ROOT" "$@"; }
show() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

show sdrun run --name hello --rootfs build/rootfs -- sh -c "'echo hello from \$(hostname); exit 3'"
sdrun run --name hello --rootfs "$ROOTFS" -- sh -c 'echo hello from $(hostname); exit 3' || echo "(exit status $?)"

show sdrun run -d --name sleeper --memory 64M --rootfs build/rootfs -- sleep 60
sdrun run -d --name sleeper --memory 64M --rootfs "$ROOTFS" -- sleep 60

show sdrun list
sdrun list

show systemctl status sdrun-sleeper.service
systemctl status --no-pager --lines=0 sdrun-sleeper.service || true

show sdrun enter sleeper -- ps
sdrun enter sleeper -- ps

show sdrun logs hello
sdrun logs hello

show journalctl -u sdrun-hello.service
journalctl --no-pager -u sdrun-hello.service

show sdrun stop sleeper
sdrun stop sleeper

show sdrun gc
sdrun gc
