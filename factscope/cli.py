"""The ``factscope`` command line.

    factscope info [--model NAME]        model, layers, dimensions, hook names, cache folder
    factscope facts [--model NAME]       the model's answers on the built-in facts
    factscope trace PROMPT --subject S   causal-tracing heatmaps of one fact
    factscope profile [--facts builtin]  tracing averaged over facts; the recommended edit layer
    factscope edit --prompt P --subject S --target-new T   a ROME edit, before/after answers
    factscope stats --layer N [--corpus C]                 precompute key statistics C = E[kkᵀ]
    factscope neurons PROMPT --subject S [--html H]        knowledge neurons of one fact, a figure
    factscope demo [--out out/]          the main job end to end
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="factscope: locate and edit factual knowledge in language models (TransformerLens 4.x).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

MODEL_HELP = "Bundled name (gemma-3-270m, smollm2-135m), .gguf path, local HF folder, or hub id. Default: gemma-3-270m."


def _load(model: Optional[str]):
    from factscope.models import ModelNotAvailableError, load_model

    t = time.perf_counter()
    try:
        m = load_model(model)
    except (ModelNotAvailableError, FileNotFoundError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    return m, time.perf_counter() - t


@app.command()
def info(model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP)) -> None:
    """Print the model, its layers and dimensions, its hook names and the cache folder."""
    from factscope.arch import arch_of
    from factscope.cache import cache_dir
    from factscope.models import fingerprint, model_info

    m, secs = _load(model)
    a, mi = arch_of(m), model_info(m)
    n_params = sum(p.numel() for p in m.parameters())
    rows = [
        ("model", f"{mi.name}  ({mi.label})"),
        ("source", f"{mi.source}: {mi.path}" if mi.path else mi.source),
        ("architecture", a.architecture + ("  (post-norms: mlp_out is after ln2_post)" if a.post_norm else "")),
        ("layers", str(a.n_layers)),
        ("d_model / d_mlp / heads", f"{a.d_model} / {a.d_mlp} / {a.n_heads}"),
        ("vocabulary", f"{a.d_vocab:,}"),
        ("parameters", f"{n_params / 1e6:.1f} M"),
        ("fingerprint", fingerprint(m)),
        ("loaded in", f"{secs:.1f} s"),
        ("cache folder", str(cache_dir())),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k:<{width}}  {v}")
    typer.echo("\nhooks at layer 0 (kind -> name):")
    typer.echo(f"  {'embed':<12} {a.embed}")
    for kind, names in a.names.items():
        typer.echo(f"  {kind:<12} {names[0]}")


def _summary(result) -> str:
    lines = [f"{result.prompt!r} -> {result.answer.strip()!r}: clean p={result.clean:.3f}, corrupted "
             f"p={result.corrupted:.3f}, total effect {result.total_effect:.3f}"]
    for k in result.kinds:
        ie = result.indirect_effect(k)
        t, l = divmod(int(ie.argmax()), ie.shape[1])
        lines.append(f"  {k:<6} peak indirect effect {float(ie.max()):+.3f} at layer {l}, token {t} "
                     f"{result.tokens[t].strip()!r}")
    return "\n".join(lines)


@app.command()
def trace(
    prompt: str = typer.Argument(..., help='The full prompt, e.g. "The Space Needle is in downtown".'),
    subject: str = typer.Option(..., "--subject", "-s", help="The subject as it appears in the prompt."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Answer to trace (default: the model's top-1)."),
    kind: str = typer.Option("all", "--kind", "-k", help="all, hidden, mlp or attn."),
    corruption: str = typer.Option("gaussian", help="gaussian (noise on the subject) or str (swap the subject)."),
    metric: str = typer.Option("prob", help="prob or logit_diff."),
    samples: int = typer.Option(10, help="Corrupted runs per cell."),
    window: int = typer.Option(10, help="Layers restored together for mlp/attn."),
    seed: int = typer.Option(0, help="Noise seed."),
    out: Path = typer.Option(Path("trace.png"), "--out", "-o", help="Figure path (.png/.svg/.pdf)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Causal trace of one fact: a ROME-style heatmap per kind, and the peak layers."""
    from factscope.facts import Fact
    from factscope.figures import plot_trace, save_figure
    from factscope.locate import trace as run_trace

    if subject not in prompt:
        typer.secho(f"error: the subject {subject!r} does not occur in the prompt {prompt!r}", fg="red", err=True)
        raise typer.Exit(2)
    try:
        fact = Fact(prompt.replace(subject, "{}", 1), subject, target)
    except ValueError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    m, _ = _load(model)
    try:
        result = run_trace(m, fact, kind=kind, corruption=corruption, metric=metric, samples=samples,
                           window=window, seed=seed, progress=True)
    except ValueError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    paths = save_figure(plot_trace(result), out)
    typer.echo(_summary(result))
    typer.echo(f"wrote {', '.join(map(str, paths))}")


