"""ROME quality and cost on the built-in facts: each edit applied alone, measured, and reverted.

    python benchmarks/bench_rome.py [--split held-out|calibration|all] [--offset I] [--stride K] [--limit N]
                              [--layer default|traced|L] [--config tuned|paper] [--set FIELD=VALUE ...]
                              [--no-fluency] [--threads 2] [--skip-gemma] [--skip-smollm2] [--csv out/rome.csv]

By default this measures what ``rome(model, request)`` does with no other argument, on the built-in
requests *held out* from the calibration split (`factscope.calibration_split`: 64 of 86), on Gemma 3
270M and SmolLM2-135M: the layer `factscope.edit.edit_layer` chooses and the δ budget of
``ROMEConfig.for_model``. Each request is edited alone, evaluated with `factscope.probes.evaluate`
(CounterFact's teacher-forced ES / PS / NS, neighbour KL and generation fluency, 100 greedy tokens)
and reverted; the reports are pooled and checked against issue 18's targets (`held_out.py`):

    ES >= 0.95, PS >= 0.85, NS >= 0.85, neighbour KL <= 0.5 nats, fluency change >= -0.3 bits.

The requests are the split's ``[offset::stride][:limit]``. ``--set bare_weight=0.5`` (repeatable)
replaces a `ROMEConfig` field of the chosen config, for trying a setting before it becomes a
default (the layer is then chosen for that config, a cached one-time trial). ``--layer traced --config paper`` measures the paper's ROME at the causal-tracing peak instead (the
contrast the demo shows). For each edit it also prints the *neighbour response* (the mean over the
request's neighbour prompts of ``max_pos |kᵀC⁻¹k*| / k*ᵀC⁻¹k*``: how much of δ the update writes into
a neighbour), ‖δ‖/‖v₀‖ and the time per edit (key statistics and the layer choice are cached
beforehand and not counted), and at the end the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, replace

import torch


def pick_layer(model, spec: str, config) -> tuple[int, str]:
    from factscope.edit import edit_layer
    from factscope.locate import recommended_layer

    if spec == "default":
        c = edit_layer(model, editor="rome", config=config, progress=True, verbose=True)
        return c.layer, "edit_layer: " + c.reason
    if spec == "traced":
        c = recommended_layer(model, progress=False)
        return c.layer, "traced: " + c.reason
    return int(spec), "given"


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What to measure: the requests ``split[offset::stride][:limit]``, where, with which config."""

    split: str = "held-out"
    offset: int = 0
    stride: int = 1
    limit: int | None = None
    layer: str = "default"
    config: str = "tuned"
    overrides: tuple[tuple[str, object], ...] = ()
    fluency: bool = True
    csv: str | None = None


def parse_override(text: str) -> tuple[str, object]:
    """``"bare_weight=0.5"`` -> ``("bare_weight", 0.5)``: the value read as JSON (``none`` -> None), else a string."""
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--set: expected FIELD=VALUE, got {text!r}")
    try:
        return key, None if value.lower() == "none" else json.loads(value)
    except json.JSONDecodeError:
        return key, value


