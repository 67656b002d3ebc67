"""Knowledge neurons (Dai et al., ACL 2022): which MLP neurons express a fact, and interventions on them.

A *neuron* is one coordinate of an MLP's key activation, the input to its output projection
(``mlp_key`` in `factscope.arch`: ``act(gate) * up`` for gated MLPs), at the answer position: the
last prompt token, whose next-token distribution holds the answer.

Attribution: integrated gradients (IG)
--------------------------------------
For a prompt with answer token y (the first token of ``" " + target``) and layer l, let a ∈ R^d_mlp
be the clean activation at the answer position and f(w) = p(y | prompt, layer l's activation there
set to w). The attribution of neuron i is

    IG_i = a_i · ∫₀¹ ∂f/∂w_i (α a) dα  ≈  a_i · (1/m) Σ_k ∂f/∂w_i (α_k a)

with a zero baseline and m = ``steps`` points. ``rule="midpoint"`` (the default) takes
α_k = (k + ½)/m, whose error falls as 1/m²; ``"left"`` takes α_k = k/m (the official code's
``scaled_input``) and ``"right"`` α_k = (k + 1)/m, both with 1/m error. Completeness: Σ_i IG_i →
f(a) − f(0) as m grows, for each layer on its own (tested; `NeuronResult.completeness` reports the
ratio, with ``p_baseline`` = f(0) computed under the same ``post_norm`` setting). One layer is
scaled at a time, as in the paper: the layers above it see the consequences (they are recomputed),
the others stay clean.

Post-norm models (Gemma 2/3): ``post_norm="frozen"`` (default) or ``"live"``
------------------------------------------------------------------------------
There the MLP's raw output r = a·W_out passes an RMSNorm (``ln2_post``: r ↦ w ⊙ r / s(r), with
s(r) = sqrt(mean(r²) + ε)) before it joins the residual. RMSNorm is scale-invariant: along the path
α·a the layer's contribution does not change at all for α > 0, only within ε of α = 0. Applied
literally (``"live"``), f is flat on (0, 1], its gradient is ∇f(a)/α (0-homogeneous), the
attributions of a layer sum to ≈ 0 (Euler's theorem) instead of f(a) − f(0), and
IG_i = a_i ∂f/∂a_i · (1/m) Σ_k 1/α_k: gradient × input at the clean point times a factor that grows
like log m (≈ 4.9 for the midpoint rule at m = 20). The ranking is then the gradient-times-input
ranking, which favours neurons with large activations.

In the paper's BERT the FFN output is added to the residual *before* the LayerNorm, so scaling the
FFN activations really does scale that layer's contribution to the sum the norm then sees. The
faithful analogue here is to hold the post-norm's scale at its clean value: with ``"frozen"``, in
the IG rows of layer l (and in its baseline) the post-normed output at the answer position becomes
out_live · s_live / s_clean, with s_live = s(r) of the same forward (its gradient flows) and s_clean
= s(r) of the clean run, a constant. That equals w ⊙ r / s_clean exactly, whatever the weight
convention (Gemma's 1 + w), so the layer's contribution is linear in α, completeness holds
(Σ_i IG_i → f(a) − f(0), the baseline taken with the frozen scale too: 0 output on Gemma, whose MLP
has no bias, the same as ``"live"``), and f(a) is unchanged (at α = 1, s_live = s_clean). Only the
scaled layer's rows at the answer position are frozen; other layers and positions stay live, so the
layers above still renormalise what they receive. ``"live"`` keeps the literal method. Models
without post-norms (GPT-2, Llama/SmolLM2) give identical results under both settings.

Selection: per prompt, the *coarse* set is every neuron with IG > ``threshold`` × that prompt's
maximum IG (over all attributed layers). *Refinement* keeps the neurons found in at least a fraction
``refine`` of the prompts (the fact's prompt and its paraphrases: at least 3), moving the fraction in
±0.05 steps until 2 to 5 neurons remain (see `refine_neurons` for the edge cases).

How it is fast
--------------
Scaling an activation at the last position changes nothing at earlier positions (attention is
causal). So the prompt's other positions run once, into a key/value cache, and every IG point runs
just the last token against that cache. All points go into batches of ``batch_size`` rows, where a
row belongs to one (layer, α) pair, so one forward and one backward cover several layers: each
layer's hook writes α·a into its own rows only, and ``torch.autograd.grad`` of Σ p(y) over the rows
gives every row's gradient at once (rows do not interact). Parameters stay frozen; only the scaled
activations require grad.

Cost: ``prompts × layers × steps`` rows, each one token through every block plus the unembedding
forward and backward. With Gemma 3 270M's 262k vocabulary the unembedding dominates: about 1 GFLOP
per row (1,080 rows for 3 prompts, 18 layers, 20 steps), and the whole attribution costs little more
than the bare batched forward and backward passes over those rows (`benchmarks/bench_neurons.py`
prints both; measured times: docs/guide.md).
Memory: about ``batch_size × d_vocab × 16`` bytes for the logits and their gradient (the default
batch size keeps this near 1 GiB), plus the prefix cache.

Interventions: `suppress` and `enhance` are context managers that set chosen neurons' activations
to 0, or scale them, at chosen positions (default: the last one).

Dimension names: ``prompt`` prompts, ``layer`` blocks, ``d_mlp`` neurons, ``pos`` token positions,
``row`` IG points in a batch, ``neuron`` selected neurons.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from factscope.arch import Arch, UnsupportedArchitectureError, arch_of, context_of
from factscope.bridge import Bridge
from factscope.facts import EditRequest, Fact
from factscope.kv import repeat_rows, run_cached
from factscope.result_files import ResultContents, Saveable, nest, unnest
from factscope.tokens import encode, str_tokens, target_ids

__all__ = [
    "NeuronResult",
    "Refined",
    "neurons",
    "neuron_attribution",
    "coarse_neurons",
    "refine_neurons",
    "neuron_list",
    "suppress",
    "enhance",
    "RULES",
    "POST_NORMS",
]

RULES: tuple[str, ...] = ("midpoint", "left", "right")
Rule = Literal["midpoint", "left", "right"]
POST_NORMS: tuple[str, ...] = ("frozen", "live")
PostNorm = Literal["frozen", "live"]
Neuron = tuple[int, int]  # (layer, index)
MIN_PROMPTS = 3
_MEMORY_BUDGET = 1 << 30  # bytes for a batch's logits and their gradient (the default batch size)


def _device(model: Bridge) -> torch.device:
    return context_of(model).device


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class NeuronResult(Saveable):
    """Knowledge-neuron attributions of one fact over several prompts, and the selected neurons.

    What `neurons` returns. Cost: negligible to use and save (no model passes); ``attributions``
    holds ``prompt × layer × d_mlp`` floats (Gemma 3 270M, 3 prompts: 18 × 2048 × 3 × 4 B ≈ 0.4 MB).

    Attributes:
        attributions: ``[prompt, layer, d_mlp]`` IG attribution of every neuron, per prompt (NaN in
            layers that were not attributed, see ``settings["layers"]``).
        p_clean: ``[prompt]`` p(answer) of each clean prompt.
        p_baseline: ``[prompt, layer]`` p(answer) with that layer's activation at the answer position
            zeroed: the IG baseline, under the same ``post_norm`` setting (NaN in layers not attributed).
        prompts: the prompts, the fact's own first.
        neurons: the selected ``(layer, index, score)``, by score descending; score = the mean
            attribution over prompts.
        answer: the decoded answer token; ``answer_id`` its id; ``target`` the target string (or
            ``None`` when the model's own top-1 answer was attributed).
        subject: the fact's subject.
        tokens: each prompt's tokens, decoded (BOS first).
        activations: per prompt, ``[pos, neuron]`` clean activations of the selected neurons at every
            token (for `factscope.figures.neurons_html`).
        settings: every argument that shaped the result (``post_norm`` included), the fraction
            ``refine_used`` the refinement ended at, its ``refine_note`` and the model fingerprint.
    """

    attributions: Float[Tensor, "prompt layer d_mlp"]
    p_clean: Float[Tensor, "prompt"]
    p_baseline: Float[Tensor, "prompt layer"]
    prompts: tuple[str, ...]
    neurons: tuple[tuple[int, int, float], ...]
    answer: str
    answer_id: int
    target: str | None
    subject: str
    tokens: tuple[tuple[str, ...], ...]
    activations: tuple[Float[Tensor, "pos neuron"], ...]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        """The model's number of layers (attributed or not)."""
        return int(self.attributions.shape[1])

    @property
    def d_mlp(self) -> int:
        """Neurons per layer."""
        return int(self.attributions.shape[2])

    @property
    def layers(self) -> tuple[int, ...]:
        """The attributed layers."""
        return tuple(self.settings["layers"])

    def mean_attribution(self) -> Float[Tensor, "layer d_mlp"]:
        """Attribution averaged over prompts (NaN in layers not attributed)."""
        return self.attributions.mean(0)

    def completeness(self) -> Float[Tensor, "prompt layer"]:
        """Σ_i IG_i / (p_clean − p_baseline) per prompt and layer: 1 when the Riemann sum has converged.

        Near 0 on post-norm layers with ``post_norm="live"`` (see the module docstring): there the
        attributions sum to ~0. With ``"frozen"`` (the default) it converges to 1 there too.
        """
        return self.attributions.sum(-1) / (self.p_clean[:, None] - self.p_baseline)

    def coarse(self, prompt: int) -> list[Neuron]:
        """The coarse set of one prompt: neurons above ``threshold`` × its maximum attribution.

        Args:
            prompt: the prompt's index in ``self.prompts``.
        """
        return coarse_neurons(self.attributions[prompt], self.settings["threshold"])

    def per_layer(self, reduce: str = "max") -> Float[Tensor, "prompt layer"]:
        """Each prompt's attribution reduced over each layer's neurons: ``[prompt, layer]``.

        Args:
            reduce: ``"max"`` (default) or ``"sum"``. Layers not attributed are NaN.
        """
        if reduce == "max":
            return self.attributions.amax(-1)
        if reduce == "sum":
            return self.attributions.sum(-1)
        raise ValueError(f"expected reduce to be 'max' or 'sum', got {reduce!r}")

    def to_dataframe(self, *, all_neurons: bool = False) -> Any:
        """The selected neurons as a table, one row each (or every neuron with ``all_neurons``).

        Columns: ``layer``, ``neuron``, ``score``, ``found_in`` (the fraction of prompts whose coarse
        set holds it) and ``attribution_{i}`` per prompt.

        Args:
            all_neurons: default ``False``. ``True``: one row per (prompt, layer, neuron) over the
                attributed layers, with ``attribution``, ``coarse`` and ``selected``
                (n_prompts × layers × d_mlp rows: ~110k on Gemma 3 270M with 3 prompts).
        """
        import pandas as pd

        coarse = [set(self.coarse(i)) for i in range(len(self.prompts))]
        if not all_neurons:
            rows = []
            for l, i, s in self.neurons:
                row = {"layer": l, "neuron": i, "score": s,
                       "found_in": sum((l, i) in c for c in coarse) / len(coarse)}
                for p in range(len(self.prompts)):
                    row[f"attribution_{p}"] = float(self.attributions[p, l, i])
                rows.append(row)
            cols = ["layer", "neuron", "score", "found_in"] + [f"attribution_{p}" for p in range(len(self.prompts))]
            return pd.DataFrame(rows, columns=cols)
        import numpy as np

        layers = list(self.layers)
        P, n = len(self.prompts), self.d_mlp
        att = self.attributions[:, layers].numpy()  # [prompt, layer', d_mlp]
        pi, li, ni = np.meshgrid(np.arange(P), np.array(layers), np.arange(n), indexing="ij")
        chosen = {(l, i) for l, i, _ in self.neurons}
        df = pd.DataFrame({"prompt_index": pi.ravel(), "layer": li.ravel(), "neuron": ni.ravel(),
                           "attribution": att.ravel()})
        df["coarse"] = [(l, i) in coarse[p] for p, l, i in zip(df.prompt_index, df.layer, df.neuron)]
        df["selected"] = [(l, i) in chosen for l, i in zip(df.layer, df.neuron)]
        return df

    RESULT_KIND = "factscope.neurons"
    RESULT_VERSION = 1

    def to_contents(self) -> ResultContents:
        """Tensors ``attributions``, ``p_clean``, ``p_baseline``, ``activations.{i}``; the rest as JSON meta.

        Cost: negligible (no copies).
        """
        tensors = {"attributions": self.attributions, "p_clean": self.p_clean, "p_baseline": self.p_baseline}
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in (*tensors, "activations")}
        tensors.update(nest("activations", {str(i): a for i, a in enumerate(self.activations)}))
        return ResultContents(tensors, {**meta, "n_activations": len(self.activations)})

    @classmethod
    def from_contents(cls, contents: ResultContents) -> NeuronResult:
        """The result that `to_contents` described.

        Args:
            contents: its tensors and meta (from `factscope.result_files.load_result`).

        Cost: negligible.
        """
        t, meta = contents
        acts = unnest("activations", t)
        return cls(attributions=t["attributions"], p_clean=t["p_clean"], p_baseline=t["p_baseline"],
                   activations=tuple(acts[str(i)] for i in range(meta["n_activations"])),
                   prompts=tuple(meta["prompts"]),
                   neurons=tuple((int(l), int(i), float(s)) for l, i, s in meta["neurons"]),
                   answer=meta["answer"], answer_id=int(meta["answer_id"]), target=meta["target"],
                   subject=meta["subject"], tokens=tuple(tuple(x) for x in meta["tokens"]), settings=meta["settings"])


