"""What does the model answer? Batched next-token predictions with a table view.

``predict(model, prompts, targets)`` runs left-padded batches (one BOS per prompt, see
`factscope.tokens`) and keeps only the last position's logits (``logits_to_keep=1``: with Gemma's
262k vocabulary this halves the cost). A target counts as answered when the argmax token equals the
first token of ``" " + target``.

``rewrite_scores(model, request)`` is CounterFact's efficacy / paraphrase / neighbourhood of one
request on the model as it is (teacher-forced log-probability margins); `factscope.probes.evaluate`
builds its report on it, and the edit layer's trial edits (`factscope.edit.layer_choice`) use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from factscope.arch import arch_of, context_of
from factscope.bridge import Bridge
from factscope.checks import check_int
from factscope.facts import EditRequest
from factscope.kv import run_cached
from factscope.tokens import check_context, encode, pad_left, str_tokens, target_ids, tokenizer_of

__all__ = ["RewriteScores", "rewrite_scores", "Prediction", "Predictions", "predict", "next_token_logits", "target_logprob", "target_scores", "TargetScores",
           "generate", "check_generate", "kl_from_logprobs", "kl_from_logits"]


@dataclass(frozen=True)
class Prediction:
    """The model's next-token distribution after one prompt, summarised (a row of `predict`).

    Cost: negligible (plain data).

    Attributes:
        prompt: the full prompt.
        top_tokens: the ``k`` most likely next tokens, decoded.
        top_probs: their probabilities.
        target: the expected answer, if given.
        p_target: probability of the target's first token.
        rank: rank of the target's first token (0 = top-1).
        correct: whether the target's first token is the argmax.
    """

    prompt: str
    top_tokens: tuple[str, ...]
    top_probs: tuple[float, ...]
    target: str | None = None
    p_target: float | None = None
    rank: int | None = None

    @property
    def correct(self) -> bool | None:
        """Whether the target's first token is the argmax (``None`` without a target)."""
        return None if self.rank is None else self.rank == 0

    @property
    def answer(self) -> str:
        """The top-1 token."""
        return self.top_tokens[0]


@dataclass(frozen=True)
class Predictions:
    """A sequence of `Prediction`s; ``.to_dataframe()`` gives one row per prompt."""

    rows: tuple[Prediction, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.rows)

    def __getitem__(self, i: int) -> Prediction:
        return self.rows[i]

    @property
    def accuracy(self) -> float:
        """Fraction of rows with a target whose target is the top-1 token."""
        scored = [r.correct for r in self.rows if r.correct is not None]
        if not scored:
            raise ValueError("no prediction has a target, so there is no accuracy")
        return sum(scored) / len(scored)

    def to_dataframe(self) -> Any:
        import pandas as pd

        recs = []
        for r in self.rows:
            d = asdict(r)
            d["answer"] = r.answer.strip()
            d["p_answer"] = r.top_probs[0]
            d["correct"] = r.correct
            recs.append(d)
        cols = ["prompt", "answer", "p_answer", "target", "p_target", "rank", "correct", "top_tokens", "top_probs"]
        return pd.DataFrame.from_records(recs, columns=cols)


@torch.no_grad()
def next_token_logits(model: Bridge, prompts: Sequence[str], *, batch_size: int = 32) -> Float[Tensor, "batch d_vocab"]:
    """Logits of the next token after each prompt (float32, on CPU).

    Every prompt is encoded and checked against the model's context before the first pass.

    Cost: one forward per ``batch_size`` prompts; memory ``batch_size x pos x d_model`` activations
    plus ``batch x d_vocab`` logits.
    """
    if isinstance(prompts, str):
        raise TypeError("expected a sequence of prompts, got a single str; wrap it in a list")
    if len(prompts) == 0:
        raise ValueError("expected at least one prompt, got none")
    check_int("batch_size", batch_size, 1)
    rows = [encode(model, p) for p in prompts]  # all checked (each fits the context) before any pass
    device = context_of(model).device
    out = []
    for i in range(0, len(rows), batch_size):
        ids, mask = pad_left(model, rows[i:i + batch_size])
        logits = model(ids.to(device), attention_mask=mask.to(device), logits_to_keep=1)
        out.append(logits[:, -1].float().cpu())
    return torch.cat(out)


