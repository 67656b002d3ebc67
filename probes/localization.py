"""Does localization inform editing? The Hase et al. (2023) regression test, on our tracing and editors.

The locality hypothesis says a fact lives where causal tracing finds it, so editing there should
work best. Hase et al. ("Does Localization Inform Editing?", NeurIPS 2023) test that directly:

1. **Tracing effect** per fact and layer l: an MLP causal trace (`factscope.locate.trace`,
   ``kind="mlp"``, a window of 5 layers as in the paper) gives p(answer) with the MLP outputs around
   l restored at token t; the tracing effect is the fraction of the corruption's damage restored,
   maximised over tokens::

       TE[f, l] = max_t (p_restored[t, l] − p_corrupted) / (p_clean − p_corrupted)

   A fact whose corruption does not lower p(answer) (p_clean ≤ p_corrupted) has no such fraction:
   its row is NaN, it is left out of the regressions, and a warning names it.
2. **Rewrite score** of an edit of fact f at layer l (ROME, MEMIT at that one layer, or FT-L)::

       RS[f, l] = (p* − p) / (1 − p)

   with p = p(target_new | prompt) before the edit and p* with it applied: the probability of the
   whole target, exp of the sum of its tokens' log-probabilities (teacher-forced). 1 means the
   edit reached certainty, 0 no change, negative a loss. Each edit is applied with
   ``with edit.applied(model):`` and reverted, so the model leaves bit-identical.
3. **Regressions** over the (fact, layer) cells (`factscope.probes.stats.ols`): RS on *layer* (one
   dummy per layer but the first, as Hase did: any per-layer mean), on *tracing* (TE, continuous)
   and on *both*. Nested F-tests ask whether TE adds anything once layer is known (the paper's
   question) and whether layer adds anything once TE is known. Hase's headline for ROME on GPT-J:
   R² 0.947 (layer), 0.016 (tracing), 0.948 (both); tracing added ≤ 0.03 R² in every setting.

Reading it: the hypothesis predicts that TE explains edit success, so the *both* fit improves
clearly over *layer* (a ΔR² well above 0.03 with a small p). A ΔR² near 0 refutes it: edit success
is then a property of the layer, not of where this fact was traced.

Cost: ``facts × layers`` edits plus one MLP trace per fact (`factscope.locate.trace`'s cost with
``kind="mlp"``: O(samples × tokens × layers) token-block evaluations). A ROME edit is dominated by
its v* optimisation (the key statistics come from the on-disk cache after their first computation
per layer); FT-L costs about as much per edit, MEMIT at one layer a little more. Measured times:
docs/guide.md, "Measured costs of the probes". Memory: one editor's working set (ROME: activations
of ~21 template prompts with gradients through the layers above l, plus C, ``d_mlp² × 8`` bytes)
and one saved copy of the edited ``W_out`` while applied. Progress: a bar over the traces and
one over the (fact, layer) cells.

Dimension names: ``fact`` requests, ``layer`` the layers edited (``result.layers``, not
necessarily all of the model's).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from factscope.arch import arch_of
from factscope.bridge import Bridge
from factscope.checks import as_requests, check_int
from factscope.edit import registry
from factscope.edit.handle import Edit
from factscope.edit.registry import EditorConfig, EditorSpec, config_dict, default_config
from factscope.facts import EditRequest
from factscope.probes.stats import OLS, nested_f_test, ols
from factscope.result_files import ResultContents, Saveable, fact_from_json, fact_to_json, nest, unnest

__all__ = ["LocalizationResult", "localization_vs_editing", "tracing_effect", "rewrite_score", "hase_regressions",
           "layer_editors", "layer_editor", "HASE_ROME_GPTJ", "ALPHA", "SMALL_DELTA_R2", "EditFn",
           "TracingEffects", "mlp_tracing_effects", "resolve_layer_editor", "check_facts", "check_probe_layers",
           "layer_dummies"]

HASE_ROME_GPTJ: dict[str, float] = {"layer": 0.947, "tracing": 0.016, "both": 0.948}  # Hase et al. 2023, ROME on GPT-J
ALPHA = 0.05  # significance level of the verdict
SMALL_DELTA_R2 = 0.03  # Hase et al.: tracing never added more than this much R² over layer
EditFn = Callable[[Bridge, EditRequest, int], Edit]
"""An editor put at a given layer: ``fn(model, request, layer) -> Edit`` (see `resolve_layer_editor`)."""


# --------------------------------------------------------------------------- the paper's quantities


def tracing_effect(scores: Float[Tensor, "tok layer"], clean: float, corrupted: float) -> Float[Tensor, "layer"]:
    """``max_t (scores[t, l] − corrupted) / (clean − corrupted)`` per layer (float64); all NaN when
    ``clean <= corrupted`` (the corruption did no damage, so no fraction of it can be restored)."""
    s = scores.to(torch.float64)
    if not clean > corrupted:
        return torch.full((s.shape[1],), math.nan, dtype=torch.float64)
    return ((s - corrupted) / (clean - corrupted)).amax(0)


def rewrite_score(p_before: float, p_after: float) -> float:
    """``(p* − p) / (1 − p)``: the share of the room above p that the edit took (NaN when p = 1)."""
    return (p_after - p_before) / (1 - p_before) if p_before < 1 else math.nan


def _p_target(model: Bridge, text: str, target: str) -> float:
    """p(all of ``" " + target``'s tokens | text): exp(n × the mean per-token log-prob)."""
    from factscope.predict import target_logprob
    from factscope.tokens import target_ids

    n = len(target_ids(model, target))
    return math.exp(float(target_logprob(model, [text], [target])[0]) * n)


def layer_dummies(layer_idx: np.ndarray, n_levels: int) -> np.ndarray:
    """``[cell, n_levels − 1]`` one-hot columns for levels 1.. (level 0 is the intercept's).

    The *layer* predictor of the probes' regressions (Hase et al.: any per-layer mean).

    Args:
        layer_idx: ``[cell]`` each cell's layer position, in ``[0, n_levels)``.
        n_levels: the number of layers probed.

    Cost: O(cells × n_levels).
    """
    return (layer_idx[:, None] == np.arange(1, n_levels)[None, :]).astype(float)


def hase_regressions(tracing: Any, edit_score: Any) -> tuple[dict[str, OLS], dict[str, tuple[float, float]], int]:
    """The three fits and two F-tests over the cells of ``[fact, layer]`` arrays.

    Facts with any non-finite tracing effect or edit score are left out whole (so every layer keeps
    the same facts); with none left, every R², F and p is NaN. Returns ``(fits, f_tests,
    n_facts_used)``: ``fits`` maps ``"layer"``, ``"tracing"``, ``"both"`` to `OLS`; ``f_tests`` maps
    ``"tracing_over_layer"`` (layer ⊂ both) and ``"layer_over_tracing"`` (tracing ⊂ both) to ``(F, p)``.
    """
    te = np.asarray(tracing, dtype=float)
    rs = np.asarray(edit_score, dtype=float)
    if te.shape != rs.shape or te.ndim != 2:
        raise ValueError(f"expected tracing and edit_score of one [fact, layer] shape, got {te.shape} and {rs.shape}")
    keep = np.isfinite(te).all(1) & np.isfinite(rs).all(1)
    te, rs = te[keep], rs[keep]
    F_, L = te.shape
    if F_ == 0:  # nothing to regress: undefined fits (the per-cell tables stay usable)
        empty = OLS(coef=np.full(1, np.nan), r2=math.nan, rss=math.nan, df_resid=0, rank=0, n=0)
        return ({k: empty for k in ("layer", "tracing", "both")},
                {k: (math.nan, math.nan) for k in ("tracing_over_layer", "layer_over_tracing")}, 0)
    layer_idx = np.tile(np.arange(L), F_)  # cells in row-major (fact, layer) order
    D = layer_dummies(layer_idx, L)
    y, x = rs.ravel(), te.ravel()
    fits = {"layer": ols(D, y), "tracing": ols(x[:, None], y), "both": ols(np.column_stack([D, x]), y)}
    tests = {"tracing_over_layer": nested_f_test(fits["layer"], fits["both"]),
             "layer_over_tracing": nested_f_test(fits["tracing"], fits["both"])}
    return fits, tests, int(F_)


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, kw_only=True)
class LocalizationResult(Saveable):
    """Tracing effects and rewrite scores per (fact, layer), and the regressions between them.

    What `localization_vs_editing` returns. Cost: negligible (plain data; the fits are stored).

    Attributes:
        facts: the requests, in order.
        layers: the layers edited (columns of every ``[fact, layer]`` array).
        tracing: ``[fact, layer]`` tracing effect (NaN rows: facts whose corruption did no damage).
        edit_score: ``[fact, layer]`` rewrite score ``(p* − p) / (1 − p)``.
        p_before: ``[fact, layer]`` p(target_new) before the edit (equal along a row).
        p_after: ``[fact, layer]`` p(target_new) with the edit at that layer applied.
        p_clean: ``[fact]`` p(target_true) of each fact's clean trace; ``p_corrupted`` the same with
            the subject corrupted.
        fits: ``"layer"`` / ``"tracing"`` / ``"both"`` -> `factscope.probes.stats.OLS`.
        f_tests: ``"tracing_over_layer"`` / ``"layer_over_tracing"`` -> ``(F, p)``.
        n_facts_used: facts in the regressions (those with finite rows).
        settings: editor, its config, window, samples, seed, the model fingerprint.
    """

    facts: tuple[EditRequest, ...]
    layers: tuple[int, ...]
    tracing: Float[Tensor, "fact layer"]
    edit_score: Float[Tensor, "fact layer"]
    p_before: Float[Tensor, "fact layer"]
    p_after: Float[Tensor, "fact layer"]
    p_clean: Float[Tensor, "fact"]
    p_corrupted: Float[Tensor, "fact"]
    fits: dict[str, OLS]
    f_tests: dict[str, tuple[float, float]]
    n_facts_used: int
    settings: dict[str, Any] = field(default_factory=dict)

    RESULT_KIND = "factscope.localization"
    RESULT_VERSION = 1
    _GRIDS = ("tracing", "edit_score", "p_before", "p_after", "p_clean", "p_corrupted")  # the tensor fields

    def to_contents(self) -> ResultContents:
        """The ``[fact, layer]`` / ``[fact]`` grids and each fit's ``coef`` as tensors; the rest as JSON meta.

        Cost: negligible (no copies).
        """
        tensors = {k: getattr(self, k) for k in self._GRIDS}
        tensors.update(nest("fits", {f"{k}.coef": f.coef for k, f in self.fits.items()}))
        fits = {k: {x.name: getattr(f, x.name) for x in dataclasses.fields(f) if x.name != "coef"}
                for k, f in self.fits.items()}
        meta = {"facts": [fact_to_json(r) for r in self.facts], "layers": self.layers, "fits": fits,
                "f_tests": self.f_tests, "n_facts_used": self.n_facts_used, "settings": self.settings}
        return ResultContents(tensors, meta)

    @classmethod
    def from_contents(cls, contents: ResultContents) -> LocalizationResult:
        """The result that `to_contents` described.

        Args:
            contents: its tensors and meta (from `factscope.result_files.load_result`).

        Cost: negligible.
        """
        t, meta = contents
        coefs = unnest("fits", t)
        return cls(facts=tuple(fact_from_json(r) for r in meta["facts"]), layers=tuple(meta["layers"]),
                   **{k: t[k] for k in cls._GRIDS}, n_facts_used=meta["n_facts_used"], settings=meta["settings"],
                   fits={k: OLS(coef=coefs[f"{k}.coef"].numpy(), **f) for k, f in meta["fits"].items()},
                   f_tests={k: tuple(v) for k, v in meta["f_tests"].items()})

    @property
    def r2(self) -> dict[str, float]:
        """R² of each fit: ``{"layer", "tracing", "both"}``."""
        return {k: f.r2 for k, f in self.fits.items()}

    @property
    def delta_r2(self) -> float:
        """R²(both) − R²(layer): what tracing adds once the layer is known (Hase's quantity)."""
        return self.fits["both"].r2 - self.fits["layer"].r2

    @property
    def verdict(self) -> str:
        """One line: what tracing adds over layer, the F-test, and what that says."""
        F, p = self.f_tests["tracing_over_layer"]
        d = self.delta_r2
        head = f"tracing adds ΔR² = {d:.3f} over layer (F = {F:.2f}, p = {p:.3g})"
        if math.isnan(F) or math.isnan(p):
            return (f"{head}: the F-test is undefined here (no usable facts, or too few cells for the fit with "
                    "both predictors)")
        if p >= ALPHA:
            why = "localization does not inform editing here"
        elif d < SMALL_DELTA_R2:
            why = (f"significant but small (< {SMALL_DELTA_R2}, Hase's largest): localization barely informs "
                   "editing here")
        else:
            why = "localization informs editing here"
        return f"{head}: {why}"

    def to_dataframe(self) -> Any:
        """One row per (fact, layer): tracing effect, rewrite score, p before/after, and use.

        ``used`` says whether the cell entered the regressions.
        """
        import pandas as pd

        used = (torch.isfinite(self.tracing).all(1) & torch.isfinite(self.edit_score).all(1)).tolist()
        rows = []
        for i, r in enumerate(self.facts):
            for j, l in enumerate(self.layers):
                rows.append({"fact": i, "subject": r.subject, "relation": r.relation, "prompt": r.text,
                             "target_true": r.target_true, "target_new": r.target_new, "layer": l,
                             "tracing": float(self.tracing[i, j]), "edit_score": float(self.edit_score[i, j]),
                             "p_before": float(self.p_before[i, j]), "p_after": float(self.p_after[i, j]),
                             "used": bool(used[i])})
        return pd.DataFrame(rows)

    def summary(self) -> Any:
        """R² per fit and the two nested F-tests, with Hase et al.'s ROME-on-GPT-J R²s alongside."""
        import pandas as pd

        rows = [{"model": f"edit_score ~ {k}", "r2": f.r2, "hase_rome_gptj_r2": HASE_ROME_GPTJ[k], "delta_r2": math.nan,
                 "F": math.nan, "df_num": math.nan, "df_den": math.nan, "p_value": math.nan, "n_cells": f.n}
                for k, f in self.fits.items()]
        tests = (("tracing_over_layer", "layer", "tracing"), ("layer_over_tracing", "tracing", "layer"))
        for name, small, added in tests:
            s, b = self.fits[small], self.fits["both"]
            F, p = self.f_tests[name]
            rows.append({"model": f"both vs {small} (adds {added})", "r2": b.r2, "hase_rome_gptj_r2": math.nan,
                         "delta_r2": b.r2 - s.r2, "F": F, "df_num": b.rank - s.rank, "df_den": b.df_resid,
                         "p_value": p, "n_cells": b.n})
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        s = self.settings
        head = (f"Localization vs editing ({s.get('editor')}): {len(self.facts)} facts ({self.n_facts_used} used) "
                f"× {len(self.layers)} layers, MLP tracing window {s.get('window')}")
        lines = [head]
        for k, f in self.fits.items():
            lines.append(f"  R²(edit score ~ {k:<7}) = {f.r2:.3f}   (Hase, ROME on GPT-J: {HASE_ROME_GPTJ[k]:.3f})")
        for name, label in (("tracing_over_layer", "tracing | layer"), ("layer_over_tracing", "layer | tracing")):
            F, p = self.f_tests[name]
            lines.append(f"  F-test {label}: F = {F:.3g}, p = {p:.3g}")
        lines.append(f"  mean edit score {float(self.edit_score.nanmean()):.3f}, mean tracing effect "
                     f"{float(self.tracing.nanmean()):.3f}")
        lines.append("  " + self.verdict)
        return "\n".join(lines)


