"""Knowledge neurons: cost per fact against the passes it needs, and what they do, on the built-in facts.

    python benchmarks/bench_neurons.py [--limit N] [--stride K] [--threads 1] [--n-controls 10] [--skip-smollm2]
                                 [--post-norm frozen|live]

For each model (Gemma 3 270M, then SmolLM2-135M) and each built-in fact, with all layers, 20 IG
steps and 3 prompts (the fact's prompt and its first two paraphrases):

- **Speed.** The time of `factscope.locate.knowledge_neurons`, beside two floors measured on the first
  ``--floor-facts`` facts: the batched forward+backward passes over the same rows (prompts × layers ×
  steps) in the same batches, (a) as factscope runs them (the last token against the prompt's
  cached keys/values) and (b) as a plain implementation must (every row the whole prompt, run in
  chunks of 64 rows to bound memory: the same work). Target: measured ≤ 3 × floor.
- **Neurons per fact**, the refinement's final fraction, and the IG completeness ratio
  Σ IG / (p − p_baseline) under the ``--post-norm`` setting used (1 when converged; ≈ 0 on Gemma's
  post-norm layers with ``live``, see `locate/knowledge_neurons.py`; no effect on SmolLM2).
- **Suppression** (`factscope.probes.neuron_effect`): the mean relative change of p(answer) on the
  fact's prompts, its neighbours and unrelated facts, for the found neurons and for random neuron
  sets matched by layer and count, and how often the found effect beats every control.
- **KN edit** (`factscope.edit.kn`, λ₁ = 1, λ₂ = 8) with CounterFact's comparison of mean per-token
  log-probabilities: efficacy (p(new) > p(true) on the prompt), paraphrase (on all paraphrases,
  two of which helped locate the neurons) and neighbourhood (p(true) > p(new) on other subjects).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
import warnings

import torch

FULL_CHUNK = 64  # rows per whole-prompt pass: the same work as one batch, in less memory (several GiB otherwise)


def _fwd_bwd(model, a, ids, kv, rows: int, layer: int, answer_id: int) -> float:
    """One plain forward+backward of ``rows`` rows, gradient w.r.t. layer ``layer``'s last-position key."""
    from factscope.kv import repeat_rows, run_cached

    leaf = torch.zeros(a.d_mlp, requires_grad=True)

    def add(x, hook):
        return torch.cat([x[:, :-1], (x[:, -1] + leaf)[:, None]], 1)

    t = time.perf_counter()
    with torch.enable_grad():
        if kv is None:
            logits = model.run_with_hooks(ids.expand(rows, -1), fwd_hooks=[(a.hook("mlp_key", layer), add)],
                                          logits_to_keep=1)
        else:
            T = ids.shape[1]
            logits, _ = run_cached(model, ids[:, -1:].expand(rows, 1), repeat_rows(kv, rows),
                                   attention_mask=torch.ones(rows, T, dtype=torch.long),
                                   fwd_hooks=[(a.hook("mlp_key", layer), add)], logits_to_keep=1)
        logits[:, -1].float().softmax(-1)[:, answer_id].sum().backward()
    return time.perf_counter() - t


def floors(model, prompts, answer_id: int, steps: int) -> tuple[float, float]:
    """Seconds of the plain batched passes over the IG rows: (last token with a cache, whole prompt)."""
    from factscope import arch_of, encode
    from factscope.kv import run_cached
    from factscope.locate.knowledge_neurons import ig_batch_size, ig_batches

    a = arch_of(model)
    layers = list(range(a.n_layers))
    bs = ig_batch_size(a, steps, len(layers))
    kv_s = full_s = 0.0
    for text in prompts:
        ids = torch.tensor([encode(model, text)])
        with torch.no_grad():  # the prompt's cache without its last token, as `neurons` builds it
            kv = run_cached(model, ids[:, :-1], logits_to_keep=1)[1] if ids.shape[1] > 1 else None
        for rows in ig_batches(layers, steps, bs):
            low = min(l for l, _ in rows)
            kv_s += _fwd_bwd(model, a, ids, kv, len(rows), low, answer_id)
            for i in range(0, len(rows), FULL_CHUNK):  # whole-prompt rows keep every position's activations
                full_s += _fwd_bwd(model, a, ids, None, len(rows[i:i + FULL_CHUNK]), low, answer_id)
    return kv_s, full_s


