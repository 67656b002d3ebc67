"""Layer profiles: causal-tracing effects averaged over many facts, in ROME's six token buckets.

For every fact the model answers correctly, `trace` gives an indirect-effect grid per kind; each
prompt's tokens fall into six buckets (ROME's Figure 2):

    first subject token | middle subject tokens | last subject token |
    first subsequent token | further tokens | last token

Grids are averaged within a bucket per fact, then across facts, with a 95% normal-approximation
confidence interval (mean ± 1.96 · sd / √n, n = facts that have the bucket: a one-token subject
has no middle tokens). Facts the model gets wrong (top-1 ≠ target) are skipped and listed.

Cost: one `trace` per fact the model answers correctly: O(facts) traces (measured times:
docs/guide.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from factscope.arch import arch_of
from factscope.bridge import Bridge
from factscope.facts import EditRequest, Fact
from factscope.locate.tracing import check_trace_args, trace
from factscope.predict import predict
from factscope.result_files import ResultContents, Saveable, unnest
from factscope.tokens import encode

__all__ = ["BUCKETS", "ProfileResult", "layer_profile", "token_buckets", "LayerChoice", "recommended_layer",
           "one_per_relation"]

BUCKETS: tuple[str, ...] = ("first subject", "middle subject", "last subject", "first subsequent", "further", "last")
"""ROME's six token buckets (Figure 2), in order: the ``bucket`` rows of a `ProfileResult`."""


def token_buckets(n_tokens: int, subject: tuple[int, int]) -> dict[str, list[int]]:
    """Token indices of each of `BUCKETS` in one prompt (empty when it has none).

    BOS and the tokens before the subject belong to no bucket.

    Args:
        n_tokens: the prompt's length in tokens, BOS included.
        subject: the subject's ``(start, end)`` token span, as `factscope.subject_span` gives it.

    Cost: negligible (no model passes).
    """
    s0, s1 = subject
    last = n_tokens - 1
    b = {
        "first subject": [s0],
        "middle subject": list(range(s0 + 1, s1 - 1)),
        "last subject": [s1 - 1],  # a one-token subject is both its first and its last token
        "first subsequent": [s1] if s1 < last else [],
        "further": list(range(s1 + 1, last)),
        "last": [last] if last >= s1 else [],
    }
    return b


