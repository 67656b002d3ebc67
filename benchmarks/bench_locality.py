"""What predicts where an edit stays put? `factscope.probes.locality_predictors` on a bundled model.

    python benchmarks/bench_locality.py [--model gemma-3-270m] [--layers 1,6,12] [--facts 6] [--samples 5]
                                        [--n-boot 500] [--threads 2] [--save out/locality.safetensors]

Edits one built-in fact for each of the first ``--facts`` relations (`factscope.locate.one_per_relation`)
at each layer with ROME's defaults for the model's family, and prints the result (the verdict per
outcome), its summary (R² of each predictor set with bootstrap CIs, the nested F-tests) and the mean
tracing effect, specificity and outcomes per layer. The guide's numbers ("Choosing the edit layer and
the δ budget") come from ``--model smollm2-135m --layers 1,4,10,20`` and ``--layers 1,6,12`` on Gemma.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--layers", default="1,6,12")
    ap.add_argument("--facts", type=int, default=6)
    ap.add_argument("--samples", type=int, default=5, help="noise samples per MLP trace")
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", default=None, help="write the LocalityResult (safetensors + JSON)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*already answers.*")
    from factscope import builtin_facts, load_model
    from factscope.locate import one_per_relation
    from factscope.probes import locality_predictors

    model = load_model(args.model)
    by_text = {f.text: f for f in builtin_facts()}
    reqs = [by_text[f.text] for f in one_per_relation()[:args.facts]]
    t = time.perf_counter()
    r = locality_predictors(model, reqs, layers=[int(x) for x in args.layers.split(",")], samples=args.samples,
                            n_boot=args.n_boot, progress=True)
    print(f"{args.model}: {time.perf_counter() - t:.0f} s")
    print(r)
    print(r.summary().round(3).to_string())
    cols = ["tracing", "specificity", "efficacy", "ns", "kl", "flips"]
    print(r.to_dataframe().groupby("layer")[cols].mean().round(3).to_string())
    if args.save:
        print("wrote", r.save(args.save))


if __name__ == "__main__":
    main()
