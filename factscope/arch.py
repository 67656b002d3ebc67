"""The architecture adapter: the one place that knows where things are in a bridged model.

``a = arch_of(model)`` gives the sizes (``a.n_layers``, ``a.d_model``, ``a.d_mlp``), canonical hook
names by kind and layer (``a.hook("mlp_key", 5)``), and the live weight each editor writes
(``a.W_out(model, 5)``). Every other module asks this one; none spells a hook name itself.

Hook kinds (all ``[batch, pos, d]`` activations):

==============  =====================  ===============================================================
kind            d                      meaning
==============  =====================  ===============================================================
``embed``       d_model                token embeddings as they enter block 0 (Gemma: already x√d_model).
                                       Layer-less: pass ``layer=None``.
``resid_pre``   d_model                residual stream entering block l.
``resid_mid``   d_model                residual after attention, entering the MLP branch.
``resid_post``  d_model                residual leaving block l (= ``resid_pre`` of block l+1).
``attn_out``    d_model                what attention adds to the residual (after ``ln1_post`` on Gemma).
``mlp_out``     d_model                what the MLP adds to the residual (after ``ln2_post`` on Gemma).
``mlp_raw_out`` d_model                raw output of the MLP's output projection, *before* any
                                       post-norm. ROME's v* lives here. Equals ``mlp_out`` without
                                       post-norms.
``mlp_key``     d_mlp                  input to the output projection: ROME's key k, the knowledge
                                       neurons' activations (``act(gate) * up`` for gated MLPs).
==============  =====================  ===============================================================

Covered and tested against the raw Hugging Face forward: GPT-2 (Conv1D), Llama/SmolLM2 (gated MLP,
grouped-query attention) and Gemma 3 (post-norms). Other TransformerLens architectures with a
standard block (``attn`` + ``mlp`` with an ``out`` projection) work through the same lookup; one
that lacks a piece gets an error naming it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from factscope.bridge import Bridge

__all__ = ["Arch", "HookKind", "HOOK_KINDS", "arch_of", "ModelContext", "context_of", "UnsupportedArchitectureError"]

HookKind = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_raw_out", "mlp_key"]
HOOK_KINDS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_raw_out", "mlp_key")

# kind -> (alias or canonical name relative to blocks.{l}, component path that must exist)
_BLOCK_HOOKS: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "mlp_raw_out": "mlp.hook_out",
    "mlp_key": "mlp.out.hook_in",
}


class UnsupportedArchitectureError(NotImplementedError):
    """The bridged model lacks a piece that locate-then-edit needs."""


@dataclass(frozen=True, kw_only=True)
class Arch:
    """Sizes, hook names and weight accessors of one bridged model (see the module docstring).

    Get one with `arch_of`. Cost: negligible (plain data; its methods run no model passes).

    Attributes:
        architecture: HF class name, e.g. ``"Gemma3ForCausalLM"``.
        n_layers, d_model, d_mlp, n_heads, d_vocab: sizes.
        post_norm: whether MLP and attention outputs pass a norm before joining the residual (Gemma).
        embed: canonical hook name of the token embeddings.
        names: kind -> canonical hook name per layer.
    """

    architecture: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_vocab: int
    post_norm: bool
    embed: str
    names: Mapping[str, tuple[str, ...]]

    @property
    def family(self) -> str:
        """``"post_norm"`` (MLP and attention outputs normed before the residual: Gemma) or ``"pre_norm"``.

        Editors' tuned defaults are per family (`factscope.edit.target.TargetConfig.for_model`).
        """
        return "post_norm" if self.post_norm else "pre_norm"

    def hook(self, kind: str, layer: int | None = None) -> str:
        """Canonical hook name of ``kind`` at ``layer`` (``kind="embed"`` takes no layer).

        Args:
            kind: ``"embed"`` or one of ``HOOK_KINDS`` (``"resid_pre"`` ... ``"mlp_key"``).
            layer: block index (negative counts from the end); ``None`` only for ``"embed"``.
        """
        if kind == "embed":
            return self.embed
        if kind not in self.names:
            raise ValueError(f"expected a hook kind in {('embed',) + HOOK_KINDS}, got {kind!r}")
        return self.names[kind][self.check_layer(layer)]

    def check_layer(self, layer: Any) -> int:
        """``layer`` normalised to ``[0, n_layers)``; negative values count from the end (``-1``: the last).

        The one layer check of factscope: every function that takes a layer passes it through here
        and records the normalised value, so ``layer=-1`` and ``layer=n_layers - 1`` give the same
        result. Cost: negligible.

        Args:
            layer: the layer to check; a non-integer (a bool, a float, a str) raises ``TypeError``, one
                outside ``[-n_layers, n_layers)`` raises ``ValueError``.
        """
        n = self.n_layers
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"expected an integer layer in [-{n}, {n}) (negative counts from the end), got "
                            f"{layer!r} ({type(layer).__name__})")
        if not -n <= layer < n:
            raise ValueError(f"expected a layer in [-{n}, {n}) (negative counts from the end) for this {n}-layer "
                             f"model, got {layer}")
        return layer % n

    def check_layers(self, layers: Any, *, name: str = "layers") -> tuple[int, ...]:
        """``layers`` (an int or a non-empty sequence of ints) normalised by `check_layer`, in the given order.

        Negative values count from the end. Two entries naming the same layer (``[1, 1]``, or ``[-1, 17]``
        on an 18-layer model) raise ``ValueError``: a layer is edited or attributed once. Callers
        that need them sorted sort the result. Cost: negligible.

        Args:
            layers: an int or a non-empty sequence of ints.
            name: the argument's name, for the error messages.
        """
        n = self.n_layers
        items = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else layers
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or len(items) == 0:
            raise ValueError(f"expected {name} to name at least one layer: an int or a non-empty sequence of ints "
                             f"in [-{n}, {n}) (negative counts from the end), got {layers!r}")
        out = tuple(self.check_layer(l) for l in items)
        if len(set(out)) != len(out):
            raise ValueError(f"expected distinct layers in {name}, got {list(items)} (normalised: {list(out)})")
        return out

    def W_out(self, model: Bridge, layer: int) -> Float[Tensor, "d_mlp d_model"]:
        """The live ``[d_mlp, d_model]`` view of layer ``layer``'s MLP output projection.

        ``key @ W_out`` is the MLP's raw output. Writes through it (``W.add_(Δ)`` under
        ``torch.no_grad()``) change the bridge's and the HF model's forward at once. Never use
        ``mlp.W_out += Δ`` (the bridge applies the add, then raises). ``model.W_out`` (stacked) is a
        copy, not a view.

        Args:
            model: the bridge this `Arch` describes.
            layer: block index (negative counts from the end).
        """
        W = model.blocks[self.check_layer(layer)].mlp.W_out
        if tuple(W.shape) != (self.d_mlp, self.d_model):
            raise UnsupportedArchitectureError(
                f"expected W_out of shape ({self.d_mlp}, {self.d_model}) at layer {layer}, got {tuple(W.shape)}"
            )
        return W


def _resolve(component: Any, rel: str, hook_dict: Mapping[str, Any], prefix: str) -> str | None:
    """Canonical name of ``prefix + rel``, following the bridge's alias tables."""
    parts = rel.split(".")
    owner = component
    for p in parts[:-1]:
        owner = getattr(owner, p, None) if owner is not None else None
    leaf = parts[-1]
    aliases = getattr(owner, "hook_aliases", None) or {}
    base = prefix + ".".join(parts[:-1])
    base = base + "." if parts[:-1] else base
    targets = aliases.get(leaf, leaf)
    for t in [targets] if isinstance(targets, str) else list(targets):
        name = base + t
        if name in hook_dict:
            return name
    name = base + leaf
    return name if name in hook_dict else None


