"""The worked example the programs default to, and the demo's sizes.

- `DEMO_FACT`: the built-in fact the demo traces, finds neurons for and edits with ROME.
- `DEMO_GROUP`: the built-in group for spillover (the President's residence, and facts about the
  Secretary of State beside it); the CLI's ``probe spillover`` default too.
- `C_TOKENS`, `MEMIT_FACTS`: sizes that keep a first demo run short (the model conversion, the layer
  profile and the key statistics are then cached): C from 8,192 model-sampled tokens (the library
  default is 16,384; docs/guide.md compares them) and a MEMIT batch of one fact for each of the first
  8 relations.
"""

from __future__ import annotations

__all__ = ["DEMO_FACT", "DEMO_GROUP", "C_TOKENS", "MEMIT_FACTS"]

DEMO_FACT = "eiffel_tower_located_in_city"
"""The built-in fact of the demo's trace, neurons and ROME edit."""
DEMO_GROUP = "president_vs_secretary_of_state"
"""The built-in spillover group of the demo and the CLI's ``probe spillover``."""
C_TOKENS = 8192
"""Model-sampled tokens for the demo's key statistics C."""
MEMIT_FACTS = 8
"""The demo's MEMIT batch: one built-in fact for each of the first this-many relations."""
