"""FT-L (Zhu et al. 2020, as run in the ROME paper): constrained fine-tuning of one MLP's output weights.

The baseline ROME and MEMIT compare against. Only the MLP output projection ``W_out``
(``[d_mlp, d_model]``) of one layer l changes, by ΔW, chosen to minimise the new answer's
negative log-likelihood

    L(ΔW) = mean over requests r of  −(1/n_r) Σ_t log p(y_r,t | prompt_r, y_r,<t ; W_out + ΔW)

where ``y_r = ids(" " + target_new)`` (n_r tokens, all of them, teacher forced after
``request.text``), subject to the L∞ constraint ``|ΔW_ij| ≤ ε`` (``norm_bound``). The problem is
solved by projected Adam: after every step each entry of ΔW is clamped to ``[−ε, +ε]`` (the
Euclidean projection onto the L∞ ball). With the reference learning rate equal to ε, the first
Adam step (``lr · g/(|g| + eps)``, a sign step) already reaches the bound on almost every entry.

Like ROME's ``baselines/ft/ft_main.py``, an epoch (one "step") runs the requests in chunks of
``batch_size``, one Adam step per chunk; a chunk whose loss is below ``early_stop_loss`` takes no
step, and the loop stops once an epoch's mean loss is below it. Three deliberate differences from
that code: the loss covers every target token teacher forced (the reference scores all target ids
at the prompt's last position); only ``W_out`` changes (the reference also trains ``c_proj``'s
bias); and ``weight_decay`` is applied exactly as torch's Adam applies it there, to the whole
weight ``W_out + ΔW``.

The model is never written to. ΔW is a separate float32 tensor; a forward hook adds ``key @ ΔW``
to the MLP's raw output (``key @ W_out (+ b)``, before Gemma's post-norm), which is exactly the
forward of the model with ``W_out + ΔW``. Gradients are taken with `torch.autograd.grad` for ΔW
only, so no parameter's ``.grad`` is touched either. The result is a dense `Edit`.

Cost: per epoch, one forward and one backward (from the top down to layer l) per chunk of
requests; rows are ``prompt + target[:-1]``, a few dozen tokens. Memory: the chunk's activations
above layer l, plus ΔW and Adam's two moments: ``3 · d_mlp · d_model`` float32 numbers. Measured
times: docs/guide.md, "Measured costs of the editors".

Dimension names: ``d_mlp`` keys, ``d_model`` values, ``row`` requests in a chunk, ``pos`` tokens,
``n`` target positions kept (the longest target in the chunk), ``d_vocab`` the vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from factscope.arch import arch_of
from factscope.bridge import Bridge
from factscope.checks import as_requests
from factscope.edit.handle import Edit
from factscope.facts import EditRequest
from factscope.models import fingerprint
from factscope.tokens import check_request, encode, pad_left, target_ids

__all__ = ["FTConfig", "finetune", "ft_batch", "ft_nll"]


@dataclass(frozen=True, kw_only=True)
class FTConfig:
    """FT-L's settings (defaults: ROME's constrained fine-tuning of GPT-2 XL).

    From kmeng01/rome's ``hparams/FT/gpt2-xl_constr.json``: ``num_steps`` 25, ``lr`` 5e-4,
    ``norm_constraint`` 5e-4, ``weight_decay`` 0 (``kl_factor`` 0 is unused there); ``batch_size`` 128 from
    ``baselines/ft/ft_hparams.py``; the early stop at 1e-2 from ``baselines/ft/ft_main.py``. (The
    JSON was read in forks that carry it unchanged, e.g. google/belief-localization; their
    ``layers`` differ, [0] or [17], so ``layer`` has no default here.)

    Attributes:
        norm_bound: ε, the L∞ bound on every entry of ΔW (``|ΔW_ij| ≤ ε``), > 0. ``math.inf``
            gives unconstrained fine-tuning (ROME's "FT").
        steps: epochs over the requests (each one Adam step per chunk), a positive integer.
        lr: Adam's learning rate, > 0 (betas and eps are torch's defaults, as in the reference).
        weight_decay: torch Adam's L2 term on the whole weight ``W_out + ΔW``, >= 0.
        early_stop_loss: a chunk whose NLL is below this takes no step; stop after an epoch whose
            mean NLL is below it. >= 0 (0: never stop early).
        batch_size: requests per chunk (one Adam step each), a positive integer.

    Cost: negligible (plain data, validated on construction); ``steps`` and ``batch_size`` set
    `finetune`'s number of passes.
    """

    norm_bound: float = 5e-4
    steps: int = 25
    lr: float = 5e-4
    weight_decay: float = 0.0
    early_stop_loss: float = 1e-2
    batch_size: int = 128

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FTConfig: expected {name} to be a positive integer, got {v!r}")
        for name in ("norm_bound", "lr", "weight_decay", "early_stop_loss"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ValueError(f"FTConfig: expected {name} to be a number, got {v!r}")
        if not self.norm_bound > 0:
            raise ValueError(f"FTConfig: expected norm_bound > 0 (math.inf: unconstrained), got {self.norm_bound!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"FTConfig: expected a finite lr > 0, got {self.lr!r}")
        for name in ("weight_decay", "early_stop_loss"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"FTConfig: expected a finite {name} >= 0, got {v!r}")


# --------------------------------------------------------------------------- batches and the loss


@dataclass(frozen=True)
class FTBatch:
    """Right-aligned rows ``encode(text) + target[:-1]`` and their targets.

    Row r's target tokens are predicted at its last ``n_r`` positions, so with ``logits_to_keep=n``
    (the longest target) its targets sit in the last ``n_r`` of the ``n`` kept columns; ``tmask``
    marks them and ``targets`` holds 0 elsewhere.
    """

    ids: Int[Tensor, "row pos"]
    mask: Int[Tensor, "row pos"]
    targets: Int[Tensor, "row n"]
    tmask: Float[Tensor, "row n"]


def ft_batch(model: Bridge, requests: Sequence[EditRequest], device: torch.device | str = "cpu") -> FTBatch:
    """The `FTBatch` of ``requests`` (left padding, every row ends in the last column)."""
    tgts = [target_ids(model, r.target_new) for r in requests]
    ids, mask = pad_left(model, [encode(model, r.text) + t[:-1] for r, t in zip(requests, tgts)])
    n = max(map(len, tgts))
    targets = torch.zeros(len(tgts), n, dtype=torch.long)
    tmask = torch.zeros(len(tgts), n)
    for i, t in enumerate(tgts):
        targets[i, n - len(t):] = torch.tensor(t)
        tmask[i, n - len(t):] = 1.0
    return FTBatch(ids.to(device), mask.to(device), targets.to(device), tmask.to(device))


def ft_nll(logits: Float[Tensor, "row n d_vocab"], batch: FTBatch) -> Float[Tensor, "row"]:
    """Each row's mean NLL over its target tokens (float32), from the last ``n`` positions' logits."""
    lp = logits.float().log_softmax(-1).gather(2, batch.targets[:, :, None])[:, :, 0]  # [row, n]
    return -(lp * batch.tmask).sum(1) / batch.tmask.sum(1)


def _delta_hooks(model: Bridge, layer: int, delta: Float[Tensor, "d_mlp d_model"]) -> list[tuple[str, Callable]]:
    """Hooks that make the forward use ``W_out + delta`` at ``layer``: keep the key, add ``key @ delta``."""
    a = arch_of(model)
    keys: list[Tensor] = []

    def keep(act: Tensor, hook: object) -> None:  # act: [row, pos, d_mlp]
        keys.append(act)

    def add(act: Tensor, hook: object) -> Tensor:  # act: [row, pos, d_model]
        return act + (keys.pop().float() @ delta).to(act.dtype)

    return [(a.hook("mlp_key", layer), keep), (a.hook("mlp_raw_out", layer), add)]


def _forward_nll(model: Bridge, layer: int, delta: Tensor, batch: FTBatch) -> Float[Tensor, "row"]:
    logits = model.run_with_hooks(batch.ids, attention_mask=batch.mask, logits_to_keep=batch.targets.shape[1],
                                  fwd_hooks=_delta_hooks(model, layer, delta))
    return ft_nll(logits, batch)


# --------------------------------------------------------------------------- input checks


def _check_requests(model: Bridge, requests: EditRequest | Sequence[EditRequest]) -> tuple[EditRequest, ...]:
    reqs = as_requests(requests)
    for r in reqs:
        check_request(model, r, what="FT-L")  # subject, target, context length
    return reqs


def _resolve_config(config: FTConfig, norm_bound: float | None, steps: int | None) -> FTConfig:
    if not isinstance(config, FTConfig):
        raise TypeError(f"expected config to be an FTConfig, got {type(config).__name__}")
    over = {k: v for k, v in (("norm_bound", norm_bound), ("steps", steps)) if v is not None}
    return dataclasses.replace(config, **over) if over else config  # replace() re-runs the checks


# --------------------------------------------------------------------------- the optimisation


def finetune(
    model: Bridge,
    requests: EditRequest | Sequence[EditRequest],
    *,
    layer: int,
    norm_bound: float | None = None,
    steps: int | None = None,
    config: FTConfig = FTConfig(),
    progress: bool = True,
    verbose: bool = True,
) -> Edit:
    """Compute an FT-L edit: L∞-constrained fine-tuning of one layer's ``W_out``. Model unchanged.

    See the module docstring for the method.

    Args:
        model: a bridge.
        requests: one `EditRequest` or a sequence of them (``prompt``, ``subject``, ``target_new``).
        layer: the MLP whose ``W_out`` is fine-tuned (negative values count from the end).
        norm_bound: ε, overrides ``config.norm_bound`` (default ``None``: the config's 5e-4).
        steps: overrides ``config.steps`` (default ``None``: the config's 25).
        config: `FTConfig` (default: ROME's FT-L settings).
        progress: a progress bar over the steps (default ``True``). verbose: print one line with
            the layer (default ``True``).

    Returns:
        An `Edit` with one dense float32 ΔW ``[d_mlp, d_model]`` at ``layer``, method ``"ft-l"``,
        ``config`` the settings used. Its ``info``: ``layer``; ``losses`` (per epoch, the mean NLL
        over the requests, each chunk's taken just before its step); ``final_loss`` (the NLL with
        the returned ΔW); ``p_new_before`` / ``p_new_after`` (per request, p(all target tokens) at
        ΔW = 0 and at the result); ``max_abs_delta``; ``frac_at_bound`` (the share of entries with
        ``|ΔW_ij| = ε``); ``steps_run``; ``stopped_early``; ``n_requests``.

    Raises:
        TypeError, ValueError: no requests, a non-`EditRequest`, a subject that is not a whole run
            of its prompt's tokens, a bad layer, bad settings (all checked before any work).
        FloatingPointError: a non-finite loss or ΔW.
        The model is left untouched in every case.

    Cost: per epoch (at most ``steps``), one forward and one backward down to ``layer`` per chunk
    of ``batch_size`` requests. Memory: the chunk's activations above ``layer``, plus ΔW and Adam's
    two moments, ``3 · d_mlp · d_model`` float32. Measured times: docs/guide.md, "Measured costs of
    the editors".
    """
    cfg = _resolve_config(config, norm_bound, steps)
    a = arch_of(model)
    layer = a.check_layer(layer)
    reqs = _check_requests(model, requests)
    W0 = a.W_out(model, layer).detach()
    if verbose:
        print(f"FT-L: fine-tuning W_out of layer {layer} on {len(reqs)} request(s) "
              f"(L∞ bound {cfg.norm_bound:g}, {cfg.steps} steps, lr {cfg.lr:g})")
    fp = fingerprint(model)
    dev = W0.device
    chunks = [ft_batch(model, reqs[i:i + cfg.batch_size], dev) for i in range(0, len(reqs), cfg.batch_size)]
    delta = torch.zeros(a.d_mlp, a.d_model, device=dev, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    losses: list[float] = []
    p_before = _evaluate(model, layer, delta.detach(), chunks)[1] if len(chunks) > 1 else []  # else: from step 1
    stopped = False
    for step in (bar := tqdm(range(cfg.steps), desc=f"FT-L L{layer}", disable=not progress)):
        total = 0.0
        for batch in chunks:
            nll = _forward_nll(model, layer, delta, batch)  # [row]
            loss = nll.mean()
            total += float(loss.detach()) * len(nll)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"FT-L: the loss became {float(loss.detach())} at step {step + 1}; nothing "
                                         f"was changed. Try a smaller lr than {cfg.lr}.")
            if step == 0 and len(chunks) == 1:
                p_before = (-nll.detach() * batch.tmask.sum(1)).exp().tolist()
            if float(loss.detach()) >= cfg.early_stop_loss:
                _step(opt, delta, loss, W0, cfg)
        losses.append(total / len(reqs))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if losses[-1] < cfg.early_stop_loss:
            stopped = True
            break
    d = delta.detach()
    if not torch.isfinite(d).all():
        raise FloatingPointError("FT-L: ΔW is not finite; nothing was changed")
    final, p_after = _evaluate(model, layer, d, chunks)
    at_bound = d.abs() >= torch.tensor(cfg.norm_bound, dtype=d.dtype)  # the clamp writes ε rounded to float32
    info = {"layer": layer, "losses": losses, "final_loss": final, "p_new_before": p_before, "p_new_after": p_after,
            "max_abs_delta": float(d.abs().max()), "frac_at_bound": float(at_bound.float().mean()),
            "steps_run": len(losses), "stopped_early": stopped, "n_requests": len(reqs)}
    return Edit(deltas={layer: d.cpu()}, method="ft-l", requests=reqs, config=dataclasses.asdict(cfg),
                fingerprint=fp, info=info)


def _step(opt: torch.optim.Adam, delta: Tensor, loss: Tensor, W0: Tensor, cfg: FTConfig) -> None:
    """One Adam step on ΔW alone, then the projection onto ``|ΔW_ij| ≤ ε``."""
    (grad,) = torch.autograd.grad(loss, [delta])
    if cfg.weight_decay:
        grad = grad + cfg.weight_decay * (W0.float() + delta.detach())  # torch Adam's L2 term on the weight
    delta.grad = grad
    opt.step()
    delta.grad = None
    with torch.no_grad():
        delta.clamp_(-cfg.norm_bound, cfg.norm_bound)


@torch.no_grad()
def _evaluate(model: Bridge, layer: int, delta: Tensor, chunks: list[FTBatch]) -> tuple[float, list[float]]:
    """The mean NLL with ``delta`` over all requests, and p(target_new) per request."""
    nlls, ps = [], []
    for batch in chunks:
        nll = _forward_nll(model, layer, delta, batch)
        nlls.append(nll)
        ps += (-nll * batch.tmask.sum(1)).exp().tolist()
    final = float(torch.cat(nlls).mean())
    if not math.isfinite(final):
        raise FloatingPointError(f"FT-L: the final loss is {final}; nothing was changed")
    return final, ps
