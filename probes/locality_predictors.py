"""What predicts where an edit stays put? Edit locality regressed on tracing, key specificity and layer.

Hase et al. ("Does Localization Inform Editing?", NeurIPS 2023) asked whether causal tracing predicts
where an edit *succeeds* (`factscope.probes.localization_vs_editing`). This probe asks the other half
of the locality hypothesis: what predicts where an edit *stays put*, leaving other subjects' facts
alone? Every request is edited at every probed layer, as in `localization_vs_editing` (same design,
same stage 1, same editors), and three locality outcomes are regressed on three candidate predictors.

Per (request r, layer l) cell:

1. **Tracing effect** TE[r, l]: `localization_vs_editing`'s stage 1, reused (`mlp_tracing_effects`):
   the fraction of the corruption's damage to p(target_true) that restoring the MLPs around l
   repairs, maximised over tokens. A request whose corruption does no damage has no TE (NaN row).
2. **Key specificity** S[r, l]: `factscope.edit.key_specificity`'s mean update response of r's key
   k* at l on other subjects' prompts (``.response``: the mean of its same-relation and
   other-relation groups)::

       S[r, l] = mean_prompt max_pos |kᵀ C_l⁻¹ k*_r| / (k*_rᵀ C_l⁻¹ k*_r)

   0 means ROME's update ``u Λᵀ`` (u = C⁻¹k*) leaves those prompts' MLP outputs alone, 1 that it
   moves them by all of δ. Lower is more specific. It is edit-free, and read with the editor's C and
   templates when its config is a `TargetConfig` (ROME, MEMIT, AlphaEdit; ROME's defaults otherwise).
3. **Locality outcomes** with r's edit at l applied (``with edit.applied(model):``, reverted after, so
   the model leaves bit-identical), on r's neighbour prompts N_r (other subjects whose answer must
   stay ``target_true``); p is the next-token distribution, ``lp(t | n)`` the mean per-token
   log-probability of ``" " + t`` after n (teacher-forced)::

       NS[r, l]    = mean_{n ∈ N_r} [ lp(true | n) > lp(new | n) ]            (evaluate's neighbourhood)
       KL[r, l]    = mean_{n ∈ N_r} KL( p_post(· | n) ‖ p_pre(· | n) )        (evaluate's neighbourhood_kl, nats)
       flips[r, l] = mean_{n ∈ N_r} [ argmax p_post(· | n) ≠ argmax p_pre(· | n) ]

   High NS and low KL and flips mean the edit stayed put. ES[r, l] = [lp(new | prompt) > lp(true |
   prompt)] (efficacy) is recorded so a reader can see the edit worked, and NS before any edit
   (``ns_before[r]``: a neighbour the model already gets wrong cannot be kept).

**Regressions**, per outcome y ∈ {ns, kl, flips}, over the cells of the requests whose values are all
finite (a request with a NaN anywhere is left out whole, so every layer keeps the same requests), by
least squares with an intercept (`factscope.probes.stats.ols`) on six predictor sets::

    layer               one dummy per probed layer but the first (any per-layer mean; Hase's "layer")
    tracing             TE
    specificity         S
    tracing+layer       the dummies and TE
    specificity+layer   the dummies and S
    all                 the dummies, TE and S

and four nested F-tests (`nested_f_test`), "X | Y": does X explain more once Y is known::

    tracing|layer                layer ⊂ tracing+layer
    specificity|layer            layer ⊂ specificity+layer
    specificity|tracing+layer    tracing+layer ⊂ all
    tracing|specificity+layer    specificity+layer ⊂ all

each with ΔR² = R²(bigger) − R²(smaller). Every R² and ΔR² has a percentile bootstrap CI (95%) from
``n_boot`` resamples of *requests* (whole rows: a request's cells at all layers go together, as they
are not independent), seeded; a ΔR²'s replicates are paired (both fits on the same resample).

Reading it: a predictor *adds* to an outcome when its F-test's p < `ALPHA`; each outcome's verdict
line says which do and by how much. Specificity is the mechanism's candidate: the rank-one update moves
a key k by ``(kᵀu / k*ᵀu) · δ``, so a high response should come with a low NS and a high KL and flip
rate (a negative coefficient on NS, positive on KL and flips). Tracing adding nothing over layer
says that where a fact was traced does not tell where its edit stays put either (Hase et al. found
the same for edit success). The F-tests treat cells as independent, which cells of one request are
not, so their p-values are optimistic; the bootstrap CIs, resampling requests, are the honest
intervals (and wide with few requests). Two cautions on those CIs: R² on a resample with repeated
requests is biased upward, and a ΔR² of nested fits is never negative, so its interval never holds
0 itself: read it as the range of the effect's size, and a lower end near 0 as "maybe nothing".

Cost: one MLP trace per request (`factscope.locate.trace`, ``kind="mlp"``: O(samples × tokens ×
layers) token-block evaluations); `key_specificity` at the probed layers (one forward per request of
its template prompts, one of the bank, one Cholesky solve of C per layer, C from the disk cache
after its first computation); ``requests × layers`` edits (the editor's cost each, the bulk: ROME's
v* optimisation); per cell, one teacher-forced pass over ``2 × (1 + n_paraphrases + n_neighbours)``
rows and one next-token pass over the neighbours (once more per request, before any edit); and
``3 outcomes × 6 sets × n_boot`` least-squares fits of ``[cells, ≤ layers + 2]`` designs,
O(n_boot × cells × layers²) (4 s on one CPU core for 20 requests × 18 layers, n_boot 1000). Memory: one
editor's working set; C of every probed layer at once (``layers × d_mlp² × 8`` bytes, in
`key_specificity`); ``[n_neighbours, d_vocab]`` float64 log-probabilities twice. Progress: bars over
the traces, key specificity's steps, the cells and the bootstrap.

Dimension names: ``request`` the edit requests, ``layer`` the probed layers (``result.layers``),
``cell`` a (request, layer) pair in row-major order, ``prompt`` a request's neighbour prompts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from factscope.arch import arch_of
from factscope.bridge import Bridge
from factscope.checks import check_int
from factscope.edit.handle import Edit
from factscope.edit.registry import EditorConfig
from factscope.edit.target import TargetConfig
from factscope.facts import EditRequest
from factscope.probes.localization import (
    ALPHA,
    EditFn,
    check_facts,
    check_probe_layers,
    layer_dummies,
    layer_editor,
    mlp_tracing_effects,
    resolve_layer_editor,
)
from factscope.probes.stats import LEVEL, OLS, bootstrap, format_ci, nested_f_test, ols, percentile_ci
from factscope.result_files import ResultContents, Saveable, fact_from_json, fact_to_json, nest, unnest

__all__ = ["LocalityResult", "LocalityFit", "locality_predictors", "locality_regressions", "OUTCOMES",
           "PREDICTOR_SETS", "F_TESTS"]

OUTCOMES: dict[str, str] = {"ns": "neighbourhood score NS", "kl": "neighbour KL(post ‖ pre)",
                            "flips": "neighbour top-1 flips"}
"""The locality outcomes regressed (key -> label): NS (higher: stayed put), KL and flips (lower: stayed put)."""

PREDICTOR_SETS: dict[str, tuple[str, ...]] = {
    "layer": ("layer",), "tracing": ("tracing",), "specificity": ("specificity",),
    "tracing+layer": ("layer", "tracing"), "specificity+layer": ("layer", "specificity"),
    "all": ("layer", "tracing", "specificity"),
}
"""The six fits' predictors (``"layer"``: one dummy per probed layer but the first), in design-column order."""

