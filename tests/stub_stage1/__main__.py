"""`python -m tests.stub_stage1 run --interface=N POD_DIR`: the stub stage1's entry inside the unit."""

import sys

from tests.stub_stage1.entry import main

main(sys.argv)
