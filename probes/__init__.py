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
- `localization_vs_editing` / `LocalizationResult`: Hase et al.'s test: regress per-layer edit
  success on layer, on the causal-tracing effect, and on both (R², nested F-tests).
- `locality_predictors` / `LocalityResult`: what predicts where an edit stays put? Edit each request
  at each layer and regress NS, neighbour KL and top-1 flips on layer, the tracing effect and key
  specificity (R², nested F-tests, bootstrap CIs by request).
- `neuron_overlap` / `OverlapResult`: are knowledge neurons stable? Jaccard overlap of the sets
  found on disjoint halves of the prompts and across seeds, against matched random sets.
- `stats`: the bootstrap, least squares and F-tests the probes share.
"""

from factscope.probes.evaluate import (
    METRICS,
    EditReport,
    RewriteScores,
    evaluate,
    rewrite_scores,
)
from factscope.probes.locality_predictors import LocalityResult, locality_predictors
from factscope.probes.localization import LocalizationResult, localization_vs_editing
from factscope.probes.neuron_effect import (
    GROUPS,
    NeuronEffect,
    neuron_effect,
    random_controls,
)
from factscope.probes.overlap import OverlapResult, neuron_overlap
from factscope.probes.spillover import (
    EXPECTED,
    SpilloverFit,
    SpilloverProbe,
    SpilloverResult,
    default_bank,
    spillover,
)

__all__ = ["evaluate", "EditReport", "METRICS", "rewrite_scores", "RewriteScores",
           "spillover", "SpilloverResult",
           "localization_vs_editing", "LocalizationResult", "locality_predictors", "LocalityResult",
           "neuron_overlap", "OverlapResult", "SpilloverProbe", "SpilloverFit", "default_bank", "EXPECTED",
           "neuron_effect", "NeuronEffect", "random_controls", "GROUPS"]
