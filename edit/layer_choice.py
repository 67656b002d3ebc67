"""Where to edit: choose the edit layer (MEMIT/AlphaEdit: the layer window) from what predicts locality.

Causal tracing says where a fact is *processed*; Hase et al. (2023) showed that this does not say
where editing works, and the guide measured that it does not say where an edit stays local either.
`edit_layer` chooses from three pieces of evidence, each in the result:

1. **Key specificity** ρ(l) (`factscope.edit.key_specificity`): the mean update response of the
   calibration requests' k* on other subjects' prompts at layer l. Edit-free and cheap. A rank-one
   update writes ρ·δ into a neighbour, so low ρ means the edit stays where it is put.
2. **Tracing effect** τ(l): the MLP indirect effect at the last subject token in this model's
   causal-tracing profile (`factscope.locate.recommended_layer`, cached), as a fraction of its peak.
3. **A trial edit** at the few best candidates: each calibration request edited alone at that layer
   (MEMIT/AlphaEdit: all of them in one batch at that window) with the editor's config, then
   reverted, scoring efficacy ES, paraphrase PS, neighbourhood NS (of the neighbours the unedited
   model gets right, the fraction kept) and neighbour KL (`trial_scores`; teacher-forced, as
   `factscope.probes.evaluate`; fluency is left to the benchmarks: it needs generation).

**The rule.** Candidates are the layers (windows: ``n_layers`` consecutive layers, scored by their
mean ρ and their top layer's τ) whose τ is at least ``TRACE_FLOOR`` (½) of the peak: a layer where
restoring the MLP does not restore the fact is one whose keys do not carry it yet. Of those, the
``n_candidates`` (3) with the lowest ρ are trialled in order of ρ, and the first that meets every
`TARGETS` threshold is chosen (the most specific layer that works; the rest need no trial). If none
of them meets every threshold, the one with the smallest total shortfall is chosen (each criterion's
miss as a fraction of its threshold), and a `LayerChoiceWarning` names the criteria that failed.
It never falls back to the tracing peak silently: the reason always says which evidence decided. A
model that answers none of the profile's facts has no tracing evidence; the reason says so and every
layer is a candidate.

The calibration requests default to `factscope.calibration_split`'s calibration half, ``n_trial``
(8) of them evenly spaced; pass your own ``requests`` to choose for your facts. The result is cached
on disk (``cache_dir("layer_choices")``), keyed by the model fingerprint, the editor, its config, the
requests and every setting, so ``rome(model, request)`` pays for it once per model and config.

Cost: first call, `key_specificity` over every layer (C per layer: seconds each after the corpus,
cached on disk), the tracing profile (cached), and at most ``n_candidates × n_trial`` edits
(MEMIT/AlphaEdit: at most ``n_candidates`` batch edits of ``n_trial`` requests; the trial stops at the
first candidate that meets every target), each scored by a few teacher-forced passes. Later calls: a
fingerprint and a file read. Memory: C of every layer at once (``n_layers × d_mlp² × 8`` bytes).
Measured times: docs/guide.md, "Choosing the edit layer and the δ budget".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from factscope.arch import arch_of
from factscope.bridge import Bridge
from factscope.checks import as_requests, check_int
from factscope.edit.handle import Edit
from factscope.edit.key_specificity import key_specificity
from factscope.edit.target import TargetConfig
from factscope.facts import EditRequest
from factscope.predict import kl_from_logprobs, next_token_logits, rewrite_scores, target_logprob
from factscope.result_files import ResultContents, Saveable, fact_from_json, fact_to_json

if TYPE_CHECKING:  # the registry imports this module (its editors' default layers)
    from factscope.edit.registry import EditorConfig, EditorSpec

__all__ = ["EditLayerChoice", "edit_layer", "LayerChoiceWarning", "TARGETS", "TRACE_FLOOR", "trial_scores",
           "shortfall", "Before", "before", "neighbour_margins", "default_layers"]

TARGETS: dict[str, float] = {"efficacy": 0.95, "paraphrase": 0.85, "neighbourhood": 0.85, "neighbourhood_kl": 0.5}
"""The trial's thresholds: ES, PS, NS at least these; neighbour KL (nats) at most this (issue 18's targets)."""
TRACE_FLOOR = 0.5
"""Candidates need a tracing effect of at least this fraction of the profile's peak."""
_UPPER = ("neighbourhood_kl",)  # thresholds that are maxima


