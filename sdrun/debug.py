"""Debug messages for --debug, without importing logging on every command (~5 ms).

`sdrun --debug` configures logging, and so imports it; until something has,
nobody can be listening and a message costs nothing. The stage1 entries use
this too: their imports delay every container start.
"""

from __future__ import annotations

import sys


def debug(area: str, message: str, *args: object) -> None:
    """Log message % args on the logger sdrun.AREA, if logging is in use at all."""
    if "logging" in sys.modules:
        import logging

        logging.getLogger(f"sdrun.{area}").debug(message, *args)