@app.command()
def profile(
    facts: str = typer.Option("builtin", "--facts", help="'builtin', or a CounterFact / known_1000 JSON file."),
    kind: str = typer.Option("mlp", "--kind", "-k", help="mlp (default), hidden, attn or all."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N facts."),
    samples: int = typer.Option(10, help="Corrupted runs per cell."),
    out: Path = typer.Option(Path("profile.png"), "--out", "-o", help="Figure path (.png/.svg/.pdf)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Average causal-tracing effects over many facts, per token bucket, and the recommended edit layer."""
    from factscope.figures import plot_profile, save_figure
    from factscope.locate import layer_profile

    rows = _read_facts(facts)[:limit]
    m, _ = _load(model)
    prof = layer_profile(m, rows, kind=kind, samples=samples, progress=True)
    paths = save_figure(plot_profile(prof), out)
    typer.echo(f"traced {len(prof.facts)} facts, skipped {len(prof.skipped)} the model answers wrongly")
    for k in prof.kinds:
        typer.echo(f"  {k:<6} peak at the last subject token: layer {prof.best_layer(k)}")
    if "mlp" in prof.kinds:
        typer.echo(f"recommended edit layer (MLP, last subject token): {prof.best_layer('mlp')}")
    typer.echo(f"wrote {', '.join(map(str, paths))}")


def _read_facts(source: str) -> list:
    from factscope.datasets import builtin_facts, load_counterfact, load_known

    if source == "builtin":
        return builtin_facts()
    import json

    first = json.loads(Path(source).read_text())[0]
    return load_counterfact(source) if "requested_rewrite" in first else load_known(source)


def _answers(m):
    """The built-in facts, the model's predictions on them, and a printable table."""
    from factscope.datasets import builtin_facts
    from factscope.predict import predict

    facts = builtin_facts()
    preds = predict(m, [f.text for f in facts], [f.target_true for f in facts], k=3)
    lines = [f"{'prompt':<58} {'expected':<12} {'answer':<14} {'p':>5}  ok"]
    for f, p in zip(facts, preds):
        prompt = f.text if len(f.text) <= 57 else f.text[:54] + "..."
        lines.append(f"{prompt:<58} {f.target_true:<12} {p.answer.strip():<14} {p.top_probs[0]:5.2f}  "
                     f"{'yes' if p.correct else 'NO'}")
    return facts, preds, "\n".join(lines)


@app.command()
def facts(model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP)) -> None:
    """Print the model's top-1 answer on every built-in fact, and the accuracy."""
    m, _ = _load(model)
    facts, preds, table = _answers(m)
    typer.echo(table)
    typer.echo(f"\n{preds.accuracy:.1%} of {len(facts)} built-in facts answered correctly (top-1 first token).")


DEMO_FACT = "eiffel_tower_located_in_city"


def _request(prompt: str, subject: str, target_new: str, target_true: Optional[str]):
    """An EditRequest; a built-in fact with the same prompt and subject lends its paraphrases and neighbours."""
    from factscope.datasets import builtin_facts
    from factscope.facts import EditRequest

    known = next((f for f in builtin_facts() if f.prompt == prompt and f.subject == subject), None)
    return EditRequest(prompt, subject, target_new,
                       target_true=target_true or (known.target_true if known else None),
                       paraphrases=known.paraphrases if known else (), neighbours=known.neighbours if known else (),
                       relation=known.relation if known else "")


def _before_after(m, e, request) -> str:
    """A table of top-1 answers and p(target_new) before and after ``e``, on the prompt, paraphrases, neighbours."""
    from factscope.predict import predict

    rows = [("prompt", request.text)] + [("paraphrase", p) for p in request.paraphrases] + \
        [("neighbour", p) for p in request.neighbours]
    prompts = [r[1] for r in rows]
    before = predict(m, prompts, [request.target_new] * len(rows))
    with e.applied(m):
        after = predict(m, prompts, [request.target_new] * len(rows))
    width = min(48, max(len(p) for p in prompts))
    lines = [f"{'':<10}  {'prompt':<{width}}  {'before':>18}  {'after':>18}  p({request.target_new}) before -> after"]
    for (kind, p), b, a in zip(rows, before, after):
        short = p if len(p) <= width else p[: width - 1] + "…"
        lines.append(f"{kind:<10}  {short:<{width}}  {b.answer.strip()[:18]:>18}  {a.answer.strip()[:18]:>18}  "
                     f"{b.p_target:.3f} -> {a.p_target:.3f}")
    return "\n".join(lines)


@app.command()
def edit(
    prompt: str = typer.Option(..., "--prompt", "-p", help='Template with {} for the subject, e.g. "{} plays the sport of".'),
    subject: str = typer.Option(..., "--subject", "-s", help="The subject."),
    target_new: str = typer.Option(..., "--target-new", "-t", help="The new answer."),
    target_true: Optional[str] = typer.Option(None, "--target-true", help="The current answer (optional)."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="MLP layer (default: from the tracing profile)."),
    corpus: str = typer.Option("auto", help="Key statistics corpus: auto, model, a dataset name or a text file."),
    n_tokens: Optional[int] = typer.Option(None, "--n-tokens", help="Tokens for the key statistics (default: the library's)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Write the edit (safetensors + .json)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Rewrite one fact with ROME; print the answers before and after on the prompt, paraphrases and neighbours."""
    from factscope.edit import ROMEConfig, rome

    try:
        request = _request(prompt, subject, target_new, target_true)
    except ValueError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    m, _ = _load(model)
    try:
        e = rome(m, request, layer=layer, config=ROMEConfig(corpus=corpus, n_tokens=n_tokens))
    except (ValueError, FloatingPointError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(_before_after(m, e, request))
    if save is not None:
        e.save(save)
        typer.echo(f"wrote {save} and {save}.json")


@app.command()
def stats(
    layer: list[int] = typer.Option(..., "--layer", "-l", help="Layer(s); repeat for several (one shared pass)."),
    corpus: str = typer.Option("auto", help="auto, model, a dataset name or a text file."),
    n_tokens: Optional[int] = typer.Option(None, "--n-tokens", help="Tokens to average over (default: the library's)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Precompute and cache the MLP key statistics C = E[kkᵀ] that ROME and MEMIT use."""
    from factscope.edit import covariances

    m, _ = _load(model)
    t = time.perf_counter()
    kw = {} if n_tokens is None else {"n_tokens": n_tokens}
    try:
        out = covariances(m, layer, corpus=corpus, progress=True, **kw)
    except ValueError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    import torch

    for l, C in out.items():
        ev = torch.linalg.eigvalsh(C.double())
        typer.echo(f"layer {l}: C {tuple(C.shape)}, trace {float(C.trace()):.4g}, eigenvalues "
                   f"{float(ev[0]):.3g} .. {float(ev[-1]):.3g}")
    typer.echo(f"done in {time.perf_counter() - t:.1f} s (cached: later calls load from disk)")


# Context prefixes that pad a fact without enough paraphrases up to the 3 prompts refinement needs.
CONTEXTS = ("Here is a fact.", "From an encyclopedia:", "Quiz question, answered correctly:")


def _neuron_prompts(prompt: str, subject: str, paraphrases: list[str]) -> tuple[list[str], Optional[str], int]:
    """The prompts to refine over: the prompt, a matching built-in fact's paraphrases, the given ones,
    then context-prefixed copies of the prompt up to 3. Also the built-in target (if any) and how
    many copies were added."""
    from factscope.datasets import builtin_facts

    known = next((f for f in builtin_facts() if f.text == prompt and f.subject == subject), None)
    prompts = list(dict.fromkeys([prompt, *(known.paraphrases if known else ()), *paraphrases]))
    added = 0
    for ctx in CONTEXTS:
        if len(prompts) >= 3:
            break
        prompts.append(f"{ctx} {prompt}")
        added += 1
    return prompts, known.target_true if known else None, added


def _neuron_summary(result, before: float, after: float) -> str:
    s = result.settings
    lines = [f"{result.prompts[0]!r} -> {result.answer.strip()!r}: {len(result.neurons)} knowledge neuron(s) over "
             f"{len(result.prompts)} prompts ({s['refine_note']})"]
    df = result.to_dataframe()
    for _, r in df.iterrows():
        lines.append(f"  layer {int(r.layer):>2}  neuron {int(r.neuron):>5}  score {r.score:.4f}  "
                     f"found in {r.found_in:.0%} of the prompts")
    if result.neurons:
        lines.append(f"suppressing them at the answer position: p({result.answer.strip()}) {before:.3f} -> {after:.3f} "
                     f"(mean over the prompts)")
    return "\n".join(lines)


def _suppression(m, result) -> tuple[float, float]:
    from factscope.locate import suppress
    from factscope.predict import next_token_logits

    def p() -> float:
        return float(next_token_logits(m, list(result.prompts)).softmax(-1)[:, result.answer_id].mean())

    before = p()
    if not result.neurons:
        return before, before
    with suppress(m, result):
        return before, p()


@app.command()
def neurons(
    prompt: str = typer.Argument(..., help='The full prompt, e.g. "The Space Needle is in downtown".'),
    subject: str = typer.Option(..., "--subject", "-s", help="The subject as it appears in the prompt."),
    target: Optional[str] = typer.Option(None, "--target", "-t",
                                         help="Answer to attribute (default: a built-in fact's, else the model's top-1)."),
    paraphrase: list[str] = typer.Option([], "--paraphrase", "-p", help="A paraphrase of the prompt (repeatable)."),
    steps: int = typer.Option(20, help="Integrated-gradient points per layer."),
    threshold: float = typer.Option(0.2, help="Coarse threshold, a fraction of each prompt's maximum attribution."),
    refine: float = typer.Option(0.7, help="Starting fraction of prompts a neuron must be found in."),
    out: Path = typer.Option(Path("neurons.png"), "--out", "-o", help="Figure path (.png/.svg/.pdf)."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a circuitsvis view (offline HTML)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Write the result (safetensors + .json)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Knowledge neurons of one fact (integrated gradients, refined over paraphrases): a figure and a table.

    Prompts: the prompt, the paraphrases of a built-in fact with the same prompt, each --paraphrase,
    and, when that makes fewer than 3, the prompt after a neutral context prefix.
    """
    from factscope.facts import Fact
    from factscope.figures import neurons_html, plot_neurons, save_figure
    from factscope.locate import neurons as find_neurons

    if subject not in prompt:
        typer.secho(f"error: the subject {subject!r} does not occur in the prompt {prompt!r}", fg="red", err=True)
        raise typer.Exit(2)
    prompts, known_target, added = _neuron_prompts(prompt, subject, paraphrase)
    try:
        fact = Fact(prompt.replace(subject, "{}", 1), subject, target if target is not None else known_target)
    except ValueError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    if added:
        typer.echo(f"note: {added} prompt(s) added with a context prefix to reach 3; pass --paraphrase for real "
                   f"paraphrases")
    m, _ = _load(model)
    try:
        result = find_neurons(m, fact, prompts=prompts, steps=steps, threshold=threshold, refine=refine)
    except ValueError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    paths = save_figure(plot_neurons(result), out)
    typer.echo(_neuron_summary(result, *_suppression(m, result)))
    if html is not None and result.neurons:
        neurons_html(result, html)
        paths.append(html)
    if save is not None:
        result.save(save)
        paths += [save, Path(f"{save}.json")]
    typer.echo(f"wrote {', '.join(map(str, paths))}")


@app.command()
def demo(
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Folder for the outputs."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    samples: int = typer.Option(10, help="Corrupted runs per tracing cell."),
) -> None:
    """Run the main job on the bundled model: answers, a causal trace, a layer profile, a ROME edit and
    the fact's knowledge neurons.

    Writes ``answers.csv``, ``trace.{png,svg,pdf}`` (three panels), ``profile.{png,svg,pdf}``,
    ``rome_before_after.txt``, ``rome_edit.safetensors`` (+ ``.json``), ``neurons.png`` and
    ``neurons.html`` (the fact's prompt and two paraphrases). The first run also computes the key
    statistics (a few minutes, then cached).
    """
    from factscope.datasets import builtin_fact
    from factscope.figures import neurons_html, plot_neurons, plot_profile, plot_trace, save_figure
    from factscope.edit import rome
    from factscope.locate import neurons as find_neurons
    from factscope.locate import one_per_relation, recommended_layer
    from factscope.locate import trace as run_trace

    t0 = time.perf_counter()
    m, secs = _load(model)
    typer.echo(f"loaded the model in {secs:.1f} s\n\n[1/5] the model's answers on the built-in facts")
    facts, preds, table = _answers(m)
    typer.echo(table)
    out.mkdir(parents=True, exist_ok=True)
    preds.to_dataframe().to_csv(out / "answers.csv", index=False)
    typer.echo(f"\n{preds.accuracy:.1%} of {len(facts)} built-in facts answered correctly (top-1 first token).")

    fact = builtin_fact(DEMO_FACT)
    typer.echo(f"\n[2/5] causal trace of {fact.text!r}")
    result = run_trace(m, fact, kind="all", samples=samples, progress=True)
    save_figure(plot_trace(result), out / "trace.png", ("png", "svg", "pdf"))
    typer.echo(_summary(result))

    typer.echo(f"\n[3/5] layer profile (MLP) over {len(one_per_relation())} built-in facts, one per relation")
    choice = recommended_layer(m, samples=samples, progress=True)
    save_figure(plot_profile(choice.profile), out / "profile.png", ("png", "svg", "pdf"))
    typer.echo(f"recommended edit layer: {choice.layer} ({choice.reason})")

    typer.echo(f"\n[4/5] ROME: {fact.subject!r}: {fact.target_true} -> {fact.target_new} at layer {choice.layer}")
    e = rome(m, fact, layer=choice.layer)
    table = _before_after(m, e, fact)
    typer.echo(table)
    (out / "rome_before_after.txt").write_text(table + "\n")
    e.save(out / "rome_edit.safetensors")

    prompts = [fact.text, *fact.paraphrases[:2]]
    typer.echo(f"\n[5/5] knowledge neurons of {fact.text!r} over {len(prompts)} prompts (integrated gradients)")
    found = find_neurons(m, fact, prompts=prompts)
    save_figure(plot_neurons(found), out / "neurons.png")
    if found.neurons:
        neurons_html(found, out / "neurons.html")
    typer.echo(_neuron_summary(found, *_suppression(m, found)))
    typer.echo(f"\nwrote answers.csv, trace.png/svg/pdf, profile.png/svg/pdf, rome_before_after.txt, "
               f"rome_edit.safetensors, neurons.png and neurons.html to {out}/; total {time.perf_counter() - t0:.0f} s")


def main() -> None:  # pragma: no cover
    app(prog_name="factscope")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
