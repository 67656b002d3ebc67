"""Causal tracing (Meng et al. 2022): which hidden states carry a fact from the subject to the answer?

Corrupt the subject (Gaussian noise on its token embeddings), then restore one clean state at a
time, at token t and layer l, and read p(answer) at the last position. A cell's score is that
probability averaged over ``samples`` noise draws; the *indirect effect* is score − corrupted score.

Kinds of state restored at (t, l):
- ``hidden``: the residual stream leaving block l (``resid_post``).
- ``mlp`` / ``attn``: that sublayer's contribution to the residual (after Gemma's post-norms) at
  token t in every layer of a window of ``window`` layers centred on l, ``[l - w//2, l + w//2)``,
  clipped to the model (ROME's window of 10).

How it is fast. Restoring (t, l) changes only positions ≥ t, and only from the first block the
restoration touches (block l + 1 for a hidden state; the window's first layer for mlp/attn). So:
- positions before t keep the corrupted run's keys and values: each cell computes only the suffix
  ``[t, T)``, attending to a copy of the corrupted run's KV cache;
- a cell's rows join the batch at their first changed block, starting from the corrupted residual
  entering it; blocks below are never run for them. Blocks are called with exactly the arguments
  the model's own forward passes them (`factscope.kv.BlockCalls`, captured from a 1-row forward and
  checked by replaying it), so any architecture the bridge runs works;
- all cells that start at the same t (every layer, kind and sample) share one batched pass;
- mlp/attn windows clipped at layer 0 patch the same layers as the widest of them until they end,
  so they share its rows up to there and split off (a tenth of the block work for those kinds);
- cells before the subject's first token equal the corrupted score (noise touches only subject
  tokens) and are not computed.
The reference algorithm (one full forward of 1 + samples rows per cell) is kept in the tests and
the benchmark, and every cell matches it.

Cost: about ``samples × Σ_{t ≥ subject start} (T − t) × Σ_cells (L − first changed block)`` token-
block evaluations, i.e. O(samples · T² · L²) block-token steps for T tokens and L layers, all without
gradients (`benchmarks/bench_trace.py` prints the ratio to the reference; measured times are in
docs/guide.md). Memory: one batch of up to ``kinds × layers × samples`` rows over the suffix, with a
key/value cache per row and ``[rows, d_vocab]`` final logits (`estimate_trace_memory`; on Gemma,
kind="all", 10 samples: 540 rows over a 262k vocabulary). A prompt longer than the model's context, or
work whose estimate exceeds the free memory, is refused before anything is allocated.

Dimension names: ``tok`` prompt tokens (BOS included), ``layer`` blocks, ``sample`` noise draws.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from factscope.arch import arch_of, context_of
from factscope.bridge import Bridge
from factscope.facts import EditRequest, Fact
from factscope.kv import BlockCalls, Cache, fill_layer, layer_states, new_cache, prefix, run_cached
from factscope.result_files import ResultContents, Saveable, nest, unnest
from factscope.tokens import encode, str_tokens, subject_span, target_ids

__all__ = ["TraceResult", "trace", "embedding_sigma", "estimate_trace_memory", "KINDS"]

KINDS: tuple[str, ...] = ("hidden", "mlp", "attn")
"""The kinds of state `trace` restores: the residual stream, the MLP output, the attention output."""
_HOOK_KIND = {"hidden": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


# --------------------------------------------------------------------------- noise scale

_SIGMA: "weakref.WeakKeyDictionary[Any, float]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def embedding_sigma(model: Bridge, subjects: Sequence[str] | None = None) -> float:
    """σ for Gaussian corruption: the standard deviation of subject-token embeddings.

    As in ROME, one scalar std over the embedding vectors (as they enter block 0, so Gemma's
    √d_model scaling is included) of the tokens of many subjects.

    Args:
        model: a bridge.
        subjects: the subjects whose tokens are pooled; default ``None``: the subjects of
            `factscope.builtin_facts` (then the result is cached per model object).

    Cost: one embedding lookup (no blocks run); negligible, and free on later default calls.
    """
    default = subjects is None
    if default and model in _SIGMA:
        return _SIGMA[model]
    if default:
        from factscope.datasets import builtin_facts

        subjects = sorted({f.subject for f in builtin_facts()})
    a = arch_of(model)
    ids = sorted({i for s in subjects for i in target_ids(model, s)})
    acts: list[Tensor] = []

    def grab(act, hook):
        acts.append(act.detach())

    x = torch.tensor(ids, device=_device(model))[:, None]  # one token per row: [n_tokens, 1]
    model.run_with_hooks(x, fwd_hooks=[(a.embed, grab)], stop_at_layer=0)
    sigma = float(acts[0].float().std())
    if default:
        _SIGMA[model] = sigma
    return sigma


def _device(model: Bridge) -> torch.device:
    return context_of(model).device


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class TraceResult(Saveable):
    """Scores of a causal trace (what `trace` returns); ``.to_dataframe()``, ``.save()``, ``.load()``.

    Cost: negligible to use and save (no model passes; a few KB of scores).

    Attributes:
        scores: kind -> ``[tok, layer]`` p(answer) with that cell restored (mean over samples).
        clean: p(answer) of the clean run.
        corrupted: p(answer) with the subject corrupted and nothing restored.
        tokens: the prompt's tokens, decoded (BOS first).
        subject: ``(start, end)`` token span of the subject.
        answer: the decoded answer token traced; ``answer_id`` its id.
        prompt: the full prompt; ``settings`` every argument that shaped the result.
    """

    scores: dict[str, Float[Tensor, "tok layer"]]
    clean: float
    corrupted: float
    tokens: tuple[str, ...]
    subject: tuple[int, int]
    answer: str
    answer_id: int
    prompt: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds traced, a subset of `KINDS` in their order."""
        return tuple(self.scores)

    def indirect_effect(self, kind: str) -> Float[Tensor, "tok layer"]:
        """Restored score minus corrupted score, per cell: ``[tok, layer]``.

        Args:
            kind: one of ``self.kinds``.
        """
        return self.scores[kind] - self.corrupted

    @property
    def total_effect(self) -> float:
        """Clean score minus corrupted score."""
        return self.clean - self.corrupted

    def to_dataframe(self) -> Any:
        """One row per (kind, token, layer): score and indirect effect."""
        import pandas as pd

        rows = []
        s0, s1 = self.subject
        for kind, sc in self.scores.items():
            for t in range(sc.shape[0]):
                for l in range(sc.shape[1]):
                    rows.append({"kind": kind, "token_index": t, "token": self.tokens[t], "subject": s0 <= t < s1,
                                 "layer": l, "score": float(sc[t, l]), "indirect_effect": float(sc[t, l]) - self.corrupted})
        return pd.DataFrame(rows)

    RESULT_KIND = "factscope.trace"
    RESULT_VERSION = 1

    def to_contents(self) -> ResultContents:
        """The score grids as tensors ``scores.{kind}``; everything else as JSON meta.

        Cost: negligible (no copies).
        """
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "scores"}
        return ResultContents(nest("scores", self.scores), {**meta, "kinds": list(self.scores)})

    @classmethod
    def from_contents(cls, contents: ResultContents) -> TraceResult:
        """The result that `to_contents` described.

        Args:
            contents: its tensors and meta (from `factscope.result_files.load_result`).

        Cost: negligible.
        """
        scores, meta = unnest("scores", contents.tensors), dict(contents.meta)
        kinds = meta.pop("kinds")
        meta["tokens"], meta["subject"] = tuple(meta["tokens"]), tuple(meta["subject"])
        return cls(scores={k: scores[k] for k in kinds}, **meta)


