"""Key-statistics benchmark: sampling from the model, the statistics forward, time to DEFAULT_N_TOKENS.

    python benchmarks/bench_covariance.py [--tokens 2048] [--seq-len 16] [--layer 9] [--threads 1]
    python benchmarks/bench_covariance.py --specificity [--chunks 1,2,4,6] [--stride 4] [--layer L]

On the default model (Gemma 3 270M) it times, in a fresh temporary stats cache:
1. `sample_corpus`: `--tokens` tokens sampled from BOS (tokens/s);
2. `covariance` at `--layer` on those ids (loaded from the cache, so only the forward up to the
   layer and the float64 update are timed; tokens/s), and `covariances` over every layer at once;
3. the time to reach DEFAULT_N_TOKENS with the default settings: measured when `--tokens` is at
   least that, else extrapolated from the rates measured here (and labelled so).

Sampling throughput depends on how many rows are decoded per step (each step has a large fixed
cost: the 262k-vocabulary unembedding's weights are read once per step). The default run decodes
130 rows of 128 tokens; `--tokens 2048 --seq-len 16` decodes 137 rows for 15 steps, which gives a
representative rate in ~30 s. Small `--tokens` with the default `--seq-len` decodes few rows and
underestimates the rate.

``--specificity`` asks how much the number of tokens behind C matters for ROME. For every k-th
built-in request it computes k* and δ once (neither depends on C), then, for C estimated from
``c × DEFAULT_N_TOKENS`` model-sampled tokens (c in ``--chunks``: the mean of the per-seed
statistics for seeds ``0 … c-1``, an exact pooled second moment since every chunk counts the same
number of tokens), applies the rank-one update and prints efficacy, paraphrase, neighbourhood and the
mean neighbour response ``max_pos |kᵀC⁻¹k*| / k*ᵀC⁻¹k*`` (how strongly the update reaches the
neighbour prompts' keys). Chunks go to the user's stats cache, so reruns and ROME reuse them. Each
new chunk costs one DEFAULT_N_TOKENS sampling run (minutes on Gemma; 1M tokens would be ~61 chunks,
hours on 2 CPU cores, so the default stops at ~100k).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import torch


def main() -> None:
    from factscope.edit.covariance import (
        DEFAULT_N_TOKENS,
        DEFAULT_SAMPLE_BATCH_SIZE,
        DEFAULT_SEQ_LEN,
        covariance,
        covariances,
        sample_corpus,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=DEFAULT_N_TOKENS, help="tokens to sample and count")
    ap.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN, help="sampled sequence length, BOS included")
    ap.add_argument("--layer", type=int, default=None, help="layer for the single-layer timing (default: middle)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-all-layers", action="store_true", help="skip the all-layers covariances timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from factscope import load_model
    from factscope.arch import arch_of

    model = load_model()  # from the user's cache (the stats cache is redirected below, not the models)
    a = arch_of(model)
    layer = a.n_layers // 2 if args.layer is None else args.layer
    rows = math.ceil(args.tokens / (args.seq_len - 1))
    print(f"Gemma 3 270M ({a.n_layers} layers, d_mlp {a.d_mlp}, vocab {a.d_vocab}), threads={args.threads}, "
          f"tokens={args.tokens}, seq_len={args.seq_len} ({rows} rows, sample batch {DEFAULT_SAMPLE_BATCH_SIZE})")

    with tempfile.TemporaryDirectory(prefix="factscope-bench-") as tmp:
        os.environ["FACTSCOPE_CACHE"] = tmp  # a cold stats cache; cache_dir() reads it at call time
        kw = dict(seq_len=args.seq_len, seed=0, progress=False)
        t = time.perf_counter()
        sample_corpus(model, args.tokens, **kw)
        t_sample = time.perf_counter() - t
        r_sample = args.tokens / t_sample

        t = time.perf_counter()
        covariance(model, layer, corpus="model", n_tokens=args.tokens, cache=False, **kw)
        t_stat = time.perf_counter() - t
        r_stat = args.tokens / t_stat
        print(f"sampling from the model:         {r_sample:8.1f} tokens/s  ({t_sample:.1f} s)")
        print(f"key statistics, layer {layer:2d}:        {r_stat:8.1f} tokens/s  ({t_stat:.1f} s)")
        t_all = None
        if not args.skip_all_layers:
            t = time.perf_counter()
            covariances(model, range(a.n_layers), corpus="model", n_tokens=args.tokens, cache=False, **kw)
            t_all = time.perf_counter() - t
            print(f"key statistics, all {a.n_layers} layers:  {args.tokens / t_all:8.1f} tokens/s  ({t_all:.1f} s)")

    n = DEFAULT_N_TOKENS
    if args.tokens >= n and args.seq_len == DEFAULT_SEQ_LEN:
        how, total = "measured", t_sample * n / args.tokens + t_stat * n / args.tokens
    else:
        how, total = "extrapolated from the rates above", n / r_sample + n / r_stat
    print(f"time to DEFAULT_N_TOKENS = {n} (sample once + C at one layer): {total / 60:.1f} min ({how})")
    if t_all is not None:
        print(f"  + C at all {a.n_layers} layers instead of one: {(t_all - t_stat) * n / args.tokens / 60:+.1f} min")


def specificity(chunks: list[int], stride: int, layer: int | None) -> None:
    """Edit specificity against the number of tokens behind C (module docstring)."""
    import statistics

    from factscope import builtin_facts, fingerprint, load_model
    from factscope.arch import arch_of
    from factscope.edit.covariance import DEFAULT_N_TOKENS, covariance
    from factscope.edit.handle import Edit
    from factscope.edit.rome import (
        ROMEConfig,
        compute_k_star,
        compute_v_star,
        context_templates,
        rank_one_update,
        update_response,
    )
    from factscope.locate import recommended_layer
    from factscope.probes.evaluate import rewrite_scores

    model = load_model()
    a = arch_of(model)
    layer = recommended_layer(model, progress=False).layer if layer is None else a.check_layer(layer)
    cfg = ROMEConfig()
    templates = context_templates(model, cfg)
    reqs = builtin_facts()[::stride]
    print(f"\nSpecificity vs tokens behind C: Gemma 3 270M, layer {layer}, {len(reqs)} requests "
          f"(every {stride}th built-in), k* and δ computed once per request")
    kd = []
    t = time.perf_counter()
    for r in reqs:
        kd.append((compute_k_star(model, r, layer, templates), compute_v_star(model, r, layer, templates, cfg).delta))
    print(f"  k*, δ for {len(reqs)} requests: {time.perf_counter() - t:.0f} s")

    print(f"  {'tokens':>9} {'efficacy':>9} {'paraphrase':>11} {'neighbourhood':>14} {'nb response':>12} {'C time':>8}")
    sums = None
    for c in range(1, max(chunks) + 1):
        t = time.perf_counter()
        C_s = covariance(model, layer, corpus="model", seed=c - 1, progress=False)
        sums = C_s if sums is None else sums + C_s
        t_c = time.perf_counter() - t
        if c not in chunks:
            continue
        C = sums / c
        rows = []
        for r, (k, d) in zip(reqs, kd):
            u, lam = rank_one_update(C, k, d)
            e = Edit(deltas={layer: (u, lam)}, method="rome", requests=(r,), config={},
                     fingerprint=fingerprint(model), info={})
            resp = update_response(model, list(r.neighbours), layer, u[:, 0], k)
            with e.applied(model):
                s = rewrite_scores(model, r)
            rows.append((s.efficacy, s.paraphrase, s.neighbourhood, float(resp.mean())))
        m = [statistics.mean(x) for x in zip(*rows)]
        print(f"  {c * DEFAULT_N_TOKENS:>9} {m[0]:>9.3f} {m[1]:>11.3f} {m[2]:>14.3f} {m[3]:>12.3f} {t_c:>7.0f}s",
              flush=True)


if __name__ == "__main__":
    import sys

    if "--specificity" in sys.argv:
        ap = argparse.ArgumentParser(description="edit specificity vs the tokens behind C")
        ap.add_argument("--specificity", action="store_true")
        ap.add_argument("--chunks", default="1,2,4,6", help="C from c x DEFAULT_N_TOKENS tokens, for each c")
        ap.add_argument("--stride", type=int, default=4, help="every k-th built-in request")
        ap.add_argument("--layer", type=int, default=None)
        ap.add_argument("--threads", type=int, default=2)
        args = ap.parse_args()
        torch.set_num_threads(args.threads)
        specificity(sorted({int(c) for c in args.chunks.split(",")}), args.stride, args.layer)
    else:
        main()