F_TESTS: dict[str, tuple[str, str]] = {
    "tracing|layer": ("layer", "tracing+layer"),
    "specificity|layer": ("layer", "specificity+layer"),
    "specificity|tracing+layer": ("tracing+layer", "all"),
    "tracing|specificity+layer": ("specificity+layer", "all"),
}
"""The nested F-tests, ``"X|Y"`` (does X add once Y is known) -> ``(smaller set, bigger set)``."""

_NAN_PAIR = (math.nan, math.nan)


# --------------------------------------------------------------------------- regressions


def _design(te: np.ndarray, sp: np.ndarray, which: str) -> np.ndarray:
    """``[cell, n_features]`` the predictors of set ``which`` for ``[request, layer]`` rows (cells row-major)."""
    R, L = te.shape
    cols = {"layer": layer_dummies(np.tile(np.arange(L), R), L),  # [cell, L − 1]
            "tracing": te.reshape(-1, 1), "specificity": sp.reshape(-1, 1)}  # [cell, 1] each
    return np.column_stack([cols[k] for k in PREDICTOR_SETS[which]])


def _fits(te: np.ndarray, sp: np.ndarray, y: np.ndarray) -> dict[str, OLS]:
    """The six fits of ``y`` ``[request, layer]`` (cells row-major)."""
    return {k: ols(_design(te, sp, k), y.ravel()) for k in PREDICTOR_SETS}


