"""factscope.locate: where is a fact stored? Causal tracing and knowledge-neuron attribution.

- `trace`: causal tracing of one fact (hidden / MLP / attention restoration grids);
  `estimate_trace_memory`, the peak memory it would need (it refuses work that would not fit).
- `layer_profile`: tracing averaged over facts in ROME's six token buckets; `.best_layer()`.
- `recommended_layer`: the edit layer from a profile, cached on disk per model.
- `neurons`: knowledge neurons of a fact (integrated gradients, coarse threshold, refinement over
  paraphrases); `NeuronResult`; `neuron_attribution` for one prompt.
- `suppress` / `enhance`: context managers that zero or scale chosen neurons' activations.
"""

from factscope.locate.knowledge_neurons import (
                                      NeuronResult,
                                      coarse_neurons,
                                      enhance,
                                      neuron_attribution,
                                      neuron_list,
                                      neurons,
                                      refine_neurons,
                                      suppress,
)
from factscope.locate.profile import (
                                      BUCKETS,
                                      LayerChoice,
                                      ProfileResult,
                                      layer_profile,
                                      one_per_relation,
                                      recommended_layer,
                                      token_buckets,
)
from factscope.locate.tracing import KINDS, TraceResult, embedding_sigma, estimate_trace_memory, trace

__all__ = ["trace", "TraceResult", "embedding_sigma", "estimate_trace_memory", "KINDS",
           "layer_profile", "ProfileResult", "token_buckets", "BUCKETS",
           "recommended_layer", "LayerChoice", "one_per_relation",
           "neurons", "NeuronResult", "neuron_attribution", "coarse_neurons", "refine_neurons", "neuron_list",
           "suppress", "enhance"]
