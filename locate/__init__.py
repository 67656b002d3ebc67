"""factscope.locate: where is a fact stored? Causal tracing and knowledge-neuron attribution.

- `trace`: causal tracing of one fact (hidden / MLP / attention restoration grids).
- Planned (issues 3 and 5): `layer_profile`, `neurons`, `suppress`, `enhance`.
"""

from factscope.locate.tracing import KINDS, TraceResult, embedding_sigma, trace

__all__ = ["trace", "TraceResult", "embedding_sigma", "KINDS"]
