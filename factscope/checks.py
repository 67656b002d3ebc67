"""Argument checks shared across the package: each raises an error that says what was expected and what arrived.

- `check_int(name, value, lo, hi=None)`: an int (not a bool) in ``[lo, hi]``; TypeError for another
  type, ValueError out of range.
- `as_requests(requests, name)`: one `EditRequest` or a non-empty sequence of them, as a tuple.
- `available_bytes(device)`: memory free for new work on a device (CPU: the OS's available memory,
  within any cgroup limit; CUDA: the driver's free memory).
- `check_memory(need, what=..., hint=...)`: `MemoryError` saying what the work needs, what is free and
  how to need less, when an estimate exceeds `available_bytes`. Entry points call it with their own
  estimate (`factscope.locate.estimate_trace_memory`, `factscope.edit.memit.estimate_memory`)
  before they allocate anything.

Prompt lengths are checked against the model's context by `factscope.tokens.check_context`; layers
by `factscope.arch.Arch.check_layer` / `Arch.check_layers`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factscope.facts import EditRequest

__all__ = ["check_int", "as_requests", "available_bytes", "check_memory"]


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


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, then v1), or ``None`` without a limit."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            cap = Path(limit).read_text().strip()
            used = int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 1 << 60:  # "max" or a huge v1 number: no limit
            return max(0, int(cap) - used)
    return None


def _os_available() -> int | None:
    """The kernel's estimate of memory available without swapping (``MemAvailable``), else free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device: Any = None) -> int | None:
    """Bytes free for new work on ``device``, or ``None`` when it cannot be told.

    CPU (the default): the OS's available memory (``MemAvailable``, which counts reclaimable caches),
    capped by the headroom under a cgroup memory limit when there is one. CUDA: the driver's free
    memory on that device. Other devices: ``None`` (no check).

    Args:
        device: a ``torch.device`` or its name; ``None`` means the CPU.

    Cost: negligible (a few small file reads, or one driver call).
    """
    import torch

    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError):
            return None
    if dev.type != "cpu":
        return None
    free = [b for b in (_os_available(), _cgroup_headroom()) if b is not None]
    return min(free) if free else None


def check_memory(need: int, *, what: str, hint: str, device: Any = None, cap: int | None = None) -> None:
    """Raise ``MemoryError`` before any work when ``need`` bytes exceed what is free.

    The message says what the work is, what it would need, what is free, and how to need less.

    Args:
        need: the work's estimated peak bytes beyond the model's own weights.
        what: the work, e.g. ``"trace of a 40000-token prompt (3 kinds × 18 layers × 10 samples)"``.
        hint: how to reduce it, e.g. ``"use fewer samples or a shorter prompt"``.
        device: where it would be allocated (``None``: the CPU); see `available_bytes`.
        cap: a limit to use instead of `available_bytes` (e.g. a configured budget), in bytes.

    Cost: negligible.
    """
    free = available_bytes(device) if cap is None else cap
    if free is not None and need > free:
        where = "given as the limit" if cap is not None else f"free on {device or 'cpu'}"
        raise MemoryError(f"{what} would need about {_gib(need)} of memory, but only {_gib(free)} is {where}; "
                          f"{hint} (nothing was allocated)")


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 27 else f"{n / 2 ** 20:.0f} MiB"
