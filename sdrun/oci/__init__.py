"""sdrun as an OCI runtime: `sdrun-oci`, a runc-compatible command line for podman, dockerd and containerd.

A config.json is another front end of a container: sdrun.oci.config reads it into the plan the
namespace stage1's in-unit code carries out (sdrun.linux.mounts operations, a capability mask, a
compiled seccomp filter, stage1.process's AppPlan); sdrun.oci.lifecycle forks the container as a
child of the caller (conmon, containerd's shim: subreapers that waitpid() it), moves it into a
transient systemd scope, and holds it before the app until `start`; sdrun.oci.state keeps each
container's state under --root. See docs/oci.md.
"""
