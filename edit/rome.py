"""ROME (Meng et al. 2022): rewrite one fact by a rank-one update of one MLP's output weights.

The MLP at layer l maps a key k (the input to its output projection, ``[d_mlp]``) to a value
``k @ W_out`` (``[d_model]``). ROME treats ``W_out`` as a linear associative memory and inserts
the pair (k*, v*) while disturbing other keys as little as possible under their statistics C:

1. **k\\*** — the key at the subject's last token, averaged over context templates: ``"{}"`` plus
   prefixes the model itself writes from BOS (seeded; ROME: 10 of ~5 tokens and 10 of ~10).
2. **v\\*** — ``k* @ W_out + δ``, where δ is optimised at the MLP's raw output (before Gemma's
   post-norm: the loss runs through the norm, so the weight update stays exact) at the subject's
   last token of every template prompt, to minimise
   ``NLL(target_new | prompt)  +  kl_factor · KL(p_δ ‖ p_0)("{subject} is a")  +  v_weight_decay · ‖δ‖ / ‖v₀‖²``
   with Adam, clamping ``‖δ‖ ≤ clamp_norm_factor · ‖v₀‖`` and stopping once the NLL is below
   ``early_stop_loss``. Positions before the subject's last token are computed once (a KV cache).
   Only δ requires grad.
3. **Update** — ``ΔW = u Λᵀ`` with ``u = C⁻¹k*`` (a Cholesky solve in float64, never an inverse)
   and ``Λ = δ / (uᵀk*)``, so that ``k* @ (W + ΔW) = v*`` exactly and any key with ``uᵀk = 0``
   maps as before. C is the uncentred key second moment E[kkᵀ] (`factscope.edit.covariance`).

The same averaged k\\* is used for v\\* and for the update (the r-ROME fix, arXiv 2403.07175: the
reference code used the bare prompt's key in the update, which collapses models under sequential
editing).

Cost: templates once per model; v\\* at most ``v_steps`` forward+backward passes over the template
prompts and the essence prompt (fewer with early stopping); the solve is ``d_mlp³/3`` flops. C
comes from the on-disk cache after its first computation (`factscope.edit.key_stats`). Memory:
activations of the template prompts with gradients through the layers above l, plus C
(``d_mlp² × 8`` bytes). Measured times: docs/guide.md, "Measured costs of the editors".

The settings ROME shares with MEMIT (the δ optimisation, the templates, C's corpus) are
`factscope.edit.target.TargetConfig`'s; the templates are `factscope.edit.templates`'.

Dimension names: ``d_mlp`` keys, ``d_model`` values, ``row`` prompts in a batch.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from factscope.arch import arch_of, context_of
from factscope.bridge import Bridge
from factscope.edit.handle import Edit
from factscope.edit.key_stats import key_stats
from factscope.edit.layer_choice import default_layers
from factscope.edit.target import TargetConfig, config_source
from factscope.edit.templates import context_templates, prompt_rows, template_rows, template_weights
from factscope.facts import EditRequest
from factscope.kv import run_after, run_cached
from factscope.models import fingerprint
from factscope.predict import kl_from_logprobs, predict
from factscope.tokens import check_request, encode, pad_left, target_ids

__all__ = ["ROMEConfig", "rome", "context_templates", "template_keys", "compute_k_star", "realised_shares",
           "key_cholesky", "compute_v_star", "rank_one_update", "update_response", "VStar"]


@dataclass(frozen=True, kw_only=True)
class ROMEConfig(TargetConfig):
    """ROME's settings (defaults: the paper's GPT-2 XL hyper-parameters, `hparams/ROME/gpt2-xl.json`).

    Every field is `TargetConfig`'s (the δ optimisation, the templates, C's corpus), with ROME's
    defaults: 10 template prefixes of 5 tokens and 10 of 10 (``context_lengths``), top-5 sampling,
    20 Adam steps at learning rate 0.5, weight decay 0.5, clamp factor 4, KL weight 0.0625 on
    ``"{} is a"``, early stop at NLL 0.05. ROME tests the total loss for the early stop; we test the
    NLL: on post-norm models ‖v₀‖ is small, the decay term alone exceeds 0.05 there, and the stop
    would never fire. Cost: negligible (plain data, validated on construction); ``v_steps`` and
    ``context_lengths`` set `rome`'s number of passes.

    ``ROMEConfig()`` and ``ROMEConfig.paper()`` are those constants; ``ROMEConfig.for_model(model)``
    (what `rome` uses when no config is given) replaces the δ budget by ``TUNED[family]``.
    Post-norm models (Gemma) take small steps and stop once the new target wins: Adam at learning
    rate 0.05 for at most 40 steps, ``‖δ‖ ≤ 2‖v₀‖``, stopping once the target's NLL is below 0.5 (p ≈
    0.6 on average over the template prompts), so δ goes no further than the edit needs. The paper's
    lr 0.5 reaches its clamp in the first step there (‖v₀‖ ≈ 2.6 on Gemma 3 270M), so every edit got
    the whole budget, and a δ near ‖v₀‖ sets the post-normed MLP output's direction at every key it
    reaches. Post-norm models also weight the bare prompt ½ in k* and in the NLL (``bare_weight=0.5``):
    at the early layers where Gemma's keys are specific, a subject right after BOS has a key unlike
    the prefixed templates', and with the uniform mean the update wrote as little as a fifth of δ at
    the prompt the request is asked with. Pre-norm models (SmolLM2) keep the paper's budget: there
    the earlier stop, smaller steps or a smaller clamp each cost efficacy on the calibration facts.
    Fitted on the calibration split (``bare_weight``: on it and a dev set of held-out facts already
    looked at; docs/guide.md, "Choosing the edit layer and the δ budget", has both and the held-out
    numbers).

    Attributes:
        context_lengths, context_top_k, seed, v_steps, v_lr, v_weight_decay, clamp_norm_factor,
            kl_factor, essence_prompt, early_stop_loss, early_stop_on, bare_weight, corpus, n_tokens: see
            `TargetConfig`.
        realised_delta: optimise δ as the rank-one update will write it: ``s_r · δ`` at each template
            prompt and the essence prompt (`realised_shares`), not δ everywhere. Off by default
            and in ``paper()``; docs/guide.md ("Choosing the edit layer and the δ budget") has why.
    """

    realised_delta: bool = False

    TUNED: ClassVar[dict[str, dict[str, object]]] = {
        "post_norm": dict(v_lr=0.05, v_steps=40, clamp_norm_factor=2.0, early_stop_loss=0.5, bare_weight=0.5),
        "pre_norm": {},  # the paper's: on SmolLM2 an earlier stop or smaller steps cost efficacy (guide)
    }


# --------------------------------------------------------------------------- k* and v*


@dataclass(frozen=True, kw_only=True)
class VBatch:
    """ROME's prompts for one request, left-padded: every template row (+ ``target_new[:-1]``), then the essence row.

    Attributes:
        ids: ``[row, pos]`` token ids. mask: ``[row, pos]`` attention mask (0 on padding).
        col: ``[row]`` the subject's last token in each row (where k* is read and δ is added).
        target: ``[n]`` the target's token ids; their predictions sit in every template row's last
            ``n`` positions.

    Cost: plain data; `v_batch` builds it by tokenising.
    """

    ids: Int[Tensor, "row pos"]
    mask: Int[Tensor, "row pos"]
    col: Int[Tensor, "row"]
    target: Int[Tensor, "n"]


def v_batch(model: Bridge, request: EditRequest, templates: tuple[str, ...], essence: str) -> VBatch:
    """The `VBatch` of ``request``: its template rows, each followed by ``target_new[:-1]``, then ``essence``.

    Args:
        model: a bridge (its tokenizer).
        request: the `EditRequest`.
        templates: the context templates (`context_templates`).
        essence: the essence prompt, with ``{}`` for the subject.

    Cost: tokenisation of ``len(templates) + 1`` prompts.
    """
    tgt = target_ids(model, request.target_new)
    rows, last = template_rows(model, request, templates)
    er, el = prompt_rows(model, [essence], request.subject)
    rows, last = [r + tgt[:-1] for r in rows] + er, last + el
    ids, mask = pad_left(model, rows)
    W = ids.shape[1]
    return VBatch(ids=ids, mask=mask, col=torch.tensor([W - len(r) + i for r, i in zip(rows, last)]),
                  target=torch.tensor(tgt))


@torch.no_grad()
def template_keys(model: Bridge, request: EditRequest, layer: int, templates: tuple[str, ...],
                  essence: str = "{}") -> Float[Tensor, "row d_mlp"]:
    """The MLP key at the subject's last token of each `VBatch` row: every template prompt, then ``essence``.

    Args:
        model: a bridge.
        request: the `EditRequest`.
        layer: the MLP whose key is read.
        templates: the context templates (`context_templates`).
        essence: the last row's prompt, with one ``{}`` for the subject.

    Cost: one forward of ``len(templates) + 1`` prompts up to ``layer``. Float64, on the CPU.
    """
    a = arch_of(model)
    dev = context_of(model).device
    b = v_batch(model, request, templates, essence)  # the target tokens follow: causal, no effect
    got: list[Tensor] = []
    model.run_with_hooks(b.ids.to(dev), attention_mask=b.mask.to(dev), stop_at_layer=layer + 1,
                         fwd_hooks=[(a.hook("mlp_key", layer), lambda act, hook: got.append(act.detach()))])
    return got[0][torch.arange(len(b.ids), device=dev), b.col.to(dev)].double().cpu()  # [row, d_mlp]


def compute_k_star(model: Bridge, request: EditRequest, layer: int, templates: tuple[str, ...], *,
                   bare_weight: float | None = None) -> Float[Tensor, "d_mlp"]:
    """k*: the MLP key at the subject's last token, averaged over the template prompts (float64).

    Args:
        model: a bridge.
        request: the `EditRequest`.
        layer: the MLP whose key is read.
        templates: the context templates (`context_templates`).
        bare_weight: the bare prompt's weight in the average (`template_weights`); ``None``
            (default): uniform, the paper's k*. `rome` passes ``config.bare_weight``.

    Cost: one forward of the template prompts (and one short essence row) up to ``layer``.
    """
    return template_weights(templates, bare_weight) @ template_keys(model, request, layer, templates)[:len(templates)]


def key_cholesky(C: Float[Tensor, "d_mlp d_mlp"], d_mlp: int) -> Float[Tensor, "d_mlp d_mlp"]:
    """The Cholesky factor of C (float64), after checking its shape, finiteness and definiteness.

    Args:
        C: ``[d_mlp, d_mlp]`` the key statistics.
        d_mlp: the key dimension C must have.

    Raises:
        ValueError: C of the wrong shape, not finite or not positive definite.

    Cost: ``d_mlp³/3`` flops.
    """
    if C.shape != (d_mlp, d_mlp):
        raise ValueError(f"expected C of shape ({d_mlp}, {d_mlp}), got {tuple(C.shape)}")
    if not torch.isfinite(C).all():
        raise ValueError("expected finite key statistics C, got NaN or inf; recompute them (cache=False)")
    L, info = torch.linalg.cholesky_ex(C.double())
    if int(info) != 0:
        raise ValueError(f"expected a positive definite C, but its Cholesky factorisation failed at column "
                         f"{int(info)}: estimate it from more tokens (more than d_mlp = {C.shape[0]})")
    return L


def realised_shares(keys: Float[Tensor, "row d_mlp"], C: Float[Tensor, "d_mlp d_mlp"],
                    k_star: Float[Tensor, "d_mlp"]) -> Float[Tensor, "row"]:
    """``s_r = k_rᵀC⁻¹k* / k*ᵀC⁻¹k*``: the share of δ the rank-one update writes at each row's key.

    ``k_r @ ΔW = s_r · δ`` exactly (`rank_one_update`); the s_r of the template rows average to 1,
    since k* is their mean, but one row can sit far below it (on Gemma at layer 1 the bare prompt,
    whose subject follows BOS, gets 0.2–0.45 of δ for a fifth of the built-in facts).

    Args:
        keys: ``[row, d_mlp]`` keys (`template_keys`).
        C: ``[d_mlp, d_mlp]`` the key statistics.
        k_star: ``[d_mlp]`` k*.

    Cost: one Cholesky solve, O(d_mlp³).
    """
    u = torch.cholesky_solve(k_star.double()[:, None], key_cholesky(C, k_star.shape[0]))[:, 0]
    return keys.double() @ u / float(k_star.double() @ u)


@dataclass(frozen=True)
class VStar:
    """The result of the δ optimisation: ``v_star = k* @ W_out (+ bias) + delta`` (float64).

    Attributes:
        delta: ``[d_model]`` δ. v0_norm: ‖v₀‖, the bare prompt's raw MLP output norm.
        losses: the total loss per step. p_new: mean p(target_new tokens) over the template prompts, per step.

    Cost: plain data.
    """

    delta: Float[Tensor, "d_model"]
    v0_norm: float
    losses: tuple[float, ...]
    p_new: tuple[float, ...]


def compute_v_star(model: Bridge, request: EditRequest, layer: int, templates: tuple[str, ...],
                   config: ROMEConfig = ROMEConfig(), *, progress: bool = False, reuse_prefix: bool = True,
                   shares: Float[Tensor, "row"] | None = None) -> VStar:
    """Optimise δ at the MLP's raw output of ``layer`` (see the module docstring). Model untouched.

    ``reuse_prefix=False`` runs every prompt in full at every step: the plain reference for the
    prefix reuse, which gives the same numbers.

    Args:
        model: a bridge.
        request: the `EditRequest`.
        layer: the MLP whose raw output δ is added to.
        templates: the context templates (`context_templates`).
        config: `ROMEConfig` (the δ optimisation's settings).
        progress: a progress bar over the steps.
        reuse_prefix: compute the positions before the subject's last token once (a KV cache).
        shares: ``[row]`` for each template row and then the essence row, the multiple of δ added
            there (`realised_shares`: what the rank-one update will write); ``None``: δ everywhere.

    Raises:
        FloatingPointError: a non-finite loss or δ.

    Cost: one forward without gradients, then at most ``v_steps`` forward+backward passes over the
    template prompts (their suffix from the subject's last token, with ``reuse_prefix``) and the
    essence prompt.
    """
    a = arch_of(model)
    dev = context_of(model).device
    b = v_batch(model, request, templates, config.essence_prompt)
    ids, mask, lookup, tgt, n = b.ids.to(dev), b.mask.to(dev), b.col.to(dev), b.target.to(dev), len(b.target)
    R = ids.shape[0] - 1  # rewriting rows; the last row is the essence prompt
    hook = a.hook("mlp_raw_out", layer)
    delta = torch.zeros(a.d_model, device=dev, requires_grad=True)
    share = torch.ones(R + 1, device=dev) if shares is None else shares.float().to(dev)  # [row]
    w = None if config.bare_weight is None else template_weights(templates, config.bare_weight).float().to(dev)  # [row]
    v0: list[Tensor] = []

    def adder(rows: Tensor, pos: Tensor, k: Tensor):  # k: [len(rows)] the multiple of δ each row gets
        def add(act, hook):  # act: [row, pos, d_model]
            if not v0:
                v0.append(act[0, pos[0]].detach().clone())  # the bare prompt's value (ROME's ‖v₀‖)
            act = act.clone()
            act[rows, pos] = act[rows, pos] + (k[:, None] * delta).to(act.dtype)
            return act
        return add

    # Positions before the subject's last token do not see δ. When that token sits in one column for
    # every template row (left padding aligns the equal-length suffixes), their keys and values are
    # computed once and each step runs only the suffix; otherwise each step runs the whole batch.
    c = int(lookup[0])
    prefix = None
    if reuse_prefix and bool((lookup[:R] == c).all()) and c > 0:
        with torch.no_grad():
            _, prefix = run_cached(model, ids[:R, :c], attention_mask=mask[:R, :c], logits_to_keep=1)  # KV only
    every = torch.arange(R + 1, device=dev)

    def forward() -> tuple[Tensor, Tensor]:
        """Log-probs at the last n positions of the template rows ``[row, n, d_vocab]`` and after the
        essence prompt ``[d_vocab]``, with δ added."""
        if prefix is None:
            lp = model.run_with_hooks(ids, attention_mask=mask, logits_to_keep=n,
                                      fwd_hooks=[(hook, adder(every, lookup, share))]).float().log_softmax(-1)
            return lp[:R], lp[R, -1]
        rows = every[:R]
        lp = run_after(model, ids[:R, c:], prefix, attention_mask=mask[:R], logits_to_keep=n,
                       fwd_hooks=[(hook, adder(rows, torch.zeros_like(rows), share[:R]))])
        ess = model.run_with_hooks(ids[R:], attention_mask=mask[R:], logits_to_keep=1,
                                   fwd_hooks=[(hook, adder(every[:1], lookup[R:], share[R:]))])
        return lp.float().log_softmax(-1), ess[0, -1].float().log_softmax(-1)

    with torch.no_grad():
        kl_ref = forward()[1]  # the essence prompt's next-token log-probs with δ = 0
    v0_norm = float(v0[0].norm())
    opt = torch.optim.Adam([delta], lr=config.v_lr)
    losses, p_new = [], []
    bar = tqdm(range(config.v_steps), desc="v* (ROME)", disable=not progress)
    for _ in bar:
        lp, lp_ess = forward()
        nll_tok = -lp.gather(2, tgt.expand(R, n)[:, :, None])[:, :, 0]  # [row, n]
        nll = nll_tok.mean() if w is None else w @ nll_tok.mean(1)  # the template rows weighted as in k*
        kl = kl_from_logprobs(lp_ess, kl_ref)  # KL(p_δ ‖ p_0)
        wd = delta.norm() / v0_norm ** 2
        loss = nll + config.kl_factor * kl + config.v_weight_decay * wd
        losses.append(float(loss.detach()))
        p_new.append(float((-nll_tok.detach().sum(1)).exp().mean()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", p_new=f"{p_new[-1]:.3f}")
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"ROME v*: the loss became {losses[-1]} at step {len(losses)}; nothing was "
                                     f"changed. Try a smaller v_lr than {config.v_lr}.")
        stop_nll = nll if config.early_stop_on == "mean" else nll_tok.mean(1).max()  # worst template row
        if float(stop_nll.detach()) < config.early_stop_loss:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            cap = config.clamp_norm_factor * v0_norm
            if delta.norm() > cap:
                delta.mul_(cap / delta.norm())
    d = delta.detach().double().cpu()
    if not torch.isfinite(d).all():
        raise FloatingPointError("ROME v*: δ is not finite; nothing was changed")
    return VStar(delta=d, v0_norm=v0_norm, losses=tuple(losses), p_new=tuple(p_new))


# --------------------------------------------------------------------------- the update


def rank_one_update(C: Float[Tensor, "d_mlp d_mlp"], k_star: Float[Tensor, "d_mlp"],
                    delta: Float[Tensor, "d_model"]) -> tuple[Float[Tensor, "d_mlp 1"], Float[Tensor, "1 d_model"]]:
    """``(u, Λᵀ)`` with ``ΔW = u Λᵀ``, ``u = C⁻¹k*``, ``Λ = δ / (uᵀk*)`` (all float64).

    Then ``k* @ ΔW = δ`` and ``k @ ΔW = 0`` whenever ``uᵀk = 0``. C is solved by Cholesky
    (it is symmetric positive definite when estimated from more tokens than ``d_mlp``).

    Args:
        C: ``[d_mlp, d_mlp]`` the key statistics E[kkᵀ].
        k_star: ``[d_mlp]`` k*.
        delta: ``[d_model]`` δ, the change k* must map to.

    Raises:
        ValueError: C of the wrong shape, not finite or not positive definite; ``k*ᵀC⁻¹k* <= 0``.

    Cost: one Cholesky factorisation of C, ``d_mlp³/3`` flops.
    """
    k, delta = k_star.double(), delta.double()
    u = torch.cholesky_solve(k[:, None], key_cholesky(C, k.shape[0]))  # [d_mlp, 1]
    denom = float(u[:, 0] @ k)
    if not denom > 0 or not math.isfinite(denom):
        raise ValueError(f"expected k*ᵀC⁻¹k* > 0, got {denom}")
    return u, (delta / denom)[None]


@torch.no_grad()
def update_response(model: Bridge, prompts: list[str], layer: int, u: Float[Tensor, "d_mlp"],
                    k_star: Float[Tensor, "d_mlp"]) -> Float[Tensor, "prompt"]:
    """How much of δ the update ``ΔW = u Λᵀ`` writes into each prompt: ``max_pos |kᵀu| / k*ᵀu``.

    ``k @ ΔW = (kᵀu / k*ᵀu) · δ``, so a response of 1 moves that position's MLP output by all of δ and
    0 leaves it alone. Maximised over each prompt's positions (BOS and padding excluded). It does not
    depend on δ; for ROME's ``u = C⁻¹k*`` it measures how well C separates the prompt's keys from k*
    (neighbourhood failures come from large responses).

    Args:
        model: a bridge.
        prompts: full prompts (the subject filled in).
        layer: the edited MLP.
        u: ``[d_mlp]`` the update's left factor (ROME's ``C⁻¹k*``).
        k_star: ``[d_mlp]`` k*.

    Cost: one forward of the left-padded prompts up to ``layer``.
    """
    a = arch_of(model)
    dev = context_of(model).device
    ids, mask = pad_left(model, [encode(model, p) for p in prompts])
    got: list[Tensor] = []
    model.run_with_hooks(ids.to(dev), attention_mask=mask.to(dev), stop_at_layer=layer + 1,
                         fwd_hooks=[(a.hook("mlp_key", layer), lambda act, hook: got.append(act.detach()))])
    u, k_star = u.double().to(dev), k_star.double().to(dev)
    keep = mask.clone()
    keep[torch.arange(len(prompts)), mask.argmax(1)] = 0  # each row's BOS: its first unpadded column
    resp = (got[0].double() @ u).abs() / float(u @ k_star)  # [prompt, pos]
    return resp.masked_fill(keep.to(dev) == 0, 0).amax(1).cpu()


def rome(
    model: Bridge,
    request: EditRequest,
    *,
    layer: int | None = None,
    config: ROMEConfig | None = None,
    C: Float[Tensor, "d_mlp d_mlp"] | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> Edit:
    """Compute a ROME edit: one fact by a rank-one update of one MLP's ``W_out``. Model unchanged.

    See the module docstring for the algorithm.

    Args:
        model: a bridge.
        request: the fact to rewrite (``prompt``, ``subject``, ``target_new``).
        layer: the MLP to rewrite (negative values count from the end; the edit records it
            normalised, so ``-1`` and ``n_layers - 1`` give the same edit). ``None`` (default): the
            layer `factscope.edit.layer_choice.edit_layer` chooses for ROME with this config, from key
            specificity, the tracing profile and a trial edit on calibration facts (cached on disk).
        config: `ROMEConfig`; ``None`` (default): ``ROMEConfig.for_model(model)``, the δ budget tuned
            for the model's architecture family. ``ROMEConfig.paper()``: the published constants.
        C: key statistics ``E[kkᵀ]`` ``[d_mlp, d_mlp]`` at ``layer``; default ``None``:
            `factscope.edit.covariance` (cached on disk).
        progress: progress bars (default ``True``). verbose: print the layer used and why (default ``True``).

    Returns:
        An `Edit` (``edit.apply(model)`` / ``edit.revert(model)`` / ``with edit.applied(model):``);
        its ``info`` holds the layer and why, the templates, ‖k*‖, ‖δ‖, ‖v₀‖, the loss curve and
        p(target_new) per step (recompute k* with `compute_k_star`).

    Raises:
        ValueError: a subject not in the prompt, a layer out of range, bad statistics.
        FloatingPointError: a non-finite v*. In every case the model is left untouched.

    Cost: v* dominates: at most ``v_steps`` forward+backward passes over the template prompts and
    the essence prompt (fewer with early stopping); templates once per model; the solve
    ``d_mlp³/3`` flops. The first use of a layer also computes C (`factscope.edit.covariance`, then
    cached on disk) and, with ``layer=None``, the tracing profile (cached). Memory: activations of
    the template prompts with gradients through the layers above ``layer``, plus C (``d_mlp² × 8``
    bytes). Measured times: docs/guide.md, "Measured costs of the editors".
    """
    a = arch_of(model)
    check_request(model, request, what="ROME")  # type, subject, target, context length: before any work
    if config is None:
        config = ROMEConfig.for_model(model)
    if not isinstance(config, ROMEConfig):
        raise TypeError(f"expected config to be a ROMEConfig (or None), got {type(config).__name__}")
    source = config_source(config, model)
    why = "given"
    if layer is None:
        (layer,), why = default_layers(model, "rome", config, progress=progress)
    layer = a.check_layer(layer)
    if verbose:
        print(f"ROME: editing the MLP at layer {layer} ({why}); config: {source}")
    _warn_if_already_answered(model, request)
    fp = fingerprint(model)
    templates = context_templates(model, config)
    keys = template_keys(model, request, layer, templates, config.essence_prompt)  # [row, d_mlp]
    k_star = template_weights(templates, config.bare_weight) @ keys[:len(templates)]  # [d_mlp]
    if C is None:
        C = key_stats(model, [layer], config, progress=progress)[layer]
    shares = realised_shares(keys, C, k_star) if config.realised_delta else None  # [row]: δ's share per prompt
    v = compute_v_star(model, request, layer, templates, config, progress=progress, shares=shares)
    u, lam = rank_one_update(C, k_star, v.delta)  # u = C⁻¹k* [d_mlp, 1]
    if not (torch.isfinite(u).all() and torch.isfinite(lam).all()):
        raise FloatingPointError("ROME: the update is not finite; nothing was changed")
    bare = keys[templates.index("{}")]  # the bare prompt's key
    bare_share = float(bare @ u[:, 0] / (k_star.double() @ u[:, 0]))  # `realised_shares` there, C factored once
    info = dict(layer=layer, layer_reason=why, config_source=source, templates=list(templates), k_star_norm=float(k_star.norm()),
                bare_share=bare_share,
                delta_norm=float(v.delta.norm()), v0_norm=v.v0_norm, losses=list(v.losses), p_new=list(v.p_new))
    return Edit(deltas={layer: (u, lam)}, method="rome", requests=(request,), config=dataclasses.asdict(config),
                fingerprint=fp, info=info)


def _warn_if_already_answered(model: Bridge, request: EditRequest) -> None:
    p = predict(model, [request.text], [request.target_new], k=1)[0]
    if p.correct:
        warnings.warn(f"the model already answers {request.target_new!r} after {request.text!r}; "
                      f"the edit will only reinforce it", stacklevel=3)
