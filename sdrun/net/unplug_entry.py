"""`python -S -P .../sdrun/net/unplug_entry.py teardown POD_DIR`: a pod unit's ExecStopPost= (sdrun.net.unplug).

Run by path, so compiled at every run (a file run by path has no bytecode
cache): it stays this small, and sdrun.net.unplug, imported, comes from its
cache. sdrun.net is registered as a bare package over its directory first, so
that importing its modules does not run its __init__ (pathlib and sdrun.paths:
~10 ms).
"""

import os
import sys

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, PROJECT)
bare = type(sys)("sdrun.net")
bare.__path__ = [os.path.join(PROJECT, "sdrun", "net")]
sys.modules["sdrun.net"] = bare

from sdrun.net import unplug  # noqa: E402 - once sdrun.net is the bare package

sys.exit(unplug.main(sys.argv))
