"""Sequential editing: `EditSession` applies batch after batch and keeps what each method needs.

    session = EditSession(model, method="alphaedit")       # or "rome", "memit"
    for batch in batches:
        session.edit(batch)                                   # computed on the current model, then applied
    session.history                                           # one `Edit` per step, oldest first
    session.revert()                                          # all of them, last first: bit-exact original
    session.save("run/")                                      # every step, plus what AlphaEdit carries over

What the session fixes once, on the unedited model
--------------------------------------------------
- **Layers**: ROME's traced layer, or MEMIT's range ending there (`choose_layers`). Re-tracing an
  edited model would pick layers from a model that no longer exists, and cost minutes per step.
- **Key statistics C** at those layers (`factscope.edit.covariances`). They are keyed by the
  model's fingerprint, so asking again after an edit would recompute them from the edited model
  (minutes per step) and drift with it; the session passes the base model's C to every step.
- **AlphaEdit's P** (from C) and its growing ``cache_c = Σ KᵀK`` over the steps so far: each step
  adds the keys it wrote at each layer. Reverting steps recomputes ``cache_c`` from the remaining
  steps' keys in their original order, so it is bit-identical to what it was at that point.

Memory: the applied edits' saved weights (one ``W_out`` copy per edited layer per step: 5 MB per
layer on Gemma), the C's (and P's) of the edited layers (32 MiB each on Gemma), and for AlphaEdit
every step's keys (``[request, d_mlp]`` float64 per layer).

Dimension names: ``request``, ``d_mlp`` as in `factscope.edit.memit`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from factscope.facts import EditRequest
from factscope.bridge import Bridge

__all__ = ["EditSession", "METHODS"]

METHODS = ("rome", "memit", "alphaedit")


class EditSession:
    """Sequential editing: apply batch after batch to one model, with layers and C fixed up front.

    See the module docstring for what is fixed once and why.

    Args:
        model: a bridge, unedited; the session applies its edits to it.
        method: ``"rome"`` (default; one edit per request, a batch applied request by request),
            ``"memit"`` or ``"alphaedit"``.
        layers: ROME: one layer; MEMIT/AlphaEdit: a list of distinct layers. Negative values count
            from the end (``self.layers`` holds them normalised and sorted). ``None`` (default): chosen
            once from the traced profile (`factscope.locate.recommended_layer`).
        config: the method's config (`ROMEConfig`, `MEMITConfig`, `AlphaEditConfig`); ``None``
            (default): its defaults.
        C: ``{layer: E[kkᵀ]}`` ``[d_mlp, d_mlp]`` to use instead of computing them from the model
            (default ``None``: `factscope.edit.covariances`, cached on disk).
        progress, verbose: passed to the editors (defaults ``True`` and ``False``).

    Attributes:
        history: the applied `Edit` s, oldest first.
        layers: the layers every step edits.
        C, P: the key statistics and (AlphaEdit) null-space projections per layer, ``[d_mlp, d_mlp]``.

    Cost: construction computes or loads C per layer (first time on Gemma 3 270M: 2-3.5 min of sampling
    plus seconds per layer; then a file read), P by one ``eigh`` per layer (~2 s) for AlphaEdit, and
    the traced layer when ``layers`` is ``None`` (cached; ~3 min the first time). Each step costs
    its editor's call (Gemma, one fact per step: MEMIT ~15 s, AlphaEdit ~17 s on 2 CPU threads;
    ROME 46-53 s on one thread of a shared machine). Memory grows per step: one ``W_out`` copy per
    edited layer (5 MB on Gemma) and, for AlphaEdit, the step's keys.
    """

    def __init__(self, model: Bridge, method: str = "rome", *, layers: int | Sequence[int] | None = None,
                 config: Any = None, C: dict[int, Tensor] | None = None, progress: bool = True,
                 verbose: bool = False) -> None:
        from factscope.arch import arch_of
        from factscope.edit.alphaedit import AlphaEditConfig, null_space_projection
        from factscope.edit.memit import MEMITConfig, _stats, choose_layers
        from factscope.edit.rome import ROMEConfig

        if method not in METHODS:
            raise ValueError(f"EditSession: expected method in {METHODS}, got {method!r}")
        want = {"rome": ROMEConfig, "memit": MEMITConfig, "alphaedit": AlphaEditConfig}[method]
        config = want() if config is None else config
        if type(config) is not want:
            raise TypeError(f"EditSession: expected a {want.__name__} for method {method!r}, got {type(config).__name__}")
        a = arch_of(model)
        if method == "rome":
            if layers is None:
                from factscope.locate.profile import recommended_layer

                layers = recommended_layer(model, progress=progress).layer
            if isinstance(layers, bool) or not isinstance(layers, int):
                raise TypeError(f"EditSession: ROME edits one layer; expected an int, got {layers!r}")
            self.layers = [a.check_layer(layers)]
        elif layers is None:
            self.layers = choose_layers(model, config.n_layers, progress=progress)[0]
        else:
            self.layers = sorted(a.check_layers(layers))  # negatives count from the end; duplicates raise
        self.model, self.method, self.config = model, method, config
        self.progress, self.verbose = progress, verbose
        stats_config = config if method != "rome" else MEMITConfig(corpus=config.corpus, n_tokens=config.n_tokens)
        self.C = _stats(model, self.layers, stats_config, C, progress)
        self.P = ({l: null_space_projection(self.C[l], config.null_space_threshold) for l in self.layers}
                  if method == "alphaedit" else {})
        self.history: list[Any] = []
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

    def edit(self, requests: EditRequest | Sequence[EditRequest]) -> list[Any]:
        """Compute the next step's edit(s) on the current model and apply them; returns the new `Edit` s.

        ROME makes one edit per request (applied one after another); MEMIT and AlphaEdit make one
        edit for the batch. If computing fails, nothing is applied.

        Args:
            requests: one `EditRequest` or a non-empty sequence (the batch).

        Cost: the editor's (`rome` per request, or one `memit` / `alphaedit` over the batch) plus
        `Edit.apply`.
        """
        from factscope.edit.alphaedit import alphaedit_with_keys
        from factscope.edit.memit import memit
        from factscope.edit.rome import rome

        from factscope.checks import as_requests
        from factscope.tokens import check_request

        reqs = list(as_requests(requests))  # the whole batch is checked before the first edit is computed
        for r in reqs:
            check_request(self.model, r, what="EditSession.edit")
        kw = dict(config=self.config, progress=self.progress, verbose=self.verbose)
        made = []
        if self.method == "rome":
            for r in reqs:
                e = rome(self.model, r, layer=self.layers[0], C=self.C[self.layers[0]], **kw)
                self._push(e.apply(self.model), None)
                made.append(e)
        elif self.method == "memit":
            e = memit(self.model, reqs, layers=self.layers, C=self.C, **kw)
            self._push(e.apply(self.model), None)
            made.append(e)
        else:
            e, keys = alphaedit_with_keys(self.model, reqs, layers=self.layers, P=self.P, cache_c=self.cache_c, **kw)
            self._push(e.apply(self.model), keys)
            made.append(e)
        return made

    def _push(self, e: Any, keys: dict[int, Tensor] | None) -> None:
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

    def compose(self) -> Any:
        """All steps merged into one `Edit` (`factscope.edit.compose`), applicable to the base model."""
        from factscope.edit.handle import compose

        if not self.history:
            raise ValueError("EditSession.compose: no edits yet")
        return compose(self.history)

    # ------------------------------------------------------------------ files

    def save(self, folder: str | Path) -> Path:
        """Write ``step-0000.safetensors`` (+ ``.json``) per edit, AlphaEdit's keys, and ``session.json``.

        Args:
            folder: created if missing; returned.

        Cost: one `Edit.save` per step, plus AlphaEdit's keys (``[request, d_mlp]`` float64 per layer).
        """
        from safetensors.torch import save_file

        from factscope.cache import atomic_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for i, e in enumerate(self.history):
            e.save(folder / f"step-{i:04d}.safetensors")
        for i, keys in enumerate(self._keys):
            with atomic_file(folder / f"keys-{i:04d}.safetensors") as tmp:
                save_file({f"layer.{l}": K.contiguous() for l, K in keys.items()}, str(tmp))
        meta = dict(format="factscope.session", version=1, method=self.method, layers=self.layers,
                    steps=len(self.history))
        with atomic_file(folder / "session.json") as tmp:
            Path(tmp).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: Bridge, *, config: Any = None, C: dict[int, Tensor] | None = None,
             progress: bool = True, verbose: bool = False) -> EditSession:
        """A session on ``model`` (the unedited base model) with the saved steps re-applied in order.

        Args:
            folder: written by `save`.
            model: the unedited base model the session was run on.
            config, C, progress, verbose: as for `EditSession` (the saved method and layers are used).

        Cost: constructing the session (C per layer, from the disk cache after the first time) plus
        one `Edit.load` and `Edit.apply` per step; no edit is recomputed.
        """
        from safetensors.torch import load_file

        from factscope.edit.handle import Edit

        folder = Path(folder)
        meta = json.loads((folder / "session.json").read_text(encoding="utf-8"))
        if meta.get("format") != "factscope.session":
            raise ValueError(f"expected a factscope session folder, got format {meta.get('format')!r} in {folder}")
        layers = meta["layers"][0] if meta["method"] == "rome" else meta["layers"]
        s = cls(model, meta["method"], layers=layers, config=config, C=C, progress=progress, verbose=verbose)
        for i in range(meta["steps"]):
            keys = None
            if meta["method"] == "alphaedit":
                keys = {int(k.split(".")[1]): v for k, v in load_file(str(folder / f"keys-{i:04d}.safetensors")).items()}
            s._push(Edit.load(folder / f"step-{i:04d}.safetensors", model).apply(model), keys)
        return s