def _f_test(small: OLS, big: OLS) -> tuple[float, float]:
    """`nested_f_test`, but NaN when y is constant (R² undefined) or the smaller fit is exact: nothing to add."""
    if not math.isfinite(small.r2) or small.rss <= 0:
        return _NAN_PAIR
    return nested_f_test(small, big)


@dataclass(frozen=True, kw_only=True)
class LocalityFit:
    """The six fits, four F-tests and bootstrap CIs of one outcome (what `locality_regressions` returns).

    Cost: negligible (plain data).

    Attributes:
        fits: predictor set (`PREDICTOR_SETS`) -> `factscope.probes.stats.OLS`.
        f_tests: test (`F_TESTS`) -> ``(F, p)``.
        r2_ci: predictor set -> ``(lo, hi)`` bootstrap CI of its R².
        delta_r2_ci: test -> ``(lo, hi)`` bootstrap CI of its ΔR².
        n_used: requests in the fits (those with every value finite).
    """

    fits: dict[str, OLS]
    f_tests: dict[str, tuple[float, float]]
    r2_ci: dict[str, tuple[float, float]]
    delta_r2_ci: dict[str, tuple[float, float]]
    n_used: int


def locality_regressions(tracing: Any, specificity: Any, outcome: Any, *, n_boot: int = 1000, seed: int = 0,
                         level: float = LEVEL) -> LocalityFit:
    """The six fits, four nested F-tests and bootstrap CIs (by request) of one ``[request, layer]`` outcome.

    Requests (rows) with any non-finite value in the three arrays are left out whole; with none left,
    every R², F, p and CI is NaN. A constant outcome has no R² (NaN) and no F-tests (NaN).

    Args:
        tracing: ``[request, layer]`` tracing effects TE.
        specificity: ``[request, layer]`` key-specificity responses S.
        outcome: ``[request, layer]`` the locality outcome (NS, KL or flips).
        n_boot: bootstrap resamples of requests (>= 1).
        seed: the resampling seed (every set's resamples are the same, so ΔR² replicates are paired).
        level: the CI level (0.95).

    Raises:
        ValueError: arrays of different or non-2-D shapes, ``n_boot < 1``.

    Cost: ``6 × (n_boot + 1)`` least-squares fits of ``[cells, ≤ layers + 2]`` designs.
    """
    te, sp, y = (np.asarray(a, dtype=float) for a in (tracing, specificity, outcome))
    if not (te.shape == sp.shape == y.shape and te.ndim == 2):
        raise ValueError(f"expected tracing, specificity and outcome of one [request, layer] shape, got {te.shape}, "
                         f"{sp.shape} and {y.shape}")
    check_int("n_boot", n_boot, 1)
    keep = np.isfinite(te).all(1) & np.isfinite(sp).all(1) & np.isfinite(y).all(1)
    te, sp, y = te[keep], sp[keep], y[keep]
    n = int(keep.sum())
    if n == 0:  # nothing to regress: undefined fits (the per-cell grids stay usable)
        empty = OLS(coef=np.full(1, np.nan), r2=math.nan, rss=math.nan, df_resid=0, rank=0, n=0)
        return LocalityFit(fits={k: empty for k in PREDICTOR_SETS}, f_tests={k: _NAN_PAIR for k in F_TESTS},
                           r2_ci={k: _NAN_PAIR for k in PREDICTOR_SETS}, delta_r2_ci={k: _NAN_PAIR for k in F_TESTS},
                           n_used=0)
    fits = _fits(te, sp, y)
    tests = {k: _f_test(fits[s], fits[b]) for k, (s, b) in F_TESTS.items()}

    def r2_of(k: str) -> Callable[[np.ndarray], float]:
        return lambda idx: ols(_design(te[idx], sp[idx], k), y[idx].ravel()).r2  # idx: [request] rows drawn

    reps = {k: bootstrap(r2_of(k), n, n_boot=n_boot, seed=seed) for k in PREDICTOR_SETS}  # set -> [resample]
    return LocalityFit(fits=fits, f_tests=tests, r2_ci={k: percentile_ci(v, level) for k, v in reps.items()},
                       delta_r2_ci={k: percentile_ci(reps[b] - reps[s], level) for k, (s, b) in F_TESTS.items()},
                       n_used=n)


