"""`python -m stage1.kvm run --interface=N POD_DIR`: the kvm stage1's entry inside the unit."""

import sys

from stage1.interface import run_entry
from stage1.kvm.entry import become_vm

run_entry(sys.argv, become_vm)
