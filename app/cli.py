"""The ``factscope`` command line.

    factscope info [--model NAME]        model, layers, dimensions, hook names, cache folder
    factscope facts [--model NAME]       the model's answers on the built-in facts
    factscope trace PROMPT --subject S   causal-tracing heatmaps of one fact
    factscope profile [--facts builtin]  tracing averaged over facts; the recommended edit layer
    factscope edit --method M --requests FILE [--layers 3-7] --save OUT.safetensors
                                         rewrite facts (rome, memit, alphaedit, ft-l, kn)
    factscope edit --prompt P --subject S --target-new T   one request (ROME by default), before/after
    factscope evaluate --edit OUT.safetensors [--requests FILE] [--out report.png]
                                         score an edit before/after (CounterFact metrics, CIs)
    factscope probe spillover [--group G | --prompt P --subject S --target-new T] [--editor rome] --out spill.png
                                         does the edit spill into related facts? (locality)
    factscope probe localization [--facts builtin] [--limit 6] [--layers 0,3,6] --out loc.png
                                         does tracing predict where editing works? (Hase et al.)
    factscope stats --layer N [--corpus C]                 precompute key statistics C = E[kkᵀ]
    factscope neurons PROMPT --subject S [--html H]        knowledge neurons of one fact, a figure
    factscope demo [--out out/]          the main job end to end
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from factscope.app.defaults import DEMO_GROUP
from factscope.app.request_files import read_requests
from factscope.app.tables import before_after_frame, neuron_suppression
from factscope.bridge import Bridge
from factscope.edit.kn import pad_prompts
from factscope.edit.registry import EditorConfig, editor_names
from factscope.edit.registry import editor as editor_spec
from factscope.edit.target import TargetConfig
from factscope.probes.localization import layer_editor, layer_editors

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
    from factscope.versions import library_versions

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
        *((f"{k} version", v) for k, v in library_versions().items()),
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
    df = before_after_frame(m, e, request)
    width = min(48, max(len(p) for p in df.prompt))
    lines = [f"{'':<10}  {'prompt':<{width}}  {'before':>18}  {'after':>18}  p({request.target_new}) before -> after"]
    for r in df.itertuples():
        short = r.prompt if len(r.prompt) <= width else r.prompt[: width - 1] + "…"
        lines.append(f"{r.kind:<10}  {short:<{width}}  {r.before[:18]:>18}  {r.after[:18]:>18}  "
                     f"{r.p_new_before:.3f} -> {r.p_new_after:.3f}")
    return "\n".join(lines)


EDIT_METHODS = editor_names()


def _fail(msg: str) -> None:
    """Print ``error: msg`` in red and exit with status 2."""
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def parse_layers(spec: str) -> list[int]:
    """``"3-7"`` (inclusive), ``"3,5,7"``, ``"6"`` or a mix (``"2-4,7"``) as a sorted list without duplicates.

    Raises ValueError (saying which forms are accepted) for anything else, e.g. ``"7-3"``, ``"a"``, ``""``.
    """
    forms = "a layer (6), an inclusive range (3-7) or a comma-separated list (3,5,7)"
    out: set[int] = set()
    parts = [p.strip() for p in str(spec).split(",")]
    if not any(parts):
        raise ValueError(f"expected --layers to be {forms}, got an empty value")
    for part in parts:
        lo, sep, hi = part.partition("-")
        if not lo.strip().isdecimal() or (sep and not hi.strip().isdecimal()):
            raise ValueError(f"expected --layers to be {forms} of non-negative integers, got {spec!r} "
                             f"(bad part {part!r})")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"expected an increasing range in --layers, got {part!r} (write {b}-{a})")
        out.update(range(a, b + 1))
    return sorted(out)


def _edit_config(method: str, corpus: str, n_tokens: Optional[int], steps: Optional[int], *, model: Bridge | None = None,
                 paper: bool = False) -> EditorConfig:
    """The registry's config class for ``method`` with the command's options: the key statistics' corpus and
    tokens and ``--steps`` as ``v_steps`` for ROME/MEMIT/AlphaEdit; ``--steps`` as ``steps`` for FT-L and KN.

    The base is the paper's constants with ``paper`` or without a model (to check the options before
    loading it), else the defaults tuned for the model's family (`TargetConfig.for_model`)."""
    cls = editor_spec(method).config_class
    if issubclass(cls, TargetConfig):
        base = cls.paper() if paper or model is None else cls.for_model(model)
        return dataclasses.replace(base, corpus=corpus, n_tokens=n_tokens, **({} if steps is None else {"v_steps": steps}))
    return cls() if steps is None else cls(steps=steps)


