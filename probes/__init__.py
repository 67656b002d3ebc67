"""factscope.probes: did the edit work, and did it stay where it was put?

- `neuron_effect`: the change in p(answer) when a fact's knowledge neurons are suppressed or
  enhanced, on the fact, related and unrelated facts, against random neuron sets matched by layer
  and count; `NeuronEffect`.
- `evaluate` / `EditReport`: CounterFact's metrics (ES, PS, NS with magnitudes, exact match,
  neighbourhood KL, N+, portability, locality, fluency, S) before and after an edit, with bootstrap
  CIs by request; `rewrite_scores` for one request on the model as it is.
- `spillover` / `SpilloverResult`: the locality probe: edit one fact, measure how much a bank of
  paraphrases, same-subject, related-entity, same-relation and unrelated facts moved, against the
  similarity (raw and whitened) of their keys to the edited key; fitted slopes with bootstrap CIs
  and a verdict. `default_bank` builds the bank from the built-in groups.
- `stats`: the bootstrap, least squares and F-tests the probes share.
"""

from factscope.probes.evaluate import (
    METRICS,
    EditReport,
    RewriteScores,
    evaluate,
    rewrite_scores,
)
from factscope.probes.neurons import (
    GROUPS,
    NeuronEffect,
    neuron_effect,
    random_controls,
)
from factscope.probes.spillover import (
    EXPECTED,
    SpilloverFit,
    SpilloverProbe,
    SpilloverResult,
    default_bank,
    spillover,
)

__all__ = ["evaluate", "EditReport", "METRICS", "rewrite_scores", "RewriteScores",
           "spillover", "SpilloverResult", "SpilloverProbe", "SpilloverFit", "default_bank", "EXPECTED",
           "neuron_effect", "NeuronEffect", "random_controls", "GROUPS"]