# --------------------------------------------------------------------------- validation


def check_facts(model: Bridge, facts: Any, name: str = "facts") -> tuple[EditRequest, ...]:
    """``facts`` as a tuple of `EditRequest` s that can be traced and edited on ``model`` (no model pass).

    Args:
        model: the bridge they are for.
        facts: one `EditRequest` or a non-empty sequence of them, each with a ``target_true``.
        name: the argument's name in the messages (``"facts"``).

    Raises:
        TypeError / ValueError: not `EditRequest` s, none, a missing ``target_true``, or what
            `factscope.tokens.check_request` refuses.

    Cost: negligible (tokenisations; no model passes).
    """
    from factscope.tokens import check_request

    facts = as_requests(facts, name)
    for i, r in enumerate(facts):
        if r.target_true is None:
            raise ValueError(f"expected {name}[{i}] ({r.subject!r}) to have a target_true (tracing follows it), "
                             "got None")
        check_request(model, r)  # the subject is a run of tokens; prompt + target fit the context
    return tuple(facts)


def check_probe_layers(model: Bridge, layers: Any) -> tuple[int, ...]:
    """The layers to probe, normalised and distinct (`Arch.check_layers`); ``None``: every layer.

    Args:
        model: the bridge.
        layers: a non-empty sequence of distinct layer indices (negatives count from the end), or ``None``.

    Cost: negligible.
    """
    a = arch_of(model)
    return tuple(range(a.n_layers)) if layers is None else a.check_layers(layers)  # normalised, distinct


