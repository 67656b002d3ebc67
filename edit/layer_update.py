"""Spreading a batch edit over several layers: MEMIT's and AlphaEdit's step 2.

Given target residuals z (``[request, d_model]``, leaving the last edited layer l_L; MEMIT's step 1)
and edited layers l₁ < … < l_L, each layer in turn takes its share of the error that is left, and a
*solver* turns that share into a weight update:

1. **Collect** (`collect_keys`), on the model with the earlier layers' updates already written:
   the keys K (``[request, d_mlp]``: the MLP key at the subject's last token, averaged over the
   context templates) and, on the bare prompt, the MLP's raw output, its output after any
   post-norm, and the residual h leaving l_L.
2. **Share**: ``R = (z − h) / (layers left)`` (``[request, d_model]``). Without a post-norm the MLP's
   raw output must move by R; with one (Gemma) R is mapped back through it
   (`factscope.edit.post_norm.invert_post_norm`) to ``R_raw``.
3. **Solve**: ``solver(layer, K, R_raw) -> (U, V)`` with ``ΔW = U V`` (MEMIT:
   ``U = (λC + KᵀK)⁻¹ Kᵀ``, ``V = R_raw``; AlphaEdit projects U onto a null space). ΔW is written
   into ``W_out`` (in float64, cast to the weight's dtype) before the next layer is collected.

Afterwards every original ``W_out`` is copied back bit for bit (also on error), so the model is
unchanged; the result (`LayerUpdates`) holds the factors, the keys and the mean residual error
``‖z − h‖`` before each layer and after the last. `layer_delta` stores each layer's update as
factors or dense, whichever is smaller.

    up = run_layers(model, requests, layers, templates, z, solver, key_chunk=256, progress=False, what="MEMIT")
    deltas = {l: layer_delta(U, V) for l, (U, V) in up.deltas.items()}

Cost: per layer one `collect_keys` (forwards of ``request × templates`` rows cut at the subject,
stopped after block ``max(l, l_L)``), the solver, and one ``W_out``-sized write; one more
collection after the last layer. Memory: a copy of each edited ``W_out`` while running.
Dimension names: ``request`` edit requests, ``d_mlp`` keys, ``d_model`` residual / values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from factscope.arch import arch_of, context_of
from factscope.bridge import Bridge
from factscope.edit.post_norm import invert_post_norm, post_norm_gain
from factscope.edit.templates import template_rows, template_weights
from factscope.facts import EditRequest
from factscope.tokens import pad_left

__all__ = ["LayerActs", "collect_keys", "Solver", "LayerUpdates", "run_layers", "layer_delta"]

Solver = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(layer, K [request, d_mlp], R_raw [request, d_model]) -> (U [d_mlp, r], V [r, d_model])`` with ``ΔW = U V``."""


@dataclass(frozen=True, kw_only=True)
class LayerActs:
    """What the update at one layer needs (float64, CPU).

    Attributes:
        K: ``[request, d_mlp]`` keys at the subject's last token, averaged over the templates.
        raw: ``[request, d_model]`` the MLP's raw output (before any post-norm), bare prompt.
        out: ``[request, d_model]`` what the MLP adds to the residual (after the post-norm), bare prompt.
        h: ``[request, d_model]`` the residual leaving the target layer, bare prompt.
    """

    K: Float[Tensor, "request d_mlp"]
    raw: Float[Tensor, "request d_model"]
    out: Float[Tensor, "request d_model"]
    h: Float[Tensor, "request d_model"]


@torch.no_grad()
def collect_keys(model: Bridge, requests: Sequence[EditRequest], layer: int, target_layer: int,
                 templates: Sequence[str], *, bare_weight: float | None = None, chunk: int = 256,
                 progress: bool = False) -> LayerActs:
    """Keys at ``layer`` (template-averaged) and the bare prompt's activations (`LayerActs`).

    Prompts are cut after the subject's last token (later tokens cannot affect it) and run in
    batches of ``chunk`` rows, left-padded so that token is the last column; each batch stops after
    block ``max(layer, target_layer)``. The result does not depend on ``chunk`` beyond float32 rounding.

    Args:
        model: a bridge.
        requests: the edit requests.
        layer: where the keys, the raw output and the output are read.
        target_layer: where the residual h is read (MEMIT's last edited layer).
        templates: the context templates; they must include the bare prompt ``"{}"``.
        bare_weight: the bare prompt's weight in the key average
            (`factscope.edit.templates.template_weights`); ``None``: uniform, as in MEMIT.
        chunk: rows per forward.
        progress: a progress bar over the chunks.

    Raises:
        ValueError: no ``"{}"`` among the templates.

    Cost: forwards of ``request × template`` rows, cut at the subject's last token, up to block
    ``max(layer, target_layer)``; memory: one chunk's activations.
    """
    a = arch_of(model)
    dev = context_of(model).device
    T = len(templates)
    n = len(requests)
    rows: list[list[int]] = []
    for r in requests:
        tr, tl = template_rows(model, r, templates)
        rows += [x[:i + 1] for x, i in zip(tr, tl)]
    bare = templates.index("{}") if "{}" in templates else None
    if bare is None:
        raise ValueError(f"expected the templates to include the bare prompt '{{}}', got {list(templates)[:3]}...")
    K = torch.zeros(n * T, a.d_mlp, dtype=torch.float64)
    raw = torch.zeros(n * T, a.d_model, dtype=torch.float64)
    out = torch.zeros(n * T, a.d_model, dtype=torch.float64)
    h = torch.zeros(n * T, a.d_model, dtype=torch.float64)
    names = [(a.hook("mlp_key", layer), K), (a.hook("mlp_raw_out", layer), raw), (a.hook("mlp_out", layer), out),
             (a.hook("resid_post", target_layer), h)]  # raw and out share one hook without a post-norm
    stop = max(layer, target_layer) + 1
    for s in tqdm(range(0, n * T, chunk), desc=f"keys at layer {layer}", disable=not progress):
        ids, mask = pad_left(model, rows[s:s + chunk])

        def grab(dst: Tensor, start: int):
            def fn(act, hook):
                dst[start:start + act.shape[0]] = act[:, -1].double().cpu()
            return fn

        model.run_with_hooks(ids.to(dev), attention_mask=mask.to(dev), stop_at_layer=stop,
                             fwd_hooks=[(nm, grab(dst, s)) for nm, dst in names])
    K = template_weights(templates, bare_weight) @ K.view(n, T, -1)  # [n, d_mlp]
    return LayerActs(K=K, raw=raw.view(n, T, -1)[:, bare], out=out.view(n, T, -1)[:, bare],
                     h=h.view(n, T, -1)[:, bare])



