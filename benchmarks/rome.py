"""ROME quality and cost on the built-in facts: each edit applied alone, measured, and reverted.

    python benchmarks/rome.py [--limit N] [--stride K] [--layer L] [--threads 2] [--skip-smollm2] [--csv out/rome.csv]

For every built-in request (a counterfactual ``target_new`` per fact), with CounterFact's
comparison of mean per-token log-probabilities over all target tokens:
- efficacy: p(new) > p(true) on the edit prompt;
- paraphrase: the same on each paraphrase (averaged within a request);
- neighbourhood: p(true) > p(new) on prompts about other subjects with the same answer.
Targets (issue 4): efficacy >= 0.95, paraphrase >= 0.80, neighbourhood >= 0.80. Also prints the
time per edit (key statistics cached beforehand and not counted) and the peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch


def run(name: str, limit: int | None, stride: int, layer: int | None, csv: str | None) -> dict[str, float]:
    from factscope import builtin_facts, load_model
    from factscope.edit import covariance, rome
    from factscope.locate import recommended_layer
    from factscope.predict import target_logprob

    model = load_model(name)
    if layer is None:
        choice = recommended_layer(model)
        layer = choice.layer
        print(f"{name}: layer {layer} ({choice.reason})")
    t = time.perf_counter()
    covariance(model, layer)  # cached after the first call
    print(f"{name}: key statistics at layer {layer} ready in {time.perf_counter() - t:.1f} s")
    reqs = builtin_facts()[::stride][:limit]
    rows, times = [], []
    for i, r in enumerate(reqs):
        t = time.perf_counter()
        e = rome(model, r, layer=layer, progress=False, verbose=False)
        times.append(time.perf_counter() - t)
        with e.applied(model):
            new = target_logprob(model, [r.text], [r.target_new])
            true = target_logprob(model, [r.text], [r.target_true])
            para_new = target_logprob(model, list(r.paraphrases), [r.target_new] * len(r.paraphrases))
            para_true = target_logprob(model, list(r.paraphrases), [r.target_true] * len(r.paraphrases))
            nb_new = target_logprob(model, list(r.neighbours), [r.target_new] * len(r.neighbours))
            nb_true = target_logprob(model, list(r.neighbours), [r.target_true] * len(r.neighbours))
        row = dict(subject=r.subject, relation=r.relation, target_true=r.target_true, target_new=r.target_new,
                   efficacy=float(new[0] > true[0]), paraphrase=float((para_new > para_true).float().mean()),
                   neighbourhood=float((nb_true > nb_new).float().mean()), seconds=times[-1],
                   p_new_final=e.info["p_new"][-1], steps=len(e.info["losses"]))
        rows.append(row)
        print(f"  [{i + 1}/{len(reqs)}] {r.subject!r}: {r.target_true} -> {r.target_new}  ES {row['efficacy']:.0f} "
              f"PS {row['paraphrase']:.2f} NS {row['neighbourhood']:.2f}  ({times[-1]:.1f} s)", flush=True)
    agg = {k: statistics.mean(x[k] for x in rows) for k in ("efficacy", "paraphrase", "neighbourhood")}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    print(f"\n{name}, layer {layer}, {len(rows)} edits, each alone:")
    for k, target in (("efficacy", 0.95), ("paraphrase", 0.80), ("neighbourhood", 0.80)):
        print(f"  {k:<14} {agg[k]:.3f}   (target >= {target:.2f}: {'met' if agg[k] >= target else 'NOT met'})")
    print(f"  time per edit  median {statistics.median(times):.1f} s, max {max(times):.1f} s "
          f"(statistics cached); peak resident memory {peak:.2f} GiB")
    if csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(csv, index=False)
        print(f"  wrote {csv}")
    return agg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="only the first N built-in facts")
    ap.add_argument("--stride", type=int, default=1, help="every k-th built-in fact (spreads a short run over relations)")
    ap.add_argument("--layer", type=int, default=None, help="edit layer (default: the tracing profile's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--csv", default=None, help="per-edit rows for the default model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run("gemma-3-270m", args.limit, args.stride, args.layer, args.csv)
    if not args.skip_smollm2:
        run("smollm2-135m", args.limit, args.stride, None, None)


if __name__ == "__main__":
    sys.exit(main())
