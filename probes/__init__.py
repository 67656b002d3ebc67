"""factscope.probes: did the edit work, and did it stay where it was put?

Planned (issues 5 and 7): `evaluate`, `spillover`, `neuron_effect`.
"""

__all__: list[str] = []