class LayerChoiceWarning(UserWarning):
    """No candidate layer met every threshold of the rule; the message names the criteria that failed."""


def shortfall(scores: dict[str, float], targets: dict[str, float] = TARGETS) -> dict[str, float]:
    """Each criterion's miss as a fraction of its threshold (0 when met; NaN scores count as a full miss).

    Args:
        scores: ``{criterion: value}`` with every key of ``targets``.
        targets: the thresholds (`TARGETS`).

    Cost: negligible.
    """
    out = {}
    for k, t in targets.items():
        v = scores[k]
        if not math.isfinite(v):
            out[k] = 1.0
        elif k in _UPPER:
            out[k] = max(0.0, (v - t) / t)
        else:
            out[k] = max(0.0, (t - v) / t)
    return out


@dataclass(frozen=True)
class Before:
    """One request's neighbours before an edit: next-token log-probs ``[neighbour, d_vocab]`` and which
    neighbours the model gets right (``log p(true) > log p(new)``, ``[neighbour]``)."""

    logprobs: Float[Tensor, "neighbour d_vocab"]
    right: Bool[Tensor, "neighbour"]


def neighbour_margins(model: Bridge, request: EditRequest) -> Float[Tensor, "neighbour"]:
    """``log p(new) − log p(true)`` (mean per token, teacher-forced) on each neighbour prompt, as it is now.

    Args:
        model: a bridge. request: an `EditRequest` with ``target_true`` and neighbours.

    Cost: one teacher-forced pass over ``2 × n_neighbours`` rows.
    """
    nb = list(request.neighbours)
    lp = target_logprob(model, nb * 2, [request.target_new] * len(nb) + [request.target_true] * len(nb))
    return lp[:len(nb)] - lp[len(nb):]


def before(model: Bridge, request: EditRequest) -> Before:
    """The `Before` of ``request`` on the model as it is (no edit applied).

    Args:
        model: a bridge. request: an `EditRequest` with ``target_true`` and neighbours.

    Cost: one next-token and one teacher-forced pass over the neighbours.
    """
    lp = next_token_logits(model, list(request.neighbours)).double().log_softmax(-1)
    return Before(logprobs=lp, right=neighbour_margins(model, request) < 0)


def trial_scores(model: Bridge, edit: Edit, requests: Sequence[EditRequest], pre: Sequence[Before]) -> dict[str, float]:
    """Mean ES, PS, NS and neighbour KL of ``edit`` on ``requests``; the model is left as it was.

    ES and PS are `factscope.predict.rewrite_scores`' (what `factscope.probes.evaluate` reports). NS
    here counts only the neighbours the unedited model gets right: the fraction of them whose true
    answer still beats the new one (a neighbour that was wrong before cannot be kept; on a model that
    gets every neighbour right, as Gemma 3 270M does the built-in ones, it equals evaluate's NS). The
    neighbour KL is KL(post ‖ pre) of the next-token distributions on each request's neighbour
    prompts, averaged within a request and then over requests (`factscope.probes.evaluate`'s
    ``neighbourhood_kl``). Requests without a neighbour right before are left out of NS.

    Args:
        model: a bridge, without ``edit`` applied.
        edit: the trial edit (applied, scored, reverted).
        requests: the requests to score it on.
        pre: per request, its `Before`.

    Cost: per request, teacher-forced passes over its prompts and neighbours, and one next-token pass
    over its neighbours.
    """
    rows = []
    with edit.applied(model):
        for r, b in zip(requests, pre):
            s = rewrite_scores(model, r)
            kept = (neighbour_margins(model, r) < 0)[b.right]
            ns = float(kept.double().mean()) if len(kept) else math.nan
            lp1 = next_token_logits(model, list(r.neighbours)).double().log_softmax(-1)
            rows.append((s.efficacy, s.paraphrase, ns, float(kl_from_logprobs(lp1, b.logprobs).mean())))
    cols = torch.tensor(rows, dtype=torch.float64).nanmean(0).tolist()
    return dict(zip(TARGETS, cols))


