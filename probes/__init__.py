"""factscope.probes: did the edit work, and did it stay where it was put?

- `neuron_effect`: the change in p(answer) when a fact's knowledge neurons are suppressed or
  enhanced, on the fact, related and unrelated facts, against random neuron sets matched by layer
  and count; `NeuronEffect`.
- Planned (issue 7): `evaluate`, `spillover`.
"""

from factscope.probes.neurons import (
    GROUPS,
    NeuronEffect,
    neuron_effect,
    random_controls,
)

__all__ = ["neuron_effect", "NeuronEffect", "random_controls", "GROUPS"]
