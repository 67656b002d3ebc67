"""MEMIT at scale, sequential editing (ROME / MEMIT / AlphaEdit) and the FT-L baseline, on one model.

    python benchmarks/bench_memit.py [--batches 10,100,1000] [--sequential rome,memit,alphaedit] [--steps 60]
                               [--finetune] [--model gemma-3-270m] [--threads 2] [--z-steps 25]
    python benchmarks/bench_memit.py --held-out 40 [--paper] [--no-fluency]

**Held out (issue 18's targets).** ``--held-out N``: what ``memit(model, requests)`` does with no other
argument, on one batch of the first N built-in requests held out from the calibration split
(`factscope.calibration_split`): the window `factscope.edit.edit_layer` chooses and
``MEMITConfig.for_model``'s budget (``--paper``: the paper's constants at five layers ending at the
traced one). Evaluated with `factscope.probes.evaluate` (fluency included unless ``--no-fluency``)
and checked against ES >= 0.95, PS >= 0.85, NS >= 0.85, neighbour KL <= 0.5 nats, fluency change >=
-0.3 bits (`held_out.py`).

**Batches.** For each size n, one `memit` call on n requests: the built-in facts first (86), then
`synthetic_requests` (invented people; their ``target_true`` is a random object, so p(new) > p(true)
is 0.5 by chance before the edit: the unedited baseline is printed beside it). Printed per size:
- built-in part: efficacy / paraphrase / neighbourhood (CounterFact's comparisons of mean per-token
  log-probabilities, `factscope.probes.evaluate.rewrite_scores`);
- synthetic part: efficacy and paraphrase, and top-1: target_new's first token is the argmax;
- held out: top-1 accuracy on the built-in facts *not* in the batch (general ability), before/after;
- time (key statistics cached beforehand), peak resident memory during the call, the residual error
  ‖z − h‖ before each layer and after the last.
Then a cost model fitted to the measured sizes (seconds = a + b·n) extrapolates to 10,000.

**Sequential.** An `EditSession` per method applies built-in facts one per step. Every 10 steps:
efficacy and paraphrase over all edits so far, their neighbourhood, and held-out top-1 accuracy on
the facts not edited yet (general ability). Unedited values first.

**FT-L.** `finetune` on the first 10 built-in facts at once, at the traced layer: the same three scores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import warnings

import torch


class PeakRSS:
    """Peak resident memory (GiB) while the block runs, sampled every 50 ms from /proc."""

    def __enter__(self) -> "PeakRSS":
        self.peak, self._stop = 0.0, threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) / 2**20)
            self._stop.wait(0.05)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def scores(model, reqs) -> dict[str, float]:
    from factscope.probes.evaluate import rewrite_scores

    s = [rewrite_scores(model, r) for r in reqs]
    return {k: statistics.mean(getattr(x, k) for x in s) for k in ("efficacy", "paraphrase", "neighbourhood")}


def top1(model, prompts: list[str], targets: list[str]) -> float:
    from factscope import predict

    if not prompts:
        return float("nan")
    return predict(model, prompts, targets, k=1).accuracy


def batch_requests(model, n: int):
    from factscope import builtin_facts, synthetic_requests

    built = builtin_facts()[:n]
    return built, (synthetic_requests(n - len(built), model=model) if n > len(built) else [])


def run_batches(model, sizes: list[int], config) -> None:
    from factscope import builtin_facts
    from factscope.edit import memit
    from factscope.locate import recommended_layer

    top = recommended_layer(model, progress=False).layer
    layers = list(range(max(0, top - config.n_layers + 1), top + 1))
    why = f"{len(layers)} layers ending at the traced layer {top}"
    print(f"\nMEMIT batches: layers {layers} ({why})")
    allb = builtin_facts()
    rows = []
    for n in sizes:
        built, syn = batch_requests(model, n)
        held = allb[len(built):]
        base_syn = scores(model, syn[:200]) if syn else None
        base_held = top1(model, [r.text for r in held], [r.target_true for r in held])
        t = time.perf_counter()
        with PeakRSS() as mem:
            e = memit(model, built + syn, layers=layers, config=config, progress=True, verbose=False)
        dt = time.perf_counter() - t
        with e.applied(model):
            sb = scores(model, built)
            ss = scores(model, syn[:200]) if syn else None
            syn_top1 = top1(model, [r.text for r in syn[:200]], [r.target_new for r in syn[:200]]) if syn else None
            held_top1 = top1(model, [r.text for r in held], [r.target_true for r in held])
        rows.append((n, dt))
        print(f"\n n = {n}: {dt:.0f} s ({dt / n:.1f} s per request), peak RSS {mem.peak:.2f} GiB; residual error "
              f"{[round(x) for x in e.info['residual_error']]}; mean z steps {statistics.mean(e.info['z_steps']):.1f}")
        print(f"   built-in ({len(built)}): ES {sb['efficacy']:.2f}  PS {sb['paraphrase']:.2f}  NS {sb['neighbourhood']:.2f}")
        if syn:
            print(f"   synthetic ({len(syn)}, scored on {min(200, len(syn))}): ES {ss['efficacy']:.2f} (unedited "
                  f"{base_syn['efficacy']:.2f})  PS {ss['paraphrase']:.2f} (unedited {base_syn['paraphrase']:.2f})  "
                  f"top-1 {syn_top1:.2f}")
        print(f"   held-out built-in facts ({len(held)}): top-1 {held_top1:.2f} (unedited {base_held:.2f})")
        sys.stdout.flush()
    if len(rows) >= 2:
        ns = torch.tensor([r[0] for r in rows], dtype=torch.float64)
        ts = torch.tensor([r[1] for r in rows], dtype=torch.float64)
        A = torch.stack([torch.ones_like(ns), ns], 1)
        a, b = torch.linalg.lstsq(A, ts[:, None]).solution[:, 0].tolist()
        print(f"\n cost model: seconds ≈ {a:.0f} + {b:.2f}·n  →  1,000: {(a + 1000 * b) / 60:.0f} min;  "
              f"10,000: {(a + 10000 * b) / 3600:.1f} h")


def run_sequential(model, methods: list[str], steps: int, config_for) -> None:
    from factscope import builtin_facts
    from factscope.edit import EditSession

    facts = builtin_facts()
    steps = min(steps, len(facts))
    print(f"\nSequential editing: {steps} built-in facts, one per step")
    for method in methods:
        s = EditSession(model, method, config=config_for(method), progress=False)
        print(f"\n {method} at layers {s.layers}")
        held = facts[steps:]
        base = scores(model, facts[:steps])
        print(f"   step   0: ES {base['efficacy']:.2f}  PS {base['paraphrase']:.2f}  NS {base['neighbourhood']:.2f}  "
              f"held-out top-1 {top1(model, [r.text for r in held], [r.target_true for r in held]):.2f}", flush=True)
        t = time.perf_counter()
        for i in range(steps):
            s.edit(facts[i])
            if (i + 1) % 10 == 0 or i + 1 == steps:
                sc = scores(model, facts[:i + 1])
                acc = top1(model, [r.text for r in held], [r.target_true for r in held])
                print(f"   step {i + 1:3d}: ES {sc['efficacy']:.2f}  PS {sc['paraphrase']:.2f}  NS {sc['neighbourhood']:.2f}  "
                      f"held-out top-1 {acc:.2f}  ({(time.perf_counter() - t) / (i + 1):.0f} s per step)", flush=True)
        s.revert()


def run_finetune(model) -> None:
    from factscope import builtin_facts
    from factscope.edit import finetune
    from factscope.locate import recommended_layer

    reqs = builtin_facts()[:10]
    layer = recommended_layer(model, progress=False).layer
    t = time.perf_counter()
    e = finetune(model, reqs, layer=layer, progress=False, verbose=False)
    dt = time.perf_counter() - t
    with e.applied(model):
        sc = scores(model, reqs)
    print(f"\nFT-L (layer {layer}, 10 built-in facts at once, {dt:.0f} s): ES {sc['efficacy']:.2f}  "
          f"PS {sc['paraphrase']:.2f}  NS {sc['neighbourhood']:.2f}")


def run_held_out(model, n: int, paper: bool, fluency: bool) -> None:
    from factscope import calibration_split
    from factscope.edit import MEMITConfig, memit
    from factscope.locate import recommended_layer
    from factscope.probes import evaluate

    from held_out import check_targets

    reqs = calibration_split()[1][:n]
    kw = {}
    if paper:
        top = recommended_layer(model, progress=False).layer
        kw = dict(layers=list(range(max(0, top - 4), top + 1)), config=MEMITConfig.paper())
    t = time.perf_counter()
    with PeakRSS() as mem:
        e = memit(model, reqs, progress=True, verbose=True, **kw)
    dt = time.perf_counter() - t
    print(f"MEMIT, one batch of {len(reqs)} held-out requests: {dt:.0f} s (layer choice and statistics cached "
          f"after their first use), peak RSS {mem.peak:.2f} GiB; config {e.info['config_source']}")
    rep = evaluate(model, e, fluency=fluency, progress=True)
    check_targets(rep, f"MEMIT at layers {e.info['layers']}, {e.info['config_source']} config, one batch")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--batches", default="10,100,1000")
    p.add_argument("--sequential", default="rome,memit,alphaedit")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--finetune", action="store_true")
    p.add_argument("--z-steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--held-out", type=int, default=None, help="one batch of N held-out requests; only that")
    p.add_argument("--paper", action="store_true", help="with --held-out: the paper's constants and placement")
    p.add_argument("--no-fluency", action="store_true", help="with --held-out: skip the generation fluency check")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*already answers.*")
    from factscope import load_model
    from factscope.edit import AlphaEditConfig, MEMITConfig, ROMEConfig

    model = load_model(args.model)
    if args.held_out:
        run_held_out(model, args.held_out, args.paper, not args.no_fluency)
        return
    configs = {"memit": MEMITConfig(v_steps=args.z_steps), "alphaedit": AlphaEditConfig(v_steps=args.z_steps),
               "rome": ROMEConfig()}
    if args.batches:
        run_batches(model, [int(x) for x in args.batches.split(",")], configs["memit"])
    if args.sequential:
        run_sequential(model, args.sequential.split(","), args.steps, configs.__getitem__)
    if args.finetune:
        run_finetune(model)


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])  # held_out.py beside this file
    main()
