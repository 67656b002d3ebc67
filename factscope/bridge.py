"""The model's type: `Bridge`, what every factscope function takes as ``model``.

A bridge is a TransformerLens 4.x ``TransformerBridge`` (from `factscope.load_model`,
`factscope.tiny_model`, or ``TransformerBridge.boot_transformers`` yourself). `Bridge` is a
`typing.Protocol` naming exactly the part of it that factscope uses, so that:

- signatures say what they take (``model: Bridge``, never ``Any``);
- importing factscope does not import TransformerLens' bridge module (a slow import) just for a type;
- ``isinstance(x, Bridge)`` is a cheap structural check (attributes present, not their types).

What factscope asks of a bridge (and nothing else)::

    model.cfg                 sizes: n_layers, d_model, d_mlp, n_heads, d_vocab, n_ctx
    model.tokenizer           the Hugging Face tokenizer
    model.blocks[l]           block l: .attn, .mlp (with .W_out, the MLP output projection), norms
    model.hook_dict           hook name -> HookPoint (the architecture adapter resolves names here)
    model.original_model      the Hugging Face model it wraps (config, architectures)
    model(ids, ...)           forward; model.run_with_hooks / run_with_cache / hooks(...)
    model.parameters()        torch parameters (device, dtype, the fingerprint)

Where a thing is inside a block (hook names, W_out's view) is `factscope.arch`'s job; per-model
facts computed once (architecture, tokenizer, device, dtype) are `factscope.arch.context_of`.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol, runtime_checkable

import torch

__all__ = ["Bridge"]


@runtime_checkable
class Bridge(Protocol):
    """A TransformerLens ``TransformerBridge``, as far as factscope uses one (see the module docstring)."""

    cfg: Any
    tokenizer: Any
    blocks: Any
    hook_dict: dict[str, Any]
    original_model: torch.nn.Module

    def __call__(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.nn.Parameter]]: ...

    def run_with_hooks(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_cache(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...

    def hooks(self, *args: Any, **kwargs: Any) -> Any: ...