# --------------------------------------------------------------------------- result


def _adds(fit: LocalityFit, test: str) -> str:
    """``ΔR² = d [lo, hi], p = p`` of one test."""
    s, b = F_TESTS[test]
    d = fit.fits[b].r2 - fit.fits[s].r2
    return f"ΔR² = {format_ci(d, *fit.delta_r2_ci[test])}, p = {fit.f_tests[test][1]:.3g}"


def _phrase(fit: LocalityFit, x: str, other: str) -> str:
    """What predictor ``x`` adds over layer and over ``other`` + layer, in words."""
    alone, joint = f"{x}|layer", f"{x}|{other}+layer"
    p1, p2 = fit.f_tests[alone][1], fit.f_tests[joint][1]
    if math.isnan(p1):
        return f"{x}: undefined (a constant outcome, no usable requests, or too few cells)"
    if math.isnan(p2):
        head = "adds" if p1 < ALPHA else "adds nothing significant"
        return (f"{x} {head} over layer ({_adds(fit, alone)}); whether it adds once {other} is known is "
                "undefined (too few cells for the fit with all predictors)")
    if p1 < ALPHA and p2 < ALPHA:
        return f"{x} adds over layer ({_adds(fit, alone)}) and over {other} + layer ({_adds(fit, joint)})"
    if p1 < ALPHA:
        return f"{x} adds over layer ({_adds(fit, alone)}) but not once {other} is known ({_adds(fit, joint)})"
    if p2 < ALPHA:
        return f"{x} adds only once {other} is known ({_adds(fit, joint)}; over layer alone {_adds(fit, alone)})"
    return f"{x} adds nothing significant over layer ({_adds(fit, alone)})"


