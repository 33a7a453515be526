"""`python -m stage1.fly run --interface=N POD_DIR`: the fly stage1's entry inside the unit."""

import sys

from stage1.fly.entry import main

main(sys.argv)