def layer_editors() -> tuple[str, ...]:
    """The registry's editors that edit a layer they are given: every one but those that choose their own (KN).

    `localization_vs_editing` edits exactly the probed layer (MEMIT and AlphaEdit at that one layer).

    Cost: negligible.
    """
    return tuple(s.name for s in registry.EDITORS.values() if s.layers != "none")


def layer_editor(editor: str) -> EditorSpec:
    """The registry's `EditorSpec` for ``editor`` (a name or alias) if it edits a layer it is given.

    Args:
        editor: an editor name or alias (`factscope.edit.registry.editor_names`).

    Raises:
        ValueError: an unknown editor, or one that chooses its own layers; the message lists `layer_editors`.

    Cost: negligible.
    """
    try:
        spec = registry.editor(editor)
    except ValueError:
        spec = None
    if spec is None or spec.layers == "none":
        why = "" if spec is None else f" ({spec.name} chooses its own layers, so it cannot be put at each one)"
        raise ValueError(f"expected editor to be one of {list(layer_editors())} (or an alias, or an edit_fn), got "
                         f"{editor!r}{why}")
    return spec


def resolve_layer_editor(model: Bridge, editor: str, config: EditorConfig | None, edit_fn: EditFn | None
                         ) -> tuple[str, EditFn, dict[str, object]]:
    """The probes' editor at a layer, checked: ``(name, fn(model, request, layer) -> Edit, config dict)``.

    The built-in editors are run through the registry at exactly the layer given (MEMIT and
    AlphaEdit at that one layer); a custom ``edit_fn`` is used as it is.

    Args:
        model: the bridge to be edited (its family picks the default config).
        editor: a registry editor that edits a given layer (`layer_editors`), or an alias.
        config: its config (``None``: `factscope.edit.registry.default_config`, the tuned δ budget for
            the model's family; ``registry.editor(editor).config_class.paper()`` for the published
            constants); must be ``None`` with ``edit_fn``.
        edit_fn: instead of ``editor``, any ``fn(model, request, layer) -> Edit``.

    Raises:
        TypeError / ValueError: an unknown editor or one that picks its own layers, a config of the
            wrong type, an ``edit_fn`` that is not callable or comes with a config.

    Cost: negligible (no model passes; the returned ``fn`` costs one edit per call).
    """
    if edit_fn is not None:
        if not callable(edit_fn):
            raise TypeError(f"expected edit_fn to be a callable (model, request, layer) -> Edit, got {edit_fn!r}")
        if config is not None:
            raise ValueError("expected config=None with a custom edit_fn (it configures the built-in editors only), "
                             f"got {config!r}")
        return getattr(edit_fn, "__name__", "custom"), edit_fn, {}
    spec = layer_editor(editor)
    cfg = spec.check_config(default_config(spec, model) if config is None else config)

    def at_layer(model: Bridge, request: EditRequest, layer: int) -> Edit:  # the probe's layer policy: exactly l
        return spec.run(model, [request], layers=[layer], config=cfg, progress=False, verbose=False)

    return spec.name, at_layer, config_dict(cfg)