def predict(
    model: Bridge,
    prompts: Sequence[str],
    targets: Sequence[str | None] | None = None,
    *,
    k: int = 5,
    batch_size: int = 32,
) -> Predictions:
    """Top-``k`` next tokens after each prompt, and how each target fares.

    Args:
        model: a bridge.
        prompts: full prompts (no ``{}``), ``batch`` of them.
        targets: one expected answer (or ``None``) per prompt; default ``None``: no targets.
        k: how many top tokens to keep (default 5).
        batch_size: prompts per forward pass (default 32).

    Returns:
        ``Predictions``: one `Prediction` per prompt; ``.accuracy`` and ``.to_dataframe()``.

    Raises:
        TypeError / ValueError: a single str, no prompts, not one target per prompt, ``k`` outside
            ``[1, d_vocab]``. ContextLengthError: a prompt longer than the model's context. All
            before any model pass.

    Cost: one forward pass per ``batch_size`` prompts, logits at the last position only; memory
    about ``batch_size × pos × d_model`` activations plus ``batch × d_vocab`` float32 logits
    (262k-token vocabulary on Gemma: about 1 MB per prompt).
    """
    if isinstance(prompts, str):
        raise TypeError("expected a sequence of prompts, got a single str; wrap it in a list")
    if targets is not None and (isinstance(targets, str) or len(targets) != len(prompts)):
        got = "a single str" if isinstance(targets, str) else f"{len(targets)} targets"
        raise ValueError(f"expected one target per prompt, got {got} for {len(prompts)} prompts")
    check_int("k", k, 1, arch_of(model).d_vocab)
    logits = next_token_logits(model, prompts, batch_size=batch_size)
    probs = logits.softmax(-1)  # [batch, d_vocab]
    top = probs.topk(k, dim=-1)
    tok = tokenizer_of(model)
    rows = []
    for i, prompt in enumerate(prompts):
        target = None if targets is None else targets[i]
        p_target = rank = None
        if target is not None:
            t0 = target_ids(tok, target)[0]
            p_target = float(probs[i, t0])
            rank = int((probs[i] > probs[i, t0]).sum())
        rows.append(Prediction(
            prompt=prompt,
            top_tokens=tuple(str_tokens(tok, top.indices[i])),
            top_probs=tuple(float(p) for p in top.values[i]),
            target=target, p_target=p_target, rank=rank,
        ))
    return Predictions(tuple(rows))


class TargetScores(NamedTuple):
    """Per row: ``logprob`` ``[batch]`` mean per-token log p(target | prompt); ``exact`` ``[batch]`` bool,
    every target token is the argmax at its position (teacher-forced, MEMIT's ``*_correct``)."""

    logprob: Float[Tensor, "batch"]
    exact: Bool[Tensor, "batch"]


@torch.no_grad()
def target_scores(
    model: Bridge, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int = 32
) -> TargetScores:
    """Mean per-token log p(target | prompt) and exact match, teacher-forced over all of ``" " + target``'s tokens.

    CounterFact's comparison (``p(new) > p(true)`` means a higher mean log-probability of the new
    target's tokens) and MEMIT's exact match (each target token is the argmax after the prompt and
    the target's earlier tokens). Cost: one forward per ``batch_size`` rows of prompt + target, with
    logits kept only for the target positions.
    """
    if isinstance(prompts, str) or isinstance(targets, str):
        raise TypeError("expected sequences of prompts and targets, got a single str; wrap it in a list")
    if len(prompts) != len(targets):
        raise ValueError(f"expected one target per prompt, got {len(targets)} targets for {len(prompts)} prompts")
    tok = tokenizer_of(model)
    device = context_of(model).device
    all_tgts = [target_ids(tok, t) for t in targets]
    all_rows = [encode(model, p) + t for p, t in zip(prompts, all_tgts)]
    for p, r, t in zip(prompts, all_rows, targets):  # before any pass: prompt + target fits the context
        check_context(model, len(r), what=f"the prompt {p[:60]!r} followed by the target {t!r}")
    lps, exact = [], []
    for i in range(0, len(prompts), batch_size):
        rows, tgts = all_rows[i:i + batch_size], all_tgts[i:i + batch_size]
        n = max(map(len, tgts))
        ids, mask = pad_left(model, rows)
        lp = model(ids.to(device), attention_mask=mask.to(device), logits_to_keep=n + 1)[:, :-1].float().log_softmax(-1)  # [row, n, vocab]
        for r, t in enumerate(tgts):  # row r's target tokens are its last len(t) tokens
            pos = torch.arange(n - len(t), n, device=device)
            t_ = torch.tensor(t, device=device)
            lps.append(float(lp[r, pos, t_].mean()))
            exact.append(bool((lp[r, pos].argmax(-1) == t_).all()))
    return TargetScores(torch.tensor(lps), torch.tensor(exact, dtype=torch.bool))