# --------------------------------------------------------------------------- trace


def _window(l: int, window: int, n_layers: int) -> range:
    return range(max(0, l - window // 2), min(n_layers, l - window // 2 + window))


def _kinds(kind: Any) -> tuple[str, ...]:
    kinds = KINDS if kind == "all" else (kind,)
    if any(k not in KINDS for k in kinds):
        raise ValueError(f"expected kind to be 'all', 'hidden', 'mlp' or 'attn', got {kind!r}")
    return kinds


def _check_args(a: Any, kind: str, samples: int, window: int, noise: float) -> tuple[str, ...]:
    kinds = _kinds(kind)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"expected samples to be a positive integer, got {samples!r}")
    if set(kinds) & {"mlp", "attn"} and (not isinstance(window, int) or not 1 <= window <= a.n_layers):
        raise ValueError(f"expected a window of 1 to {a.n_layers} layers (the model has {a.n_layers}), got {window!r}")
    if not noise > 0:
        raise ValueError(f"expected a positive noise multiplier, got {noise!r}")
    return kinds


def estimate_trace_memory(model: Bridge, n_tokens: int, *, kind: str = "all", samples: int = 10,
                          subject_start: int = 1) -> int:
    """Peak bytes `trace` needs beyond the model's weights, for a prompt of ``n_tokens`` tokens.

    The sum of what lives through the whole trace (the clean run's restored states, the corrupted
    run's residuals entering every block and its key/value cache) and the largest of three phases:
    the clean forward (its ``[tok, d_vocab]`` logits and ``[head, tok, tok]`` attention scores), the
    corrupted forward (the same per sample), and the batched pass of the first start token, where all
    ``rows = kinds × layers × samples`` rows run over the suffix after ``subject_start`` with a
    key/value cache of their own and end in ``[rows, d_vocab]`` float32 logits (two copies at the
    peak, three with a final-logit softcap). An estimate: the pieces are counted as if all were alive at once, with allowances for a
    block's temporaries; `trace` refuses work whose estimate exceeds the free memory.

    Args:
        model: a bridge (its sizes and dtype).
        n_tokens: the prompt's length in tokens, BOS included (``len(encode(model, fact.text))``).
        kind: ``"all"``, ``"hidden"``, ``"mlp"`` or ``"attn"``, as for `trace`.
        samples: noise draws per cell, as for `trace`.
        subject_start: the subject's first token (positions before it are not traced; default 1).

    Returns:
        Bytes. ``O(T·V + S·L·T·D + R·(L·T·kv + H·T² + T·d_mlp + V))`` for T tokens, S samples, L layers,
        R = kinds·L·S rows, V vocabulary, D d_model, kv the key/value width, H heads.

    Cost: negligible (arithmetic on the model's sizes; no model passes).
    """
    a = arch_of(model)
    cfg = model.cfg
    b = context_of(model).dtype.itemsize
    f32 = 4
    T, S, L, D, M, V = int(n_tokens), int(samples), a.n_layers, a.d_model, a.d_mlp, a.d_vocab
    H = a.n_heads
    kv = int(getattr(cfg, "n_key_value_heads", None) or H) * int(getattr(cfg, "d_head", None) or D // H)
    K = len(_kinds(kind))
    R = K * L * S
    n = max(1, T - max(0, int(subject_start)))  # suffix length of the first (largest) pass
    lasting = K * L * T * D * b + (L + 1) * S * T * D * b + S * L * 2 * T * kv * b
    # in a block: up to 4 [head, q, k] attention tensors (scores, mask, pattern) and 6 [pos, d_mlp] MLP
    # temporaries (GPT-2's gelu_new makes several) alive at once; measured on tiny GPT-2/Llama/Gemma 3 models
    clean = T * V * f32 + (4 * H * T * T + 6 * T * M) * b
    corrupted = S * V * f32 + S * (4 * H * T * T + 6 * T * M + 4 * T * D) * b
    softcap = getattr(getattr(getattr(model, "original_model", None), "config", None), "final_logit_softcapping", None)
    copies = 3 if softcap else 2  # the logits and logsumexp's temporary (and the softcap's)
    batched = R * ((L + 1) * 2 * T * kv + 4 * n * D + 4 * H * n * T + 6 * n * M) * b + copies * R * V * f32
    return int(lasting + max(clean, corrupted, batched))


@torch.no_grad()
def trace(
    model: Bridge,
    fact: Fact | EditRequest,
    *,
    kind: str = "all",
    corruption: str = "gaussian",
    noise: float = 3.0,
    samples: int = 10,
    window: int = 10,
    metric: str = "prob",
    seed: int = 0,
    sigma: float | None = None,
    pool: Sequence[str] | None = None,
    progress: bool = False,
) -> TraceResult:
    """Causal trace of one fact: p(answer) with each (token, layer) state restored after corruption.

    See the module docstring for the algorithm.

    Args:
        model: a bridge.
        fact: a `Fact` (its ``target``) or `EditRequest` (its ``target_true``). With no target, the
            model's own top-1 answer is traced, as ROME does.
        kind: ``"all"`` (default: every kind in `KINDS`), ``"hidden"``, ``"mlp"`` or ``"attn"``.
        corruption: ``"gaussian"``: noise of ``noise`` × σ (`embedding_sigma`) on the subject's token
            embeddings. ``"str"``: symmetric token replacement: each sample swaps the subject for a
            different subject of the same token length, drawn (seeded) from ``pool``.
        noise: Gaussian noise scale in units of σ; ROME uses 3. Ignored for STR.
        samples: corrupted runs per cell (default 10; for STR: distinct partners, at most the pool
            allows).
        window: layers restored together for ``mlp``/``attn`` (default 10, ROME's; clipped at the
            model's ends).
        metric: ``"prob"``: p(answer). ``"logit_diff"``: logit(answer) − logit(contrast), where the
            contrast is ``target_new`` for an `EditRequest`, else the corrupted runs' top answer.
        seed: seeds the noise or the partner draw; the same seed gives bit-identical results.
        sigma: override σ (Gaussian only).
        pool: subjects for STR (default: the subjects of `factscope.builtin_facts`).
        progress: show a progress bar over start tokens.

    Returns:
        `TraceResult`: ``scores[kind]`` is ``[tok, layer]``. A target the model does not predict
        top-1 is traced anyway, with a warning.

    Cost: about ``samples × Σ_{t ≥ subject start} (T − t) × Σ_cells (L − first changed block)``
    token-block evaluations (T prompt tokens, L layers; O(samples · T² · L²)), all without gradients,
    far fewer than ROME's reference (one full forward per cell); one kind costs less than ``"all"``
    (measured times: docs/guide.md). Memory: `estimate_trace_memory`, dominated on short prompts by
    the ``[kinds × layers × samples, d_vocab]`` final logits and on long ones by the rows' key/value
    caches and attention scores (O(T²)).

    Raises:
        TypeError: ``fact`` is not a `Fact` or `EditRequest`.
        ValueError: bad arguments, a subject missing from the prompt, or (STR) no partner of the
            subject's token length in the pool.
        ContextLengthError: a prompt longer than the model's context (``n_ctx``).
        MemoryError: work whose `estimate_trace_memory` exceeds the free memory (the message says
            how much is needed, how much is free, and how to need less).
        All are raised before any model pass; nothing is left hooked on the model.
    """
    a = arch_of(model)
    if not isinstance(fact, (Fact, EditRequest)):
        raise TypeError(f"expected fact to be a Fact or an EditRequest, got {type(fact).__name__}: {fact!r:.80}")
    kinds = _check_args(a, kind, samples, window, noise)
    if corruption not in ("gaussian", "str"):
        raise ValueError(f"expected corruption 'gaussian' or 'str', got {corruption!r}")
    if metric not in ("prob", "logit_diff"):
        raise ValueError(f"expected metric 'prob' or 'logit_diff', got {metric!r}")
    target = fact.target if isinstance(fact, Fact) else fact.target_true
    prompt_ids = encode(model, fact.text)  # raises ContextLengthError beyond the model's context
    T = len(prompt_ids)
    s0, s1 = subject_span(model, fact)
    partners = _str_partners(model, fact, pool, samples, seed) if corruption == "str" else []
    _check_trace_memory(model, T, kind, len(partners) or samples, s0)
    ids = torch.tensor([prompt_ids], device=_device(model))  # [1, tok]
    if corruption == "gaussian":
        sigma = embedding_sigma(model) if sigma is None else float(sigma)
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn(samples, s1 - s0, a.d_model, generator=g) * (noise * sigma)  # [sample, subj, d_model]
    else:
        sigma = None
        eps = _str_deltas(model, a, fact, partners, s0, s1)
        samples = len(partners)
    eps = eps.to(_device(model))

    names = {k: [a.hook(_HOOK_KIND[k], l) for l in range(a.n_layers)] for k in kinds}
    wanted = {n for ns in names.values() for n in ns}
    clean_logits, clean_cache = model.run_with_cache(ids, names_filter=lambda n: n in wanted)
    clean_last = clean_logits[0, -1].float().clone()  # [d_vocab]
    del clean_logits  # [1, tok, d_vocab]: only the last row is needed
    answer_id = int(clean_last.argmax()) if target is None else target_ids(model, target)[0]
    if target is not None and answer_id != int(clean_last.argmax()):
        import warnings

        warnings.warn(f"the model does not predict {target!r} after {fact.text!r} (top-1 is "
                      f"{str_tokens(model, [int(clean_last.argmax())])[0]!r}); tracing p({target!r}) = "
                      f"{float(clean_last.softmax(-1)[answer_id]):.3f} anyway", stacklevel=2)

    every = torch.arange(samples, device=ids.device)
    resid = [a.hook("resid_pre", l) for l in range(a.n_layers)] + [a.hook("resid_post", a.n_layers - 1)]
    # One corrupted run gives both its KV cache and the residual entering every block.
    got: dict[str, Tensor] = {}
    grab = [(n, lambda act, hook: got.__setitem__(hook.name, act.detach().clone())) for n in resid]
    logits, kv = run_cached(model, ids.expand(samples, -1), fwd_hooks=[(a.embed, _corrupt(eps, s0, s1, 0, every))]
                            + grab, logits_to_keep=1)
    corrupt_last = logits[:, -1].float()  # [sample, d_vocab]
    contrast_id = _contrast(model, fact, corrupt_last, answer_id) if metric == "logit_diff" else None
    score = _scorer(metric, answer_id, contrast_id)
    clean = float(score(clean_last[None]).mean())
    corrupted = float(score(corrupt_last).mean())

    cells = [(k, l) for k in kinds for l in range(a.n_layers)]
    start, parent = _schedule(cells, window, a.n_layers)
    plan = _ResumePlan(cells=tuple(cells), start=tuple(start), parent=tuple(parent), samples=samples, window=window,
                       names=names, clean=clean_cache, h_in=tuple(got[n] for n in resid), kv=kv,
                       states=tuple(layer_states(kv)), score=score)
    scores = {k: torch.full((T, a.n_layers), corrupted) for k in kinds}
    from tqdm.auto import tqdm

    for t in tqdm(range(s0, T), desc=f"tracing {'/'.join(kinds)}", disable=not progress):  # before s0: no effect
        p = _resume_from_layers(model, ids, t, plan).view(len(cells), samples).mean(1)
        for i, (k, l) in enumerate(cells):
            scores[k][t, l] = p[i]
    settings = dict(kinds=list(kinds), corruption=corruption, noise=noise if corruption == "gaussian" else None,
                    sigma=sigma, samples=samples, window=window, metric=metric, seed=seed, target=target,
                    contrast=None if contrast_id is None else str_tokens(model, [contrast_id])[0],
                    partners=partners)
    return TraceResult(scores=scores, clean=clean, corrupted=corrupted, tokens=tuple(str_tokens(model, ids[0])),
                       subject=(s0, s1), answer=str_tokens(model, [answer_id])[0], answer_id=answer_id,
                       prompt=fact.text, settings=settings)


def _check_trace_memory(model: Bridge, n_tokens: int, kind: str, samples: int, subject_start: int) -> None:
    """MemoryError (what it needs, what is free, how to need less) when `estimate_trace_memory` exceeds the free memory."""
    from factscope.checks import check_memory

    need = estimate_trace_memory(model, n_tokens, kind=kind, samples=samples, subject_start=subject_start)
    L = arch_of(model).n_layers
    check_memory(need, device=_device(model),
                 what=f"trace of a {n_tokens}-token prompt ({len(_kinds(kind))} kind(s) × {L} layers × {samples} "
                      f"samples, vocabulary {arch_of(model).d_vocab})",
                 hint="use fewer samples, one kind (kind='mlp') or a shorter prompt")


def check_trace_args(model: Bridge, n_tokens: int, *, kind: str = "all", samples: int = 10, window: int = 10,
                     noise: float = 3.0, subject_start: int = 1) -> tuple[str, ...]:
    """The kinds `trace` would restore, after checking its settings and that its memory estimate fits.

    What `trace` checks before any model pass, for callers that run many traces (`layer_profile`
    checks its longest prompt once, up front).

    Args:
        model: a bridge.
        n_tokens: the prompt's length in tokens, BOS included (already checked against the context).
        kind, samples, window, noise: as for `trace`.
        subject_start: the subject's first token (default 1: the most work a prompt of that length needs).

    Raises:
        ValueError: a bad kind, samples, window or noise. MemoryError: `estimate_trace_memory` exceeds
            the free memory.

    Cost: negligible (no model passes).
    """
    kinds = _check_args(arch_of(model), kind, samples, window, noise)
    _check_trace_memory(model, n_tokens, kind, samples, subject_start)
    return kinds


def _schedule(cells: list[tuple[str, int]], window: int, L: int) -> tuple[list[int], list[int | None]]:
    """When each cell's rows join the batch, and whose rows they start from.

    A cell joins at the first block its restoration changes: hidden (t, l) patches the residual leaving
    block l, so block l + 1; mlp/attn patch sublayers inside their window, from its first layer
    (``parent`` None: it starts from the corrupted residual). An mlp/attn window clipped at layer 0,
    ``[0, e)``, is a prefix of the widest clipped one, ``[0, min(window, L))`` (the cell at
    l = window // 2): both patch the same layers below e, so the cell rides along in that cell's rows
    and splits off at block e (``parent``: that cell's index), where their patches first differ.
    """
    start: list[int] = []
    parent: list[int | None] = []
    for k, l in cells:
        w = _window(l, window, L)
        if k == "hidden":
            start.append(l + 1)
            parent.append(None)
        elif l < window // 2:  # clipped at layer 0
            start.append(w[-1] + 1)
            parent.append(cells.index((k, window // 2)))
        else:
            start.append(w[0])
            parent.append(None)
    return start, parent


def _scorer(metric: str, answer_id: int, contrast_id: int | None):
    """Maps final logits ``[rows, d_vocab]`` to the metric per row."""
    if metric == "prob":
        return lambda logits: (logits[:, answer_id].float() - torch.logsumexp(logits.float(), -1)).exp()
    return lambda logits: (logits[:, answer_id] - logits[:, contrast_id]).float()


def _contrast(model: Bridge, fact: Fact | EditRequest, corrupt_last: Tensor, answer_id: int) -> int:
    """The contrast token for logit differences: ``target_new``, else the corrupted runs' top answer."""
    if isinstance(fact, EditRequest):
        return target_ids(model, fact.target_new)[0]
    p = corrupt_last.softmax(-1).mean(0)
    p[answer_id] = -1
    return int(p.argmax())


def _str_partners(model: Bridge, fact: Fact | EditRequest, pool: Sequence[str] | None, samples: int,
                  seed: int) -> list[str]:
    """Up to ``samples`` subjects whose tokens in this prompt number the same as the subject's."""
    if pool is None:
        from factscope.datasets import builtin_facts

        pool = sorted({f.subject for f in builtin_facts()})
    s0, s1 = subject_span(model, fact)
    n = s1 - s0
    same = []
    for cand in dict.fromkeys(pool):
        if cand == fact.subject or not cand.strip():
            continue
        try:
            c0, c1 = subject_span(model, Fact(fact.prompt, cand))
        except ValueError:
            continue
        if c1 - c0 == n and c0 == s0 and len(encode(model, fact.prompt.format(cand))) == len(encode(model, fact.text)):
            same.append(cand)
    if not same:
        raise ValueError(f"symmetric token replacement needs another subject of {n} token(s) in this prompt, and "
                         f"none of the {len(pool)} in the pool has that length; pass pool= with such subjects or "
                         f"use corruption='gaussian'")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(same), generator=g)[:samples].tolist()
    return [same[i] for i in pick]


def _str_deltas(model: Bridge, a: Any, fact: Fact | EditRequest, partners: list[str], s0: int, s1: int) -> Tensor:
    """``embed(partner) − embed(subject)`` at the subject positions: adding it swaps the tokens."""
    texts = [fact.text] + [fact.prompt.format(p) for p in partners]
    ids = torch.tensor([encode(model, t) for t in texts], device=_device(model))
    acts: list[Tensor] = []
    model.run_with_hooks(ids, fwd_hooks=[(a.embed, lambda act, hook: acts.append(act.detach()))], stop_at_layer=0)
    emb = acts[0][:, s0:s1]  # [1 + partners, subj, d_model]
    return emb[1:] - emb[:1]


def _corrupt(eps: Tensor, s0: int, s1: int, t: int, sample_of_row: Tensor):
    """Hook on the embeddings of positions ``[t, T)``: add each row's noise draw to its subject tokens."""
    def hook(act, hook):  # act: [rows, T - t, d_model]
        lo = max(s0, t)
        if lo < s1:
            act[:, lo - t:s1 - t] += eps[sample_of_row][:, lo - s0:s1 - s0].to(act.dtype)
        return act
    return hook


def _final_logits(model: Bridge, h: Tensor) -> Tensor:
    """Next-token logits from the residual leaving the last block (last position only)."""
    logits = model.unembed(model.ln_final(h[:, -1:]))[:, -1]
    cap = getattr(model.original_model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@dataclass(frozen=True)
class _ResumePlan:
    """What every start token's resumed pass shares: the cells, their schedule, and the runs' states.

    ``h_in[j]``: the corrupted residual entering block j (j = n_layers: leaving the last block),
    ``[sample, tok, d_model]``; ``kv`` / ``states``: the corrupted run's cache and each layer's
    ``(keys, values)``; ``clean``: the clean run's activations by hook name; ``score``: final
    logits ``[rows, d_vocab]`` -> the metric per row.
    """

    cells: tuple[tuple[str, int], ...]
    start: tuple[int, ...]
    parent: tuple[int | None, ...]
    samples: int
    window: int
    names: dict[str, list[str]]
    clean: Any
    h_in: tuple[Tensor, ...]
    kv: Cache
    states: tuple[tuple[Tensor, Tensor], ...]
    score: Callable[[Tensor], Tensor]


def _resume_from_layers(model: Bridge, ids: Tensor, t: int, plan: _ResumePlan) -> Tensor:
    """The metric for every (cell, sample) row with position t restored: ``[cells * samples]``, cell-major.

    Rows join the batch at the first block their restoration changes (see `_schedule`), from the
    corrupted residual entering that block or a copy of their parent's rows, and only positions
    ``[t, T)`` are computed: each block attends to the corrupted run's keys and values of positions
    before t, copied for the active rows into a cache of this pass's own.
    """
    a = arch_of(model)
    T, L, n = ids.shape[1], a.n_layers, plan.samples
    calls = BlockCalls.capture(model, ids, prefix(plan.kv, t, torch.zeros(1, dtype=torch.long, device=ids.device)))
    order: list[int] = []  # active cell indices, in batch order
    h = None
    cache = new_cache()
    for j in range(L + 1):
        joining = [c for c in range(len(plan.cells)) if plan.start[c] == j]
        if joining:
            parts = []  # each [samples, T - t, d_model]
            for c in joining:
                k, l = plan.cells[c]
                if plan.parent[c] is not None:  # the parent's rows: same patches so far
                    i = order.index(plan.parent[c])
                    parts.append(h[i * n:(i + 1) * n])
                    continue
                parts.append(plan.h_in[j][:, t:])
                if k == "hidden":  # the clean residual leaving block l, at token t
                    parts[-1] = parts[-1].clone()
                    parts[-1][:, 0] = plan.clean[plan.names[k][l]][0, t]
            h = torch.cat(parts if h is None else [h, *parts])
            order += joining
        if h is None or j == L:
            continue
        hooks = []
        for k in {plan.cells[c][0] for c in order} - {"hidden"}:
            rows = [i * n + s for i, c in enumerate(order) if plan.cells[c][0] == k
                    and j in _window(plan.cells[c][1], plan.window, L) for s in range(n)]
            if rows:
                hooks.append((plan.names[k][j], _restore(torch.tensor(rows, device=ids.device),
                                                         plan.clean[plan.names[k][j]][0, t])))
        if t > 0:  # row i * n + s attends to sample s's prefix
            keys, values = plan.states[j]  # [sample, kv_head, tok, d_head]
            reps = (len(order), 1, 1, 1)
            fill_layer(cache, j, keys[:, :, :t].repeat(reps), values[:, :, :t].repeat(reps))
        with model.hooks(fwd_hooks=hooks):
            h = calls.run(model, j, h, cache)
    per_row = plan.score(_final_logits(model, h)).view(len(order), n)  # scored before reordering: no vocab copies
    out = torch.empty_like(per_row)
    out[torch.tensor(order, device=out.device)] = per_row
    return out.reshape(-1)


def _restore(rows: Tensor, clean: Tensor):
    """Hook: at the first suffix position (token t), put the clean state into ``rows``."""
    def hook(act, hook):
        act[rows, 0] = clean.to(act.dtype)
        return act
    return hook
