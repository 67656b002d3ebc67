"""Did the edit work? CounterFact's rewrite scores for one request on the model as it is now.

``rewrite_scores(model, request)`` compares the mean per-token log-probability of ``target_new``
and ``target_true`` (teacher-forced over all their tokens, `factscope.predict.target_logprob`):

- efficacy: ``p(new) > p(true)`` on the edit prompt (0 or 1);
- paraphrase: the fraction of paraphrases with ``p(new) > p(true)``;
- neighbourhood: the fraction of neighbour prompts with ``p(true) > p(new)``;

plus the magnitudes (mean log-probability differences). Apply an edit first (``with
edit.applied(model):``) to score it; call it on the bare model for the baseline. Every prompt and
both targets go through one batched call: ``2 × (1 + n_paraphrases + n_neighbours)`` rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from factscope.facts import EditRequest

__all__ = ["RewriteScores", "rewrite_scores"]


@dataclass(frozen=True, kw_only=True)
class RewriteScores:
    """CounterFact's success rates for one request, and the log-probability margins behind them.

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
        return asdict(self)


def rewrite_scores(model: Any, request: EditRequest) -> RewriteScores:
    """Efficacy, paraphrase and neighbourhood of ``request`` on ``model`` as it is (see the module docstring)."""
    import torch

    from factscope.predict import target_logprob

    if not isinstance(request, EditRequest):
        raise TypeError(f"expected an EditRequest, got {type(request).__name__}")
    prompts = [request.text, *request.paraphrases, *request.neighbours]
    n = len(prompts)
    lp = target_logprob(model, prompts * 2, [request.target_new] * n + [request.target_true] * n)
    margin = lp[:n] - lp[n:]  # [prompt] log p(new) − log p(true)
    para = margin[1:1 + len(request.paraphrases)]
    nb = margin[1 + len(request.paraphrases):]

    def mean(x: torch.Tensor) -> float:
        return float(x.mean()) if len(x) else float("nan")

    return RewriteScores(efficacy=float(margin[0] > 0), paraphrase=mean((para > 0).double()),
                         neighbourhood=mean((nb < 0).double()), efficacy_margin=float(margin[0]),
                         paraphrase_margin=mean(para), neighbourhood_margin=mean(nb))
