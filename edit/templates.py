"""Context templates: the prompts ROME, MEMIT and AlphaEdit average their keys and targets over.

A fact is edited in many contexts, not only after its bare prompt. The editors therefore work on a
set of *templates*: ``"{}"`` (the bare prompt) plus short prefixes that the model itself writes,
each followed by ``". {}"``; the request's prompt (which has its own ``{}`` for the subject) goes
where the template's ``{}`` is::

    templates = context_templates(model, config)   # ("{}", "The first time I. {}", ...)
    rows, last = template_rows(model, request, templates)
    # rows[i]: token ids of templates[i].format(request.prompt).format(request.subject)
    # last[i]: the position of the subject's last token in rows[i]

How the prefixes are made: for each ``(n, count)`` in ``config.context_lengths`` (ROME:
``((5, 10), (10, 10))``; MEMIT: ``((10, 5),)``), ``count`` rows start at BOS and take ``n`` tokens
by top-``config.context_top_k`` sampling with a generator seeded by ``config.seed`` (the global RNG
is not touched). Special and added tokens (BOS, image placeholders) are never sampled; braces in
the decoded text become spaces, so a prefix never adds a placeholder. The result is cached per
model object (weakly) and settings.

The editors average the templates' keys into one key per request (ROME's k*, MEMIT's K) with
`template_weights`: uniform by default, as in the papers, or with the bare prompt weighted
``config.bare_weight`` (the prompt the request is asked and scored on, whose key can differ from the
prefixed ones when the subject follows BOS directly).

The subject's last token (``last``) is where ROME reads k* and adds δ, and where MEMIT reads its
keys and sets z; `prompt_rows` gives it for any ``{}``-prompts (the essence prompt too).

Cost: `context_templates`: ``Σ n`` forwards of ``count`` rows (one token each, growing), once per
model and settings; `template_rows` / `prompt_rows`: tokenisation only.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import torch

from factscope.arch import context_of
from factscope.bridge import Bridge
from factscope.edit.target import TargetConfig
from factscope.facts import EditRequest, Fact
from factscope.tokens import bos_ids, encode, subject_span, tokenizer_of

__all__ = ["context_templates", "template_rows", "prompt_rows", "template_weights"]

_TEMPLATES: weakref.WeakKeyDictionary[Bridge, dict[tuple, tuple[str, ...]]] = weakref.WeakKeyDictionary()


@torch.no_grad()
def context_templates(model: Bridge, config: TargetConfig = TargetConfig()) -> tuple[str, ...]:
    """``"{}"`` plus, per ``(n, count)`` in ``config.context_lengths``, ``count`` sampled ``n``-token prefixes + ``". {}"``.

    Sampled from the model after BOS (top-k, seeded; see the module docstring), cached per model
    object and settings.

    Args:
        model: a bridge.
        config: any `TargetConfig` (`ROMEConfig`, `MEMITConfig`, ...): its ``context_lengths``,
            ``context_top_k`` and ``seed`` are used.

    Cost: ``Σ n`` forwards of ``count`` short rows the first time per model and settings; then a
    dictionary lookup.
    """
    key = (config.context_lengths, config.context_top_k, config.seed)
    memo = _TEMPLATES.setdefault(model, {})
    if key in memo:
        return memo[key]
    g = torch.Generator().manual_seed(config.seed)  # one stream for all the prefixes, in order
    out = ["{}"]
    for n, count in config.context_lengths:
        if count:
            out += _sampled_prefixes(model, n, count, config.context_top_k, g)
    memo[key] = tuple(out)
    return memo[key]


def _sampled_prefixes(model: Bridge, n: int, count: int, top_k: int, g: torch.Generator) -> list[str]:
    """``count`` prefixes of ``n`` tokens sampled after BOS (top-``top_k``, from ``g``), each + ``". {}"``."""
    tok = tokenizer_of(model)
    device = context_of(model).device
    banned = sorted(set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {})))  # e.g. <start_of_image>
    ids = torch.tensor([bos_ids(tok)] * count, device=device)  # [row, 1]: BOS
    for _ in range(n):
        logits = model(ids, logits_to_keep=1)[:, -1].float().cpu()  # [row, d_vocab]
        logits[:, banned] = -math.inf
        top = logits.topk(top_k, dim=-1)
        pick = torch.multinomial(top.values.softmax(-1), 1, generator=g)  # [row, 1]
        ids = torch.cat([ids, top.indices.gather(1, pick).to(device)], 1)
    out = []
    for row in ids[:, 1:].tolist():
        text = tok.decode(row, skip_special_tokens=True)
        out.append(" ".join(text.replace("{", " ").replace("}", " ").split()) + ". {}")
    return out


def prompt_rows(model: Bridge, prompts: Sequence[str], subject: str) -> tuple[list[list[int]], list[int]]:
    """Token rows of ``prompts`` (each with one ``{}``) filled with ``subject``, and the subject's last token in each.

    Args:
        model: a bridge (its tokenizer).
        prompts: texts with one ``{}`` where the subject goes.
        subject: the subject; it must tokenise as a whole run of tokens in every prompt.

    Returns:
        ``(rows, last)``: ``rows[i]`` the token ids (BOS included), ``last[i]`` the position of the
        subject's last token in ``rows[i]``.

    Raises:
        ValueError: the subject is not a whole run of tokens in one of the prompts.

    Cost: tokenisation of each prompt (twice: to find the subject and to encode).
    """
    rows, last = [], []
    for text in prompts:
        _, s1 = subject_span(model, Fact(text, subject))
        rows.append(encode(model, text.format(subject)))
        last.append(s1 - 1)
    return rows, last


def template_rows(model: Bridge, request: EditRequest, templates: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """`prompt_rows` of the request's prompt behind every template: ``templates[i].format(request.prompt)``.

    Args:
        model: a bridge.
        request: the `EditRequest` (its ``prompt`` and ``subject``).
        templates: context templates, each with one ``{}`` (`context_templates`).

    Cost: tokenisation of each filled template.
    """
    return prompt_rows(model, [t.format(request.prompt) for t in templates], request.subject)


def template_weights(templates: Sequence[str], bare_weight: float | None = None) -> torch.Tensor:
    """``[template]`` float64 weights summing to 1 for averaging the templates' keys.

    Args:
        templates: the context templates (`context_templates`).
        bare_weight: the weight of the bare prompt ``"{}"``, in [0, 1]; the other templates share
            ``1 - bare_weight`` equally. ``None`` (default): ``1/T`` each, the papers' average. With
            ``"{}"`` the only template it gets 1 whatever ``bare_weight`` is.

    Raises:
        ValueError: no templates, ``bare_weight`` given but no ``"{}"`` among the templates, or
            ``bare_weight`` outside [0, 1].

    Cost: negligible.
    """
    T = len(templates)
    if T == 0:
        raise ValueError("expected at least one context template, got none")
    w = torch.full((T,), 1.0 / T, dtype=torch.float64)
    if bare_weight is None:
        return w
    if not 0 <= bare_weight <= 1:
        raise ValueError(f"expected bare_weight in [0, 1] or None, got {bare_weight!r}")
    if "{}" not in templates:
        raise ValueError(f"expected the templates to include the bare prompt '{{}}', got {list(templates)[:3]}...")
    if T == 1:
        return torch.ones(1, dtype=torch.float64)
    b = list(templates).index("{}")
    w.fill_((1.0 - bare_weight) / (T - 1))
    w[b] = bare_weight
    return w