@dataclass(frozen=True, kw_only=True)
class LocalityResult(Saveable):
    """Tracing effect, key specificity and edit locality per (request, layer), and the regressions on them.

    What `locality_predictors` returns. Cost: negligible (plain data; the fits and CIs are stored).

    Attributes:
        requests: the requests, in order.
        layers: the probed layers (columns of every ``[request, layer]`` grid), normalised.
        tracing: ``[request, layer]`` tracing effect TE (NaN rows: requests whose corruption did no damage).
        specificity: ``[request, layer]`` key-specificity response S (lower: more specific).
        ns: ``[request, layer]`` neighbourhood score NS with the edit applied.
        kl: ``[request, layer]`` mean neighbour KL(post ‖ pre), nats.
        flips: ``[request, layer]`` fraction of neighbour prompts whose top-1 next token changed.
        efficacy: ``[request, layer]`` ES with the edit applied (1: p(new) beats p(true) on the prompt).
        ns_before: ``[request]`` NS before any edit.
        fits: outcome (`OUTCOMES`) -> predictor set (`PREDICTOR_SETS`) -> `factscope.probes.stats.OLS`.
        f_tests: outcome -> test (`F_TESTS`) -> ``(F, p)``.
        r2_ci: outcome -> predictor set -> ``(lo, hi)`` bootstrap CI of R².
        delta_r2_ci: outcome -> test -> ``(lo, hi)`` bootstrap CI of ΔR².
        n_used: requests in the regressions (every value finite).
        settings: editor, its config, window, samples, seed, n_boot, level, the model fingerprint,
            the no-damage subjects and key specificity's settings.
    """

    requests: tuple[EditRequest, ...]
    layers: tuple[int, ...]
    tracing: Float[Tensor, "request layer"]
    specificity: Float[Tensor, "request layer"]
    ns: Float[Tensor, "request layer"]
    kl: Float[Tensor, "request layer"]
    flips: Float[Tensor, "request layer"]
    efficacy: Float[Tensor, "request layer"]
    ns_before: Float[Tensor, "request"]
    fits: dict[str, dict[str, OLS]]
    f_tests: dict[str, dict[str, tuple[float, float]]]
    r2_ci: dict[str, dict[str, tuple[float, float]]]
    delta_r2_ci: dict[str, dict[str, tuple[float, float]]]
    n_used: int
    settings: dict[str, Any] = field(default_factory=dict)

    RESULT_KIND = "factscope.locality_predictors"
    RESULT_VERSION = 1
    _GRIDS = ("tracing", "specificity", "ns", "kl", "flips", "efficacy", "ns_before")  # the tensor fields

    def to_contents(self) -> ResultContents:
        """The grids and each fit's ``coef`` as tensors; the rest as JSON meta.

        Cost: negligible (no copies).
        """
        tensors = {k: getattr(self, k) for k in self._GRIDS}
        tensors.update(nest("fits", {f"{o}.{k}": f.coef for o, fs in self.fits.items() for k, f in fs.items()}))
        fits = {o: {k: {x.name: getattr(f, x.name) for x in dataclasses.fields(f) if x.name != "coef"}
                    for k, f in fs.items()} for o, fs in self.fits.items()}
        meta = {"requests": [fact_to_json(r) for r in self.requests], "layers": self.layers, "fits": fits,
                "f_tests": self.f_tests, "r2_ci": self.r2_ci, "delta_r2_ci": self.delta_r2_ci,
                "n_used": self.n_used, "settings": self.settings}
        return ResultContents(tensors, meta)

    @classmethod
    def from_contents(cls, contents: ResultContents) -> LocalityResult:
        """The result that `to_contents` described.

        Args:
            contents: its tensors and meta (from `factscope.result_files.load_result`).

        Cost: negligible.
        """
        t, meta = contents
        coefs = unnest("fits", t)

        def pairs(d: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, tuple[float, float]]]:
            return {o: {k: tuple(v) for k, v in inner.items()} for o, inner in d.items()}

        fits = {o: {k: OLS(coef=coefs[f"{o}.{k}"].numpy(), **f) for k, f in fs.items()}
                for o, fs in meta["fits"].items()}
        return cls(requests=tuple(fact_from_json(r) for r in meta["requests"]), layers=tuple(meta["layers"]),
                   **{k: t[k] for k in cls._GRIDS}, fits=fits, f_tests=pairs(meta["f_tests"]),
                   r2_ci=pairs(meta["r2_ci"]), delta_r2_ci=pairs(meta["delta_r2_ci"]), n_used=meta["n_used"],
                   settings=meta["settings"])

    def fit(self, outcome: str) -> LocalityFit:
        """One outcome's fits, F-tests and CIs as a `LocalityFit`.

        Args:
            outcome: a key of `OUTCOMES` (``"ns"``, ``"kl"``, ``"flips"``).

        Cost: negligible.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"expected an outcome in {list(OUTCOMES)}, got {outcome!r}")
        return LocalityFit(fits=self.fits[outcome], f_tests=self.f_tests[outcome], r2_ci=self.r2_ci[outcome],
                           delta_r2_ci=self.delta_r2_ci[outcome], n_used=self.n_used)

    def delta_r2(self, outcome: str, test: str) -> float:
        """ΔR² of one nested test: R²(bigger set) − R²(smaller set).

        Args:
            outcome: a key of `OUTCOMES`.
            test: a key of `F_TESTS`, e.g. ``"specificity|layer"``.

        Cost: negligible.
        """
        s, b = F_TESTS[test]
        return self.fits[outcome][b].r2 - self.fits[outcome][s].r2

    @property
    def verdicts(self) -> dict[str, str]:
        """One line per outcome: what tracing and what specificity add over layer (ΔR² with CI, p)."""
        out = {}
        for o, label in OUTCOMES.items():
            f = self.fit(o)
            out[o] = f"{label}: {_phrase(f, 'tracing', 'specificity')}; {_phrase(f, 'specificity', 'tracing')}"
        return out

    def to_dataframe(self) -> Any:
        """One row per (request, layer): the predictors, the outcomes, efficacy, and use.

        ``used`` says whether the cell entered the regressions.
        """
        import pandas as pd

        used = self.used.tolist()
        rows = []
        for i, r in enumerate(self.requests):
            for j, l in enumerate(self.layers):
                rows.append({"request": i, "subject": r.subject, "relation": r.relation, "prompt": r.text,
                             "target_true": r.target_true, "target_new": r.target_new, "layer": l,
                             "n_neighbours": len(r.neighbours), "tracing": float(self.tracing[i, j]),
                             "specificity": float(self.specificity[i, j]), "ns": float(self.ns[i, j]),
                             "kl": float(self.kl[i, j]), "flips": float(self.flips[i, j]),
                             "efficacy": float(self.efficacy[i, j]), "ns_before": float(self.ns_before[i]),
                             "used": bool(used[i])})
        return pd.DataFrame(rows)

    @property
    def used(self) -> Tensor:
        """``[request]`` bool: the requests in the regressions (every value of their row finite)."""
        grids = [getattr(self, k) for k in ("tracing", "specificity", "ns", "kl", "flips")]
        return torch.stack([torch.isfinite(g).all(1) for g in grids]).all(0)

    def summary(self) -> Any:
        """One row per outcome and fit (R² with its CI) and per outcome and nested test (ΔR² with CI, F, p)."""
        import pandas as pd

        level = self.settings.get("level", LEVEL)
        rows = []
        for o in OUTCOMES:
            fs = self.fits[o]
            for k, f in fs.items():
                lo, hi = self.r2_ci[o][k]
                rows.append({"outcome": o, "model": k, "r2": f.r2, "r2_lo": lo, "r2_hi": hi,
                             "r2_ci": format_ci(f.r2, lo, hi), "delta_r2": math.nan, "delta_lo": math.nan,
                             "delta_hi": math.nan, "delta_r2_ci": "", "F": math.nan, "df_num": math.nan,
                             "df_den": math.nan, "p_value": math.nan, "n_cells": f.n})
            for t, (s, b) in F_TESTS.items():
                F, p = self.f_tests[o][t]
                lo, hi = self.delta_r2_ci[o][t]
                d = self.delta_r2(o, t)
                rows.append({"outcome": o, "model": f"{b} vs {s} ({t})", "r2": fs[b].r2, "r2_lo": math.nan,
                             "r2_hi": math.nan, "r2_ci": "", "delta_r2": d, "delta_lo": lo, "delta_hi": hi,
                             "delta_r2_ci": format_ci(d, lo, hi), "F": F, "df_num": fs[b].rank - fs[s].rank,
                             "df_den": fs[b].df_resid, "p_value": p, "n_cells": fs[b].n})
        df = pd.DataFrame(rows)
        df.attrs["level"] = level
        return df

    def __str__(self) -> str:
        s = self.settings
        lines = [f"Locality predictors ({s.get('editor')}): {len(self.requests)} requests ({self.n_used} used) × "
                 f"{len(self.layers)} layers {list(self.layers)}, MLP tracing window {s.get('window')}, "
                 f"{s.get('n_boot')} bootstrap resamples of requests",
                 f"  mean efficacy {float(self.efficacy.nanmean()):.3f}; NS {float(self.ns_before.nanmean()):.3f} "
                 f"before → {float(self.ns.nanmean()):.3f} with the edits; mean KL {float(self.kl.nanmean()):.3g}, "
                 f"flips {float(self.flips.nanmean()):.3f}"]
        for o in OUTCOMES:
            r2 = ", ".join(f"{k} {format_ci(f.r2, *self.r2_ci[o][k])}" for k, f in self.fits[o].items())
            lines.append(f"  R²({o} ~ ·): {r2}")
        lines += [f"  {v}" for v in self.verdicts.values()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- validation


def _check_neighbours(model: Bridge, reqs: Sequence[EditRequest]) -> None:
    """Each request has neighbour prompts, and every row the scoring will run fits the context."""
    from factscope.tokens import check_context, encode, target_ids

    for i, r in enumerate(reqs):
        if not r.neighbours:
            raise ValueError(f"expected requests[{i}] ({r.subject!r}) to have neighbour prompts (locality is "
                             "measured on them), got none")
        n_tgt = max(len(target_ids(model, r.target_new)), len(target_ids(model, r.target_true)))
        for p in (r.text, *r.paraphrases, *r.neighbours):  # the rows `rewrite_scores` and the KL pass run
            check_context(model, len(encode(model, p)) + n_tgt,
                          what=f"requests[{i}]'s prompt {p[:60]!r} followed by its longer target")


def _specificity_config(editor: str, config: EditorConfig | None, edit_fn: EditFn | None) -> TargetConfig | None:
    """The editor's config when it sets C and the templates (ROME, MEMIT, AlphaEdit); else ``None`` (ROME's)."""
    if edit_fn is not None:
        return None
    cfg = layer_editor(editor).check_config(config)
    return cfg if isinstance(cfg, TargetConfig) else None


# --------------------------------------------------------------------------- stage 3: edit and score


@dataclass(frozen=True, kw_only=True)
class _Locality:
    """Stage 3's output: the outcomes per (request, layer) and NS before any edit."""

    ns: Float[Tensor, "request layer"]
    kl: Float[Tensor, "request layer"]
    flips: Float[Tensor, "request layer"]
    efficacy: Float[Tensor, "request layer"]
    ns_before: Float[Tensor, "request"]


