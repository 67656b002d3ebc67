"""Tokenisation: the one BOS convention, batching, targets, and the subject's token span.

The convention, used by every factscope function:

- **Prompts** are encoded as ``[bos] + tokenizer(text, add_special_tokens=False)``: exactly one
  BOS token, whatever the tokenizer's own ``add_bos_token`` setting says. Gemma needs BOS (without
  it, p(" Paris") after "The Eiffel Tower is in" is 0.000). On SmolLM2, whose chat tokenizer does
  not add one, we add ``<|im_start|>`` (its ``bos_token``) too, so that one rule holds everywhere.
  A tokenizer without a BOS token gets none.
- **Targets** are encoded as ``tokenizer(" " + target, add_special_tokens=False)``: the answer is a
  continuation that starts with a space, as in CounterFact.
- **Batches** are left-padded with an explicit attention mask, so the last column is every row's
  answer position. Always pass the mask to the model: a left-padded tensor without one gives wrong
  logits.
- **Length**: encoding for a *model* (not a bare tokenizer) checks the result against the model's
  context, ``n_ctx`` (`check_context`): a prompt that does not fit raises `ContextLengthError`
  before anything is allocated for it. `check_request` applies the same check to an `EditRequest`
  (prompt plus new target), for the editors.

Dimension names: ``batch`` (prompts), ``pos`` (token positions, BOS included).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from factscope.bridge import Bridge
from factscope.facts import EditRequest, Fact

__all__ = [
    "ContextLengthError",
    "context_length",
    "check_context",
    "check_request",
    "bos_ids",
    "pad_id",
    "span_from_offsets",
    "tokenizer_of",
    "encode",
    "encode_batch",
    "target_ids",
    "subject_span",
    "str_tokens",
]


def tokenizer_of(model_or_tokenizer: Any):
    """The tokenizer of a bridge (``model.tokenizer``), or the argument itself if it is one."""
    tok = getattr(model_or_tokenizer, "tokenizer", None)
    if tok is not None:
        return tok
    if hasattr(model_or_tokenizer, "convert_ids_to_tokens"):
        return model_or_tokenizer
    raise TypeError(
        f"expected a TransformerBridge or a Hugging Face tokenizer, got {type(model_or_tokenizer).__name__}"
    )


class ContextLengthError(ValueError):
    """A prompt (or a prompt with what is appended to it) is longer than the model's context ``n_ctx``.

    Raised by `check_context` (through `encode`, `encode_batch`, `pad_left`, `check_request` and every
    entry point) before anything is allocated. A ``ValueError``, so ``except ValueError`` catches it.
    Cost: negligible.
    """


def context_length(model_or_tokenizer: Any) -> int | None:
    """The model's context length ``n_ctx`` in tokens (BOS included), or ``None`` for a bare tokenizer.

    Args:
        model_or_tokenizer: a bridge (its ``cfg.n_ctx``, via `factscope.arch.context_of`) or a tokenizer.

    Cost: negligible.
    """
    if getattr(model_or_tokenizer, "cfg", None) is None:
        return None
    from factscope.arch import context_of

    return context_of(model_or_tokenizer).n_ctx


def check_context(model_or_tokenizer: Any, n_tokens: int, *, what: str = "the prompt") -> int:
    """``n_tokens`` if it fits the model's context; `ContextLengthError` (a ValueError) if not.

    The one length check of factscope: `encode`, `encode_batch` and `pad_left` call it when given a
    model, and entry points call it for what they append (targets, generated tokens). A bare
    tokenizer knows no context, so nothing is checked then.

    Args:
        model_or_tokenizer: a bridge (checked against its ``n_ctx``) or a tokenizer (no check).
        n_tokens: the length to check, in tokens, BOS included.
        what: what is that long, for the message (e.g. ``"the prompt 'The Space Needle…'"``).

    Cost: negligible (no model passes; nothing allocated).
    """
    n_ctx = context_length(model_or_tokenizer)
    if n_ctx is not None and n_tokens > n_ctx:
        raise ContextLengthError(
            f"expected {what} to fit the model's context of n_ctx={n_ctx} tokens (BOS included), got "
            f"{n_tokens} tokens; shorten it (nothing was run)")
    return n_tokens


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "…")


def bos_ids(tok) -> list[int]:
    """``[bos_token_id]``, or ``[]`` for a tokenizer without a BOS token (the prefix `encode` adds)."""
    return [] if tok.bos_token_id is None else [int(tok.bos_token_id)]


def encode(model_or_tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt under the convention: ``[bos] + ids(text)``.

    Args:
        model_or_tokenizer: a bridge or a Hugging Face tokenizer.
        text: a full prompt (non-empty).

    Returns:
        ``[pos]`` token ids, BOS first (none if the tokenizer has no BOS token).

    Raises:
        ContextLengthError: given a model, a prompt longer than its context ``n_ctx`` (`check_context`).

    Cost: negligible (one tokenisation; no model passes).
    """
    tok = tokenizer_of(model_or_tokenizer)
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a non-empty prompt string, got {text!r}")
    ids = bos_ids(tok) + list(tok(text, add_special_tokens=False)["input_ids"])
    check_context(model_or_tokenizer, len(ids), what=f"the prompt {_short(text)}")
    return ids


