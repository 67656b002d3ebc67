"""The KV-cache seam: the one place that touches transformers' key/value caches or calls a block directly.

Prefix reuse makes tracing, knowledge-neuron IG, ROME's v*, MEMIT's z, the key statistics' corpus and
generation fast: the keys and values of positions every row shares are computed once, and later
passes run only the new positions against them. That needs two things from transformers and
TransformerLens, and every module reaches them through here:

- **A cache**, through transformers' public Cache API only (``DynamicCache()``, ``update``, ``crop``,
  ``batch_select_indices``, ``batch_repeat_interleave``, iteration); nothing here writes a cache's
  attributes.

  ==================================  ==========================================================
  `run_cached` (model, ids, cache)    run ``ids`` after the cache's positions; the cache grows
  `run_after` (model, ids, prefix)    the same, leaving ``prefix`` as it was (a copy grows)
  `prefix` (cache, t, rows)           a copy holding positions ``[0, t)`` (of some rows)
  `repeat_rows` (cache, n)            a copy of a one-row cache, repeated to ``n`` rows
  `layer_states` (cache)              each layer's ``(keys, values)``, ``[row, kv_head, pos, d_head]``
  `fill_layer` (cache, j, k, v)       put keys and values into layer ``j`` of a cache of one's own
  ==================================  ==========================================================

  Caches made here hold full layers: a sliding-window layer's cache (Gemma) drops positions beyond
  its window, so a prefix could not be cut out of it; the attention masks still apply the window.
- **A block call.** Tracing resumes rows at the first block their restoration changes, so it calls
  ``model.blocks[j]`` itself. `BlockCalls.capture` records the exact arguments the model's own
  forward passes every block for positions ``[t, T)`` after a ``t``-token cache (masks, rotary
  embeddings, positions, the cache), whatever the architecture; `BlockCalls.run` makes that call
  against a cache of the caller's.

Checked, not assumed. `check_cache` (once per model: at load, and before any cached pass of a bridge
made elsewhere) compares a cached continuation with the full forward; `BlockCalls.capture` checks
that the forward hands every block exactly one cache and that replaying a block's call reproduces
the block's own output. Each raises `UnsupportedArchitectureError` naming the installed versions
when the check fails; nothing falls back to another path, so a changed library cannot turn into
wrong numbers.

A known mismatch, bridged here: transformers 5.25 renamed the cache argument that decoder layers
pass to attention from ``past_key_values`` to ``cache``, and TransformerLens 4.3's attention bridges
read only ``past_key_values``: without help they drop the cache, and every cached continuation
silently ignores its prefix. `check_cache` registers a forward pre-hook on each block's attention
(plain ``torch.nn.Module`` API) that also passes ``cache`` under the old name when only the new one
is given. It changes nothing on transformers 5.24 and older, or once TransformerLens reads ``cache``.

Dimension names: ``row`` batch rows, ``pos`` positions, ``kv_head`` key/value heads, ``d_head``.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache

from factscope.arch import UnsupportedArchitectureError, context_of
from factscope.bridge import Bridge
from factscope.versions import library_versions

__all__ = ["Cache", "new_cache", "run_cached", "run_after", "prefix", "repeat_rows", "layer_states", "fill_layer",
           "check_cache", "BlockCalls"]

_CHECKED: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def _versions_text() -> str:
    return ", ".join(f"{k} {v}" for k, v in library_versions().items() if k != "python")


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' notice that ``past_key_values`` is now called ``cache``: TransformerLens
    passes the old name, and a user cannot act on it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*past_key_values.*deprecated", category=FutureWarning)
        yield


# --------------------------------------------------------------------------- the cache


def new_cache() -> Cache:
    """An empty cache of full (non-sliding) layers, which grows as layers are filled.

    Cost: negligible.
    """
    return DynamicCache()


def run_cached(model: Bridge, ids: Int[Tensor, "row pos"], cache: Cache | None = None, *,
               fwd_hooks: Sequence[tuple[str, Any]] = (), **kwargs: Any) -> tuple[Tensor, Cache]:
    """Run ``ids`` after ``cache``'s positions (none: a new cache); the cache grows by ``ids``' positions.

    Args:
        model: a bridge.
        ids: token ids of the new positions, ``[row, pos]``; ``row`` must match the cache's rows.
        cache: a cache from this module (or from an earlier `run_cached`); ``None`` starts an empty one.
        fwd_hooks: TransformerLens hooks, ``(name, fn)`` pairs, active for this pass only.
        **kwargs: passed to the bridge's forward (``attention_mask`` over prefix + new positions,
            ``logits_to_keep``, ...).

    Returns:
        ``(logits, cache)``: the logits the bridge returns and the grown cache (the same object when
        one was given).

    Cost: one forward over the new positions only (prefix positions are read from the cache).
    """
    check_cache(model)
    cache = new_cache() if cache is None else cache
    with _quiet():
        return model.run_with_hooks(ids, fwd_hooks=list(fwd_hooks), past_key_values=cache, use_cache=True,
                                    return_type="logits_and_cache", **kwargs)


def run_after(model: Bridge, ids: Int[Tensor, "row pos"], prefix_cache: Cache | None, *,
              fwd_hooks: Sequence[tuple[str, Any]] = (), **kwargs: Any) -> Tensor:
    """The logits of ``ids`` run after ``prefix_cache``'s positions, leaving ``prefix_cache`` as it was.

    Args:
        model: a bridge.
        ids: token ids of the new positions, ``[row, pos]``.
        prefix_cache: the shared prefix (``None``: ``ids`` are the whole prompt).
        fwd_hooks: TransformerLens hooks for this pass.
        **kwargs: passed to the bridge's forward.

    Cost: one forward over the new positions, plus a copy of the prefix's keys and values.
    """
    if prefix_cache is None:
        return model.run_with_hooks(ids, fwd_hooks=list(fwd_hooks), **kwargs)
    return run_cached(model, ids, copy.deepcopy(prefix_cache), fwd_hooks=fwd_hooks, **kwargs)[0]


def prefix(cache: Cache, t: int, rows: Int[Tensor, "row"] | None = None) -> Cache | None:
    """A copy of ``cache`` holding its first ``t`` positions (only ``rows``, in that order, if given).

    Args:
        cache: a cache of full layers (from `run_cached`).
        t: positions to keep, ``0 <= t <= cache length``; ``t = 0`` gives ``None`` (no prefix).
        rows: row indices to keep (repeats allowed); ``None`` keeps every row.

    Cost: a copy of the cache's keys and values.
    """
    T = cache.get_seq_length()
    if not 0 <= t <= T:
        raise ValueError(f"expected a prefix length in [0, {T}] for this {T}-position cache, got {t}")
    if t == 0:
        return None
    out = copy.deepcopy(cache)
    if t < T:
        out.crop(t - T)
    if rows is not None:
        out.batch_select_indices(rows)
    return out


def repeat_rows(cache: Cache | None, n: int) -> Cache | None:
    """A copy of ``cache`` with each row repeated ``n`` times (``None`` stays ``None``).

    Args:
        cache: a cache (typically of one row: a prompt's prefix shared by ``n`` batch rows).
        n: repeats, ``>= 1``.

    Cost: a copy of ``n`` × the cache's keys and values.
    """
    if cache is None:
        return None
    out = copy.deepcopy(cache)
    out.batch_repeat_interleave(n)
    return out


KV = Float[Tensor, "row kv_head pos d_head"]


def layer_states(cache: Cache) -> list[tuple[KV, KV]]:
    """Every layer's ``(keys, values)`` as the cache holds them (read only; do not write into them).

    Args:
        cache: a cache of full layers (from `run_cached`).

    Cost: negligible (no copies).
    """
    return [(entry[0], entry[1]) for entry in cache]


def fill_layer(cache: Cache, layer: int, keys: Tensor, values: Tensor) -> None:
    """Append ``keys`` and ``values`` (``[row, kv_head, pos, d_head]``) to layer ``layer`` of ``cache``.

    Used to give one block a prefix of the caller's choosing before `BlockCalls.run`; layers below
    ``layer`` that were never filled stay empty.

    Args:
        cache: a cache made by ``DynamicCache()`` (or `prefix`), which the caller owns.
        layer: the layer index.
        keys, values: the states, as `layer_states` returns them.

    Cost: a copy of ``keys`` and ``values``.
    """
    cache.update(keys, values, layer)


# --------------------------------------------------------------------------- the check


def _alias_cache_kwarg(model: Bridge) -> None:
    """Hook each block's attention so that a ``cache`` keyword also arrives as ``past_key_values``."""
    def pre(module, args, kwargs):
        if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
            return args, {**kwargs, "past_key_values": kwargs["cache"]}
        return None

    for block in model.blocks:
        attn = getattr(block, "attn", None)
        if attn is not None:  # a block without one fails the check below, or arch_of, with a clear error
            attn.register_forward_pre_hook(pre, with_kwargs=True)


@torch.no_grad()
def check_cache(model: Bridge) -> None:
    """Check, once per model object, that a cached continuation equals the full forward.

    Registers the ``cache`` → ``past_key_values`` alias first (see the module docstring). Compares the
    last-position logits of a 6-token sequence run whole with those of its last 3 tokens run after a
    cache of the first 3.

    Args:
        model: a bridge (with no hooks active that depend on positions).

    Raises:
        UnsupportedArchitectureError: the two differ by more than 1e-3 of the logits' spread, naming
            the installed versions. Prefix reuse would then give wrong numbers, so nothing runs.

    Cost: two short forwards, once per model object.
    """
    if _CHECKED.get(model):
        return
    _alias_cache_kwarg(model)
    dev = context_of(model).device
    vocab = int(model.cfg.d_vocab)
    bos = model.tokenizer.bos_token_id if getattr(model, "tokenizer", None) is not None else None
    ids = torch.tensor([[bos if bos is not None else 1] + [(7 + 13 * i) % vocab for i in range(5)]], device=dev)
    with _quiet():
        whole = model(ids, logits_to_keep=1)[0, -1].float()
        _, kv = model(ids[:, :3], past_key_values=DynamicCache(), use_cache=True, return_type="logits_and_cache")
        after = model(ids[:, 3:], past_key_values=kv, logits_to_keep=1)[0, -1].float()
    err = float((whole - after).abs().max())
    spread = float(whole.std()) + 1e-12
    if not err <= 1e-3 * spread:
        raise UnsupportedArchitectureError(
            f"the bridge does not carry a KV cache correctly with {_versions_text()}: logits after a cached "
            f"prefix differ from the full forward by {err:.3g} (the logits' spread is {spread:.3g}; expected at "
            f"most {1e-3 * spread:.3g}). Tracing, knowledge neurons, ROME, MEMIT and generation reuse cached "
            f"prefixes and would give wrong numbers, so they refuse to run. Install the locked versions "
            f"(`make install`, from requirements.lock)."
        )
    _CHECKED[model] = True


# --------------------------------------------------------------------------- the block call


def _is_cache(x: Any) -> bool:
    return isinstance(x, Cache)


@dataclass(frozen=True)
class BlockCalls:
    """How the model's own forward calls each block on positions ``[t, T)`` after a ``t``-token cache.

    Get one with `BlockCalls.capture`; call a block with `run`. Cost: negligible to hold (the
    captured masks and rotary embeddings of one row).

    Attributes:
        calls: per layer, the block's arguments after the hidden states, and its keyword arguments.
        t: the prefix length the calls were captured for.
    """

    calls: tuple[tuple[tuple, dict], ...]
    t: int

    @classmethod
    @torch.no_grad()
    def capture(cls, model: Bridge, ids: Int[Tensor, "one pos"], prefix_cache: Cache | None) -> "BlockCalls":
        """Capture every block's call from one forward of ``ids[:, t:]`` after ``prefix_cache`` (``t`` positions).

        Then replay each block's call on the inputs it got and check that it gives the block's output.

        Args:
            model: a bridge.
            ids: the whole prompt, ``[1, pos]``.
            prefix_cache: one row's cache of positions ``[0, t)`` (``None`` for ``t = 0``); not changed.

        Raises:
            UnsupportedArchitectureError: the forward did not hand some block exactly one cache (when
                there is a prefix), or a replayed call disagrees with the block's own output.

        Cost: one forward over positions ``[t, T)`` of one row, and each block once more for the check.
        """
        check_cache(model)
        L = len(model.blocks)
        t = 0 if prefix_cache is None else prefix_cache.get_seq_length()
        seen: list[tuple[Tensor, tuple, dict] | None] = [None] * L
        outs: list[Tensor | None] = [None] * L

        def pre(j):
            def hook(mod, args, kwargs):
                if not args or not isinstance(args[0], Tensor):
                    raise UnsupportedArchitectureError(
                        f"expected block {j} to receive the hidden states as its first positional argument, got "
                        f"{len(args)} positional argument(s) ({_versions_text()})")
                seen[j] = (args[0].clone(), args[1:], dict(kwargs))
            return hook

        def post(j):
            def hook(mod, args, kwargs, out):
                outs[j] = (out[0] if isinstance(out, tuple) else out).clone()
            return hook

        handles = [b.register_forward_pre_hook(pre(j), with_kwargs=True) for j, b in enumerate(model.blocks)]
        handles += [b.register_forward_hook(post(j), with_kwargs=True) for j, b in enumerate(model.blocks)]
        work = copy.deepcopy(prefix_cache) if prefix_cache is not None else DynamicCache()
        try:
            with _quiet():
                model(ids[:, t:], past_key_values=work, use_cache=True, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        missing = [j for j in range(L) if seen[j] is None]
        if missing:
            raise UnsupportedArchitectureError(f"the forward did not call blocks {missing} through model.blocks "
                                               f"({_versions_text()})")
        calls = []
        for j, (_, args, kwargs) in enumerate(seen):
            n = sum(map(_is_cache, args)) + sum(map(_is_cache, kwargs.values()))
            if n != 1:
                raise UnsupportedArchitectureError(
                    f"expected the forward to pass block {j} one KV cache, got {n} ({_versions_text()}); the "
                    f"decoder-block call convention changed, and resumed blocks would not see the prefix")
            calls.append((args, kwargs))
        out = cls(tuple(calls), t)
        states = layer_states(prefix_cache) if prefix_cache is not None else None
        for j, (h_in, _, _) in enumerate(seen):
            own = DynamicCache()
            if states is not None:
                fill_layer(own, j, *states[j])
            err = float((out.run(model, j, h_in, own) - outs[j]).abs().max())
            if not err <= 1e-4 * (1 + float(outs[j].abs().max())):
                raise UnsupportedArchitectureError(
                    f"calling block {j} directly with the arguments the forward passed it gives a different output "
                    f"(max difference {err:.3g}; {_versions_text()}); resuming blocks would give wrong numbers")
        return out

    def run(self, model: Bridge, layer: int, h: Float[Tensor, "row pos d_model"], cache: Cache
            ) -> Float[Tensor, "row pos d_model"]:
        """Block ``layer`` on ``h`` (positions ``[t, T)``), attending to layer ``layer`` of ``cache``.

        Args:
            model: the bridge the calls were captured from.
            layer: the block index.
            h: the residual entering the block at positions ``[t, T)``, any number of rows.
            cache: a cache whose layer ``layer`` holds the ``t``-position prefix of every row of ``h``
                (see `fill_layer`; empty when ``t = 0``); the block appends ``h``'s keys and values to it.

        Cost: one block over ``row × (T − t)`` positions.
        """
        args, kwargs = self.calls[layer]
        args = tuple(cache if _is_cache(x) else x for x in args)
        kwargs = {k: (cache if _is_cache(v) else v) for k, v in kwargs.items()}
        with _quiet():
            out = model.blocks[layer](h, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out
