"""The main job end to end on the bundled model, written as figures and one offline HTML report.

    factscope demo --out out/                 # what `make demo` runs
    from factscope.app.demo import run_demo       # the same from Python
    result = run_demo("out")                  # DemoResult: report path, timings, summary lines

Six steps, each a section of ``out/report.html``:

1. **Answers**: the model's top-1 answer on every built-in fact (``answers.csv``).
2. **Locate**: the three-panel causal trace of one fact (``trace.{png,svg,pdf}``) and the MLP
   layer profile over one built-in fact per relation (``profile.{png,svg,pdf}``), with the
   recommended edit layer.
3. **Knowledge neurons** of that fact over its prompt and two paraphrases (``neurons.png``, and
   ``neurons.html``, the circuitsvis view, which the report also embeds).
4. **ROME** edit of the fact twice: with the defaults (the layer `factscope.edit.edit_layer` chooses
   and the tuned δ budget) and as published at the traced layer, side by side with one sentence on
   why they differ: before/after answers (``rome_before_after.txt``, ``rome_traced_before_after.txt``),
   the edits (``rome_edit.safetensors``, ``rome_traced_edit.safetensors``) and their evaluations
   (``rome_report.{png,txt}``, ``rome_traced_report.{png,txt}``).
5. **Spillover** of a ROME edit of where the President lives into facts about the Secretary of
   State and others (``spillover.{png,csv}``).
6. **MEMIT** batch over one built-in fact for each of the first 8 relations (``memit_edit.safetensors``,
   ``memit_report.{png,txt}``, ``memit_requests.csv``).

Every figure is also a PNG; the report inlines them, the tables, the circuitsvis view and the
settings, and loads nothing from the network.

Cost: the steps' own (one trace, a 12-fact layer profile, one knowledge-neuron search, a ROME and
a MEMIT edit with their evaluations, one spillover probe). A first run also builds caches under
``$FACTSCOPE_CACHE`` that later runs reuse: the GGUF conversion, the 8,192-token corpus for the key
statistics, and the layer profile. Of the rest, MEMIT's z optimisation (linear in the facts) and the
evaluations take longest. Measured times and peak memory: docs/guide.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factscope.app.defaults import C_TOKENS, DEMO_FACT, DEMO_GROUP, MEMIT_FACTS
from factscope.app.tables import answers_frame, before_after_frame, neuron_suppression, report_frame, spill_frame
from factscope.bridge import Bridge

if TYPE_CHECKING:
    import pandas as pd

    from factscope.edit import Edit, EditLayerChoice
    from factscope.probes import EditReport

__all__ = ["DemoResult", "run_demo"]

_CACHED_WHAT = {"models": "model conversion (GGUF → safetensors)", "stats": "key statistics C = E[kkᵀ]",
                "profiles": "layer profile"}


@dataclass(frozen=True)
class DemoResult:
    """What `run_demo` wrote and measured.

    Attributes:
        out: the output folder.
        report: the HTML report's path.
        timings: seconds per step, in order (``"load"``, ``"answers"``, ...).
        summary: the headline lines (also at the top of the report).
        cached: the cache entries this run created (empty when everything came from the cache).
    """

    out: Path
    report: Path
    timings: dict[str, float]
    summary: list[str]
    cached: list[str] = field(default_factory=list)

    def to_dataframe(self) -> Any:
        """One row per step: ``step``, ``seconds``.

        Cost: negligible.
        """
        import pandas as pd

        return pd.DataFrame({"step": list(self.timings), "seconds": list(self.timings.values())})


def _cache_files() -> set[str]:
    from factscope.cache import cache_dir

    root = cache_dir()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@contextmanager
def _step(timings: dict[str, float], name: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - t


def run_demo(out: str | Path = "out", *, model: Bridge | None = None, samples: int = 5,
             echo: Callable[[str], Any] = print, progress: bool = True) -> DemoResult:
    """Run the six steps of the module docstring on ``model`` and write everything into ``out``.

    Args:
        out: the output folder (created).
        model: a loaded bridge, or what `factscope.load_model` accepts; ``None``: the bundled Gemma 3 270M.
        samples: corrupted runs per tracing cell, for the trace and the layer profile (default 5, half
            ROME's 10: tracing time is linear in it).
        echo: where progress text and tables go (``print``; the CLI passes ``typer.echo``).
        progress: show progress bars.

    Returns:
        A `DemoResult` (the report is ``out/report.html``).

    Cost: see the module docstring (measured times and memory: docs/guide.md).
    """
    from factscope.checks import check_int
    from factscope.models import load_model

    check_int("samples", samples, 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    before = _cache_files()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with _step(timings, "load the model"):
        m = model if hasattr(model, "cfg") else load_model(model)
    echo(f"loaded the model in {timings['load the model']:.1f} s")
    ctx = _Context(m, out, samples, echo, progress, timings)
    for i, step in enumerate(_STEPS, 1):
        echo(f"\n[{i}/{len(_STEPS)}] {step.__doc__.splitlines()[0]}")
        with _step(timings, step.__name__.strip("_").replace("_", " ")):
            step(ctx)
    new = sorted(_cache_files() - before)
    total = time.perf_counter() - t0
    timings["total"] = total
    cache_line = _cache_line(new)
    ctx.summary.append(f"Total {total / 60:.1f} min. {cache_line}")
    report = _write(ctx, m, cache_line)
    echo("\nsummary:\n" + "\n".join(f"  - {s.replace('**', '').replace('`', '')}" for s in ctx.summary))
    echo("\ntime per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    echo(f"\nwrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}/\nopen {report} in a browser "
         f"(self-contained, works offline)")
    return DemoResult(out=out, report=report, timings=timings, summary=ctx.summary, cached=new)


def _cache_line(new: list[str]) -> str:
    from factscope.cache import cache_dir

    if not new:
        return (f"The model conversion, layer profile and key statistics all came from the cache ({cache_dir()}), "
                "so this run was faster than the first.")
    made = sorted({_CACHED_WHAT.get(n.split("/", 1)[0], n.split("/", 1)[0]) for n in new})
    return (f"This run built and cached: {', '.join(made)} ({len(new)} files under {cache_dir()}); "
            "a second run reuses them and is faster.")


@dataclass
class _Context:
    """What the steps share: the model, the output folder, settings, and what they produce."""

    model: Bridge
    out: Path
    samples: int
    echo: Callable[[str], Any]
    progress: bool
    timings: dict[str, float]
    sections: list[Any] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    fact: Any = None
    layer: int | None = None
    memit_layers: list[int] = field(default_factory=list)
    C: dict[int, Any] = field(default_factory=dict)


def _answers(c: _Context) -> None:
    """The model's answers on the built-in facts."""
    from factscope.datasets import builtin_facts
    from factscope.figures import Section, Table

    facts = builtin_facts()
    df = answers_frame(c.model, facts)
    df.to_csv(c.out / "answers.csv", index=False)
    c.echo(df[["prompt", "expected", "answer", "p_answer", "correct"]].to_string(index=False, max_colwidth=56))
    acc = float(df["correct"].mean())
    c.echo(f"\n{acc:.1%} of {len(df)} built-in facts answered correctly (top-1 first token).")
    by = (df.groupby("relation", sort=False).agg(example=("prompt", "first"), facts=("correct", "size"),
                                                 correct=("correct", "sum"), mean_p_answer=("p_answer", "mean"))
          .reset_index())
    c.summary.append(f"**Answers**: {int(df['correct'].sum())} of {len(df)} built-in facts answered correctly "
                     f"(top-1 first token), over {len(by)} relations.")
    c.sections.append(Section(
        title="1. The model's answers", intro=(
            f"Each built-in fact is a CounterFact-style prompt whose next token should be the answer. "
            f"{acc:.1%} of {len(df)} are answered correctly (the expected answer's first token is the "
            "model's top-1); only facts the model knows can be traced and edited."),
        blocks=[Table(frame=by, caption=("Accuracy by relation (Wikidata property): an example prompt, facts, "
                                         "correctly answered, mean p(top-1 answer)")),
                Table(frame=df, caption="Every built-in fact: the model's top-1 answer and its probability, "
                                        "p of the expected answer's first token", collapsed=True)]))


def _locate(c: _Context) -> None:
    """Causal trace of one fact, and the layer profile over the built-in facts."""
    import pandas as pd

    from factscope.arch import arch_of
    from factscope.datasets import builtin_fact
    from factscope.figures import (
        Figure,
        Section,
        Table,
        plot_profile,
        plot_trace,
        save_figure,
    )
    from factscope.locate import one_per_relation, recommended_layer
    from factscope.locate import trace as run_trace

    c.fact = fact = builtin_fact(DEMO_FACT)
    c.echo(f"causal trace of {fact.text!r} ({c.samples} corrupted runs per cell)")
    window = min(10, arch_of(c.model).n_layers)  # ROME's 10, clipped to the model
    r = run_trace(c.model, fact, kind="all", samples=c.samples, window=window, progress=c.progress)
    save_figure(plot_trace(r), c.out / "trace.png", ("png", "svg", "pdf"))
    peaks = []
    for k in r.kinds:
        ie = r.indirect_effect(k)
        t, l = divmod(int(ie.argmax()), ie.shape[1])
        peaks.append({"kind": k, "peak indirect effect": float(ie.max()), "layer": l, "token": t,
                      "token text": r.tokens[t].strip()})
    peaks_df = pd.DataFrame(peaks)
    c.echo(f"{r.prompt!r} -> {r.answer.strip()!r}: clean p={r.clean:.3f}, corrupted p={r.corrupted:.3f}")
    c.echo(peaks_df.to_string(index=False))
    n = len(one_per_relation())
    c.echo(f"\nlayer profile (MLP) over {n} built-in facts, one per relation")
    choice = recommended_layer(c.model, samples=c.samples, progress=c.progress)
    save_figure(plot_profile(choice.profile), c.out / "profile.png", ("png", "svg", "pdf"))
    c.layer = choice.layer
    c.echo(f"recommended edit layer: {choice.layer} ({choice.reason})")
    mlp = next((p for p in peaks if p["kind"] == "mlp"), peaks[0])
    c.summary.append(f"**Trace** of {fact.text!r} → {r.answer.strip()}: clean p = {r.clean:.3f}, corrupted "
                     f"{r.corrupted:.3f}; MLP effect peaks at layer {mlp['layer']} on {mlp['token text']!r}. "
                     f"**Recommended edit layer {choice.layer}** ({choice.reason}).")
    c.settings.update({"trace fact": DEMO_FACT, "trace samples": c.samples, "trace noise": "3σ Gaussian on the subject",
                       "profile facts": n, "edit layer": choice.layer})
    c.sections.append(Section(
        title="2. Where is the fact? Causal trace and layer profile", intro=(
            f"Causal tracing (Meng et al. 2022): the subject's embeddings are corrupted with Gaussian noise "
            f"(3σ), then one hidden state, MLP output or attention output at a time (a window of {window} layers for "
            f"MLP and attention) is restored to its clean value; the colour is how much of p({r.answer.strip()}) "
            f"it brings back. Clean p = {r.clean:.3f}, corrupted p = {r.corrupted:.3f}, "
            f"{c.samples} noise samples per cell (ROME uses 10: `factscope demo --samples 10`). The profile averages the MLP effect over {n} facts, "
            "one per relation, by ROME's token buckets, with 95% CIs; its peak at the last subject token "
            "is the layer the editors use."),
        blocks=[Figure(path=c.out / "trace.png", caption=(
                    f"Indirect effect on p({r.answer.strip()}) of restoring each state, per token (rows) and layer "
                    "(columns); * marks the subject's tokens. Also trace.svg, trace.pdf.")),
                Table(frame=peaks_df, caption="Peak indirect effect per kind: where restoring one state helps most"),
                Figure(path=c.out / "profile.png", caption=(
                    f"MLP indirect effect per layer by token bucket, mean and 95% CI over {n} facts; the "
                    f"recommended edit layer is {choice.layer}. Also profile.svg, profile.pdf."))]))


def _neurons(c: _Context) -> None:
    """Knowledge neurons of the fact (integrated gradients)."""
    from factscope.figures import (
        Figure,
        Html,
        Section,
        Table,
        neurons_html,
        plot_neurons,
        save_figure,
    )
    from factscope.locate import neurons as find_neurons

    fact = c.fact
    prompts = [fact.text, *fact.paraphrases[:2]]
    c.echo(f"knowledge neurons of {fact.text!r} over {len(prompts)} prompts (integrated gradients)")
    found = find_neurons(c.model, fact, prompts=prompts, progress=c.progress)
    save_figure(plot_neurons(found), c.out / "neurons.png")
    ans = found.answer.strip()
    p0, p1 = neuron_suppression(c.model, found)
    df = found.to_dataframe()
    c.echo(df.to_string(index=False))
    c.echo(f"suppressing them at the answer position: p({ans}) {p0:.3f} -> {p1:.3f} (mean over the prompts)")
    blocks = [Figure(path=c.out / "neurons.png", caption=(
                  "Integrated-gradient attribution per layer (thin lines: prompts; thick: their mean); stars "
                  "mark the selected neurons (layer.index) at their mean score.")),
              Table(frame=df, caption=(f"Selected neurons: layer, index, mean score, fraction of prompts whose "
                                       f"coarse set holds it, attribution per prompt ({found.settings['refine_note']})"))]
    if found.neurons:
        view = neurons_html(found, c.out / "neurons.html")
        blocks.append(Html(fragment=view.local_src, caption=(
            "circuitsvis: each prompt's tokens coloured by a selected neuron's activation (choose the neuron "
            "with the buttons). Interactive; works offline (also neurons.html).")))
    c.summary.append(f"**Knowledge neurons**: {len(found.neurons)} selected; suppressing them moves "
                     f"p({ans}) {p0:.3f} → {p1:.3f}.")
    c.sections.append(Section(
        title="3. Knowledge neurons", intro=(
            f"Knowledge neurons (Dai et al. 2022): integrated gradients of p({ans}) with respect to every MLP "
            f"neuron's activation at the last token, over the prompt and {len(prompts) - 1} paraphrases; the "
            f"neurons found in most prompts are kept. Suppressing them (activation set to 0 at the answer "
            f"position) moves p({ans}) from {p0:.3f} to {p1:.3f}, averaged over the prompts."),
        blocks=blocks))


def _rome(c: _Context) -> None:
    """ROME with the defaults (the chosen layer and δ budget) beside the paper's ROME at the traced layer."""
    from factscope.edit import MEMITConfig, ROMEConfig, covariances, edit_layer
    from factscope.edit import rome as rome_edit
    from factscope.figures import Figure, Section, Table, Text, plot_report, save_figure
    from factscope.probes import evaluate

    fact = c.fact
    n = MEMITConfig().n_layers  # MEMIT's span (step 6), ending at the traced layer
    c.memit_layers = list(range(max(0, c.layer - n + 1), c.layer + 1))
    c.echo(f"key statistics C = E[kkᵀ] at layers {c.memit_layers} for MEMIT and the traced-layer ROME (one shared "
           "pass; the first run samples its corpus from the model, then everything is cached)")
    c.C = covariances(c.model, c.memit_layers, n_tokens=C_TOKENS, progress=c.progress)
    tuned = ROMEConfig.for_model(c.model)
    c.echo("where to edit: key specificity at every layer, the tracing profile and a trial edit on calibration facts "
           "(factscope.edit.edit_layer; cached after the first run)")
    choice = edit_layer(c.model, editor="rome", config=tuned, progress=c.progress)
    c.echo(f"ROME with the defaults: {fact.subject!r}: {fact.target_true} -> {fact.target_new}")
    e = rome_edit(c.model, fact, progress=c.progress)  # what a researcher gets with no other argument
    c.echo(f"ROME as published, at the traced layer {c.layer}")
    e_tr = rome_edit(c.model, fact, layer=c.layer, config=ROMEConfig.paper(), C=c.C[c.layer], progress=c.progress)
    runs = [("defaults", e, "rome"), ("paper, traced layer", e_tr, "rome_traced")]
    frames, reps = {}, {}
    for label, edit, stem in runs:
        frames[label] = ba = before_after_frame(c.model, edit, fact)
        c.echo(f"\n{label} (layer {edit.info['layer']}):\n" + ba.to_string(index=False, max_colwidth=48))
        (c.out / f"{stem}_before_after.txt").write_text(ba.to_string(index=False) + "\n")
        edit.save(c.out / f"{stem}_edit.safetensors")
        reps[label] = rep = evaluate(c.model, edit, method=f"ROME ({label})", progress=c.progress)
        c.echo(rep.table())
        (c.out / f"{stem}_report.txt").write_text(rep.table() + "\n")
        save_figure(plot_report(rep), c.out / f"{stem}_report.png")
    c.settings["ROME config (defaults)"] = _config(tuned)
    c.settings["ROME config (traced layer)"] = _config(ROMEConfig.paper())
    c.settings["ROME layer (defaults)"] = f"{choice.layer}: {choice.reason}"
    c.settings["key statistics C"] = (f"E[kkᵀ] at layers {c.memit_layers} from {C_TOKENS:,} tokens sampled from the model "
                                      "(library default 16,384, which the default ROME uses)")
    cmp = _contrast_frame(reps)
    post = {k: r.summary()["post"] for k, r in reps.items()}
    L, Lt = e.info["layer"], e_tr.info["layer"]
    why_differ = _why_differ(choice, e, e_tr)
    for label, edit, _ in runs:
        p = post[label]
        c.summary.append(f"**ROME ({label})** at layer {edit.info['layer']}: ES {p['efficacy']:.2f}, PS "
                         f"{p['paraphrase']:.2f}, NS {p['neighbourhood']:.2f}, neighbour KL "
                         f"{p['neighbourhood_kl']:.2f} nats.")
    c.summary.append(why_differ)
    blocks = [Table(frame=cmp, caption=("The two edits side by side: every success rate and locality measure after "
                                        "the edit, with 95% bootstrap CIs (one request: the CI is the point)")),
              Text(text=str(choice.to_dataframe().round(3).to_string(index=False)), caption=(
                  "Why the default layer: per layer, the key response ρ (how much of δ the update writes into other "
                  "subjects' prompts), the tracing effect as a fraction of its peak, and the trial edit's scores "
                  "on calibration facts at the candidates"))]
    for label, edit, stem in runs:
        blocks += [Table(frame=frames[label], caption=(
                       f"{label} (layer {edit.info['layer']}): top-1 answers and p({fact.target_new}) before and "
                       "after, on the prompt, its paraphrases and neighbouring subjects")),
                   Figure(path=c.out / f"{stem}_report.png", caption=(
                       f"{label}: success rates after the edit (solid) and before (hatched) with 95% bootstrap CIs, "
                       "neighbourhood KL and change in fluency.")),
                   Table(frame=report_frame(reps[label]), caption=(
                       f"{label}: every metric before and after (ES/PS/NS: efficacy, paraphrase, neighbourhood "
                       "success; _dp: probability margins; _em: exact match; N+: CounterFact+ neighbours behind "
                       "the edit prompt)"), collapsed=True)]
    c.sections.append(Section(
        title="4. Edit: ROME, where it stays put and where tracing points", intro=(
            f"ROME (Meng et al. 2022) rewrites one MLP so that the subject's key k* maps to a value v* that makes "
            f"{fact.target_new} the answer: ΔW = C⁻¹k* Λᵀ, with C the key statistics. Two edits of the same fact. "
            f"**Defaults** (`rome(model, request)`): layer {L}, chosen by `edit_layer` from key specificity, the "
            f"tracing profile and a trial edit on calibration facts, and the default δ budget "
            f"({e.info['config_source']}). **Paper**: the published constants at the causal-tracing peak, "
            f"layer {Lt}. {why_differ} Both edits are handles (`apply` / `revert`, bit-exact); the model is left "
            "unedited."),
        blocks=blocks))


def _contrast_frame(reps: dict[str, EditReport]) -> pd.DataFrame:
    """One row per headline metric, one column per edit: ``post [lo, hi]`` (fluency: its change)."""
    import pandas as pd

    from factscope.probes.stats import format_ci

    rows = {"efficacy": "post", "paraphrase": "post", "neighbourhood": "post", "neighbourhood_kl": "post",
            "nplus": "post", "fluency": "delta"}
    out = {"metric": [m + (" change" if col == "delta" else "") for m, col in rows.items()]}
    for label, rep in reps.items():
        s = rep.summary()
        out[label] = [format_ci(*(float(s.loc[m, k]) for k in (col, f"{col}_lo", f"{col}_hi")), fmt=".2f")
                      for m, col in rows.items()]
    return pd.DataFrame(out)


def _why_differ(choice: EditLayerChoice, e: Edit, e_tr: Edit) -> str:
    """One sentence: the key response at both layers and δ against ‖v₀‖ for both edits."""
    L, Lt = e.info["layer"], e_tr.info["layer"]
    r, rt = float(choice.response[L]), float(choice.response[Lt])
    d, dt = e.info["delta_norm"] / e.info["v0_norm"], e_tr.info["delta_norm"] / e_tr.info["v0_norm"]
    return (f"They differ because at layer {L} other subjects' keys take {r:.2f} of the edit's δ against {rt:.2f} "
            f"at layer {Lt} (mean key response, edit-free), and the default δ budget stops at ‖δ‖ = {d:.2f}‖v₀‖ "
            f"where the paper's goes to {dt:.2f}‖v₀‖: on a post-norm model a δ near ‖v₀‖ sets the MLP output's "
            "direction wherever it reaches.")


def _spillover(c: _Context) -> None:
    """Spillover probe: President / Secretary of State."""
    from factscope.datasets import builtin_groups
    from factscope.figures import Figure, Section, Table, plot_spillover, save_figure
    from factscope.probes import spillover

    group = next(g for g in builtin_groups() if g.name == DEMO_GROUP)
    c.echo(f"spillover: {group.description}")
    s = spillover(c.model, group.edit, editor="rome", progress=c.progress)  # ROME's defaults: edit_layer's layer
    c.echo(s.table())
    save_figure(plot_spillover(s), c.out / "spillover.png")
    s.to_dataframe().to_csv(c.out / "spillover.csv", index=False)
    summ = spill_frame(s)
    r = s.request
    rel = summ[summ.category == "related"]
    moved = f"facts about related entities moved {rel.iloc[0]['mean |Δlog p| [95% CI]']}, " if len(rel) else ""
    trend = s.verdict.rsplit(". ", 1)[-1].rstrip(".")
    c.summary.append(f"**Spillover** of {r.subject} → {r.target_new}: {moved}"
                     f"{trend[:1].lower() + trend[1:] if moved else trend}.")
    c.sections.append(Section(
        title="5. The locality hypothesis: spillover", intro=(
            f"{group.description} A ROME edit with the defaults ({r.subject}: {r.target_true} → {r.target_new}, "
            f"layer {s.layer}, the layer `edit_layer` chooses, and the tuned δ budget); "
            "then every probe in the bank is scored before and after. Paraphrases should move; other facts about "
            "the subject, facts about related entities (the Secretary of State), same-relation neighbours and "
            "unrelated facts should stay. If they move in proportion to how similar their keys are to the "
            f"edited key (whitened by C^-1/2), the edit is not local. Verdict: {s.verdict}"),
        blocks=[Figure(path=c.out / "spillover.png", caption=(
                    "|Δ log p(answer)| per probe against its key's cosine with the edited key, whitened (left) and "
                    "raw (right), by category; the line is the fit over the should-stay probes with its "
                    "bootstrap band.")),
                Table(frame=summ, caption=(
                    "Per category, and pooled over the should-stay probes: mean |Δ log p(answer)|, mean KL, the "
                    "fraction whose top-1 answer flipped, and the slope of |Δ log p| against key cosine; "
                    "95% bootstrap CIs over probes")),
                Table(frame=s.to_dataframe(), caption="Every probe: before and after (also spillover.csv)",
                      collapsed=True)]))


def _memit(c: _Context) -> None:
    """MEMIT batch over built-in facts (one per relation), with its report."""
    import pandas as pd

    from factscope.edit import MEMITConfig
    from factscope.edit import memit as memit_edit
    from factscope.figures import Figure, Section, Table, Text, plot_report, save_figure
    from factscope.locate import one_per_relation
    from factscope.predict import predict
    from factscope.probes import evaluate

    reqs = one_per_relation()[:MEMIT_FACTS]
    layers = c.memit_layers
    c.echo(f"MEMIT: {len(reqs)} built-in facts (one per relation) at once, layers {layers[0]}-{layers[-1]}")
    e = memit_edit(c.model, reqs, layers=layers, C=c.C, progress=c.progress, verbose=False)
    e.save(c.out / "memit_edit.safetensors")
    prompts = [r.text for r in reqs]
    before = predict(c.model, prompts, [r.target_new for r in reqs])
    with e.applied(c.model):
        after = predict(c.model, prompts, [r.target_new for r in reqs])
    rep = evaluate(c.model, e, progress=c.progress)
    rows = rep.to_dataframe()
    per = pd.DataFrame({
        "relation": [r.relation for r in reqs], "prompt": prompts,
        "true → new": [f"{r.target_true} → {r.target_new}" for r in reqs],
        "before": [b.answer.strip() for b in before], "after": [a.answer.strip() for a in after],
        "p_new_after": [a.p_target for a in after],
        "paraphrase_post": rows["paraphrase_post"], "neighbourhood_post": rows["neighbourhood_post"]})
    per.to_csv(c.out / "memit_requests.csv", index=False)
    c.echo(per.to_string(index=False, max_colwidth=40))
    c.echo(rep.table())
    (c.out / "memit_report.txt").write_text(rep.table() + "\n")
    save_figure(plot_report(rep), c.out / "memit_report.png")
    post = rep.summary()["post"]
    c.settings["MEMIT layers"] = layers
    c.settings["MEMIT facts"] = [r.text for r in reqs]
    c.settings["MEMIT config"] = _config(MEMITConfig())
    c.summary.append(f"**MEMIT**, {len(reqs)} facts at once, layers {layers[0]}–{layers[-1]}: ES "
                     f"{post['efficacy']:.2f}, PS {post['paraphrase']:.2f}, NS {post['neighbourhood']:.2f}.")
    c.sections.append(Section(
        title="6. Edit many facts at once: MEMIT", intro=(
            f"MEMIT (Meng et al. 2023) writes {len(reqs)} counterfactuals, one per relation, into the MLPs of "
            f"layers {layers[0]}–{layers[-1]} at once: a target hidden state z per fact at the last layer, then "
            "each layer's share of the residual, ΔW = (λC + KᵀK)⁻¹KᵀR. Scored like ROME, over all the edited facts."),
        blocks=[Table(frame=per, caption=(
                    "Each edited fact: top-1 answer before and after, p(new answer) after, paraphrase and "
                    "neighbourhood success after (also memit_requests.csv)")),
                Figure(path=c.out / "memit_report.png", caption=(
                    "Evaluation of the batch: success rates after (solid) and before (hatched) with 95% bootstrap "
                    "CIs over the facts, neighbourhood KL and change in fluency.")),
                Table(frame=report_frame(rep), caption="Every metric before and after, 95% bootstrap CIs over the facts"),
                Text(text=rep.table(), caption="The same report as printed by `factscope evaluate`")]))


_STEPS = (_answers, _locate, _neurons, _rome, _spillover, _memit)


def _config(cfg: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: v for k, v in asdict(cfg).items() if not callable(v)}


def _write(c: _Context, m: Any, cache_line: str) -> Path:
    import pandas as pd
    import torch

    from factscope.arch import arch_of
    from factscope.cache import cache_dir
    from factscope.figures import Section, Table, write_report
    from factscope.models import fingerprint, model_info
    from factscope.versions import library_versions

    a, mi = arch_of(m), model_info(m)
    steps = pd.DataFrame({"step": list(c.timings), "seconds": [round(v, 1) for v in c.timings.values()]})
    c.sections.append(Section(title="Run time and cache", intro=cache_line, blocks=[
        Table(frame=steps, caption="Wall-clock seconds per step on this machine")]))
    settings = {"model": f"{mi.name} ({mi.label})", "fingerprint": fingerprint(m),
                "layers / d_model / d_mlp": f"{a.n_layers} / {a.d_model} / {a.d_mlp}", **c.settings,
                **library_versions(), "threads": torch.get_num_threads(),
                "cache folder": str(cache_dir()), "date": time.strftime("%Y-%m-%d %H:%M")}
    return write_report(c.out / "report.html", title="factscope: locate and edit a fact in " + mi.name,
                        subtitle=f"{mi.label} · {a.n_layers} layers · run {time.strftime('%Y-%m-%d %H:%M')}",
                        sections=c.sections, settings=settings, summary=c.summary)
