"""`python -m stage1.namespace run --interface=N POD_DIR`: the namespace stage1's entry inside the unit."""

import sys

from stage1.namespace.launch import main

main(sys.argv)