def pad_id(tok) -> int:
    """The id used for padding: the pad token, else EOS, else BOS, else 0 (masked out wherever used)."""
    for cand in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id):
        if cand is not None:
            return int(cand)
    return 0


def encode_batch(
    model_or_tokenizer: Any, texts: Sequence[str]
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Left-padded ``(input_ids, attention_mask)`` for several prompts (each with one BOS).

    The last column holds every row's final prompt token, i.e. the answer position.

    Args:
        model_or_tokenizer: a bridge or a Hugging Face tokenizer.
        texts: full prompts (a single ``str`` raises ``TypeError``).

    Returns:
        ``input_ids`` and ``attention_mask``, both ``[batch, pos]`` int64 (mask 0 on padding).

    Cost: negligible (one tokenisation per prompt; no model passes).
    """
    if isinstance(texts, str):
        raise TypeError("expected a sequence of prompts, got a single str; wrap it in a list")
    return pad_left(model_or_tokenizer, [encode(model_or_tokenizer, t) for t in texts])


def pad_left(
    model_or_tokenizer: Any, rows: Sequence[Sequence[int]]
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Left-pad token-id rows into ``(input_ids, attention_mask)``: every row ends in the last column.

    Given a model, the longest row must fit its context (`check_context`). Cost: negligible.
    """
    if not rows:
        raise ValueError("expected at least one prompt, got an empty sequence")
    width = max(map(len, rows))
    check_context(model_or_tokenizer, width, what=f"the longest of {len(rows)} token rows")
    ids = torch.full((len(rows), width), pad_id(tokenizer_of(model_or_tokenizer)), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def target_ids(model_or_tokenizer: Any, target: str) -> list[int]:
    """Token ids of an answer continuation: ``ids(" " + target)``, no BOS.

    Args:
        model_or_tokenizer: a bridge or a Hugging Face tokenizer.
        target: the answer without a leading space (surrounding whitespace is stripped).

    Cost: negligible (one tokenisation; no model passes).
    """
    tok = tokenizer_of(model_or_tokenizer)
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"expected a non-empty target string, got {target!r}")
    ids = list(tok(" " + target.strip(), add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    return ids


def str_tokens(model_or_tokenizer: Any, ids: Sequence[int] | Tensor) -> list[str]:
    """Each token id decoded on its own (for axis labels and tables).

    Args:
        model_or_tokenizer: a bridge or a Hugging Face tokenizer.
        ids: token ids, a list or a 1-D ``[pos]`` tensor.

    Cost: negligible (one decode per token; no model passes).
    """
    tok = tokenizer_of(model_or_tokenizer)
    if isinstance(ids, Tensor):
        ids = ids.tolist()
    return [tok.decode([int(i)]) for i in ids]


def _locate(text_or_record: str | Fact | EditRequest, subject: str | None) -> tuple[str, str, int]:
    """(text, subject, character offset of the subject in text)."""
    if isinstance(text_or_record, (Fact, EditRequest)):
        rec = text_or_record
        subject = rec.subject if subject is None else subject
        if subject != rec.subject:
            raise ValueError(f"got subject {subject!r} for a record whose subject is {rec.subject!r}")
        return rec.text, subject, rec.prompt.index("{}")
    text = text_or_record
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected a non-empty prompt, got {text!r}")
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError(f"expected a non-empty subject, got {subject!r}")
    start = text.find(subject)
    if start < 0:
        raise ValueError(f"expected the subject {subject!r} in the prompt {text!r}, but it does not occur there")
    return text, subject, start


def span_from_offsets(offsets: Sequence[tuple[int, int]], text: str, a: int, b: int) -> tuple[int, int]:
    """The ``[start, end)`` token span covering characters ``a:b`` of ``text``, given per-token offsets."""
    hit = [i for i, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
    if not hit:
        raise ValueError(f"no token of {text!r} covers characters {a}:{b}")
    i0, i1 = hit[0], hit[-1] + 1
    s0, e1 = offsets[i0][0], offsets[i1 - 1][1]
    if text[s0:a].strip() or e1 > b:
        raise ValueError(
            f"the subject {text[a:b]!r} is not a whole run of tokens in {text!r}: its tokens cover "
            f"{text[s0:e1]!r}. Put spaces or punctuation around the subject."
        )
    return i0, i1


def _span_from_prefixes(tok, text: str, a: int, b: int) -> tuple[int, int]:
    """Span without offset mappings (slow tokenizers): compare tokenisations of prefixes, as ROME does."""
    full = tok(text, add_special_tokens=False)["input_ids"]
    head = text[:a].rstrip()
    pre = tok(head, add_special_tokens=False)["input_ids"] if head else []
    upto = tok(text[:b], add_special_tokens=False)["input_ids"]
    if full[: len(pre)] != pre or full[: len(upto)] != upto or len(upto) <= len(pre):
        raise ValueError(
            f"the subject {text[a:b]!r} is not a whole run of tokens in {text!r}: tokenising the text "
            f"before and through the subject does not reproduce the prompt's tokens"
        )
    i0 = len(pre)
    while i0 < len(upto) - 1 and not tok.decode([full[i0]]).strip():  # whitespace-only tokens before it
        i0 += 1
    return i0, len(upto)


def subject_span(
    model_or_tokenizer: Any,
    text_or_record: str | Fact | EditRequest,
    subject: str | None = None,
    *,
    use_offsets: bool = True,
) -> tuple[int, int]:
    """Token span ``[start, end)`` of the subject in ``encode(text)`` (BOS counted).

    Args:
        model_or_tokenizer: a bridge or a tokenizer.
        text_or_record: a `Fact`/`EditRequest` (the subject is where ``{}`` stands) or a full prompt
            (the first occurrence of ``subject`` is used).
        subject: the subject string; required for a full prompt.
        use_offsets: use the tokenizer's character offsets (fast tokenizers; default ``True``).
            ``False`` uses the prefix-tokenisation method, which slow tokenizers need; both agree
            when both apply.

    Cost: negligible (one to three tokenisations; no model passes).

    Raises:
        ValueError: the subject does not occur, or its boundary falls inside a token (e.g. subject
            ``"Needle"`` in ``"SpaceNeedle"``). A token may carry the subject's leading space.
    """
    tok = tokenizer_of(model_or_tokenizer)
    text, subject, a = _locate(text_or_record, subject)
    b = a + len(subject)
    if use_offsets and getattr(tok, "is_fast", False):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        i0, i1 = span_from_offsets(enc["offset_mapping"], text, a, b)
    else:
        i0, i1 = _span_from_prefixes(tok, text, a, b)
    shift = len(bos_ids(tok))
    return i0 + shift, i1 + shift


def check_request(model: Bridge, request: object, *, what: str = "") -> EditRequest:
    """``request`` if an editor can use it on ``model``: the one request check of the editors.

    Checks, before any model pass: that it is an `EditRequest`; that its subject is a whole run of
    its prompt's tokens (`subject_span`); that ``target_new`` tokenizes; and that the prompt followed
    by ``target_new`` fits the model's context (`check_context`).

    Args:
        model: the bridge the edit is for.
        request: the object to check.
        what: a prefix for the messages, e.g. ``"ROME"`` (default: none).

    Raises:
        TypeError: not an `EditRequest`. ValueError: a subject that is not a token run of the prompt, an
            empty target. ContextLengthError: prompt and target longer than ``n_ctx``.

    Cost: negligible (three tokenisations; no model passes).
    """
    pre = f"{what}: " if what else ""
    if not isinstance(request, EditRequest):
        raise TypeError(f"{pre}expected an EditRequest, got {type(request).__name__}: {request!r:.80}")
    subject_span(model, request)  # raises if the subject is not a whole run of the prompt's tokens
    n = len(encode(tokenizer_of(model), request.text)) + len(target_ids(model, request.target_new))
    check_context(model, n, what=f"{pre}the prompt {_short(request.text)} followed by target_new "
                                 f"{request.target_new!r}")
    return request