_CACHE: "weakref.WeakKeyDictionary[Any, Arch]" = weakref.WeakKeyDictionary()


def arch_of(model: Bridge) -> Arch:
    """The `Arch` of a bridge (computed once per model object).

    Args:
        model: a `TransformerBridge` (from `load_model`, `tiny_model` or TransformerLens).

    Cost: negligible (a walk over the hook names on first call, then a cached lookup).

    Raises:
        UnsupportedArchitectureError: naming every piece that is missing.
    """
    try:
        return _CACHE[model]
    except (KeyError, TypeError):
        pass
    cfg = getattr(model, "cfg", None)
    blocks = getattr(model, "blocks", None)
    hook_dict = getattr(model, "hook_dict", None)
    kind = type(model).__name__
    if cfg is None or blocks is None or hook_dict is None:
        raise UnsupportedArchitectureError(
            f"expected a TransformerBridge with .cfg, .blocks and .hook_dict, got {kind} lacking "
            + ", ".join(n for n, v in (("cfg", cfg), ("blocks", blocks), ("hook_dict", hook_dict)) if v is None)
        )
    n_layers = int(cfg.n_layers)
    missing: list[str] = []
    names: dict[str, list[str]] = {k: [] for k in _BLOCK_HOOKS}
    for l in range(n_layers):
        block = blocks[l]
        for k, rel in _BLOCK_HOOKS.items():
            name = _resolve(block, rel, hook_dict, f"blocks.{l}.")
            if name is None:
                missing.append(f"blocks.{l}.{rel} ({k})")
            else:
                names[k].append(name)
        mlp = getattr(block, "mlp", None)
        if mlp is None or not hasattr(mlp, "W_out"):
            missing.append(f"blocks.{l}.mlp.W_out (the MLP output projection)")
    embed = _resolve(model, "hook_embed", hook_dict, "")
    if embed is None:
        missing.append("hook_embed (token embeddings)")
    architecture = (getattr(getattr(getattr(model, "original_model", None), "config", None), "architectures", None)
                    or [kind])[0]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise UnsupportedArchitectureError(
            f"{architecture} is not supported by factscope: locate-then-edit needs every block to have an "
            f"attention and a dense MLP with an output projection, but these are missing: {shown}"
        )
    a = Arch(
        architecture=architecture,
        n_layers=n_layers,
        d_model=int(cfg.d_model),
        d_mlp=int(cfg.d_mlp),
        n_heads=int(cfg.n_heads),
        d_vocab=int(cfg.d_vocab),
        post_norm=hasattr(blocks[0], "ln2_post"),
        embed=embed,
        names={k: tuple(v) for k, v in names.items()},
    )
    _CACHE[model] = a
    return a


@dataclass(frozen=True, kw_only=True)
class ModelContext:
    """What every stage needs to know about a model, gathered in one place (get it with `context_of`).

    Attributes:
        arch: the `Arch` (sizes, hook names, ``W_out`` views).
        tokenizer: the Hugging Face tokenizer.
        device: where the weights are (inputs are moved here).
        dtype: the weights' dtype.
        n_ctx: the longest sequence the model takes, in tokens (BOS included).
    """

    arch: Arch
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    n_ctx: int


def context_of(model: Bridge) -> ModelContext:
    """The `ModelContext` of a bridge: its `Arch` (computed once, see `arch_of`), tokenizer, device, dtype.

    Device and dtype are read from the first parameter on every call, so a model moved with ``.to()``
    is seen where it now is. Cost: negligible.
    """
    a = arch_of(model)
    p = next(model.parameters())
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0) or 1 << 30
    return ModelContext(arch=a, tokenizer=model.tokenizer, device=p.device, dtype=p.dtype, n_ctx=n_ctx)
