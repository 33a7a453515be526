"""The kvm stage1: the pod's rootfs inside a qemu micro-VM with a kernel of its own.

stage0's planner (backend.py) finds the guest kernel, builds (or reuses) the
cached initramfs, settles on KVM or TCG, and writes the qemu command line to
the pod's stage1/qemu.json. The unit's entry (entry.py, run as
`python -m stage1.kvm run --interface=1 POD_DIR`) mounts the pod's root in a
private mount namespace, serves it to the guest with virtiofsd, writes the
guest's configuration, says READY=1 and execs vm.sh, which runs qemu and exits
with the app's status. The guest's init (init.sh) applies the spec, runs the
app and powers off. `sdrun enter` talks to the guest's init (enter.py).
docs/stage1.md has the whole picture.
"""
