"""sdrun's records are NamedTuples, not dataclasses, and `plain` turns them into JSON values.

Why not dataclasses: `import dataclasses` pulls in inspect (and ast, dis,
tokenize...), and each @dataclass generates and compiles its methods when its
module is imported. The ~20 records on the path of every `sdrun run` cost each
run ~30 ms that way (`python -X importtime`); as NamedTuples, ~3 ms. A record's
dict fields are never mutated: records are frozen.
"""

from __future__ import annotations

from typing import Any


def plain(value: Any) -> Any:
    """value with every record in it turned into a dict, recursively, as dataclasses.asdict
    does (a tuple stays a tuple, a list a list): ready for json.dumps."""
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {key: plain(item) for key, item in value._asdict().items()}
    if isinstance(value, (tuple, list)):
        return type(value)(plain(item) for item in value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value