def _edit_summary(m, e, requests: list) -> str:
    """One line per request (before/after answer and p(target_new)), the success count and ΔW norms per layer."""
    from factscope.predict import predict

    prompts, targets = [r.text for r in requests], [r.target_new for r in requests]
    before = predict(m, prompts, targets)
    with e.applied(m):
        after = predict(m, prompts, targets)
    lines = []
    for r, b, a in zip(requests, before, after):
        old = r.target_true if r.target_true is not None else "?"
        lines.append(f"  {'yes' if a.correct else 'NO ':<3}  {r.subject}: {old} -> {r.target_new}   answer "
                     f"{b.answer.strip()!r} -> {a.answer.strip()!r}, p({r.target_new}) {b.p_target:.3f} -> "
                     f"{a.p_target:.3f}")
    ok = sum(bool(a.correct) for a in after)
    lines.insert(0, f"{ok} of {len(requests)} request(s) now answered with target_new (top-1 first token):")
    lines.append("ΔW per layer (‖ΔW‖_F, relative to ‖W_out‖_F):")
    for l, n in e.norms(m).items():
        lines.append(f"  layer {l:>2}  {n.frobenius:.4g}  ({n.relative:.3%})")
    return "\n".join(lines)


@app.command()
def edit(
    method: str = typer.Option("rome", "--method", help=f"Editor: {', '.join(EDIT_METHODS)}."),
    requests_file: Optional[Path] = typer.Option(
        None, "--requests", "-r",
        help="JSON file of requests: CounterFact records, or factscope's format (a list of {prompt, subject, "
             "target_new, target_true, paraphrases, neighbours, relation}, or {\"facts\": [...]}, as the built-in "
             "facts). Instead of --prompt/--subject/--target-new."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p",
                                         help='One request: template with {} for the subject, e.g. "{} plays the sport of".'),
    subject: Optional[str] = typer.Option(None, "--subject", "-s", help="One request: the subject."),
    target_new: Optional[str] = typer.Option(None, "--target-new", "-t", help="One request: the new answer."),
    target_true: Optional[str] = typer.Option(None, "--target-true", help="One request: the current answer (optional)."),
    layers: Optional[str] = typer.Option(
        None, "--layers", "--layer", "-l",
        help="MLP layer(s): 6, 3-7 (inclusive) or 3,5,7. ROME and FT-L edit one layer (ROME's default: the layer "
             "factscope.edit.edit_layer chooses from key specificity, tracing and a trial edit, printed with why; FT-L "
             "has none); MEMIT and AlphaEdit a list (default: the window edit_layer chooses); KN locates its own "
             "neurons (no --layers)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Edit only the first N requests of the file."),
    steps: Optional[int] = typer.Option(
        None, "--steps", min=1,
        help="Optimisation steps: Adam steps for v*/z (ROME, MEMIT, AlphaEdit), epochs (FT-L), integrated-gradient "
             "points (KN). Default: the method's."),
    corpus: str = typer.Option("auto", help="Key statistics corpus (ROME, MEMIT, AlphaEdit): auto, model, a dataset "
                                            "name or a text file."),
    n_tokens: Optional[int] = typer.Option(None, "--n-tokens", min=1,
                                           help="Tokens for the key statistics (default: the library's)."),
    paper: bool = typer.Option(False, "--paper", help="ROME, MEMIT, AlphaEdit: the papers' published constants instead "
                                                    "of the δ budget tuned for the model's family."),
    save: Optional[Path] = typer.Option(None, "--save", help="Write the edit: OUT.safetensors and OUT.safetensors.json."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the editors' progress bars."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Rewrite facts with ROME, MEMIT, AlphaEdit, FT-L or KN; print each request's answer before and after, the ΔW norms per layer, and optionally save the edit.

    Requests come from --requests FILE.json (CounterFact or factscope's JSON format) or from --prompt/--subject/--target-new (one request; a built-in fact with that prompt and subject lends its paraphrases and neighbours). ROME and KN edit one request at a time: several are applied in sequence and composed into one edit. The model is left unedited; load the saved edit with factscope.edit.Edit.load and apply it.

    Example: factscope edit --method memit --requests facts.json --layers 3-7 --save edits.safetensors
    """
    if method not in EDIT_METHODS:
        _fail(f"expected --method to be one of {', '.join(EDIT_METHODS)}, got {method!r}")
    inline = {k: v for k, v in (("--prompt", prompt), ("--subject", subject), ("--target-new", target_new),
                                ("--target-true", target_true)) if v is not None}
    if requests_file is not None and inline:
        _fail(f"pass either --requests FILE or --prompt/--subject/--target-new, not both (got --requests and "
              f"{', '.join(inline)})")
    if requests_file is None:
        missing = [k for k, v in (("--prompt", prompt), ("--subject", subject), ("--target-new", target_new)) if v is None]
        if len(missing) == 3:
            _fail("expected requests: --requests FILE.json, or one request as --prompt P --subject S --target-new T")
        if missing:
            _fail(f"one request needs --prompt, --subject and --target-new; missing {', '.join(missing)}")
        try:
            requests = [_request(prompt, subject, target_new, target_true)]
        except ValueError as e:
            _fail(str(e))
    else:
        try:
            requests, fmt = read_requests(requests_file, limit)
        except ValueError as e:
            _fail(str(e))
        typer.echo(f"read {len(requests)} request(s) from {requests_file} ({fmt} format)")
    try:
        layer_list = None if layers is None else parse_layers(layers)
    except ValueError as e:
        _fail(str(e))
    spec = editor_spec(method)
    name = spec.label
    if spec.layers == "one" and layer_list is not None and len(layer_list) != 1:
        _fail(f"{name} rewrites one MLP layer; got --layers {layers} = {layer_list}. Pass one layer (e.g. --layers "
              f"{layer_list[-1]}), or use --method memit / alphaedit to spread an edit over several layers")
    if method == "ft-l" and layer_list is None:
        _fail("FT-L needs --layers with one layer, e.g. --layers 5: it has no default (the reference runs fine-tuned "
              "different layers), and unlike ROME it does not pick the traced layer")
    if spec.layers == "none" and layer_list is not None:
        _fail("KN locates its knowledge neurons over all layers by integrated gradients; --layers does not apply")
    try:
        config = _edit_config(method, corpus, n_tokens, steps, paper=paper)  # the options, checked before loading
    except ValueError as e:
        _fail(str(e))
    m, _ = _load(model)
    config = _edit_config(method, corpus, n_tokens, steps, model=m, paper=paper)
    t = time.perf_counter()
    try:
        e = spec.run(m, requests, layers=layer_list, config=config, progress=progress, verbose=True)
    except (ValueError, TypeError, FloatingPointError, MemoryError) as err:
        _fail(f"{name}: {err}" if not str(err).startswith(name) else str(err))
    typer.echo(f"computed the edit in {time.perf_counter() - t:.1f} s")
    if len(requests) == 1:
        typer.echo(_before_after(m, e, requests[0]))
    typer.echo(_edit_summary(m, e, list(e.requests)))
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        e.save(save)
        typer.echo(f"wrote {save} and {save}.json")
    else:
        typer.echo("not saved (pass --save OUT.safetensors to keep the edit)")


@app.command()
def evaluate(
    edit_file: Path = typer.Option(..., "--edit", "-e", help="An edit saved by `factscope edit --save` (OUT.safetensors, "
                                                              "with OUT.safetensors.json beside it)."),
    requests_file: Optional[Path] = typer.Option(
        None, "--requests", "-r", help="Score these requests instead of the edit's own (CounterFact or factscope JSON)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score only the first N requests."),
    fluency: bool = typer.Option(True, "--fluency/--no-fluency", help="Greedy generations for the fluency metric "
                                                                      "(the slow part)."),
    gen_tokens: int = typer.Option(100, "--gen-tokens", min=1, help="Tokens generated per request for fluency."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the metric bar chart (PNG/SVG/PDF)."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the per-request table (one row per request)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Score a saved edit before and after: efficacy, paraphrase, neighbourhood (rates and Δp), exact match, neighbourhood KL, CounterFact+ N+, portability, locality, fluency and S, with bootstrap 95% CIs over requests.

    The edit is applied and reverted in memory; nothing is written to the model.

    Example: factscope evaluate --edit edits.safetensors --out report.png
    """
    from factscope.edit.handle import Edit, EditStateError, FingerprintMismatchError
    from factscope.probes.evaluate import evaluate as run_evaluate

    requests = None
    if requests_file is not None:
        try:
            requests, fmt = read_requests(requests_file, limit)
        except ValueError as err:
            _fail(str(err))
        typer.echo(f"read {len(requests)} request(s) from {requests_file} ({fmt} format)")
    m, _ = _load(model)
    try:
        e = Edit.load(edit_file, model=m)
    except (FileNotFoundError, ValueError, FingerprintMismatchError) as err:
        _fail(str(err))
    if requests is None:
        requests = list(e.requests)[:limit]
    typer.echo(f"{e.method} edit of {len(e.requests)} request(s) at layer(s) {sorted(e.deltas)}; scoring "
               f"{len(requests)} request(s)")
    try:
        rep = run_evaluate(m, e, requests, fluency=fluency, n_gen_tokens=gen_tokens, progress=progress)
    except (ValueError, TypeError, EditStateError) as err:
        _fail(str(err))
    df = rep.to_dataframe()
    cols = ["subject", "target_true", "target_new"] + [f"{x}_{w}" for x in ("efficacy", "paraphrase", "neighbourhood")
                                                       for w in ("pre", "post")]
    typer.echo(df[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    typer.echo("")
    typer.echo(rep.table())
    if out is not None:
        from factscope.figures import plot_report, save_figure

        save_figure(plot_report(rep), out)
        typer.echo(f"wrote {out}")
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(csv, index=False)
        typer.echo(f"wrote {csv}")


probe_app = typer.Typer(help="Locality probes: spillover of an edit, localization vs editing.", no_args_is_help=True)
app.add_typer(probe_app, name="probe")


def _group_request(group: Optional[str], prompt: Optional[str], subject: Optional[str], target_new: Optional[str],
                   target_true: Optional[str]):
    """The request to probe: a built-in group's edit (by name), or one given inline."""
    from factscope.datasets import builtin_groups

    inline = [k for k, v in (("--prompt", prompt), ("--subject", subject), ("--target-new", target_new)) if v]
    names = [g.name for g in builtin_groups()]
    if group is not None and inline:
        _fail(f"pass either --group or --prompt/--subject/--target-new, not both (got --group and {', '.join(inline)})")
    if inline:
        if len(inline) != 3:
            missing = sorted({"--prompt", "--subject", "--target-new"} - set(inline))
            _fail(f"one request needs --prompt, --subject and --target-new; missing {', '.join(missing)}")
        try:
            return _request(prompt, subject, target_new, target_true)
        except ValueError as err:
            _fail(str(err))
    name = group or DEMO_GROUP
    if name not in names:
        _fail(f"expected --group to be one of {', '.join(names)}, got {name!r}")
    return next(g for g in builtin_groups() if g.name == name).edit


@probe_app.command("spillover")
def probe_spillover(
    group: Optional[str] = typer.Option(None, "--group", "-g", help=f"A built-in group (default {DEMO_GROUP})."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Or one request: template with {} for the subject."),
    subject: Optional[str] = typer.Option(None, "--subject", "-s", help="One request: the subject."),
    target_new: Optional[str] = typer.Option(None, "--target-new", "-t", help="One request: the new answer."),
    target_true: Optional[str] = typer.Option(None, "--target-true", help="One request: the current answer."),
    editor: str = typer.Option("rome", "--editor", help=f"Editor: {', '.join(editor_names())} (or an alias: "
                                                        "finetune)."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Edited layer (ROME, FT-L; MEMIT, AlphaEdit: the "
                                                                   "top of their range). Default: the traced layer."),
    effect: str = typer.Option("abs_delta_logp", "--effect", help="Plotted effect: abs_delta_logp or kl."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the figure (PNG/SVG/PDF)."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the per-probe table."),
    seed: int = typer.Option(0, help="Seeds the unrelated-fact sample and the bootstrap."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Edit one fact and measure how far paraphrases, same-subject, related-entity, same-relation and unrelated facts move, against the similarity of their keys to the edited key (raw and whitened), with bootstrap CIs and a verdict on locality.

    Example: factscope probe spillover --group president_vs_secretary_of_state --editor rome --out spill.png
    """
    try:
        editor_spec(editor)
    except ValueError as err:
        _fail(str(err))
    if effect not in ("abs_delta_logp", "kl"):
        _fail(f"expected --effect abs_delta_logp or kl, got {effect!r}")
    request = _group_request(group, prompt, subject, target_new, target_true)
    m, _ = _load(model)
    from factscope.probes import spillover as run_spillover

    try:
        res = run_spillover(m, request, editor=editor, layer=layer, seed=seed, progress=progress)
    except (ValueError, TypeError, FloatingPointError) as err:
        _fail(str(err))
    typer.echo(res.table(effect))
    if out is not None:
        from factscope.figures import plot_spillover, save_figure

        save_figure(plot_spillover(res, effect=effect), out)
        typer.echo(f"wrote {out}")
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        res.to_dataframe().to_csv(csv, index=False)
        typer.echo(f"wrote {csv}")


@probe_app.command("localization")
def probe_localization(
    facts_source: str = typer.Option("builtin", "--facts", help="builtin, or a requests JSON file (CounterFact or "
                                                                 "factscope format)."),
    limit: int = typer.Option(6, "--limit", min=1, help="Facts used (the first N, one per relation for builtin)."),
    layers: Optional[str] = typer.Option(None, "--layers", "-l", help="Layers to edit: 0-17, or 0,3,6,9. Default: "
                                                                     "every layer."),
    editor: str = typer.Option("rome", "--editor", help=f"Editor, at each layer: {', '.join(layer_editors())} "
                                                        "(or an alias: finetune)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimisation steps of the editor (fewer is "
                                                                     "faster). Default: the editor's."),
    samples: int = typer.Option(10, help="Corrupted runs per tracing cell."),
    window: int = typer.Option(5, min=1, help="MLP layers restored together in the trace (Hase's 5)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the figure (PNG/SVG/PDF)."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the (fact, layer) table."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Hase et al.'s test: does the causal-tracing effect at a layer predict how well an edit at that layer works? Traces each fact's MLPs, edits it at every layer, and regresses the rewrite score on layer, on tracing effect, and on both (R², nested F-tests).

    Cost: facts × layers edits plus one trace per fact (measured times: docs/guide.md).

    Example: factscope probe localization --limit 4 --layers 0,3,6,9,12,15 --out loc.png
    """
    from factscope.datasets import builtin_facts

    try:
        spec = layer_editor(editor)
    except ValueError as err:
        _fail(str(err))
    if facts_source == "builtin":
        from factscope.locate import one_per_relation

        subjects = {(f.prompt, f.subject) for f in one_per_relation()}
        pool = builtin_facts()
        requests = [f for f in pool if (f.prompt, f.subject) in subjects]
        requests += [f for f in pool if (f.prompt, f.subject) not in subjects]
        requests = requests[:limit]
    else:
        try:
            requests, _ = read_requests(Path(facts_source), limit)
        except (ValueError, FileNotFoundError) as err:
            _fail(str(err))
    try:
        layer_list = None if layers is None else parse_layers(layers)
    except ValueError as err:
        _fail(str(err))
    m, _ = _load(model)
    config = None if steps is None else _edit_config(spec.name, "auto", None, steps, model=m)
    n_layers = len(layer_list) if layer_list else m.cfg.n_layers
    typer.echo(f"{len(requests)} fact(s) × {n_layers} layer(s) = {len(requests) * n_layers} {editor} edits, plus "
               f"{len(requests)} MLP traces")
    from factscope.probes import localization_vs_editing

    try:
        res = localization_vs_editing(m, requests, layers=layer_list, editor=editor, config=config, samples=samples,
                                      window=window, progress=progress)
    except (ValueError, TypeError, FloatingPointError) as err:
        _fail(str(err))
    typer.echo(str(res))
    if out is not None:
        from factscope.figures import plot_localization, save_figure

        save_figure(plot_localization(res), out)
        typer.echo(f"wrote {out}")
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        res.to_dataframe().to_csv(csv, index=False)
        typer.echo(f"wrote {csv}")


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


def _neuron_prompts(prompt: str, subject: str, paraphrases: list[str]) -> tuple[list[str], Optional[str], int]:
    """The prompts to refine over: the prompt, a matching built-in fact's paraphrases, the given ones,
    then context-prefixed copies of the prompt up to 3. Also the built-in target (if any) and how
    many copies were added."""
    from factscope.datasets import builtin_facts

    known = next((f for f in builtin_facts() if f.text == prompt and f.subject == subject), None)
    prompts, added = pad_prompts([prompt, *(known.paraphrases if known else ()), *paraphrases])
    return prompts, known.target_true if known else None, added


def _neuron_summary(result, before: float, after: float) -> str:
    """The selected neurons, one line each, and the effect of suppressing them."""
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
    typer.echo(_neuron_summary(result, *neuron_suppression(m, result)))
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
    samples: int = typer.Option(5, help="Corrupted runs per tracing cell (ROME uses 10; 5 halves the tracing time)."),
) -> None:
    """Run the main job on the bundled model and write out/report.html: answers, trace and profile,
    knowledge neurons, a ROME edit and its evaluation, the spillover probe, and a MEMIT batch.

    See `factscope.app.demo` for the files written. The first run also builds caches (model
    conversion, key statistics, layer profile) that later runs reuse (measured times: docs/guide.md).
    """
    from factscope.app.demo import run_demo
    from factscope.models import ModelNotAvailableError

    try:
        run_demo(out, model=model, samples=samples, echo=typer.echo)
    except (ModelNotAvailableError, FileNotFoundError) as e:
        _fail(str(e))


def main() -> None:  # pragma: no cover
    app(prog_name="factscope")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
