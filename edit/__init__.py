"""factscope.edit: rewrite a fact. ROME, MEMIT, knowledge-neuron edits, FT-L and AlphaEdit.

- `rome` / `ROMEConfig`: one fact by a rank-one update of one MLP's output weights.
- `memit` / `MEMITConfig`: many facts at once, spread over a range of layers.
- `alphaedit` / `AlphaEditConfig`: MEMIT's update projected onto the null space of preserved keys.
- `finetune` / `FTConfig`: the constrained fine-tuning baseline FT-L (one layer's ``W_out``, L∞ bound).
- `editor` / `run_editor` / `EDITORS`: the editor registry, the one list of editor names (aliases too),
  their config classes and one uniform call ``(model, requests, *, layers, config, C) -> Edit``.
- `kn` / `KNConfig`: a knowledge-neuron edit (Dai et al.'s rule on the neurons' value slots, rows of ``W_out``).
- `edit_layer` / `EditLayerChoice`: where to edit, chosen from key specificity (`key_specificity`),
  the tracing profile and a trial edit on calibration facts; what ``layer=None`` / ``layers=None`` use.
- `EditSession`: sequential editing (batch after batch; AlphaEdit's carried-over keys; revert, save).
- `covariance` / `covariances` / `sample_corpus`: the key statistics C = E[kkᵀ], cached on disk.
- `Edit` / `compose`: what every editor returns: ``apply`` / ``revert`` / ``applied``, ``save`` / ``load``.

The engine ROME, MEMIT and AlphaEdit share, one concept per module: `factscope.edit.target`
(`TargetConfig`, the v*/z settings both configs inherit), `factscope.edit.templates` (the context
templates and their token rows), `factscope.edit.key_stats` (C for the edited layers, given or
cached), `factscope.edit.layer_update` (spreading an edit over layers: keys, shares, solver, writes)
and `factscope.edit.post_norm` (mapping a target through Gemma's MLP post-norm).
"""

from factscope.edit.alphaedit import AlphaEditConfig, alphaedit
from factscope.edit.covariance import DEFAULT_N_TOKENS, covariance, covariances, sample_corpus
from factscope.edit.finetune import FTConfig, finetune
from factscope.edit.handle import Edit, compose
from factscope.edit.key_specificity import KeySpecificity, key_specificity
from factscope.edit.kn import KNConfig, kn
from factscope.edit.layer_choice import EditLayerChoice, LayerChoiceWarning, edit_layer
from factscope.edit.memit import MEMITConfig, memit
from factscope.edit.registry import EDITORS, EditorSpec, editor, editor_names, run_editor
from factscope.edit.rome import ROMEConfig, rome
from factscope.edit.session import EditSession

__all__ = ["Edit", "compose", "rome", "memit", "alphaedit", "finetune", "kn", "EditSession", "ROMEConfig",
           "MEMITConfig", "AlphaEditConfig", "FTConfig", "KNConfig", "EDITORS", "EditorSpec", "editor", "editor_names",
           "run_editor", "covariance", "covariances", "sample_corpus",
           "DEFAULT_N_TOKENS", "edit_layer", "EditLayerChoice", "LayerChoiceWarning", "key_specificity",
           "KeySpecificity"]
