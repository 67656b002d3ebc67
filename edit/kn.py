"""Knowledge-neuron editing (Dai et al., ACL 2022): rewrite a fact through its knowledge neurons' value slots.

Each knowledge neuron (layer l, index i) writes ``a_i · v`` into the residual stream, where its
*value slot* v is row i of the MLP output projection ``W_out`` (``[d_mlp, d_model]``). The official
rule (``src/6_edit_knowledge_sampled.py`` of Hunter-DDM/knowledge-neurons) moves every slot away from
the old answer's word embedding and towards the new one's:

    v ← v − λ₁ · (‖v‖ / ‖e_old‖) · e_old + λ₂ · (‖v‖ / ‖e_new‖) · e_new

with ‖v‖ the slot's norm *before* the edit (the official code computes both coefficients first),
λ₁ = ``lambda_erase`` = 1 and λ₂ = ``lambda_insert`` = 8 (the paper's values), and e the first token
of ``" " + target``. EasyEdit's KN implements a different rule (v ± 2·embedding); this is not it.

Which embedding. The official code uses the *input* word embeddings (BERT's
``embeddings.word_embeddings``), and so do we by default (``direction="embedding"``: the rows of
``W_E``, ``[d_vocab, d_model]``). A slot is added to the residual stream, the space those rows live
in, and for the tied models here (Gemma 3, SmolLM2, GPT-2 all tie the unembedding to the embedding)
the row is also the direction that raises that token's logit. ``direction="unembedding"`` uses the
columns of ``W_U`` instead, which differ only for untied models. Gemma multiplies its embeddings by
√d_model on the way in; that does not matter here: the rule only uses the direction e/‖e‖, and the
step length comes from ‖v‖. On Gemma the slot passes the MLP's post-norm (``ln2_post``, an RMSNorm
with a learned gain) before it reaches the residual, so the written direction arrives rescaled per
coordinate; the rule is applied to ``W_out`` as the paper defines it, without correcting for that.

``e_old`` is the first token of ``target_true``, or the model's top-1 answer when the request has
none (the official code uses the model's prediction, after checking it is the gold answer).

The update only touches one row of ``W_out`` per neuron, so the `Edit` is low-rank: per layer,
``U`` one-hot columns ``[d_mlp, r]`` and ``V`` the row changes ``[r, d_model]`` (float64). It is
reversible bit-exactly, saveable and fingerprinted, like ROME's.

Locating needs at least 3 prompts (`factscope.locate.knowledge_neurons.MIN_PROMPTS`) for the
refinement: the request's prompt and paraphrases. `kn_prompts` pads a request with fewer by
context-prefixed copies of its prompt (`CONTEXTS`); the editor registry's KN entry (and so the
CLI) does that and says so.

Cost: locating the neurons (`factscope.locate.knowledge_neurons`: integrated gradients over every
layer, ``steps`` forward+backward rows per layer and prompt) when ``neurons`` is not given; the
update itself is O(r · d_model) per layer. Measured times: docs/guide.md, "Measured costs of the
editors". Dimension names as in `factscope`; ``r`` neurons in a layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from factscope.arch import arch_of
from factscope.bridge import Bridge
from factscope.edit.handle import Edit
from factscope.facts import EditRequest
from factscope.locate.knowledge_neurons import MIN_PROMPTS, NeuronResult, neuron_list
from factscope.locate.knowledge_neurons import neurons as locate_neurons
from factscope.models import fingerprint
from factscope.predict import next_token_logits
from factscope.tokens import check_request, str_tokens, target_ids

__all__ = ["kn", "KNConfig", "kn_update", "token_direction", "kn_prompts", "pad_prompts", "CONTEXTS"]

CONTEXTS = ("Here is a fact.", "From an encyclopedia:", "Quiz question, answered correctly:")
"""Context prefixes that pad a fact without enough paraphrases up to the prompts the refinement needs."""

Neurons = NeuronResult | Sequence[tuple[int, int] | tuple[int, int, float]]

Direction = Literal["embedding", "unembedding"]


@dataclass(frozen=True, kw_only=True)
class KNConfig:
    """KN's settings: the paper's rule (λ₁ = 1, λ₂ = 8, input embeddings) and the neuron search's defaults.

    Cost: negligible (plain data, validated on construction).

    Attributes:
        lambda_erase, lambda_insert: λ₁ and λ₂ (the paper's 1 and 8).
        direction: ``"embedding"`` (the official rule) or ``"unembedding"``.
        steps, threshold, refine, batch_size: passed to `factscope.locate.knowledge_neurons` when the
            neurons are located (20 integration steps, 0.2 of the top score, kept in 0.7 of the
            prompts, automatic batch size).
    """

    lambda_erase: float = 1.0
    lambda_insert: float = 8.0
    direction: Direction = "embedding"
    steps: int = 20
    threshold: float = 0.2
    refine: float = 0.7
    batch_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("lambda_erase", "lambda_insert"):
            lam = getattr(self, name)
            if isinstance(lam, bool) or not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
                raise ValueError(f"expected {name} to be a finite number >= 0, got {lam!r}")
        if self.direction not in ("embedding", "unembedding"):
            raise ValueError(f"expected direction 'embedding' or 'unembedding', got {self.direction!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"expected steps to be an int >= 1, got {self.steps!r}")
        for name in ("threshold", "refine"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"expected {name} in [0, 1], got {v!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"expected batch_size to be None or an int >= 1, got {self.batch_size!r}")


def token_direction(model: Bridge, token: int, direction: Direction = "embedding") -> Float[Tensor, "d_model"]:
    """Row ``token`` of the word embedding ``W_E`` (or column of the unembedding ``W_U``), float64."""
    if direction == "embedding":
        return model.W_E[token].detach().double()
    if direction == "unembedding":
        return model.W_U[:, token].detach().double()
    raise ValueError(f"expected direction 'embedding' or 'unembedding', got {direction!r}")


def kn_update(v: Float[Tensor, "d_model"], e_old: Float[Tensor, "d_model"], e_new: Float[Tensor, "d_model"], *,
              lambda_erase: float = 1.0, lambda_insert: float = 8.0) -> Float[Tensor, "d_model"]:
    """The change of one value slot: ``−λ₁‖v‖/‖e_old‖·e_old + λ₂‖v‖/‖e_new‖·e_new`` (float64)."""
    v, e_old, e_new = v.double(), e_old.double(), e_new.double()
    n = v.norm()
    return -lambda_erase * (n / e_old.norm()) * e_old + lambda_insert * (n / e_new.norm()) * e_new


def pad_prompts(prompts: Sequence[str]) -> tuple[list[str], int]:
    """``prompts`` without repeats, padded with `CONTEXTS`-prefixed copies of the first up to ``MIN_PROMPTS``.

    Args:
        prompts: a non-empty sequence of prompts, the first the fact's own.

    Returns:
        ``(prompts, added)``: the padded list (first occurrences kept, in order) and how many copies were added.

    Cost: negligible.
    """
    out = list(dict.fromkeys(prompts))
    added = 0
    for ctx in CONTEXTS:
        if len(out) >= MIN_PROMPTS:
            break
        out.append(f"{ctx} {prompts[0]}")
        added += 1
    return out, added


def kn_prompts(request: EditRequest) -> tuple[list[str], int]:
    """The prompts KN locates a request's neurons over: its prompt and paraphrases, padded by `pad_prompts`.

    Args:
        request: the `EditRequest` (``text`` and ``paraphrases``).

    Returns:
        ``(prompts, added)``; ``added`` is 0 when the request has enough prompts of its own.

    Cost: negligible.
    """
    return pad_prompts([request.text, *request.paraphrases])


def _old_token(model: Bridge, request: EditRequest) -> int:
    if request.target_true is not None:
        return target_ids(model, request.target_true)[0]
    return int(next_token_logits(model, [request.text])[0].argmax())


def kn(
    model: Bridge,
    request: EditRequest,
    *,
    neurons: Neurons | None = None,
    prompts: Sequence[str] | None = None,
    config: KNConfig = KNConfig(),
    progress: bool = True,
    verbose: bool = True,
) -> Edit:
    """Compute a knowledge-neuron edit: move the neurons' value slots from the old answer to the new.

    See the module docstring for the rule. The model is not changed.

    Args:
        model: a bridge.
        request: the fact to rewrite (``prompt``, ``subject``, ``target_new``; ``target_true`` gives
            e_old and is the answer the neurons are located for).
        neurons: a `factscope.locate.NeuronResult` or ``(layer, index[, score])`` items; ``None``
            (default) locates them first with `factscope.locate.knowledge_neurons`.
        prompts: passed on to `factscope.locate.knowledge_neurons` when ``neurons`` is ``None``
            (default: the request's prompt and paraphrases); ignored otherwise.
        config: `KNConfig` (λ₁, λ₂, the direction, and the neuron search's steps, threshold, refine
            and batch size; default: the paper's).
        progress: progress bars (default ``True``). verbose: print the neurons edited (default ``True``).

    Returns:
        An `Edit` (``apply`` / ``revert`` / ``applied`` / ``save``); its ``info`` holds the neurons,
        the old and new tokens, each slot's norm before and the refinement note.

    Raises:
        TypeError: not an `EditRequest`. ValueError: no neurons found or given, a neuron out of
        range, negative or non-finite λ, old and new targets sharing their first token. The model
        is left untouched in every case.

    Cost: with ``neurons=None``, that of `factscope.locate.knowledge_neurons` (integrated gradients
    over every layer and prompt; measured times in docs/guide.md, "Measured costs of the editors");
    given the neurons, O(r · d_model) per layer (plus one forward when the request has no
    ``target_true``).
    """
    check_request(model, request, what="KN")  # type, subject, target, context length: before any work
    if not isinstance(config, KNConfig):
        raise TypeError(f"expected config to be a KNConfig, got {type(config).__name__}")
    c = config
    a = arch_of(model)
    new = target_ids(model, request.target_new)[0]
    old = _old_token(model, request)
    if old == new:
        raise ValueError(f"expected the old and new answers to start with different tokens, but both start with "
                         f"{str_tokens(model, [old])[0]!r} ({request.target_true!r} vs {request.target_new!r}); "
                         f"the KN rule would cancel out")
    found = None
    if neurons is None:
        found = locate_neurons(model, request, prompts=prompts, steps=c.steps, threshold=c.threshold, refine=c.refine,
                       batch_size=c.batch_size, progress=progress)
        neurons = found
    elif isinstance(neurons, NeuronResult):
        found = neurons
    chosen = neuron_list(model, neurons)
    if not chosen:
        raise ValueError("expected at least one knowledge neuron to edit, got none (the refinement kept none: "
                         "lower threshold, or pass neurons=)")
    fp = fingerprint(model)
    e_old, e_new = token_direction(model, old, c.direction), token_direction(model, new, c.direction)
    by_layer: dict[int, list[int]] = {}
    for l, i in chosen:
        by_layer.setdefault(l, []).append(i)
    deltas, norms = {}, []
    for l, idx in sorted(by_layer.items()):
        W = a.W_out(model, l).detach()
        U = torch.zeros(a.d_mlp, len(idx), dtype=torch.float64)  # [d_mlp, r]: one-hot columns
        V = torch.zeros(len(idx), a.d_model, dtype=torch.float64)  # [r, d_model]: the row changes
        for j, i in enumerate(idx):
            U[i, j] = 1.0
            V[j] = kn_update(W[i], e_old, e_new, lambda_erase=c.lambda_erase, lambda_insert=c.lambda_insert).cpu()
            norms.append(float(W[i].double().norm()))
        deltas[l] = (U, V)
    if verbose:
        print(f"KN: editing {len(chosen)} neuron(s) "
              + ", ".join(f"L{l}.{i}" for l, i in chosen)
              + f": {str_tokens(model, [old])[0]!r} -> {str_tokens(model, [new])[0]!r}")
    info = dict(neurons=[list(n) for n in chosen], old_token=str_tokens(model, [old])[0], old_id=old,
                new_token=str_tokens(model, [new])[0], new_id=new, value_norms=norms,
                located=found is not None,
                refine_used=found.settings.get("refine_used") if found is not None else None,
                refine_note=found.settings.get("refine_note") if found is not None else None)
    settings = dict(asdict(c), prompts=list(prompts) if prompts is not None else None)
    return Edit(deltas=deltas, method="kn", requests=(request,), config=settings, fingerprint=fp, info=info)
