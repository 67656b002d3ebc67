"""Sequential editing: `EditSession` applies batch after batch and keeps what each method needs.

    session = EditSession(model, method="alphaedit")       # any editor name of factscope.edit.registry
    for batch in batches:
        session.edit(batch)                                   # computed on the current model, then applied
    session.history                                           # one `Edit` per step, oldest first
    session.revert()                                          # all of them, last first: bit-exact original
    session.save("run/")                                      # every step, plus what AlphaEdit carries over

The methods, their config classes and what ``layers`` means for each come from the editor
registry (`factscope.edit.registry`): ``"rome"``, ``"memit"``, ``"alphaedit"``, ``"ft-l"``
(alias ``"finetune"``) and ``"kn"``. Batch editors (MEMIT, AlphaEdit, FT-L) make one `Edit` per
step; one-at-a-time editors (ROME, KN) make one per request, applied one after another.

What the session fixes once, on the unedited model
--------------------------------------------------
- **Layers**: the layer (ROME, FT-L) or window (MEMIT, AlphaEdit) `factscope.edit.layer_choice.edit_layer`
  chooses for the method and config on the unedited model.
  Re-tracing an edited model would pick layers from a model that no longer exists, and cost
  minutes per step. KN locates its neurons afresh at every step (they are what it edits).
- **Key statistics C** at those layers (`factscope.edit.key_stats`; ROME, MEMIT, AlphaEdit). They
  are keyed by the model's fingerprint, so asking again after an edit would recompute them from the
  edited model (minutes per step) and drift with it; the session passes the base model's C to
  every step.
- **AlphaEdit's P** (from C) and its growing ``cache_c = Σ KᵀK`` over the steps so far: each step
  adds the keys it wrote at each layer. Reverting steps recomputes ``cache_c`` from the remaining
  steps' keys in their original order, so it is bit-identical to what it was at that point.

Memory: the applied edits' saved weights (one ``W_out`` copy per edited layer per step,
``d_mlp × d_model`` numbers in the weights' dtype), the C's (and P's) of the edited layers
(``d_mlp² × 8`` bytes each), and for AlphaEdit every step's keys (``[request, d_mlp]`` float64 per
layer).

Dimension names: ``request``, ``d_mlp`` as in `factscope.edit.memit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from factscope.bridge import Bridge
from factscope.checks import as_requests
from factscope.edit.alphaedit import AlphaEditConfig, alphaedit_with_keys, null_space_projection
from factscope.edit.handle import Edit, compose
from factscope.edit.key_stats import key_stats
from factscope.edit.layer_choice import default_layers
from factscope.edit.registry import EditorConfig, EditorSpec, default_config, editor, editor_names
from factscope.edit.target import TargetConfig
from factscope.facts import EditRequest
from factscope.tokens import check_request

__all__ = ["EditSession", "METHODS"]

METHODS = editor_names()
"""The methods a session takes: the registry's editor names (`factscope.edit.registry.editor_names`)."""


