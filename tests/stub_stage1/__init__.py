"""A fourth stage1, written only against the contract docs/stage1.md documents: the conformance
suite (tests/test_stage1_conformance.py) runs it beside the built-in ones.

It is found the way a backend of another distribution is, by its entry point in the group
`sdrun.stage1` (`stub = tests.stub_stage1.backend`), which the suite declares in a dist-info
directory of its own on PYTHONPATH, and it follows the built-in backends' file names: the
planner (backend.py, stage0), the entry (entry.py, in the unit, run as
`python -m tests.stub_stage1 run --interface=1 POD_DIR`). What it does is fly's way, pared
down: a `--rootfs` pod on the host's network, chrooted, in a mount namespace of its own.
"""