# --------------------------------------------------------------------------- selection


def coarse_neurons(attribution: Float[Tensor, "layer d_mlp"], threshold: float) -> list[Neuron]:
    """The coarse set: neurons with attribution above ``threshold`` × the maximum, as ``(layer, index)``.

    Empty when no attribution is positive: a prompt whose answer no neuron supports contributes nothing.

    Args:
        attribution: ``[layer, d_mlp]`` one prompt's attributions (NaN ignored).
        threshold: a fraction of the maximum (the paper's 0.2).

    Cost: negligible (one pass over ``layer × d_mlp`` values; no model).
    """
    a = torch.nan_to_num(attribution.float(), nan=-math.inf)
    top = float(a.max())
    if not top > 0:
        return []
    idx = (a > threshold * top).nonzero().tolist()
    return [(int(l), int(i)) for l, i in idx]


class Refined(NamedTuple):
    """What `refine_neurons` chose: the neurons, the fraction it ended at, why, and every step taken."""

    neurons: list[Neuron]
    fraction: float
    note: str
    trajectory: list[tuple[float, int]]  # (fraction, neurons kept) per step


def refine_neurons(
    coarse_sets: Sequence[Iterable[Neuron]],
    scores: Float[Tensor, "layer d_mlp"],
    *,
    refine: float = 0.7,
    n_min: int = 2,
    n_max: int = 5,
    step: float = 0.05,
) -> Refined:
    """Keep the neurons present in a fraction p of the prompts' coarse sets, adjusting p to keep 2-5.

    Starting at p = ``refine``: with more than ``n_max`` neurons, p rises by ``step``; with fewer
    than ``n_min``, it falls, until the count lies in ``[n_min, n_max]`` (the paper's 2 to 5). A
    neuron counts when it is in at least ``p × n_prompts`` coarse sets (and in one at least). p stays
    within ``[step, 1]``. Edge cases, reported in ``note``:

    - the count jumps over the band between two neighbouring p (e.g. 7 neurons, then 1): the larger
      set is kept, truncated to its ``n_max`` best by ``scores``;
    - still more than ``n_max`` at p = 1 (every prompt agrees on many): the ``n_max`` best by score;
    - fewer than ``n_min`` even at the lowest p (the coarse sets hold fewer neurons in total): all
      of them (perhaps none).

    The result is sorted by score, descending.

    Args:
        coarse_sets: one coarse set of ``(layer, index)`` per prompt (`coarse_neurons`).
        scores: ``[layer, d_mlp]`` ranks neurons when the count must be cut (the mean attribution).
        refine: the starting fraction p (default 0.7).
        n_min, n_max: the band of neuron counts (default 2 and 5, the paper's).
        step: how far p moves per step (default 0.05).

    Returns:
        `Refined`: ``neurons``, the ``fraction`` p ended at, a ``note`` and the ``trajectory``.

    Cost: negligible (at most ``1 / step`` counts over the coarse sets; no model).
    """
    sets = [set(s) for s in coarse_sets]
    if not sets:
        raise ValueError("expected coarse sets for at least one prompt, got none")
    if not 0 < refine <= 1:
        raise ValueError(f"expected refine in (0, 1], got {refine!r}")
    if not 1 <= n_min <= n_max:
        raise ValueError(f"expected 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    counts: dict[Neuron, int] = {}
    for s in sets:
        for n in s:
            counts[n] = counts.get(n, 0) + 1

    def by_score(ns: Iterable[Neuron]) -> list[Neuron]:
        return sorted(ns, key=lambda n: (-float(scores[n[0], n[1]]), n))

    def kept(p: float) -> list[Neuron]:
        need = max(1.0, p * len(sets) - 1e-9)
        return by_score(n for n, c in counts.items() if c >= need)

    k, direction, traj = 0, 0, []
    lo_k = min(0, -math.floor((refine - step) / step + 1e-9))  # p = refine + k·step stays in [step, 1]
    hi_k = math.floor((1 - refine) / step + 1e-9)
    while True:
        p = round(refine + k * step, 10)
        cur = kept(p)
        traj.append((p, len(cur)))
        if n_min <= len(cur) <= n_max:
            return Refined(cur, p, f"{len(cur)} neurons at p={p:g}", traj)
        want = 1 if len(cur) > n_max else -1
        if direction and want != direction:  # jumped over the band
            big = cur if len(cur) > n_max else kept(round(p - direction * step, 10))
            p_big = p if len(cur) > n_max else round(p - direction * step, 10)
            return Refined(big[:n_max], p_big, f"the count jumped over [{n_min}, {n_max}] next to p={p_big:g} "
                           f"({len(big)} neurons): kept the {n_max} best by score", traj)
        if not lo_k <= k + want <= hi_k:  # p would leave [step, 1]
            if len(cur) > n_max:
                return Refined(cur[:n_max], p, f"{len(cur)} neurons even at p={p:g}: kept the {n_max} best by score",
                               traj)
            return Refined(cur, p, f"only {len(cur)} neuron(s) in any prompt's coarse set (p={p:g}); fewer than "
                           f"{n_min}: lower the threshold or add prompts", traj)
        direction, k = want, k + want


# --------------------------------------------------------------------------- integrated gradients


def _alphas(steps: int, rule: str) -> Float[Tensor, "step"]:
    k = torch.arange(steps, dtype=torch.float64)
    shift = {"midpoint": 0.5, "left": 0.0, "right": 1.0}[rule]
    return (k + shift) / steps


def ig_batch_size(a: Arch, steps: int, n_layers: int) -> int:
    """The default rows per integrated-gradients pass: the logits and their gradient within a memory budget.

    A row costs about 16 bytes × d_vocab (the logits and their gradient); the batch holds at least
    one layer's ``steps`` rows and at most all ``steps × n_layers``, within about 1 GiB.

    Args:
        a: the model's `Arch` (its ``d_vocab``).
        steps: integration steps per layer.
        n_layers: layers attributed.

    Cost: negligible.
    """
    return max(steps, min(steps * n_layers, _MEMORY_BUDGET // (16 * a.d_vocab)))


class _Clean(NamedTuple):
    """What the clean run of one prompt gives the IG passes."""

    acts: Tensor  # [pos, layer, d_mlp] clean activations
    p: Tensor  # p(answer)
    answer_id: int
    kv: Any  # key/value cache of every position but the last (None for a 1-token prompt)
    scale: Tensor | None  # [layer] the MLP post-norms' clean RMS denominators at the last position (frozen only)


def _norm_eps(model: Bridge, layer: int) -> float:
    """ε of layer ``layer``'s MLP post-norm (``ln2_post``): the HF module's, else the HF config's or the bridge's."""
    norm = model.blocks[layer].ln2_post
    hf = getattr(norm, "original_component", None)
    for name in ("eps", "variance_epsilon"):
        eps = getattr(hf, name, None)
        if eps is not None:
            return float(eps)
    eps = getattr(getattr(getattr(model, "original_model", None), "config", None), "rms_norm_eps", None)
    if eps is None:
        eps = getattr(model.cfg, "eps", None)
    if eps is None:
        raise UnsupportedArchitectureError(f"cannot find the epsilon of blocks.{layer}.ln2_post")
    return float(eps)


def _rms(raw: Tensor, eps: float) -> Tensor:
    """The RMSNorm denominator sqrt(mean(raw²) + ε) over the last dimension, in float32 as the norm computes it."""
    return (raw.float().pow(2).mean(-1) + eps).sqrt()


def _frozen(a: Any, post_norm: str) -> bool:
    """Whether the post-norm scale is held at its clean value: ``"frozen"`` on a post-norm model."""
    return post_norm == "frozen" and a.post_norm


@torch.no_grad()
def _clean_run(model: Bridge, a: Any, ids: Tensor, answer_id: int | None, *, post_norm: str = "live") -> _Clean:
    """Clean activations ``[pos, layer, d_mlp]``, p(answer) (the top-1 when ``answer_id`` is None),
    the answer id, the key/value cache of every position but the last (None for a 1-token prompt),
    and, when the post-norm scale is frozen, each layer's clean post-norm denominator at the last position."""
    names = [a.hook("mlp_key", l) for l in range(a.n_layers)]
    frozen = _frozen(a, post_norm)
    raws = [a.hook("mlp_raw_out", l) for l in range(a.n_layers)] if frozen else []
    wanted = set(names) | set(raws)
    logits, cache = model.run_with_cache(ids, names_filter=lambda n: n in wanted)
    last = logits[0, -1].float()
    answer_id = int(last.argmax()) if answer_id is None else answer_id
    p = (last[answer_id] - torch.logsumexp(last, -1)).exp()
    acts = torch.stack([cache[n][0] for n in names], 1)  # [pos, layer, d_mlp]
    scale = torch.stack([_rms(cache[n][0, -1], _norm_eps(model, l)) for l, n in enumerate(raws)]) if frozen else None
    kv = None
    if ids.shape[1] > 1:
        _, kv = run_cached(model, ids[:, :-1], logits_to_keep=1)  # KV only
    return _Clean(acts, p, answer_id, kv, scale)


def _freeze_hooks(model: Bridge, a: Any, row_layer: Tensor, scale: Tensor) -> list[tuple[str, Any]]:
    """Hooks that hold each layer's MLP post-norm scale at its clean value in that layer's own rows.

    For every layer l in ``row_layer``: the raw MLP output at the last position is captured (with
    its graph) at ``mlp_raw_out``, and at ``mlp_out`` the post-normed output of the rows scaled at
    layer l becomes out · s_live / s_clean, where s_live = sqrt(mean(raw²) + ε) of that same forward
    and s_clean = ``scale[l]``. That is w ⊙ raw / s_clean whatever the norm's weight convention:
    linear in the raw output. Other rows and positions stay live.
    """
    hooks = []
    for layer in sorted(set(row_layer.tolist())):
        mine = (row_layer == layer)[:, None]
        eps, s_clean = _norm_eps(model, layer), float(scale[layer])
        captured: dict[str, Tensor] = {}

        def grab(x, hook, captured=captured):  # x: [row, pos, d_model], before the norm
            captured["raw"] = x[:, -1]

        def freeze(x, hook, captured=captured, mine=mine, eps=eps, s_clean=s_clean):  # after the norm
            raw = captured.pop("raw")
            ratio = _rms(raw, eps)[:, None] / s_clean  # [row, 1]: s_live / s_clean
            last = torch.where(mine, (x[:, -1].float() * ratio).to(x.dtype), x[:, -1])
            return torch.cat([x[:, :-1], last[:, None]], 1)

        hooks += [(a.hook("mlp_raw_out", layer), grab), (a.hook("mlp_out", layer), freeze)]
    return hooks


def ig_batches(layers: list[int], steps: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """The (layer, step) rows of integrated gradients, layer by layer, cut into balanced batches.

    Args:
        layers: the layers attributed.
        steps: integration steps per layer.
        batch_size: the most rows per batch (`ig_batch_size` gives the default).

    Returns:
        Batches of ``(layer, step)`` pairs, in order, as equal in size as possible.

    Cost: negligible.
    """
    items = [(l, k) for l in layers for k in range(steps)]
    n = math.ceil(len(items) / batch_size)
    size = math.ceil(len(items) / n)
    return [items[i:i + size] for i in range(0, len(items), size)]


def _ig_batch(model: Bridge, a: Any, ids: Tensor, kv: Any, act: Float[Tensor, "layer d_mlp"], answer_id: int,
              rows: list[tuple[int, int]], alphas: Tensor, s_clean: Tensor | None = None) -> Float[Tensor, "row d_mlp"]:
    """∂p(answer)/∂w for each row (layer l, step k), where w = α_k · a_l replaces layer l's activation
    at the last position. Only the last token runs, against the prefix cache. With ``s_clean`` (the
    clean post-norm denominators), layer l's post-norm scale is frozen in its own rows."""
    dev = ids.device
    R = len(rows)
    row_layer = torch.tensor([l for l, _ in rows], device=dev)
    scale = alphas[[k for _, k in rows]].to(dev, act.dtype)
    w = (scale[:, None] * act[row_layer]).detach().requires_grad_(True)  # [row, d_mlp]: the leaf

    def patch(layer: int):
        mine = (row_layer == layer)[:, None]

        def hook(x, hook):  # x: [row, pos, d_mlp]; only the last position is patched
            last = torch.where(mine, w.to(x.dtype), x[:, -1])
            return torch.cat([x[:, :-1], last[:, None]], 1)
        return hook

    hooks = [(a.hook("mlp_key", l), patch(l)) for l in sorted(set(row_layer.tolist()))]
    if s_clean is not None:
        hooks += _freeze_hooks(model, a, row_layer, s_clean)
    with torch.enable_grad():
        z = _last_logits(model, ids, kv, R, hooks)  # [row, d_vocab]
        with torch.no_grad():  # ∂p_y/∂z = p_y (e_y − softmax(z)), written out: half the vocabulary-sized work
            g = torch.softmax(z.float(), -1)
            p = g[:, answer_id].clone()
            g.mul_(-p[:, None])
            g[:, answer_id] += p
        (grad,) = torch.autograd.grad(z, w, grad_outputs=g.to(z.dtype))
    return grad


def _last_logits(model: Bridge, ids: Tensor, kv: Any, R: int, hooks: list) -> Float[Tensor, "row d_vocab"]:
    """Last-position logits of ``R`` copies of the prompt ``ids`` ``[1, pos]`` under ``hooks``: the whole
    prompt when ``kv`` is None, else only its last token against the cached prefix."""
    if kv is None:
        return model.run_with_hooks(ids.expand(R, -1), fwd_hooks=hooks, logits_to_keep=1)[:, -1]
    mask = torch.ones(R, ids.shape[1], dtype=torch.long, device=ids.device)
    return run_cached(model, ids[:, -1:].expand(R, 1), repeat_rows(kv, R), attention_mask=mask, fwd_hooks=hooks,
                      logits_to_keep=1)[0][:, -1]


@torch.no_grad()
def _baseline_p(model: Bridge, a: Any, ids: Tensor, kv: Any, answer_id: int, layers: list[int],
                batch_size: int, scale: Tensor | None = None) -> Float[Tensor, "layer"]:
    """p(answer) with each layer's activation at the last position zeroed (the IG baseline), one row per layer
    (NaN for layers not in ``layers``). With ``scale``, under that layer's frozen post-norm scale (the
    same p on Gemma, whose MLP has no bias: a zero key gives a zero output either way)."""
    out = torch.full((arch_of(model).n_layers,), math.nan)
    dev = ids.device
    for i in range(0, len(layers), batch_size):
        chunk = layers[i:i + batch_size]
        R = len(chunk)

        def zero(row: int):
            def hook(x, hook):  # x: [row, pos, d_mlp]
                x = x.clone()
                x[row, -1] = 0
                return x
            return hook

        hooks = [(a.hook("mlp_key", l), zero(r)) for r, l in enumerate(chunk)]
        if scale is not None:
            hooks += _freeze_hooks(model, a, torch.tensor(chunk, device=dev), scale)
        out[chunk] = torch.softmax(_last_logits(model, ids, kv, R, hooks).float(), -1)[:, answer_id].cpu()
    return out


def _attribute_ids(model: Bridge, a: Any, ids: Tensor, act: Float[Tensor, "layer d_mlp"], kv: Any, answer_id: int,
                   layers: list[int], steps: int, rule: str, batch_size: int,
                   bar: Any = None, scale: Tensor | None = None) -> Float[Tensor, "layer d_mlp"]:
    alphas = _alphas(steps, rule)
    total = torch.zeros(a.n_layers, a.d_mlp, dtype=torch.float64, device=ids.device)
    for rows in ig_batches(layers, steps, batch_size):
        grad = _ig_batch(model, a, ids, kv, act, answer_id, rows, alphas, scale)
        idx = torch.tensor([l for l, _ in rows], device=ids.device)
        total.index_add_(0, idx, grad.double())
        if bar is not None:
            bar.update(len(rows))
    attr = torch.full((a.n_layers, a.d_mlp), math.nan)
    attr[layers] = (act.double() * total / steps)[layers].float().cpu()
    return attr


def _check_ig_args(a: Any, steps: Any, rule: Any, batch_size: Any, layers: Any, post_norm: Any) -> list[int]:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"expected steps to be a positive integer, got {steps!r}")
    if rule not in RULES:
        raise ValueError(f"expected rule to be one of {RULES}, got {rule!r}")
    if not isinstance(post_norm, str) or post_norm not in POST_NORMS:
        raise ValueError(f"expected post_norm to be one of {POST_NORMS}, got {post_norm!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"expected batch_size to be a positive integer or None, got {batch_size!r}")
    if layers is None:
        return list(range(a.n_layers))
    return sorted(a.check_layers(layers))  # negatives count from the end; duplicates raise


def neuron_attribution(
    model: Bridge,
    prompt: str,
    target: str | None,
    *,
    layers: Sequence[int] | int | None = None,
    steps: int = 20,
    rule: Rule = "midpoint",
    batch_size: int | None = None,
    post_norm: PostNorm = "frozen",
) -> Float[Tensor, "layer d_mlp"]:
    """IG attribution of every neuron to p(first token of ``" " + target``) after one prompt.

    The model is not changed. `neurons` runs the same attribution over several prompts and
    selects neurons.

    Args:
        model: a bridge.
        prompt: a full prompt.
        target: the answer; ``None`` attributes the model's own top-1 token.
        layers: layers to attribute, an int or distinct ints (negative values count from the end;
            recorded normalised); default ``None``: all. The others are NaN.
        steps: IG points per layer (default 20, the paper's).
        rule: Riemann points, ``"midpoint"`` (default), ``"left"`` (the official code's) or ``"right"``.
        batch_size: IG rows per forward/backward pass; default ``None``: as many as keep the logits
            and their gradient near 1 GiB (Gemma 3 270M: 256 rows).
        post_norm: ``"frozen"`` (default) holds the scaled layer's MLP post-norm scale at its clean
            value along the path, ``"live"`` lets it vary (the method applied literally); no effect
            on models without post-norms (see the module docstring).

    Returns:
        ``[layer, d_mlp]`` attributions (float32).

    Cost: one clean forward, then ``len(layers) × steps`` one-token rows forward and backward
    against a prefix cache: O(layers · steps) one-token passes, one prompt's share of `neurons`
    (measured times: docs/guide.md). Memory: about ``batch_size × d_vocab × 16`` bytes (~1 GiB
    by default), plus the prefix cache.
    """
    a = arch_of(model)
    layers = _check_ig_args(a, steps, rule, batch_size, layers, post_norm)
    ids = torch.tensor([encode(model, prompt)], device=_device(model))
    answer = None if target is None else target_ids(model, target)[0]
    c = _clean_run(model, a, ids, answer, post_norm=post_norm)
    bs = batch_size or ig_batch_size(a, steps, len(layers))
    return _attribute_ids(model, a, ids, c.acts[-1], c.kv, c.answer_id, layers, steps, rule, bs, scale=c.scale)


def _prompts_of(fact: Fact | EditRequest, prompts: Sequence[str] | None) -> tuple[str, ...]:
    if prompts is None:
        out = (fact.text, *getattr(fact, "paraphrases", ()))
        where = "the fact's prompt and its paraphrases"
    else:
        if isinstance(prompts, str):
            raise TypeError("expected a sequence of prompts, got a single str; wrap it in a list")
        out = tuple(prompts)
        where = "prompts="
        for i, p in enumerate(out):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"expected non-empty prompt strings, got prompts[{i}] = {p!r}")
    if len(out) < MIN_PROMPTS:
        raise ValueError(f"expected at least {MIN_PROMPTS} prompts to refine over ({where}), got {len(out)}: "
                         f"{list(out)}. Pass prompts= with paraphrases of the fact")
    return out


def neurons(
    model: Bridge,
    fact: Fact | EditRequest,
    *,
    prompts: Sequence[str] | None = None,
    steps: int = 20,
    threshold: float = 0.2,
    refine: float = 0.7,
    layers: Sequence[int] | int | None = None,
    batch_size: int | None = None,
    rule: Rule = "midpoint",
    post_norm: PostNorm = "frozen",
    progress: bool = True,
) -> NeuronResult:
    """Find a fact's knowledge neurons: integrated gradients over several prompts, then selection.

    See the module docstring for the attribution, the coarse threshold and the refinement.

    Args:
        model: a bridge.
        fact: a `Fact` (its ``target``) or `EditRequest` (its ``target_true``). With no target, the
            model's top-1 answer after the fact's prompt is attributed, on every prompt.
        prompts: the prompts to refine over (at least 3); default: the fact's prompt plus its
            paraphrases (an `EditRequest`'s).
        steps: IG points per layer (the paper's 20).
        threshold: the coarse threshold, a fraction of each prompt's maximum attribution (0.2).
        refine: the starting fraction of prompts a neuron must be found in (0.7).
        layers: layers to attribute, an int or distinct ints (negative values count from the end;
            ``settings["layers"]`` records them normalised and sorted); default: all.
        batch_size: IG rows per forward/backward pass; default: as many as keep the logits and their
            gradient near 1 GiB (Gemma 3 270M: 256 rows; SmolLM2: all 30 layers × 20 steps).
        rule: ``"midpoint"``, ``"left"`` (the official code's) or ``"right"`` Riemann points.
        post_norm: on post-norm models (Gemma), ``"frozen"`` (default) holds the scaled layer's MLP
            post-norm scale at its clean value along the IG path, so the layer's contribution is
            linear in α as in the paper's BERT; ``"live"`` leaves the norm as it is, and the
            attributions of a layer then sum to ≈ 0 (see the module docstring). No effect on models
            without post-norms.
        progress: show a progress bar over the IG rows.

    Returns:
        `NeuronResult`. A prompt whose top-1 answer is not the target is attributed anyway (a warning
        names it).

    Raises:
        ValueError: fewer than 3 prompts, a layer out of range or repeated, bad settings.
        ContextLengthError: a prompt longer than the model's context. All before any model pass;
            the model is not changed.

    Cost: ``prompts × layers × steps`` IG rows, O(prompts · layers · steps) one-token forward and
    backward passes (measured times: docs/guide.md); memory as the module docstring says.
    """
    from tqdm.auto import tqdm

    from factscope.models import fingerprint

    if not isinstance(fact, (Fact, EditRequest)):
        raise TypeError(f"expected a Fact or an EditRequest, got {type(fact).__name__}")
    a = arch_of(model)
    layers = _check_ig_args(a, steps, rule, batch_size, layers, post_norm)
    if not 0 <= threshold < 1:
        raise ValueError(f"expected threshold in [0, 1), got {threshold!r}")
    if not 0 < refine <= 1:
        raise ValueError(f"expected refine in (0, 1], got {refine!r}")
    texts = _prompts_of(fact, prompts)
    for text in texts:  # before any model pass: every prompt fits the context
        encode(model, text)
    target = fact.target if isinstance(fact, Fact) else fact.target_true
    answer_id = None if target is None else target_ids(model, target)[0]
    bs = batch_size or ig_batch_size(a, steps, len(layers))
    dev = _device(model)
    attrs, ps, p0, all_acts, toks = [], [], [], [], []
    bar = tqdm(total=len(texts) * len(layers) * steps, desc="knowledge neurons (IG)", disable=not progress)
    for text in texts:
        ids = torch.tensor([encode(model, text)], device=dev)
        c = _clean_run(model, a, ids, answer_id, post_norm=post_norm)
        answer_id = c.answer_id
        attrs.append(_attribute_ids(model, a, ids, c.acts[-1], c.kv, answer_id, layers, steps, rule, bs, bar,
                                    scale=c.scale))
        ps.append(float(c.p))
        p0.append(_baseline_p(model, a, ids, c.kv, answer_id, layers, bs, scale=c.scale))
        all_acts.append(c.acts.cpu())
        toks.append(tuple(str_tokens(model, ids[0])))
    bar.close()
    _warn_wrong_answers(model, texts, answer_id)
    attributions = torch.stack(attrs)  # [prompt, layer, d_mlp]
    scores = attributions.mean(0)
    ref = refine_neurons([coarse_neurons(x, threshold) for x in attributions], torch.nan_to_num(scores, nan=-math.inf),
                         refine=refine)
    chosen = tuple((l, i, float(scores[l, i])) for l, i in ref.neurons)
    activations = tuple(x[:, [l for l, _, _ in chosen], [i for _, i, _ in chosen]].float() if chosen
                        else torch.zeros(x.shape[0], 0) for x in all_acts)
    settings = dict(steps=steps, threshold=threshold, refine=refine, refine_used=ref.fraction,
                    refine_note=ref.note, refine_trajectory=[list(t) for t in ref.trajectory], layers=layers,
                    batch_size=bs, rule=rule, post_norm=post_norm, model=fingerprint(model))
    return NeuronResult(attributions=attributions, p_clean=torch.tensor(ps), p_baseline=torch.stack(p0),
                        prompts=texts, neurons=chosen,
                        answer=str_tokens(model, [answer_id])[0], answer_id=answer_id, target=target,
                        subject=fact.subject, tokens=tuple(toks), activations=activations, settings=settings)


def _warn_wrong_answers(model: Bridge, texts: Sequence[str], answer_id: int) -> None:
    from factscope.predict import next_token_logits

    top = next_token_logits(model, list(texts)).argmax(-1)
    wrong = [t for t, k in zip(texts, top.tolist()) if k != answer_id]
    if wrong:
        ans = str_tokens(model, [answer_id])[0]
        warnings.warn(f"the model's top-1 answer is not {ans!r} after {len(wrong)} of {len(texts)} prompts "
                      f"(e.g. {wrong[0]!r}); attributing p({ans!r}) there anyway", stacklevel=3)


# --------------------------------------------------------------------------- interventions


def neuron_list(model: Bridge, neurons: Any) -> list[Neuron]:
    """``neurons`` as a validated, de-duplicated list of ``(layer, index)``.

    Args:
        model: the bridge the neurons belong to (for the layer and ``d_mlp`` bounds).
        neurons: a `NeuronResult` (its selected neurons), or pairs ``(layer, index)`` or triples
            ``(layer, index, score)``. Negative layers count from the end.

    Raises:
        TypeError, ValueError: not neurons, or a layer or index out of range.

    Cost: negligible (no model passes).
    """
    a = arch_of(model)
    items = neurons.neurons if isinstance(neurons, NeuronResult) else neurons
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(f"expected a NeuronResult or (layer, index) pairs, got {type(neurons).__name__}")
    out: list[Neuron] = []
    for n in items:
        if not isinstance(n, (tuple, list)) or len(n) not in (2, 3):
            raise ValueError(f"expected (layer, index) or (layer, index, score), got {n!r}")
        layer, idx = a.check_layer(n[0]), n[1]
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < a.d_mlp:
            raise ValueError(f"expected a neuron index in [0, {a.d_mlp}) (d_mlp of this model), got {idx!r} "
                             f"at layer {layer}")
        if (layer, idx) not in out:
            out.append((layer, idx))
    return out


def _positions(positions: Any) -> Any:
    if positions in ("last", "all"):
        return positions
    if isinstance(positions, int) and not isinstance(positions, bool):
        return [positions]
    if isinstance(positions, Sequence) and positions and all(isinstance(p, int) and not isinstance(p, bool)
                                                             for p in positions):
        return list(positions)
    raise ValueError(f"expected positions 'last', 'all', or token indices, got {positions!r}")


def _scale_hook(idx: Tensor, positions: Any, factor: float | None):
    """Hook on ``mlp_key``: neurons ``idx`` at ``positions`` set to 0 (``factor=None``) or multiplied."""
    def hook(act, hook):  # act: [batch, pos, d_mlp]
        out = act.clone()
        i = idx.to(act.device)
        T = act.shape[1]
        if isinstance(positions, list) and not all(-T <= p < T for p in positions):
            raise IndexError(f"expected token positions in [-{T}, {T}) for this {T}-token input, got {positions}")
        pos = slice(None) if positions == "all" else [T - 1] if positions == "last" else positions
        sel = out[:, pos][..., i]
        out[:, pos, :] = out[:, pos, :].index_copy(-1, i, torch.zeros_like(sel) if factor is None else sel * factor)
        return out
    return hook


@contextlib.contextmanager
def _intervene(model: Bridge, neurons: Any, positions: Any, factor: float | None) -> Iterator[Any]:
    a = arch_of(model)
    chosen = neuron_list(model, neurons)
    positions = _positions(positions)
    by_layer: dict[int, list[int]] = {}
    for l, i in chosen:
        by_layer.setdefault(l, []).append(i)
    hooks = [(a.hook("mlp_key", l), _scale_hook(torch.tensor(ix), positions, factor)) for l, ix in by_layer.items()]
    with model.hooks(fwd_hooks=hooks):  # removes exactly these hooks on exit, also after an exception
        yield model


def suppress(model: Bridge, neurons: Any, *, positions: Any = "last") -> contextlib.AbstractContextManager:
    """Context manager: the chosen neurons' activations are set to 0 at ``positions`` while inside.

    Args:
        model: a bridge.
        neurons: a `NeuronResult` or ``(layer, index[, score])`` items (negative layers count from
            the end; see `neuron_list`).
        positions: ``"last"`` (default: the last column, i.e. the answer position of factscope's
            left-padded batches), ``"all"``, or token indices (negative ones count from the end).

    The hooks are removed on exit, also after an exception. Weights are never touched. Bad
    neurons or positions raise ValueError before any hook is added. Usage::

        with suppress(model, result):
            predict(model, prompts, targets)

    Cost: negligible to enter and exit; inside, each forward pass copies the ``mlp_key``
    activations of the layers involved (``batch × pos × d_mlp`` floats per layer).
    """
    return _intervene(model, neurons, positions, None)


def enhance(model: Bridge, neurons: Any, factor: float = 2.0, *, positions: Any = "last") -> contextlib.AbstractContextManager:
    """Context manager: the chosen neurons' activations are multiplied by ``factor`` while inside.

    Otherwise as `suppress`.

    Args:
        model: a bridge.
        neurons: a `NeuronResult` or ``(layer, index[, score])`` items (negative layers count from
            the end; see `neuron_list`).
        factor: the multiplier (default 2.0, the paper's); must be finite.
        positions: ``"last"`` (default), ``"all"``, or token indices, as for `suppress`.

    Cost: as `suppress`: negligible, plus a copy of the hooked activations per forward pass.
    """
    if not math.isfinite(factor):
        raise ValueError(f"expected a finite factor, got {factor!r}")
    return _intervene(model, neurons, positions, float(factor))