def target_logprob(
    model: Bridge, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int = 32
) -> Float[Tensor, "batch"]:
    """Mean per-token log p(target | prompt), teacher-forced over all of ``" " + target``'s tokens.

    `target_scores`' ``logprob``: CounterFact's comparison (``p(new) > p(true)`` means a higher mean
    log-probability of the new target's tokens).
    """
    return target_scores(model, prompts, targets, batch_size=batch_size).logprob


def check_generate(model: Bridge, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
    """The prompts' token ids, after checking what `generate` needs: each prompt plus ``max_new_tokens`` fits.

    `generate` calls it first; callers that generate after other work (`factscope.probes.evaluate`)
    call it before that work.

    Args:
        model: a bridge (its context ``n_ctx``).
        prompts: full prompts (a single ``str`` raises ``TypeError``).
        max_new_tokens: tokens to be generated per prompt (an int >= 1).

    Raises:
        TypeError / ValueError: a single str, a bad ``max_new_tokens``. ContextLengthError: a prompt
            whose length plus ``max_new_tokens`` exceeds the context.

    Cost: negligible (one tokenisation per prompt; no model passes).
    """
    if isinstance(prompts, str):
        raise TypeError("expected a sequence of prompts, got a single str; wrap it in a list")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"expected max_new_tokens to be an int >= 1, got {max_new_tokens!r}")
    enc = [encode(model, p) for p in prompts]
    for p, e in zip(prompts, enc):
        check_context(model, len(e) + max_new_tokens,
                      what=f"the prompt {p[:60]!r} ({len(e)} tokens) plus max_new_tokens={max_new_tokens}")
    return enc


@torch.no_grad()
def generate(
    model: Bridge, prompts: Sequence[str], *, max_new_tokens: int = 100, batch_size: int = 16, progress: bool = False
) -> list[str]:
    """Greedy continuations of ``prompts``: each prompt's text followed by ``max_new_tokens`` argmax tokens.

    No stopping at end-of-text (fixed length, as CounterFact's fluency check assumes). Prompts are
    sorted by length and run ``batch_size`` at a time, left-padded with an attention mask (as
    `next_token_logits`); each row's tokens match its own unpadded run (tested against plain
    cache-free greedy decoding on GPT-2, Llama and Gemma 3 models), up to float rounding.

    Args:
        model: a bridge.
        prompts: full prompts (no ``{}``).
        max_new_tokens: tokens generated per prompt (default 100, CounterFact's).
        batch_size: prompts decoded together (default 16).
        progress: a progress bar over the batches.

    Returns:
        One string per prompt: the prompt followed by the decoded continuation.

    Cost: per batch, one prompt forward and ``max_new_tokens - 1`` single-token forwards with a
    KV cache. Each step reads the whole unembedding (Gemma 3 270M: 262k × 640 floats), so batching
    is nearly free: the time per batch hardly depends on the batch size (measured: docs/guide.md).
    A prompt whose length plus ``max_new_tokens`` exceeds the model's context is refused first.
    """
    from tqdm.auto import tqdm

    enc = check_generate(model, prompts, max_new_tokens)
    tok = tokenizer_of(model)
    device = context_of(model).device
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))  # similar lengths together: little padding
    groups = [order[j:j + batch_size] for j in range(0, len(order), batch_size)]
    out: list[str] = [""] * len(prompts)
    for g in tqdm(groups, desc="greedy generation", disable=not progress):
        ids, mask = pad_left(tok, [enc[i] for i in g])  # [row, pos] each
        x, mask = ids.to(device), mask.to(device)
        cols, cache = [], None
        for _ in range(max_new_tokens):
            logits, cache = run_cached(model, x, cache, attention_mask=mask, logits_to_keep=1)
            x = logits[:, -1].argmax(-1, keepdim=True)  # [row, 1]
            cols.append(x)
            mask = torch.cat([mask, torch.ones_like(x)], 1)
        new = torch.cat(cols, 1).cpu()  # [row, max_new_tokens]
        for r, i in enumerate(g):
            out[i] = prompts[i] + tok.decode(new[r].tolist(), skip_special_tokens=True)
    return out