def _neighbour_logprobs(model: Bridge, r: EditRequest) -> Float[Tensor, "prompt d_vocab"]:
    from factscope.predict import next_token_logits

    return next_token_logits(model, list(r.neighbours)).double().log_softmax(-1)


def _locality(model: Bridge, reqs: Sequence[EditRequest], Ls: Sequence[int], fn: EditFn, *, label: str,
              progress: bool) -> _Locality:
    """Edit each request at each layer, score its neighbours with the edit applied, and revert it."""
    from tqdm.auto import tqdm

    from factscope.predict import kl_from_logprobs
    from factscope.probes.evaluate import rewrite_scores

    n_r, n_l = len(reqs), len(Ls)
    ns, kl, flips, es = (torch.full((n_r, n_l), math.nan, dtype=torch.float64) for _ in range(4))  # [request, layer]
    ns0 = torch.full((n_r,), math.nan, dtype=torch.float64)  # [request]
    with tqdm(total=n_r * n_l, desc=label, disable=not progress) as bar:
        for i, r in enumerate(reqs):
            ns0[i] = rewrite_scores(model, r).neighbourhood
            lp0 = _neighbour_logprobs(model, r)  # [prompt, d_vocab], before
            for j, l in enumerate(Ls):
                e = fn(model, r, l)
                if not isinstance(e, Edit):
                    raise TypeError(f"expected the editor to return an Edit, got {type(e).__name__} (request {i}, "
                                    f"layer {l})")
                with e.applied(model):
                    s = rewrite_scores(model, r)
                    lp1 = _neighbour_logprobs(model, r)  # [prompt, d_vocab], with the edit
                ns[i, j], es[i, j] = s.neighbourhood, s.efficacy
                kl[i, j] = kl_from_logprobs(lp1, lp0).mean()
                flips[i, j] = (lp1.argmax(-1) != lp0.argmax(-1)).double().mean()
                bar.update(1)
                bar.set_postfix(request=i, layer=l)
    return _Locality(ns=ns, kl=kl, flips=flips, efficacy=es, ns_before=ns0)