@dataclass(frozen=True)
class ProfileResult(Saveable):
    """Average indirect effect per (kind, bucket, layer) over facts (what `layer_profile` returns).

    Cost: negligible to use and save (no model passes).

    Attributes:
        mean, lo, hi: kind -> ``[bucket, layer]`` mean indirect effect and its 95% CI bounds.
        n: kind -> ``[bucket]`` number of facts contributing to each bucket.
        facts: prompts that were traced; ``skipped``: prompts skipped with the reason.
        settings: arguments that shaped the result.
    """

    mean: dict[str, Float[Tensor, "bucket layer"]]
    lo: dict[str, Float[Tensor, "bucket layer"]]
    hi: dict[str, Float[Tensor, "bucket layer"]]
    n: dict[str, Tensor]
    facts: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds profiled."""
        return tuple(self.mean)

    def best_layer(self, kind: str = "mlp", bucket: str = "last subject") -> int:
        """The layer with the largest mean indirect effect for ``kind`` at ``bucket``: the edit layer.

        ROME edits the MLP where restoring the last subject token helps most.

        Args:
            kind: a profiled kind (default ``"mlp"``).
            bucket: one of `BUCKETS` (default ``"last subject"``).
        """
        if kind not in self.mean:
            raise ValueError(f"expected a traced kind among {list(self.mean)}, got {kind!r}")
        row = self.mean[kind][BUCKETS.index(bucket)]
        if torch.isnan(row).all():
            raise ValueError(f"no fact has a {bucket!r} token")
        return int(torch.nan_to_num(row, nan=-math.inf).argmax())

    def to_dataframe(self) -> Any:
        """One row per (kind, bucket, layer): mean, ``ci_low``, ``ci_high`` and ``n``."""
        import pandas as pd

        rows = []
        for k in self.kinds:
            for bi, b in enumerate(BUCKETS):
                for l in range(self.mean[k].shape[1]):
                    rows.append({"kind": k, "bucket": b, "layer": l, "mean": float(self.mean[k][bi, l]),
                                 "ci_low": float(self.lo[k][bi, l]), "ci_high": float(self.hi[k][bi, l]),
                                 "n": int(self.n[k][bi])})
        return pd.DataFrame(rows)

    RESULT_KIND = "factscope.profile"
    RESULT_VERSION = 1

    def to_contents(self) -> ResultContents:
        """Tensors ``{mean,lo,hi,n}.{kind}``; facts, skipped, settings and the kinds' order as JSON meta.

        Cost: negligible (no copies).
        """
        tensors = {f"{part}.{k}": t for part in _PARTS for k, t in getattr(self, part).items()}
        meta = {"kinds": list(self.kinds), "facts": self.facts, "skipped": self.skipped, "settings": self.settings}
        return ResultContents(tensors, meta)

    @classmethod
    def from_contents(cls, contents: ResultContents) -> ProfileResult:
        """The profile that `to_contents` described.

        Args:
            contents: its tensors and meta (from `factscope.result_files.load_result`).

        Cost: negligible.
        """
        t, meta = contents
        parts = {part: {k: unnest(part, t)[k] for k in meta["kinds"]} for part in _PARTS}
        return cls(**parts, facts=tuple(meta["facts"]), skipped=tuple(tuple(s) for s in meta["skipped"]),
                   settings=meta["settings"])


_PARTS = ("mean", "lo", "hi", "n")


def _target(f: Fact | EditRequest) -> str | None:
    return f.target if isinstance(f, Fact) else f.target_true


def layer_profile(
    model: Bridge,
    facts: Sequence[Fact | EditRequest] | None = None,
    *,
    kind: str = "mlp",
    noise: float = 3.0,
    samples: int = 10,
    window: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> ProfileResult:
    """Causal-tracing indirect effects averaged over facts, per token bucket and layer, with 95% CIs.

    Facts the model does not answer top-1 are skipped (listed in ``skipped``).

    Args:
        model: a bridge.
        facts: `Fact`s or `EditRequest`s with targets (``target_true`` for requests); default
            ``None``: all of `factscope.builtin_facts`.
        kind: ``"mlp"`` (the default: what locates the edit layer), ``"hidden"``, ``"attn"`` or ``"all"``.
        noise, samples, window, seed: passed to `trace` (defaults 3.0, 10, 10, 0; fact i uses seed
            ``seed + i``).
        progress: show a progress bar (default ``True``).

    Returns:
        `ProfileResult`: ``mean[kind]``, ``lo[kind]``, ``hi[kind]`` are ``[bucket, layer]``.

    Raises:
        TypeError / ValueError: no facts, a non-fact, a fact without a target, bad trace settings.
        ContextLengthError: a prompt longer than the model's context. MemoryError: the longest
            prompt's `trace` would not fit (`factscope.locate.estimate_trace_memory`). All before any
            model pass. ValueError: the model answers none of the facts (after one `predict` batch).

    Cost: one `predict` batch, then one `trace` per fact answered correctly: O(facts) traces, each
    O(samples · T² · L²) block-token steps (measured times: docs/guide.md). Memory: that of one
    `trace`.
    """
    from tqdm.auto import tqdm

    if facts is None:
        from factscope.datasets import builtin_facts

        facts = builtin_facts()
    if isinstance(facts, (str, bytes, Fact, EditRequest)) or not isinstance(facts, Iterable):
        raise TypeError(f"expected facts to be a sequence of Facts or EditRequests, got {type(facts).__name__}")
    facts = list(facts)
    if not facts:
        raise ValueError("expected at least one fact, got none")
    for i, f in enumerate(facts):
        if not isinstance(f, (Fact, EditRequest)):
            raise TypeError(f"expected facts[{i}] to be a Fact or an EditRequest, got {type(f).__name__}: {f!r:.80}")
    if any(_target(f) is None for f in facts):
        raise ValueError("expected every fact to have a target (layer_profile skips facts the model gets wrong)")
    # before any model pass: every prompt fits the context (encode), the trace settings are valid and
    # the longest prompt's trace fits in memory
    longest = max(len(encode(model, f.text)) for f in facts)
    kinds = check_trace_args(model, longest, kind=kind, samples=samples, window=window, noise=noise)
    preds = predict(model, [f.text for f in facts], [_target(f) for f in facts])
    keep = [f for f, p in zip(facts, preds) if p.correct]
    skipped = tuple((p.prompt, f"model answers {p.answer.strip()!r}, not {p.target!r}") for p in preds if not p.correct)
    if not keep:
        raise ValueError(f"the model answers none of the {len(facts)} facts correctly; nothing to profile")
    per_fact: dict[str, list[Tensor]] = {k: [] for k in kinds}  # each [bucket, layer], NaN where absent
    for i, f in enumerate(tqdm(keep, desc=f"tracing ({kind})", disable=not progress)):
        r = trace(model, f, kind=kind, noise=noise, samples=samples, window=window, seed=seed + i)
        buckets = token_buckets(len(r.tokens), r.subject)
        for k in kinds:
            ie = r.indirect_effect(k)  # [tok, layer]
            rows = [ie[idx].mean(0) if idx else torch.full((ie.shape[1],), math.nan) for idx in buckets.values()]
            per_fact[k].append(torch.stack(rows))
    mean, lo, hi, n = {}, {}, {}, {}
    for k in kinds:
        x = torch.stack(per_fact[k])  # [fact, bucket, layer]
        have = ~torch.isnan(x)
        cnt = have.sum(0).clamp(min=1).float()
        m = torch.nan_to_num(x).sum(0) / cnt
        var = (torch.nan_to_num(x - m) ** 2 * have).sum(0) / (cnt - 1).clamp(min=1)
        half = 1.96 * var.sqrt() / cnt.sqrt()
        empty = ~have.any(0)
        m[empty] = math.nan
        mean[k], lo[k], hi[k] = m, m - half, m + half
        n[k] = have[:, :, 0].sum(0)
    settings = dict(kinds=list(kinds), noise=noise, samples=samples, window=window, seed=seed, n_facts=len(facts))
    return ProfileResult(mean=mean, lo=lo, hi=hi, n=n, facts=tuple(f.text for f in keep), skipped=skipped,
                         settings=settings)


# --------------------------------------------------------------------------- the edit layer


def one_per_relation(facts: Sequence[Fact] | None = None) -> list[Fact]:
    """The first fact of each relation, in order: the set `recommended_layer` profiles.

    One trace per relation (12 of the 86 built-in facts) instead of one per fact: a seventh of the
    profiling time (measured times: docs/guide.md).

    Args:
        facts: facts or requests with a ``relation``; default ``None``: `factscope.builtin_facts`.

    Cost: negligible (no model passes).
    """
    if facts is None:
        from factscope.datasets import builtin_facts

        facts = builtin_facts()
    seen: dict[str, Fact] = {}
    for f in facts:
        seen.setdefault(f.relation, f)
    return list(seen.values())


@dataclass(frozen=True)
class LayerChoice:
    """The recommended edit layer, why, and the profile it came from (what `recommended_layer` returns).

    Cost: negligible (plain data).

    Attributes:
        layer: the layer to edit.
        reason: a sentence saying why (peak effect, number of facts, whether it was cached).
        profile: the `ProfileResult` the layer was read from.
    """

    layer: int
    reason: str
    profile: ProfileResult


def recommended_layer(
    model: Bridge,
    facts: Sequence[Fact | EditRequest] | None = None,
    *,
    kind: str = "mlp",
    samples: int = 10,
    window: int | None = None,
    seed: int = 0,
    cache: bool = True,
    progress: bool = True,
) -> LayerChoice:
    """The edit layer: where restoring ``kind`` at the last subject token helps most, over ``facts``.

    The profile is cached on disk (``cache_dir("profiles")``), keyed by the model fingerprint, the
    facts and every setting, so editors asking again (``rome(layer=None)``) cost nothing.

    Args:
        model: a bridge.
        facts: facts with targets; default ``None``: `one_per_relation` of the built-in facts (12).
        kind: the kind traced (default ``"mlp"``).
        samples: noise draws per cell (default 10).
        window: layers restored together; default ``None``: ROME's 10, clipped to the model.
        seed: seeds the noise (default 0).
        cache: read and write the on-disk profile (default ``True``); ``False`` recomputes it.
        progress: show a progress bar (default ``True``).

    Returns:
        `LayerChoice`: ``layer``, ``reason`` and the ``profile``.

    Cost: first call, a `layer_profile` of ``facts`` (12 traces by default); later calls a
    `factscope.fingerprint` and a file read, no model passes (measured times: docs/guide.md).
    """
    from factscope.cache import cache_dir, key_digest
    from factscope.models import fingerprint

    facts = one_per_relation() if facts is None else list(facts)
    window = min(10, arch_of(model).n_layers) if window is None else window  # ROME's 10, clipped to the model
    key = dict(kind="profile", model=fingerprint(model), facts=[(f.text, _target(f)) for f in facts],
               trace_kind=kind, samples=samples, seed=seed, noise=3.0, window=window, version=1)
    path = cache_dir("profiles", key_digest(key) + ".safetensors")
    prof = None
    if cache and path.exists():
        try:
            prof = ProfileResult.load(path)
        except Exception as e:  # a damaged entry: recompute it
            import warnings

            warnings.warn(f"ignoring a damaged cached profile {path} ({e}); recomputing", stacklevel=2)
    cached = prof is not None
    if prof is None:
        prof = layer_profile(model, facts, kind=kind, samples=samples, window=window, seed=seed, progress=progress)
        if cache:
            prof.save(path)
    layer = prof.best_layer(kind)
    peak = float(prof.mean[kind][BUCKETS.index("last subject"), layer])
    reason = (f"peak {kind} indirect effect at the last subject token ({peak:.3f}) in the causal-tracing profile "
              f"of {len(prof.facts)} facts" + (", cached" if cached else ""))
    return LayerChoice(layer=layer, reason=reason, profile=prof)