# --------------------------------------------------------------------------- the two stages


@dataclass(frozen=True, kw_only=True)
class TracingEffects:
    """Stage 1's output: each fact's MLP tracing effect at the probed layers (`mlp_tracing_effects`).

    Cost: negligible (plain data).

    Attributes:
        effect: ``[fact, layer]`` TE (NaN rows: facts whose corruption did no damage).
        p_clean, p_corrupted: ``[fact]`` p(target_true) of the clean and the corrupted run.
        no_damage: subjects of the facts with ``p_clean <= p_corrupted``.
    """

    effect: Float[Tensor, "fact layer"]
    p_clean: Float[Tensor, "fact"]
    p_corrupted: Float[Tensor, "fact"]
    no_damage: tuple[str, ...]


def mlp_tracing_effects(model: Bridge, reqs: Sequence[EditRequest], Ls: Sequence[int], *, window: int, samples: int,
                        seed: int, progress: bool) -> TracingEffects:
    """Stage 1: one MLP trace per fact (`factscope.locate.trace`) and its TE at the layers ``Ls``.

    Warns, naming them, about facts whose corruption did no damage (their rows are NaN).

    Args:
        model: a bridge (unchanged).
        reqs: checked requests with ``target_true`` (`check_facts`).
        Ls: the normalised layers whose TE is read (`check_probe_layers`).
        window: MLP layers restored together. samples: noise samples per trace. seed: the noise's seed.
        progress: a progress bar over the traces.

    Cost: one MLP trace per fact: O(samples × tokens × layers) token-block evaluations each.
    """
    from tqdm.auto import tqdm

    from factscope.locate.tracing import trace

    n_f = len(reqs)
    te = torch.full((n_f, len(Ls)), math.nan, dtype=torch.float64)  # [fact, layer]
    p_clean = torch.zeros(n_f, dtype=torch.float64)  # [fact]
    p_corr = torch.zeros(n_f, dtype=torch.float64)  # [fact]
    for i, r in enumerate(tqdm(reqs, desc="MLP traces", disable=not progress)):
        tr = trace(model, r, kind="mlp", window=window, samples=samples, seed=seed)
        p_clean[i], p_corr[i] = tr.clean, tr.corrupted
        te[i] = tracing_effect(tr.scores["mlp"], tr.clean, tr.corrupted)[list(Ls)]
    no_damage = tuple(r.subject for i, r in enumerate(reqs) if not p_clean[i] > p_corr[i])
    if no_damage:
        warnings.warn(f"{len(no_damage)} of {n_f} facts have p_clean <= p_corrupted (the corruption did no damage), "
                      f"so no tracing effect; they are left out of the regressions: {list(no_damage)}", stacklevel=3)
    return TracingEffects(effect=te, p_clean=p_clean, p_corrupted=p_corr, no_damage=no_damage)


