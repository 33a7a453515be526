"""`python -m stage1.fly run --interface=N POD_DIR`: the fly stage1's entry inside the unit."""

import sys

from stage1 import run_entry
from stage1.fly import become_app

run_entry(sys.argv, become_app)