def run(name: str, args) -> None:
    from factscope import builtin_facts, load_model, predict
    from factscope.edit import kn
    from factscope.locate import neuron_attribution, neurons
    from factscope.predict import target_logprob
    from factscope.probes import neuron_effect

    model = load_model(name)
    facts = builtin_facts()[::args.stride][:args.limit]
    correct = [p.correct for p in predict(model, [f.text for f in facts], [f.target_true for f in facts])]
    f0 = facts[0]
    neuron_attribution(model, f0.text, f0.target_true, layers=[0], steps=2, post_norm=args.post_norm)  # warm-up
    print(f"\n== {name}: {len(facts)} facts (top-1 correct on {sum(correct)}), 3 prompts each, all layers, "
          f"20 IG steps, post_norm={args.post_norm}, threads={torch.get_num_threads()}", flush=True)
    rows = []
    for k, f in enumerate(facts):
        prompts = [f.text, *f.paraphrases[:2]]
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = neurons(model, f, prompts=prompts, post_norm=args.post_norm, progress=False)
        secs = time.perf_counter() - t
        if k == 0:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(f"  peak resident memory after the first fact: {peak:.2f} GiB (model included)", flush=True)
        row = dict(subject=f.subject, relation=f.relation, correct=correct[k], seconds=secs, n_neurons=len(r.neurons),
                   refine_used=r.settings["refine_used"], truncated="best by score" in r.settings["refine_note"],
                   completeness=float(r.completeness().nanmedian()), p_clean=float(r.p_clean.mean()),
                   layers=" ".join(str(l) for l, _, _ in r.neurons))
        if k < args.floor_facts:
            row["floor_kv"], row["floor_full"] = floors(model, prompts, r.answer_id, 20)
        if r.neurons:
            eff = neuron_effect(model, r, f, n_controls=args.n_controls, n_unrelated=args.n_unrelated, seed=k)
            for g in eff.groups:
                found, ctl = eff.change(g)
                row[f"sup_{g}"], row[f"ctl_{g}"] = found, float(ctl.mean())
                row[f"beats_{g}"] = bool((found < ctl).all())
            e = kn(model, f, neurons=r, verbose=False)
            para, nb = list(f.paraphrases), list(f.neighbours)
            with e.applied(model):
                new, true = target_logprob(model, [f.text] * 2, [f.target_new, f.target_true])
                pn = target_logprob(model, para, [f.target_new] * len(para))
                pt = target_logprob(model, para, [f.target_true] * len(para))
                nn_ = target_logprob(model, nb, [f.target_new] * len(nb))
                nt = target_logprob(model, nb, [f.target_true] * len(nb))
            row.update(es=float(new > true), ps=float((pn > pt).float().mean()), ns=float((nt > nn_).float().mean()))
        rows.append(row)
        floor = f", floors {row['floor_kv']:.1f} s (cached prefix) / {row['floor_full']:.1f} s (whole prompt)" \
            if "floor_kv" in row else ""
        kn_s = f"  KN ES {row['es']:.0f} PS {row['ps']:.2f} NS {row['ns']:.2f}" if "es" in row else "  (no neurons)"
        sup = f"  suppress: fact {row['sup_fact']:+.2f} vs control {row['ctl_fact']:+.3f}" if "sup_fact" in row else ""
        print(f"  [{k + 1}/{len(facts)}] {f.subject!r} ({f.relation}): {secs:.1f} s{floor}; {len(r.neurons)} neurons "
              f"(layers {row['layers']}; p={row['refine_used']:g}){sup}{kn_s}", flush=True)
    summarise(name, rows, args.post_norm)
    if args.csv:
        import pandas as pd

        path = args.csv.replace(".csv", f"-{name}.csv")
        pd.DataFrame(rows).to_csv(path, index=False)
        print(f"  wrote {path}")


def summarise(name: str, rows: list[dict], post_norm: str) -> None:
    mean = statistics.mean
    secs = [r["seconds"] for r in rows]
    print(f"\n{name}: {len(rows)} facts")
    print(f"  time per fact      median {statistics.median(secs):.1f} s (min {min(secs):.1f}, max {max(secs):.1f})")
    fl = [r for r in rows if "floor_kv" in r]
    if fl:
        m, kv, full = mean(r["seconds"] for r in fl), mean(r["floor_kv"] for r in fl), mean(r["floor_full"] for r in fl)
        print(f"  floor ({len(fl)} fact(s)): batched fwd+bwd of the same rows: {kv:.1f} s with the cached prefix "
              f"(ratio {m / kv:.2f}x), {full:.1f} s over the whole prompt (ratio {m / full:.2f}x); target <= 3x")
    counts = [r["n_neurons"] for r in rows]
    print(f"  neurons per fact   mean {mean(counts):.1f}; distribution "
          + ", ".join(f"{n}: {counts.count(n)}" for n in sorted(set(counts)))
          + f"; in [2, 5]: {sum(2 <= c <= 5 for c in counts)}/{len(rows)}; truncated to the best 5: "
          f"{sum(r['truncated'] for r in rows)}")
    print(f"  refinement p       mean {mean(r['refine_used'] for r in rows):.2f}; IG completeness ratio "
          f"(post_norm={post_norm}; median over prompts x layers, then mean) "
          f"{mean(r['completeness'] for r in rows):.2f}")
    ok = [r for r in rows if "sup_fact" in r]
    if ok:
        for g in ("fact", "related", "unrelated"):
            have = [r for r in ok if f"sup_{g}" in r]
            if have:
                print(f"  suppress, {g:<9}  found {mean(r[f'sup_{g}'] for r in have):+.3f}  random matched control "
                      f"{mean(r[f'ctl_{g}'] for r in have):+.3f}  (mean relative change of p(answer); found beats "
                      f"every control on {sum(r[f'beats_{g}'] for r in have)}/{len(have)} facts)")
        print(f"  KN edit (λ1=1, λ2=8)  efficacy {mean(r['es'] for r in ok):.3f}  paraphrase {mean(r['ps'] for r in ok):.3f}"
              f"  neighbourhood {mean(r['ns'] for r in ok):.3f}  (over {len(ok)} facts with neurons)")
    print(f"  peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="only the first N facts (after --stride)")
    ap.add_argument("--stride", type=int, default=1, help="every k-th built-in fact (spreads a short run over relations)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-controls", type=int, default=10, help="random matched neuron sets per fact")
    ap.add_argument("--n-unrelated", type=int, default=8, help="unrelated facts per suppression test")
    ap.add_argument("--floor-facts", type=int, default=1, help="facts on which the floors are measured")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--post-norm", choices=("frozen", "live"), default="frozen",
                    help="IG under Gemma's MLP post-norm: its scale held at the clean value (default) or live")
    ap.add_argument("--csv", default=None, help="per-fact rows, e.g. out/neurons.csv (one file per model)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run("gemma-3-270m", args)
    if not args.skip_smollm2:
        run("smollm2-135m", args)


if __name__ == "__main__":
    sys.exit(main())