@dataclass(frozen=True, kw_only=True)
class _Rewrites:
    """Stage 2's output: p(target_new) before and with each (fact, layer) edit, and the rewrite score.

    Attributes:
        p_before, p_after: ``[fact, layer]`` p before (equal along a row) and with the edit applied.
        score: ``[fact, layer]`` RS = (p* − p) / (1 − p).
    """

    p_before: Float[Tensor, "fact layer"]
    p_after: Float[Tensor, "fact layer"]
    score: Float[Tensor, "fact layer"]


def _edits(model: Bridge, reqs: Sequence[EditRequest], Ls: Sequence[int], fn: EditFn, *, label: str,
           progress: bool) -> _Rewrites:
    """Stage 2: edit each fact at each layer, score p(target_new) with the edit applied, and revert it."""
    from tqdm.auto import tqdm

    n_f, n_l = len(reqs), len(Ls)
    p0 = torch.tensor([_p_target(model, r.text, r.target_new) for r in reqs], dtype=torch.float64)  # [fact]
    p1 = torch.full((n_f, n_l), math.nan, dtype=torch.float64)  # [fact, layer]
    with tqdm(total=n_f * n_l, desc=label, disable=not progress) as bar:
        for i, r in enumerate(reqs):
            for j, l in enumerate(Ls):
                e = fn(model, r, l)
                if not isinstance(e, Edit):
                    raise TypeError(f"expected the editor to return an Edit, got {type(e).__name__} (fact {i}, "
                                    f"layer {l})")
                with e.applied(model):
                    p1[i, j] = _p_target(model, r.text, r.target_new)
                bar.update(1)
                bar.set_postfix(fact=i, layer=l)
    rs = torch.tensor([[rewrite_score(float(p0[i]), float(p1[i, j])) for j in range(n_l)] for i in range(n_f)],
                      dtype=torch.float64)
    return _Rewrites(p_before=p0[:, None].expand(n_f, n_l).clone(), p_after=p1, score=rs)