@dataclass(frozen=True, kw_only=True)
class EditLayerChoice(Saveable):
    """The chosen edit layer(s), why, and the evidence per layer (what `edit_layer` returns).

    Cost: negligible (plain data).

    Attributes:
        editor: the registry name of the editor chosen for.
        layers: the chosen layer (ROME, FT-L) or window (MEMIT, AlphaEdit), ascending.
        reason: one sentence: what decided, and the trial's scores at the choice.
        response: ``[layer]`` key specificity ρ, the mean update response (lower is more specific).
        tracing: ``[layer]`` the tracing effect as a fraction of the profile's peak.
        candidates: the trialled candidates, each its layer tuple, in trial order.
        trials: per candidate, ``{"efficacy", "paraphrase", "neighbourhood", "neighbourhood_kl"}``.
        met: whether the choice met every threshold; ``failed`` the criteria it missed.
        requests: the calibration requests of the trial.
        settings: the config, the thresholds, the rule's constants, the model fingerprint, cached or not.
    """

    editor: str
    layers: tuple[int, ...]
    reason: str
    response: Float[Tensor, "layer"]
    tracing: Float[Tensor, "layer"]
    candidates: tuple[tuple[int, ...], ...]
    trials: tuple[dict[str, float], ...]
    met: bool
    failed: tuple[str, ...]
    requests: tuple[EditRequest, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    RESULT_KIND = "factscope.edit_layer_choice"
    RESULT_VERSION = 1

    @property
    def layer(self) -> int:
        """The top chosen layer (the one layer of one-layer editors; MEMIT's target layer)."""
        return self.layers[-1]

    def to_contents(self) -> ResultContents:
        """ρ and τ as tensors; the rest as JSON meta. Cost: negligible."""
        meta = {"editor": self.editor, "layers": list(self.layers), "reason": self.reason,
                "candidates": [list(c) for c in self.candidates], "trials": list(self.trials), "met": self.met,
                "failed": list(self.failed), "requests": [fact_to_json(r) for r in self.requests],
                "settings": self.settings}
        return ResultContents({"response": self.response, "tracing": self.tracing}, meta)

    @classmethod
    def from_contents(cls, contents: ResultContents) -> EditLayerChoice:
        """The result `to_contents` described.

        Args:
            contents: its tensors and meta (from `factscope.result_files.load_result`).

        Cost: negligible.
        """
        t, m = contents
        return cls(editor=m["editor"], layers=tuple(m["layers"]), reason=m["reason"], response=t["response"],
                   tracing=t["tracing"], candidates=tuple(tuple(c) for c in m["candidates"]),
                   trials=tuple(m["trials"]), met=m["met"], failed=tuple(m["failed"]),
                   requests=tuple(fact_from_json(r) for r in m["requests"]), settings=m["settings"])

    def to_dataframe(self) -> Any:
        """One row per layer: ρ, τ, whether it was a candidate's top layer, the trial's scores, chosen."""
        import pandas as pd

        by_top = {c[-1]: (c, s) for c, s in zip(self.candidates, self.trials)}
        rows = []
        for l in range(len(self.response)):
            c, s = by_top.get(l, ((), {}))
            rows.append({"layer": l, "response": float(self.response[l]), "tracing": float(self.tracing[l]),
                         "trialled": bool(c), "window": list(c), **{k: s.get(k, math.nan) for k in TARGETS},
                         "chosen": l == self.layer})
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        return f"{self.editor}: edit layers {list(self.layers)} ({self.reason})"


# --------------------------------------------------------------------------- the rule


def _windows(n_layers: int, size: int) -> list[tuple[int, ...]]:
    """Every window of ``size`` consecutive layers (one window of all layers when the model is smaller)."""
    size = min(size, n_layers)
    return [tuple(range(t - size + 1, t + 1)) for t in range(size - 1, n_layers)]


def _tracing(model: Bridge, progress: bool) -> tuple[Float[Tensor, "layer"], int | None, str]:
    """τ: the profile's MLP effect at the last subject token over its peak (clipped at 0), the peak layer,
    and a note. A model that answers none of the profile's facts has no profile: τ is NaN, the peak None."""
    from factscope.locate.profile import BUCKETS, recommended_layer

    try:
        choice = recommended_layer(model, progress=progress)
    except ValueError as e:  # the model answers none of the profile's facts: no tracing evidence
        return torch.full((arch_of(model).n_layers,), math.nan, dtype=torch.float64), None, str(e)
    row = choice.profile.mean["mlp"][BUCKETS.index("last subject")].double()
    return (row / row.max()).clamp(min=0), choice.layer, ""


def _check(model: Bridge, requests: Sequence[EditRequest] | None, n_trial: int) -> tuple[EditRequest, ...]:
    from factscope.datasets import calibration_split
    from factscope.tokens import check_request

    if requests is None:
        cal = calibration_split()[0]
        n = min(n_trial, len(cal))
        requests = [cal[round(i * (len(cal) - 1) / max(n - 1, 1))] for i in range(n)]
    reqs = as_requests(requests)
    for i, r in enumerate(reqs):
        check_request(model, r, what="edit_layer")  # the subject in the prompt, targets, context length
        if r.target_true is None or not r.neighbours:
            raise ValueError(f"edit_layer: expected requests[{i}] ({r.subject!r}) to have a target_true and "
                             f"neighbour prompts (the trial scores NS and neighbour KL on them), got "
                             f"target_true={r.target_true!r} and {len(r.neighbours)} neighbours")
    return tuple(reqs)


def _trial(model: Bridge, spec: EditorSpec, cfg: EditorConfig, reqs: Sequence[EditRequest],
           cands: Sequence[tuple[int, ...]], C: dict[int, Tensor], targets: dict[str, float],
           progress: bool) -> list[dict[str, float]]:
    """Each candidate's mean trial scores, in order, up to the first that meets every target: one edit
    per request (one-layer editors) or one batch edit (MEMIT, AlphaEdit)."""
    pre = [before(model, r) for r in reqs]
    out = []
    per = 1 if spec.batch else len(reqs)
    with tqdm(total=len(cands) * per, desc=f"trial {spec.name} edits", disable=not progress) as bar:
        for c in cands:
            Cc = {l: C[l] for l in c}
            if spec.batch:
                e = spec.run(model, list(reqs), layers=list(c), config=cfg, C=Cc, progress=False)
                out.append(trial_scores(model, e, reqs, pre))
                bar.update(1)
            else:
                rows = []
                for r, b in zip(reqs, pre):
                    e = spec.run(model, [r], layers=list(c), config=cfg, C=Cc, progress=False)
                    rows.append(trial_scores(model, e, [r], [b]))
                    bar.update(1)
                out.append({k: float(torch.tensor([x[k] for x in rows], dtype=torch.float64).nanmean())
                            for k in TARGETS})
            if not any(shortfall(out[-1], targets).values()):
                break  # the most specific candidate that works: the rest need no trial
    return out


def _decide(trials: Sequence[dict[str, float]], targets: dict[str, float]) -> tuple[int, bool, tuple[str, ...]]:
    """``(index of the choice, met, failed criteria)`` over the candidates trialled so far, in trial order:
    the first that meets every target, else the smallest total shortfall."""
    miss = [shortfall(t, targets) for t in trials]
    ok = [i for i, m in enumerate(miss) if not any(m.values())]
    if ok:
        return ok[0], True, ()
    i = min(range(len(trials)), key=lambda i: (sum(miss[i].values()), i))
    return i, False, tuple(k for k, v in miss[i].items() if v)


def _reason(what: str, rho_w: float, rho: Tensor, peak: int | None, wins: Sequence[tuple[int, ...]], n_cands: int,
            no_profile: str, met: bool, failed: Sequence[str], n_reqs: int, scores: dict[str, float]) -> str:
    """The choice's one-sentence reason (`edit_layer`)."""
    if peak is None:
        head, pool = f"key response {rho_w:.2f}", f"{what}s (no tracing evidence: {no_profile})"
    else:
        peak_w = next((x for x in wins if x[-1] == peak), wins[-1])
        head = f"key response {rho_w:.2f} against {float(rho[list(peak_w)].mean()):.2f} at the tracing peak (layer {peak})"
        pool = f"{what}s with a tracing effect ≥ {TRACE_FLOOR:g} of the peak"
    trial = f"in a trial on {n_reqs} calibration requests: {_fmt(scores)}"
    if met:
        return f"{head}; the most specific of the {pool} that met every target {trial}"
    return (f"{head}; none of the {n_cands} most specific {pool} met every target, and this one missed least "
            f"(it missed {', '.join(failed)}) {trial}")


def _fmt(s: dict[str, float]) -> str:
    return (f"ES {s['efficacy']:.2f}, PS {s['paraphrase']:.2f}, NS {s['neighbourhood']:.2f}, "
            f"neighbour KL {s['neighbourhood_kl']:.2f} nats")


def edit_layer(
    model: Bridge,
    requests: Sequence[EditRequest] | None = None,
    *,
    editor: str = "rome",
    config: EditorConfig | None = None,
    n_candidates: int = 3,
    n_trial: int = 8,
    targets: dict[str, float] | None = None,
    cache: bool = True,
    progress: bool = True,
    verbose: bool = True,
) -> EditLayerChoice:
    """Choose where ``editor`` should edit this model, from key specificity, tracing and a trial edit.

    See the module docstring for the rule.

    Args:
        model: a bridge (left bit-identical: trial edits are applied and reverted).
        requests: calibration requests with ``target_true`` and neighbour prompts; ``None``: ``n_trial``
            of `factscope.calibration_split`'s calibration half, evenly spaced.
        editor: a registry editor that edits given layers (``"rome"``, ``"memit"``, ``"alphaedit"``,
            ``"ft-l"``; KN finds its own neurons).
        config: the editor's config; ``None``: its defaults for this model's family (``for_model``).
        n_candidates: how many of the most specific layers (windows) are trialled.
        n_trial: calibration requests when ``requests`` is ``None``.
        targets: the thresholds (`TARGETS` by default): ``{"efficacy", "paraphrase", "neighbourhood"}``
            minima and a ``"neighbourhood_kl"`` maximum.
        cache: read and write the on-disk result (``False`` recomputes it).
        progress: progress bars. verbose: print the choice, why, and the trial's table.

    Returns:
        `EditLayerChoice` (``.layers``, ``.reason``, ``.to_dataframe()``).

    Raises:
        ValueError / TypeError: an unknown editor or one that chooses its own layers, a config of the
            wrong type, a request without its subject in the prompt, without ``target_true`` or
            neighbours, bad ``n_candidates``/``n_trial``/``targets``: all before any model pass.

    Warns:
        LayerChoiceWarning: no candidate met every target; it names the criteria the choice missed.

    Cost: see the module docstring (first call minutes on the bundled models; then a file read).
    """
    from factscope.cache import cache_dir, key_digest
    from factscope.edit.key_stats import key_stats
    from factscope.edit.registry import config_dict, default_config, editor as lookup
    from factscope.models import fingerprint

    spec = lookup(editor)
    if spec.layers == "none":
        raise ValueError(f"edit_layer: the {spec.name} editor chooses its own layers; expected one of the editors "
                         "that edit given layers (rome, memit, alphaedit, ft-l)")
    cfg = spec.check_config(default_config(spec, model) if config is None else config)
    check_int("n_candidates", n_candidates, 1)
    check_int("n_trial", n_trial, 1)
    tg = dict(TARGETS if targets is None else targets)
    if set(tg) != set(TARGETS) or not all(isinstance(v, (int, float)) and v >= 0 for v in tg.values()):
        raise ValueError(f"edit_layer: expected targets with keys {sorted(TARGETS)} and values >= 0, got {targets!r}")
    reqs = _check(model, requests, n_trial)
    fp = fingerprint(model)
    key = dict(kind="edit_layer", model=fp, editor=spec.name, config=config_dict(cfg), n_candidates=n_candidates,
               targets=tg, trace_floor=TRACE_FLOOR, requests=[(r.text, r.target_true, r.target_new) for r in reqs],
               version=2)
    path = cache_dir("layer_choices", key_digest(key) + ".safetensors")
    if cache and path.exists():
        try:
            got = EditLayerChoice.load(path)
            if verbose:
                print(f"edit_layer({spec.name}): layers {list(got.layers)} ({got.reason})")
            _warn(got)
            return got
        except Exception as e:  # a damaged entry: recompute it
            warnings.warn(f"ignoring a damaged cached layer choice {path} ({e}); recomputing", stacklevel=2)

    n_layers = arch_of(model).n_layers
    tcfg = cfg if isinstance(cfg, TargetConfig) else TargetConfig()
    C = key_stats(model, list(range(n_layers)), tcfg, progress=progress)
    ks = key_specificity(model, reqs, config=tcfg, C=C, progress=progress)
    rho = ks.per_layer()  # [layer]
    tau, peak, no_profile = _tracing(model, progress)
    size = getattr(cfg, "n_layers", 1) if spec.layers == "many" else 1
    wins = _windows(n_layers, size)
    eligible = wins if peak is None else [w for w in wins if float(tau[w[-1]]) >= TRACE_FLOOR]
    score = {w: float(rho[list(w)].mean()) for w in eligible}
    cands = sorted(eligible, key=lambda w: (score[w], -w[-1]))[:n_candidates]
    trials = _trial(model, spec, cfg, reqs, cands, C, tg, progress)
    cands = cands[:len(trials)]  # those trialled
    i, met, failed = _decide(trials, tg)
    w = cands[i]
    what = "layer" if size == 1 else "window"
    reason = _reason(what, score[w], rho, peak, wins, len(cands), no_profile, met, failed, len(reqs), trials[i])
    out = EditLayerChoice(editor=spec.name, layers=w, reason=reason, response=rho.float(), tracing=tau.float(),
                          candidates=tuple(cands), trials=tuple(trials), met=met, failed=failed, requests=reqs,
                          settings=dict(config=config_dict(cfg), targets=tg, n_candidates=n_candidates,
                                        trace_floor=TRACE_FLOOR, model=fp, tracing_peak=peak))
    if cache:
        out.save(path)
    if verbose:
        print(f"edit_layer({spec.name}): layers {list(w)} ({reason})")
        for c, s in zip(cands, trials):
            print(f"  {list(c)}: ρ {score[c]:.2f}, τ {float(tau[c[-1]]):.2f}; {_fmt(s)}")
    _warn(out)
    return out


def _warn(choice: EditLayerChoice) -> None:
    if not choice.met:
        warnings.warn(f"edit_layer({choice.editor}): no candidate met every target; chose {list(choice.layers)}, "
                      f"which misses {', '.join(choice.failed)} ({_fmt(choice.trials[choice.candidates.index(choice.layers)])}"
                      f"; thresholds {choice.settings.get('targets')})", LayerChoiceWarning, stacklevel=3)


def default_layers(model: Bridge, editor: str, config: EditorConfig | None, *, progress: bool = True
                   ) -> tuple[list[int], str]:
    """``(layers, why)`` an editor uses when none are given: `edit_layer`'s choice, cached on disk.

    Args:
        model: a bridge. editor: a registry name. config: its config (``None``: the family default).
        progress: progress bars on the first (uncached) call.

    Cost: `edit_layer`'s (a file read once cached).
    """
    c = edit_layer(model, editor=editor, config=config, progress=progress, verbose=False)
    return list(c.layers), "edit_layer: " + c.reason
