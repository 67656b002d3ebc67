"""Argument checks shared across the package: each raises an error that says what was expected and what arrived.

- `check_int(name, value, lo, hi=None)`: an int (not a bool) in ``[lo, hi]``; TypeError for another
  type, ValueError out of range.
- `as_requests(requests, name)`: one `EditRequest` or a non-empty sequence of them, as a tuple.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from factscope.facts import EditRequest

__all__ = ["check_int", "as_requests"]


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """``value`` if it is an integer in ``[lo, hi]`` (``hi=None``: no upper bound)."""
    rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected {name} to be an integer {rng}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"expected {name} to be an integer {rng}, got {value!r}")
    return value


def as_requests(requests: Any, name: str = "requests") -> tuple[EditRequest, ...]:
    """One `EditRequest` or a non-empty sequence of them, as a tuple (TypeError / ValueError otherwise)."""
    if isinstance(requests, EditRequest):
        return (requests,)
    if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence):
        raise TypeError(f"expected {name} to be an EditRequest or a sequence of EditRequests, got "
                        f"{type(requests).__name__}")
    if len(requests) == 0:
        raise ValueError(f"expected at least one EditRequest in {name}, got an empty sequence")
    for i, r in enumerate(requests):
        if not isinstance(r, EditRequest):
            raise TypeError(f"expected {name}[{i}] to be an EditRequest, got {type(r).__name__}")
    return tuple(requests)