# --------------------------------------------------------------------------- the probe


def localization_vs_editing(
    model: Bridge,
    facts: Sequence[EditRequest],
    *,
    layers: Sequence[int] | None = None,
    editor: str = "rome",
    config: EditorConfig | None = None,
    edit_fn: EditFn | None = None,
    window: int = 5,
    samples: int = 10,
    seed: int = 0,
    progress: bool = True,
    verbose: bool = True,
) -> LocalizationResult:
    """Trace every fact, edit it at every layer, and regress edit success on layer and tracing effect.

    Args:
        model: a bridge. It is bit-identical afterwards (each edit is applied and reverted).
        facts: `EditRequest` s with ``target_true`` (traced) and ``target_new`` (edited in), e.g.
            `factscope.builtin_facts`. A fact the model does not answer top-1 is traced anyway
            (`trace` warns).
        layers: the distinct layers to edit (and read the tracing effect at), in the order given;
            negative values count from the end (``result.layers`` records them normalised). ``None``:
            every layer.
        editor: a registry editor that edits a given layer (`layer_editors`: ``"rome"``, ``"memit"`` and
            ``"alphaedit"`` at that one layer, ``"ft-l"`` alias ``"finetune"``); KN chooses its own layers.
        config: the editor's config (``registry.editor(editor).config_class``); ``None``: the tuned default for the
            model's family (`factscope.edit.registry.default_config`; ``.paper()`` for the published constants).
        edit_fn: instead of ``editor``, any ``fn(model, request, layer) -> Edit``.
        window: MLP layers restored together in the trace (Hase's 5).
        samples: noise samples per trace (10). seed: seeds the tracing noise (editors use their
            config's seed).
        progress: progress bars over traces and edits. verbose: one line on what will run.

    Returns:
        `LocalizationResult`: ``.verdict``, ``.summary()``, ``.to_dataframe()``; draw it with
        `factscope.figures.plot_localization`.

    Raises:
        TypeError / ValueError: empty or non-`EditRequest` facts, a missing target_true or subject,
            bad layers, an unknown editor, a config of the wrong type, bad window/samples/seed, all
            before any tracing or editing; an ``edit_fn`` that does not return an `Edit`.

    Cost: one MLP trace per fact plus ``facts × layers`` edits (FT-L about as much as ROME, MEMIT at
    one layer a little more) and C per layer (cached on disk; slow only the first time). Memory: one
    editor's working set plus one saved ``W_out`` while an edit is applied. Measured: docs/guide.md.
    """
    from factscope.models import fingerprint

    reqs = check_facts(model, facts)
    Ls = check_probe_layers(model, layers)
    name, fn, cfg = resolve_layer_editor(model, editor, config, edit_fn)
    check_int("window", window, 1, arch_of(model).n_layers)
    check_int("samples", samples, 1)
    check_int("seed", seed, 0)
    fp = fingerprint(model)
    n_f, n_l = len(reqs), len(Ls)
    if verbose:
        print(f"localization_vs_editing: {n_f} MLP traces (window {window}, {samples} samples) and "
              f"{n_f} facts × {n_l} layers = {n_f * n_l} {name} edits")

    tr = mlp_tracing_effects(model, reqs, Ls, window=window, samples=samples, seed=seed, progress=progress)
    ed = _edits(model, reqs, Ls, fn, label=f"{name} edits", progress=progress)
    fits, tests, used = hase_regressions(tr.effect.numpy(), ed.score.numpy())
    settings = dict(editor=name, config=cfg, window=window, samples=samples, seed=seed, model=fp,
                    no_damage=list(tr.no_damage))
    return LocalizationResult(facts=reqs, layers=Ls, tracing=tr.effect, edit_score=ed.score, p_before=ed.p_before,
                              p_after=ed.p_after, p_clean=tr.p_clean, p_corrupted=tr.p_corrupted, fits=fits,
                              f_tests=tests, n_facts_used=used, settings=settings)
