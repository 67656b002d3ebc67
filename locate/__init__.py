"""factscope.locate: where is a fact stored? Causal tracing and knowledge-neuron attribution.

Planned (issues 3 and 5): `trace`, `layer_profile`, `neurons`, `suppress`, `enhance`.
"""

__all__: list[str] = []
