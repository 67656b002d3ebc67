"""Load-time benchmark: first (converting) vs cached load of the default model, in one run.

    python benchmarks/bench_load.py [--cold]

Without --cold it times two cached loads (the conversion is assumed done, as after `make test`);
with --cold it first converts into a fresh temporary cache, which costs about a minute.
Prints each time and the ratio cold/warm. The target: a cached load under 10 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def timed_load() -> float:
    from factscope import load_model

    t = time.perf_counter()
    m = load_model()
    dt = time.perf_counter() - t
    del m
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="also time the first, converting load in a fresh cache")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        if args.cold:
            os.environ["FACTSCOPE_CACHE"] = tmp
        first = timed_load()
        warm = min(timed_load() for _ in range(2))
    label = "cold (convert)" if args.cold else "cached (1st)"
    print(f"{label:<16} {first:6.1f} s")
    print(f"{'cached (best)':<16} {warm:6.1f} s   target < 10 s: {'met' if warm < 10 else 'MISSED'}")
    print(f"{'ratio':<16} {first / warm:6.1f} x")


if __name__ == "__main__":
    main()