def kl_from_logprobs(lp: Float[Tensor, "... d_vocab"], lq: Float[Tensor, "... d_vocab"]) -> Float[Tensor, "..."]:
    """KL(p ‖ q) = Σ p (log p − log q) over the last dimension, from log-probabilities, in nats.

    The one KL of factscope: ROME's and MEMIT's essence term (with gradients, in the inputs' dtype),
    the evaluation's neighbourhood KL and the spillover probe's KL effect all use it (or
    `kl_from_logits`). Cost: O(numel), elementwise.

    Args:
        lp: log p, ``[..., d_vocab]`` (the distribution the expectation is taken under).
        lq: log q, the same shape (or broadcastable to it).
    """
    if lp.shape[-1] != lq.shape[-1]:
        raise ValueError(f"expected log-probabilities over the same vocabulary, got last dims {lp.shape[-1]} "
                         f"and {lq.shape[-1]}")
    return (lp.exp() * (lp - lq)).sum(-1)


def kl_from_logits(z_p: Float[Tensor, "... d_vocab"], z_q: Float[Tensor, "... d_vocab"]) -> Float[Tensor, "..."]:
    """KL(p ‖ q) in nats from logits: softmax in float64, then `kl_from_logprobs`, clamped at 0 (rounding).

    Cost: O(numel) (two log-softmaxes in float64). No gradients are needed or kept in float32.

    Args:
        z_p: logits of p, ``[..., d_vocab]``.
        z_q: logits of q, the same shape.
    """
    return kl_from_logprobs(z_p.double().log_softmax(-1), z_q.double().log_softmax(-1)).clamp_min(0.0)


# --------------------------------------------------------------------------- one request, as the model is


@dataclass(frozen=True, kw_only=True)
class RewriteScores:
    """CounterFact's success rates for one request, and the log-probability margins behind them.

    What `rewrite_scores` returns. Cost: negligible (plain data).

    Attributes:
        efficacy: 1.0 if ``log p(new) > log p(true)`` on the prompt, else 0.0.
        paraphrase: the fraction of paraphrases where the new target wins (NaN without paraphrases).
        neighbourhood: the fraction of neighbours where the true target still wins (NaN without neighbours).
        efficacy_margin, paraphrase_margin, neighbourhood_margin: mean ``log p(new) − log p(true)``
            (per token) on those prompts; NaN where there are none.
    """

    efficacy: float
    paraphrase: float
    neighbourhood: float
    efficacy_margin: float
    paraphrase_margin: float
    neighbourhood_margin: float

    def to_dict(self) -> dict[str, float]:
        """The six fields as a plain dict."""
        return asdict(self)


def _mean_or_nan(x: Tensor) -> float:
    return float(x.double().mean()) if len(x) else float("nan")


def rewrite_scores(model: Bridge, request: EditRequest) -> RewriteScores:
    """Efficacy, paraphrase and neighbourhood of one request on the model as it is now.

    No edit is applied by this call: apply one first (``with edit.applied(model):``) to score it.

    Args:
        model: a bridge.
        request: an `EditRequest` with ``target_true``.

    Cost: one batched teacher-forced forward over ``2 × (1 + n_paraphrases + n_neighbours)`` rows
    (every prompt with both targets; about 14 rows for a built-in fact).
    """
    if not isinstance(request, EditRequest):
        raise TypeError(f"expected an EditRequest, got {type(request).__name__}")
    prompts = [request.text, *request.paraphrases, *request.neighbours]
    n = len(prompts)
    lp = target_logprob(model, prompts * 2, [request.target_new] * n + [request.target_true] * n)
    margin = lp[:n] - lp[n:]  # [prompt] log p(new) − log p(true)
    para = margin[1:1 + len(request.paraphrases)]
    nb = margin[1 + len(request.paraphrases):]
    return RewriteScores(efficacy=float(margin[0] > 0), paraphrase=_mean_or_nan(para > 0),
                         neighbourhood=_mean_or_nan(nb < 0), efficacy_margin=float(margin[0]),
                         paraphrase_margin=_mean_or_nan(para), neighbourhood_margin=_mean_or_nan(nb))
