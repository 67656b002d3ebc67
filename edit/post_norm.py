"""Mapping an MLP's target output back through Gemma-style post-norms (MEMIT's and AlphaEdit's step 2).

Some models (Gemma 2 and 3) normalise the MLP's output before adding it to the residual stream:
``mlp_out = g ⊙ raw / rms(raw)``, where ``raw = key @ W_out`` is what a weight update changes and g
is the norm's learned gain. MEMIT wants each layer's ``mlp_out`` to move by its share R of the
remaining error, but it can only change ``raw``. This module finds the raw output to aim for:

- `post_norm_gain` reads g off the norm itself (``g = norm(c·1)`` for a large c) and checks on a
  random vector that the norm really is ``g ⊙ x / rms(x)``; ``None`` for a model without a
  post-norm (then the raw output moves by R directly).
- `invert_post_norm` returns the raw output v whose normalised value ``g ⊙ v / rms(v)`` is closest
  to the wanted ``mlp_out + R``: exact when that is reachable, the closest point on the reachable
  set otherwise, with the raw scale kept (the norm ignores scale, so the change is a rotation).

    g = post_norm_gain(model, layer)                     # [d_model] or None
    R_raw = invert_post_norm(out + R, g, raw) - raw      # [request, d_model]

Cost: `post_norm_gain` two norm evaluations; `invert_post_norm` ``iters`` (200) bisection steps of
O(request · d_model) each. Dimension names: ``request`` edit requests, ``d_model`` the residual.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from factscope.arch import UnsupportedArchitectureError, context_of
from factscope.bridge import Bridge

__all__ = ["post_norm_gain", "invert_post_norm"]


@torch.no_grad()
def post_norm_gain(model: Bridge, layer: int) -> Float[Tensor, "d_model"] | None:
    """The gain g of the RMS post-norm after layer ``layer``'s MLP (``out = g ⊙ raw / rms(raw)``), or
    ``None`` when the model adds the MLP's output to the residual directly.

    Read off the norm itself (``g = norm(c·1)`` for a large c) and checked on a random vector, so a
    post-norm that is not an RMS norm raises `UnsupportedArchitectureError` instead of being mis-inverted.

    Args:
        model: a bridge.
        layer: the block whose MLP post-norm is read (negative counts from the end).

    Cost: two evaluations of the norm on one vector.
    """
    ctx = context_of(model)
    a = ctx.arch
    if not a.post_norm:
        return None
    norm = model.blocks[a.check_layer(layer)].ln2_post
    g = norm(torch.full((1, 1, a.d_model), 1e4, dtype=ctx.dtype, device=ctx.device))[0, 0].double().cpu()
    x = torch.randn(a.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = norm(x.to(ctx.dtype).to(ctx.device)[None, None])[0, 0].double().cpu()
    want = g * x / x.pow(2).mean().sqrt()
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(g.abs().max())):
        raise UnsupportedArchitectureError(f"layer {layer}'s MLP post-norm is not an RMS norm (g ⊙ x / rms(x)); "
                                           f"MEMIT cannot map its targets through it")
    return g


def invert_post_norm(y: Float[Tensor, "request d_model"], g: Float[Tensor, "d_model"],
                     raw: Float[Tensor, "request d_model"], *, iters: int = 200) -> Float[Tensor, "request d_model"]:
    """Raw outputs v whose RMS-normalised values ``g ⊙ v / rms(v)`` are closest to ``y`` (float64).

    ``w = v / rms(v)`` ranges over the sphere ``‖w‖² = d``; the closest point to y solves
    ``min ‖g ⊙ w − y‖²`` there: ``w = g y / (g² + μ)`` with μ > −min g² found by bisection on
    ``‖w(μ)‖² = d`` (the trust-region secular equation). In the "hard case" (y has no component on
    the smallest gains, e.g. gains of exactly 0, which Gemma 3 270M has at some layers) the
    equation has no root; then μ = −min g² and the missing norm goes onto the smallest-gain
    coordinates, which do not change the output, signed like ``raw``. When y is reachable the
    result is exact. The norm ignores scale, so ``v = rms(raw) · w`` keeps the current output's
    size: the change is a rotation, and a partial step towards v still turns the output towards y.

    Args:
        y: ``[request, d_model]`` the wanted normalised outputs.
        g: ``[d_model]`` the norm's gain (`post_norm_gain`).
        raw: ``[request, d_model]`` the current raw outputs (their scale is kept; they also sign the
            hard case's fill).
        iters: bisection steps on μ.

    Cost: ``iters`` steps of O(request · d_model), float64.
    """
    y, g, raw = y.double(), g.double(), raw.double()
    d = y.shape[-1]
    g2 = g * g
    gmin = float(g2.min())
    gy = g * y  # [request, d]
    lo = torch.full(y.shape[:-1], -gmin, dtype=torch.float64)
    hi = gy.norm(dim=-1) / math.sqrt(d) + float(g2.max()) + 1e-300
    for _ in range(iters):
        mid = (lo + hi) / 2
        w2 = (gy / (g2 + mid[..., None])).pow(2).sum(-1)
        lo = torch.where(w2 > d, mid, lo)
        hi = torch.where(w2 > d, hi, mid)
    w = gy / (g2 + hi[..., None])
    short = d - w.pow(2).sum(-1)  # > 0 only in the hard case
    Z = g2 <= gmin + 1e-12 * float(g2.max())  # the smallest gain's coordinates
    hard = short > 1e-9 * d
    if bool(hard.any()):
        fill = torch.where(Z, raw, torch.zeros_like(raw))
        fill = torch.where(fill.norm(dim=-1, keepdim=True) > 0, fill, Z.double().expand_as(raw))
        fill = fill / fill.norm(dim=-1, keepdim=True)
        w = torch.where(hard[..., None], torch.where(Z, 0.0, w) + short.clamp(min=0).sqrt()[..., None] * fill, w)
    w = w * math.sqrt(d) / w.norm(dim=-1, keepdim=True)
    return raw.pow(2).mean(-1, keepdim=True).sqrt() * w

