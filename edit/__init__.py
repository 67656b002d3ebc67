"""factscope.edit: rewrite a fact. ROME, MEMIT, knowledge-neuron edits, FT-L and AlphaEdit.

- `rome` / `ROMEConfig`: one fact by a rank-one update of one MLP's output weights.
- `covariance` / `covariances` / `sample_corpus`: the key statistics C = E[kkᵀ], cached on disk.
- `Edit` / `compose`: what every editor returns: ``apply`` / ``revert`` / ``applied``, ``save`` / ``load``.
- `kn`: a knowledge-neuron edit (Dai et al.'s rule on the neurons' value slots, rows of ``W_out``).
- Planned (issue 6): `memit`, `finetune`, `alphaedit`, `EditSession`.
"""

from factscope.edit.covariance import DEFAULT_N_TOKENS, covariance, covariances, sample_corpus
from factscope.edit.handle import Edit, compose
from factscope.edit.kn import kn
from factscope.edit.rome import ROMEConfig, rome

__all__ = ["Edit", "compose", "rome", "kn", "ROMEConfig", "covariance", "covariances", "sample_corpus", "DEFAULT_N_TOKENS"]
