"""Key statistics for an edit: the C = E[kkᵀ] of each edited layer, given or from the disk cache.

ROME, MEMIT, AlphaEdit and `EditSession` all need, per edited layer l, the uncentred second moment
C of the MLP keys (``[d_mlp, d_mlp]`` float64; `factscope.edit.covariance`). A caller may pass the
ones it has (``C={layer: tensor}``); `key_stats` keeps those and computes or loads the rest in one
shared pass, with the corpus and token count of the editor's `TargetConfig`::

    C = key_stats(model, [4, 5, 6], config)           # {4: C4, 5: C5, 6: C6}
    C = key_stats(model, [4, 5, 6], config, C={6: C6}) # only 4 and 5 are looked up

Why it matters for sequential editing: the cache is keyed by the model's fingerprint, so asking
again after an edit would compute C from the *edited* model. Callers that edit one after another
(`EditSession`, the registry's one-at-a-time editors) call this once on the unedited model and pass
the result to every step.

Cost: given layers, none; the others: `factscope.edit.covariances` (a file read each once cached;
otherwise the corpus and one statistics forward up to the deepest missing layer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jaxtyping import Float
from torch import Tensor

from factscope.bridge import Bridge
from factscope.edit.covariance import covariances
from factscope.edit.target import TargetConfig

__all__ = ["key_stats"]


def key_stats(model: Bridge, layers: Sequence[int], config: TargetConfig,
              C: Mapping[int, Float[Tensor, "d_mlp d_mlp"]] | None = None, *,
              progress: bool = True) -> dict[int, Float[Tensor, "d_mlp d_mlp"]]:
    """``{layer: C}``: the given statistics, and the missing layers' from `covariances` (cached on disk).

    Args:
        model: a bridge (unedited, when the statistics are for sequential edits).
        layers: the layers that need statistics (non-negative indices).
        config: the editor's `TargetConfig`; its ``corpus`` and ``n_tokens`` (``None``: the default)
            say how missing statistics are computed.
        C: statistics already at hand, ``{layer: [d_mlp, d_mlp]}``; kept as given. ``None``: none.
        progress: progress bars while computing.

    Returns:
        A new dict with every given layer plus every one of ``layers``.

    Cost: none for the given layers; for the others one `covariances` call (see there).
    """
    out = dict(C or {})
    missing = [l for l in layers if l not in out]
    if missing:
        kw = {} if config.n_tokens is None else {"n_tokens": config.n_tokens}
        out.update(covariances(model, missing, corpus=config.corpus, progress=progress, **kw))
    return out