def run(name: str, plan: Plan) -> None:
    from factscope import builtin_facts, calibration_split, load_model
    from factscope.edit import covariance, rome
    from factscope.edit.rome import ROMEConfig, compute_k_star, update_response
    from factscope.edit.target import config_source
    from factscope.edit.templates import context_templates
    from factscope.probes.evaluate import EditReport, evaluate

    from held_out import check_targets

    model = load_model(name)
    cal, held = calibration_split()
    reqs = {"held-out": held, "calibration": cal, "all": builtin_facts()}[plan.split][plan.offset::plan.stride][:plan.limit]
    config = ROMEConfig.for_model(model) if plan.config == "tuned" else ROMEConfig.paper()
    config = replace(config, **dict(plan.overrides))
    layer, why = pick_layer(model, plan.layer, config)
    C = covariance(model, layer)  # cached after the first call
    L = torch.linalg.cholesky(C)
    templates = context_templates(model, config)
    print(f"\n{name}: layer {layer} ({why}); config {config_source(config, model)}: {config}")
    rows, reports, times = [], [], []
    for i, r in enumerate(reqs):
        t = time.perf_counter()
        e = rome(model, r, layer=layer, config=config, C=C, progress=False, verbose=False)
        times.append(time.perf_counter() - t)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = evaluate(model, e, fluency=plan.fluency, progress=False)
        reports.append(rep)
        k = compute_k_star(model, r, layer, templates, bare_weight=config.bare_weight)
        resp = float(update_response(model, list(r.neighbours), layer, torch.cholesky_solve(k[:, None], L)[:, 0], k).mean())
        d = rep.to_dataframe().iloc[0]
        row = dict(model=name, layer=layer, subject=r.subject, relation=r.relation, target_true=r.target_true,
                   target_new=r.target_new, ES=d.efficacy_post, PS=d.paraphrase_post, NS=d.neighbourhood_post,
                   KL=d.neighbourhood_kl_post,
                   fluency_change=d.fluency_post - d.fluency_pre if plan.fluency else float("nan"),
                   neighbour_response=resp, delta_over_v0=e.info["delta_norm"] / e.info["v0_norm"],
                   bare_share=e.info["bare_share"], steps=len(e.info["losses"]), seconds=times[-1])
        rows.append(row)
        print(f"  [{i + 1}/{len(reqs)}] {r.subject!r}: {r.target_true} -> {r.target_new}  ES {row['ES']:.0f} "
              f"PS {row['PS']:.2f} NS {row['NS']:.2f} KL {row['KL']:.2f} Δfl {row['fluency_change']:+.2f}  "
              f"response {resp:.2f}  |δ|/|v0| {row['delta_over_v0']:.2f} ({times[-1]:.1f} s)", flush=True)
        if plan.csv:  # after every edit, so an interrupted run keeps what it measured
            import pandas as pd

            pd.DataFrame(rows).to_csv(plan.csv, index=False)
    check_targets(EditReport.concat(reports, method="rome"),
                  f"{name}, ROME at layer {layer}, {config_source(config, model)} config")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    print(f"  mean neighbour response {statistics.mean(r['neighbour_response'] for r in rows):.3f}, "
          f"mean |δ|/|v0| {statistics.mean(r['delta_over_v0'] for r in rows):.2f}")
    print(f"  time per edit median {statistics.median(times):.1f} s, max {max(times):.1f} s (statistics and layer "
          f"choice cached); peak resident memory {peak:.2f} GiB", flush=True)
    if plan.csv:
        print(f"  wrote {plan.csv}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="held-out", choices=("held-out", "calibration", "all"))
    ap.add_argument("--limit", type=int, default=None, help="only the first N requests of the split")
    ap.add_argument("--offset", type=int, default=0, help="start at the split's I-th request (with --stride)")
    ap.add_argument("--stride", type=int, default=1, help="every k-th request of the split (a quicker, spread sample)")
    ap.add_argument("--layer", default="default", help="default (edit_layer's choice), traced, or a layer number")
    ap.add_argument("--config", default="tuned", choices=("tuned", "paper"), help="ROMEConfig.for_model or .paper()")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="replace a ROMEConfig field of the chosen config (repeatable)")
    ap.add_argument("--no-fluency", action="store_true", help="skip the generation fluency check (far faster)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--skip-gemma", action="store_true")
    ap.add_argument("--csv", default=None, help="per-edit rows (a {model} in the name is filled in)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name, skip in (("gemma-3-270m", args.skip_gemma), ("smollm2-135m", args.skip_smollm2)):
        if not skip:
            run(name, Plan(split=args.split, offset=args.offset, stride=args.stride, limit=args.limit,
                           layer=args.layer, config=args.config, overrides=tuple(parse_override(t) for t in args.set),
                           fluency=not args.no_fluency, csv=args.csv.replace("{model}", name) if args.csv else None))


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])  # held_out.py beside this file
    sys.exit(main())