# --------------------------------------------------------------------------- the probe


def locality_predictors(
    model: Bridge,
    requests: Sequence[EditRequest],
    *,
    layers: Sequence[int] | None = None,
    editor: str = "rome",
    config: EditorConfig | None = None,
    edit_fn: EditFn | None = None,
    window: int = 5,
    samples: int = 10,
    seed: int = 0,
    n_boot: int = 1000,
    progress: bool = True,
    verbose: bool = True,
) -> LocalityResult:
    """Edit each request at each layer; regress NS, neighbour KL and flips on tracing, specificity, layer.

    See the module docstring for the definitions, the regressions and how to read them.

    Args:
        model: a bridge. It is bit-identical afterwards (each edit is applied and reverted).
        requests: `EditRequest` s with ``target_true`` (traced; kept on neighbours) and neighbour
            prompts (where locality is measured), e.g. `factscope.builtin_facts`.
        layers: at least 2 distinct layers to edit (and read TE and S at), in the order given;
            negative values count from the end (``result.layers`` records them normalised).
            ``None``: every layer.
        editor: a registry editor that edits a given layer (`factscope.probes.localization.layer_editors`:
            ``"rome"``, ``"memit"`` and ``"alphaedit"`` at that one layer, ``"ft-l"``).
        config: the editor's config (``None``: its default); a `TargetConfig` (ROME, MEMIT, AlphaEdit)
            also sets key specificity's C and templates.
        edit_fn: instead of ``editor``, any ``fn(model, request, layer) -> Edit``.
        window: MLP layers restored together in the trace (Hase's 5).
        samples: noise samples per trace (10).
        seed: seeds the tracing noise and the bootstrap (editors use their config's seed).
        n_boot: bootstrap resamples of requests for the CIs (1000).
        progress: progress bars over the stages. verbose: one line on what will run.

    Returns:
        `LocalityResult`: ``.verdicts``, ``.summary()``, ``.to_dataframe()``; draw it with
        `factscope.figures.plot_locality_predictors`.

    Raises:
        TypeError / ValueError: empty or non-`EditRequest` requests, a missing target_true or subject,
            a request without neighbour prompts, a prompt that does not fit the context, bad layers or
            fewer than 2, an unknown editor, a config of the wrong type, bad window / samples / seed /
            n_boot, all before any model pass; an ``edit_fn`` that does not return an `Edit`.

    Cost: one MLP trace per request, `factscope.edit.key_specificity` at the layers, ``requests ×
    layers`` edits (the bulk), two scoring passes per cell and ``18 × n_boot`` small least-squares fits
    (module docstring). Memory: one editor's working set plus C of every probed layer.
    """
    from tqdm.auto import tqdm

    from factscope.edit.key_specificity import key_specificity
    from factscope.models import fingerprint

    reqs = check_facts(model, requests, "requests")
    _check_neighbours(model, reqs)
    Ls = check_probe_layers(model, layers)
    if len(Ls) < 2:
        raise ValueError(f"expected at least 2 distinct layers (the layer predictor compares them), got {list(Ls)}")
    name, fn, cfg = resolve_layer_editor(model, editor, config, edit_fn)
    ks_cfg = _specificity_config(editor, config, edit_fn)
    check_int("window", window, 1, arch_of(model).n_layers)
    check_int("samples", samples, 1)
    check_int("seed", seed, 0)
    check_int("n_boot", n_boot, 1)
    fp = fingerprint(model)
    n_r, n_l = len(reqs), len(Ls)
    if verbose:
        print(f"locality_predictors: {n_r} MLP traces (window {window}, {samples} samples), key specificity at "
              f"{n_l} layers, {n_r} requests × {n_l} layers = {n_r * n_l} {name} edits scored on "
              f"{sum(len(r.neighbours) for r in reqs)} neighbour prompts, {n_boot} bootstrap resamples")

    tr = mlp_tracing_effects(model, reqs, Ls, window=window, samples=samples, seed=seed, progress=progress)
    ks = key_specificity(model, reqs, Ls, config=ks_cfg, progress=progress)
    loc = _locality(model, reqs, Ls, fn, label=f"{name} edits", progress=progress)
    sp = ks.response  # [request, layer]
    grids = {"tracing": tr.effect, "specificity": sp, "ns": loc.ns, "kl": loc.kl, "flips": loc.flips}
    keep = torch.stack([torch.isfinite(g).all(1) for g in grids.values()]).all(0).numpy()  # [request]
    fits = {}
    for o in tqdm(OUTCOMES, desc="regressions", disable=not progress):
        fits[o] = locality_regressions(tr.effect.numpy()[keep], sp.numpy()[keep], grids[o].numpy()[keep],
                                       n_boot=n_boot, seed=seed)
    settings = dict(editor=name, config=cfg, window=window, samples=samples, seed=seed, n_boot=n_boot, level=LEVEL,
                    model=fp, no_damage=list(tr.no_damage), key_specificity=ks.settings)
    return LocalityResult(
        requests=reqs, layers=Ls, tracing=tr.effect, specificity=sp, ns=loc.ns, kl=loc.kl, flips=loc.flips,
        efficacy=loc.efficacy, ns_before=loc.ns_before, fits={o: f.fits for o, f in fits.items()},
        f_tests={o: f.f_tests for o, f in fits.items()}, r2_ci={o: f.r2_ci for o, f in fits.items()},
        delta_r2_ci={o: f.delta_r2_ci for o, f in fits.items()}, n_used=int(keep.sum()), settings=settings)