class EditSession:
    """Sequential editing: apply batch after batch to one model, with layers and C fixed up front.

    See the module docstring for what is fixed once and why.

    Args:
        model: a bridge, unedited; the session applies its edits to it.
        method: an editor name or alias of `factscope.edit.registry` (default ``"rome"``: one edit
            per request, a batch applied request by request; ``"memit"``, ``"alphaedit"``, ``"ft-l"``,
            ``"kn"``).
        layers: as the registry's ``layers`` for that editor (ROME, FT-L: one layer; MEMIT,
            AlphaEdit: a list of distinct layers; KN: ``None``); negative values count from the end
            (``self.layers`` holds them normalised and sorted). ``None`` (default): chosen once, on the
            unedited model, by `factscope.edit.layer_choice.edit_layer` for the method and config (cached).
        config: an instance of the method's config class (`ROMEConfig`, `MEMITConfig`,
            `AlphaEditConfig`, `FTConfig`, `KNConfig`); ``None`` (default): the registry's
            `factscope.edit.registry.default_config` (the tuned δ budget for the model's family).
        C: ``{layer: E[kkᵀ]}`` ``[d_mlp, d_mlp]`` to use instead of computing them from the model
            (default ``None``: `factscope.edit.covariances`, cached on disk).
        progress, verbose: passed to the editors (defaults ``True`` and ``False``).

    Attributes:
        history: the applied `Edit` s, oldest first.
        layers: the layers every step edits (empty for KN).
        C, P: the key statistics and (AlphaEdit) null-space projections per layer, ``[d_mlp, d_mlp]``.

    Raises:
        ValueError: an unknown method or bad layers. TypeError: a config of another class.

    Cost: construction computes or loads C per layer (sampling and a statistics forward the first
    time per model, then a file read), P by one O(d_mlp³) ``eigh`` per layer for AlphaEdit, and the
    layer choice when ``layers`` is ``None`` (`edit_layer`, cached on disk). Each step costs its editor's call.
    Memory grows per step: one ``W_out`` copy per edited layer and, for AlphaEdit, the step's keys.
    Measured times: docs/guide.md, "Measured costs of the editors".
    """

    def __init__(self, model: Bridge, method: str = "rome", *, layers: int | Sequence[int] | None = None,
                 config: EditorConfig | None = None, C: dict[int, Tensor] | None = None, progress: bool = True,
                 verbose: bool = False) -> None:
        try:
            spec = editor(method)
            config = spec.check_config(default_config(spec, model) if config is None else config)
        except (ValueError, TypeError) as e:
            raise type(e)(f"EditSession(method={method!r}): {e}") from None
        self.model, self.method, self.config, self.spec = model, spec.name, config, spec
        self.progress, self.verbose = progress, verbose
        self.layers = _fixed_layers(model, spec, config, layers, progress)
        self.C = key_stats(model, self.layers, config, C, progress=progress) if isinstance(config, TargetConfig) \
            else dict(C or {})
        self.P = ({l: null_space_projection(self.C[l], config.null_space_threshold) for l in self.layers}
                  if isinstance(config, AlphaEditConfig) else {})
        self.history: list[Edit] = []
        self._keys: list[dict[int, Tensor]] = []  # AlphaEdit: each step's keys per layer

    # ------------------------------------------------------------------ state

    @property
    def cache_c(self) -> dict[int, Tensor]:
        """AlphaEdit's ``Σ KᵀK`` per layer over the applied steps, summed in step order (float64)."""
        out: dict[int, Tensor] = {}
        for keys in self._keys:
            for l, K in keys.items():
                out[l] = K.T @ K if l not in out else out[l] + K.T @ K
        return out

    def __len__(self) -> int:
        return len(self.history)

    def __repr__(self) -> str:
        n = sum(len(e.requests) for e in self.history)
        return f"EditSession(method={self.method!r}, layers={self.layers}, steps={len(self.history)}, requests={n})"

    # ------------------------------------------------------------------ editing

    def edit(self, requests: EditRequest | Sequence[EditRequest]) -> list[Edit]:
        """Compute the next step's edit(s) on the current model and apply them; returns the new `Edit` s.

        One-at-a-time editors (ROME, KN) make one edit per request, each applied before the next is
        computed; batch editors (MEMIT, AlphaEdit, FT-L) make one edit for the batch. If computing
        fails, nothing more is applied (earlier requests of the batch stay applied).

        Args:
            requests: one `EditRequest` or a non-empty sequence (the batch).

        Cost: the editor's (once per request, or once over the batch) plus `Edit.apply`.
        """
        reqs = list(as_requests(requests))  # the whole batch is checked before the first edit is computed
        for r in reqs:
            check_request(self.model, r, what="EditSession.edit")
        if isinstance(self.config, AlphaEditConfig):
            e, keys = alphaedit_with_keys(self.model, reqs, layers=self.layers, config=self.config, P=self.P,
                                          cache_c=self.cache_c, progress=self.progress, verbose=self.verbose)
            self._push(e.apply(self.model), keys)
            return [e]
        made = []
        for batch in ([reqs] if self.spec.batch else [[r] for r in reqs]):
            e = self.spec.run(self.model, batch, layers=self.layers or None, config=self.config, C=self.C,
                              progress=self.progress, verbose=self.verbose)
            self._push(e.apply(self.model), None)
            made.append(e)
        return made

    def _push(self, e: Edit, keys: dict[int, Tensor] | None) -> None:
        self.history.append(e)
        if keys is not None:
            self._keys.append(keys)

    def revert(self, steps: int | None = None) -> None:
        """Revert the last ``steps`` edits, newest first; the weights return bit-exactly.

        Args:
            steps: how many edits to revert (default ``None``: all).

        Cost: one `Edit.revert` per edit (milliseconds each).
        """
        n = len(self.history) if steps is None else steps
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(self.history):
            raise ValueError(f"EditSession.revert: expected 0 <= steps <= {len(self.history)}, got {steps!r}")
        for _ in range(n):
            e = self.history.pop()
            e.revert(self.model)
            if self.method == "alphaedit":
                self._keys.pop()

    def compose(self) -> Edit:
        """All steps merged into one `Edit` (`factscope.edit.compose`), applicable to the base model.

        Cost: a concatenation of the steps' factors (or a sum of dense deltas) per layer.
        """
        if not self.history:
            raise ValueError("EditSession.compose: no edits yet")
        return compose(self.history)

    # ------------------------------------------------------------------ files

    def save(self, folder: str | Path) -> Path:
        """Write ``step-0000.safetensors`` (+ ``.json``) per edit and ``session.safetensors`` (+ ``.json``).

        Every file is a result file (`factscope.result_files`): each step an `Edit`'s, and the session's
        (kind ``"factscope.session"``) holds the method, layers and step count, and AlphaEdit's keys
        as tensors ``keys.{step}.layer.{l}``.

        Args:
            folder: created if missing; returned.

        Cost: one `Edit.save` per step, plus AlphaEdit's keys (``[request, d_mlp]`` float64 per layer).
        """
        from factscope.result_files import save_result

        folder = Path(folder)
        for i, e in enumerate(self.history):
            e.save(folder / f"step-{i:04d}.safetensors")
        tensors = {f"keys.{i}.layer.{l}": K for i, keys in enumerate(self._keys) for l, K in keys.items()}
        meta = dict(method=self.method, layers=self.layers, steps=len(self.history))
        save_result(folder / "session.safetensors", kind="factscope.session", version=2, tensors=tensors, meta=meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: Bridge, *, config: Any = None, C: dict[int, Tensor] | None = None,
             progress: bool = True, verbose: bool = False) -> EditSession:
        """A session on ``model`` (the unedited base model) with the saved steps re-applied in order.

        Args:
            folder: written by `save`.
            model: the unedited base model the session was run on.
            config, C, progress, verbose: as for `EditSession` (the saved method and layers are used).

        Raises:
            factscope.result_files.ResultFileError: a file is missing, modified or of another kind.

        Cost: constructing the session (C per layer, from the disk cache after the first time) plus
        one `Edit.load` and `Edit.apply` per step; no edit is recomputed.
        """
        from factscope.edit.handle import Edit
        from factscope.result_files import load_result, unnest

        folder = Path(folder)
        tensors, meta = load_result(folder / "session.safetensors", kind="factscope.session", version=2)
        layers = meta["layers"][0] if meta["method"] == "rome" else meta["layers"]
        s = cls(model, meta["method"], layers=layers, config=config, C=C, progress=progress, verbose=verbose)
        for i in range(meta["steps"]):
            keys = None
            if meta["method"] == "alphaedit":
                keys = dict(sorted((int(l), K) for l, K in unnest(f"keys.{i}.layer", tensors).items()))
            s._push(Edit.load(folder / f"step-{i:04d}.safetensors", model).apply(model), keys)
        return s


def _fixed_layers(model: Bridge, spec: EditorSpec, config: EditorConfig, layers: int | Sequence[int] | None,
                  progress: bool) -> list[int]:
    """The layers every step of a session edits, fixed once on the unedited model (see the module docstring)."""
    given = spec.check_layers(model, None if spec.layers == "none" and layers == [] else layers)  # [] from a save
    if given is not None:
        return given
    if spec.layers in ("one", "many"):
        return default_layers(model, spec.name, config, progress=progress)[0]
    return []  # "none": the editor finds its own (KN's neurons)