@dataclass(frozen=True, kw_only=True)
class LayerUpdates:
    """What `run_layers` computed (float64, CPU); the model itself is left unchanged.

    Attributes:
        deltas: ``{layer: (U, V)}`` with ``ΔW = U V``, ``U [d_mlp, r]``, ``V [r, d_model]``.
        keys: ``{layer: K}`` ``[request, d_mlp]``, the keys each layer's solve used.
        errors: the mean residual error ``‖z − h‖`` before each layer, then after the last.
    """

    deltas: dict[int, tuple[Tensor, Tensor]]
    keys: dict[int, Float[Tensor, "request d_mlp"]]
    errors: list[float]


def run_layers(model: Bridge, requests: Sequence[EditRequest], layers: Sequence[int], templates: Sequence[str],
               z: Float[Tensor, "request d_model"], solver: Solver, *, key_chunk: int, progress: bool,
               what: str, bare_weight: float | None = None) -> LayerUpdates:
    """The module docstring's steps 1-3 over ``layers`` (sorted; z lives at the last), with any solver.

    Args:
        model: a bridge; its weights are written while running and restored bit for bit before
            returning, also on error.
        requests: the edit requests, in z's order.
        layers: the edited layers, ascending.
        templates: the context templates (`factscope.edit.templates.context_templates`; include ``"{}"``).
        z: ``[request, d_model]`` the target residuals leaving ``layers[-1]`` (float64).
        solver: ``(layer, K, R_raw) -> (U, V)``, a `Solver`.
        key_chunk: rows per key-collection forward (`collect_keys`'s ``chunk``).
        progress: a progress bar over the layers.
        what: the editor's name, for the bar and error messages.
        bare_weight: the bare prompt's weight in the keys (`collect_keys`); ``None``: uniform.

    Raises:
        FloatingPointError: a non-finite update (the model is restored first).

    Cost: see the module docstring: ``len(layers) + 1`` key collections, one solve and one write per layer.
    """
    a = arch_of(model)
    L = layers[-1]
    originals: dict[int, Tensor] = {}
    out = LayerUpdates(deltas={}, keys={}, errors=[])
    try:
        for i, l in enumerate(tqdm(layers, desc=f"{what} layers", disable=not progress)):
            acts = collect_keys(model, requests, l, L, templates, bare_weight=bare_weight, chunk=key_chunk)
            out.errors.append(float((z - acts.h).norm(dim=1).mean()))
            R = (z - acts.h) / (len(layers) - i)  # [request, d_model]: this layer's share
            U, V = solver(l, acts.K, _raw_share(model, l, acts, R))
            if not (torch.isfinite(U).all() and torch.isfinite(V).all()):
                raise FloatingPointError(f"{what}: the update at layer {l} is not finite; nothing was changed")
            out.deltas[l], out.keys[l] = (U, V), acts.K
            originals[l] = _write(model, l, U, V)
        out.errors.append(float((z - collect_keys(model, requests, L, L, templates, chunk=key_chunk).h)
                                .norm(dim=1).mean()))
    finally:
        with torch.no_grad():
            for l, W0 in originals.items():
                a.W_out(model, l).copy_(W0)
    return out


def _raw_share(model: Bridge, layer: int, acts: LayerActs,
               R: Float[Tensor, "request d_model"]) -> Float[Tensor, "request d_model"]:
    """R_raw: how the MLP's raw output must move so that its output (after any post-norm) moves by R."""
    g = post_norm_gain(model, layer)
    return R if g is None else invert_post_norm(acts.out + R, g, acts.raw) - acts.raw


@torch.no_grad()
def _write(model: Bridge, layer: int, U: Tensor, V: Tensor) -> Float[Tensor, "d_mlp d_model"]:
    """Write ``W_out + U V`` (summed in float64) at ``layer``; returns a copy of the weight before."""
    W = arch_of(model).W_out(model, layer)
    before = W.detach().clone()
    W.copy_((W.double() + (U.to(W.device) @ V.to(W.device))).to(W.dtype))
    return before


def layer_delta(U: Tensor, V: Tensor) -> tuple[Tensor, Tensor] | Tensor:
    """One layer's ΔW for an `Edit`: the factors ``(U, V)``, or the dense ``U V`` when that has fewer numbers.

    Args:
        U: ``[d_mlp, r]`` left factor.
        V: ``[r, d_model]`` right factor.

    Cost: a ``d_mlp × r × d_model`` product when dense is smaller, else none.
    """
    if U.shape[1] * (U.shape[0] + V.shape[1]) > U.shape[0] * V.shape[1]:
        return U @ V
    return U, V
