"""Causal-tracing benchmark: the reference algorithm vs factscope.locate.trace, same process, same noise.

    python benchmarks/bench_trace.py [--kind all] [--samples 10] [--threads 1] [--skip-smollm2]

The reference is ROME's algorithm: for every (kind, token, layer) cell, one full forward of
1 clean + `samples` corrupted rows with full logits. Prints both times, the ratio and the largest
difference between the two score grids, then the time of one trace on SmolLM2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_tracing import reference_trace  # noqa: E402  (the plain reference, shared with the tests)

from factscope import Fact, load_model  # noqa: E402
from factscope.locate import embedding_sigma, trace  # noqa: E402

FACT = Fact("The {} is a famous landmark in the city of", "Eiffel Tower", "Paris")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="all", choices=["all", "hidden", "mlp", "attn"])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    embedding_sigma(model)  # computed once, outside both timings
    kinds = ["hidden", "mlp", "attn"] if args.kind == "all" else [args.kind]
    t = time.perf_counter()
    ours = trace(model, FACT, kind=args.kind, samples=args.samples, seed=0)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = {k: reference_trace(model, FACT, k, noise=3.0, samples=args.samples, window=10, seed=0) for k in kinds}
    t_ref = time.perf_counter() - t
    diff = max(float((ours.scores[k] - ref[k]).abs().max()) for k in kinds)
    print(f"fact: {FACT.text!r} ({len(ours.tokens)} tokens), kind={args.kind}, samples={args.samples}, "
          f"threads={args.threads}, Gemma 3 270M")
    print(f"reference (full recompute per cell): {t_ref:8.1f} s")
    print(f"factscope.locate.trace:              {t_ours:8.1f} s")
    print(f"speed-up: {t_ref / t_ours:.1f}x   max |difference|: {diff:.2e}   (target: >= 10x, same numbers)")
    if not args.skip_smollm2:
        small = load_model("smollm2-135m")
        t = time.perf_counter()
        trace(small, FACT, kind=args.kind, samples=args.samples)
        print(f"SmolLM2-135M, same fact, kind={args.kind}: {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
