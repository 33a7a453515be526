"""`python -m stage1.namespace run --interface=N POD_DIR`: the namespace stage1's entry inside the unit."""

import sys

from stage1.namespace.entry import main

main(sys.argv)
