"""`NAME:key=value,...` strings, the one way a task, a corpus or a data source takes options
on the command line and in recipes (`chain_sum:max_terms=3`, `spoken-digits:n=4000`)."""

from __future__ import annotations

import json
from typing import Any


def parse_spec(spec: str, what: str = "spec") -> tuple[str, dict[str, Any]]:
    """'chain_sum:max_terms=3,max_digits=1' -> ('chain_sum', {'max_terms': 3, 'max_digits': 1}).
    Values are read as JSON where they parse (numbers, true/false, lists), else as text."""
    name, _, rest = spec.partition(":")
    if not name.strip():
        raise ValueError(f"{what} {spec!r}: expected NAME or NAME:key=value,...")
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} {spec!r}: option {part!r} is not key=value")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value.strip()
    return name.strip(), options
