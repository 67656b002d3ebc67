"""The `Edit` every editor returns: a weight delta you can apply, revert, compose, save and inspect.

What an Edit holds
------------------
- ``deltas``: per layer, the change ΔW of the MLP output projection ``W_out`` (``[d_mlp, d_model]``,
  the live weight of `factscope.arch.Arch.W_out`), either as low-rank factors ``(U, V)`` with
  ``ΔW = U @ V`` (ROME, MEMIT, AlphaEdit) or as one dense tensor (knowledge neurons, fine-tuning).
- ``requests``: the `EditRequest` s it implements; ``method``: the editor's name; ``config``: the
  editor's settings (``dataclasses.asdict(config)``); ``info``: JSON-able extras (layer chosen and
  why, losses, norms).
- ``fingerprint``: `factscope.fingerprint` of the model the delta was computed on, *as it was
  then* (with any earlier edits applied).

``config`` and ``info`` are stored in their JSON form (tuples become lists, keys become strings;
0-d tensors and NumPy scalars become numbers), so an Edit equals itself after a save/load round trip.

Applying and reverting
----------------------
``edit.apply(model)`` checks, in this order and before writing anything: that the edit is not
already applied to this model; that ``fingerprint(model) == edit.fingerprint``; that every layer
exists and its delta has ``W_out``'s shape, and that every tensor is finite. Then, for each layer,
it keeps a copy of ``W_out`` and writes ``W_out + ΔW`` (computed in float64, ``U @ V`` included,
then cast to the weight's dtype and device). ``edit.revert(model)`` copies the kept tensors back, so
the weights are bit-identical to before. ``with edit.applied(model): ...`` reverts on exit, also
after an exception. ``edit.is_applied(model)`` tells whether it is applied.

Edits compose in sequence. Every model has a stack of applied edits (weakly keyed by the model
object). An edit computed on a model that already had edit A applied carries that edited
fingerprint, so ``A.apply(m); B.apply(m)`` works, and only in that order. Reverting is last in,
first out: ``B.revert(m); A.revert(m)`` restores the original bit-exactly, and reverting A while B
is applied (on any layer) raises `EditStateError` naming B. Applying an edit twice to the same model
or reverting one that is not applied raise `EditStateError` too; a fingerprint mismatch raises
`FingerprintMismatchError`. Every failure leaves the weights untouched.

``compose([A, B, ...])`` merges edits into one whose ΔW per layer is the sum (low-rank factors are
concatenated, ``U = [U_A U_B]``, ``V = [V_A; V_B]``; the sum is dense if any part is). It carries A's
fingerprint. Applying it equals applying A, B, ... in sequence up to float rounding, not
bit-exactly: sequential application rounds the weights after every edit.

Memory: while applied, one saved copy of each touched ``W_out`` (``d_mlp × d_model`` numbers in the
weight's dtype), on the weight's device. The edit itself holds its factors (``(d_mlp + d_model) × r``
numbers per layer) or its dense deltas (``d_mlp × d_model``).

File format
-----------
``edit.save(path)`` writes a result file (`factscope.result_files`, kind ``"factscope.edit"``,
version 2), atomically, no pickle:

- ``path``: safetensors with tensors ``layer.{l}.u`` ``[d_mlp, rank]`` and ``layer.{l}.v``
  ``[rank, d_model]`` for low-rank layers, ``layer.{l}.dense`` ``[d_mlp, d_model]`` for dense ones,
  in the dtype they were given.
- ``path + ".json"``: the sidecar, whose ``meta`` is ``{"method", "fingerprint", "requests":
  [fact_to_json(request), ...], "config", "info", "layers": {"l": "low-rank" | "dense"}}``.

`Edit.load` checks that the two files belong together (each holds the other's SHA-256), the kind and
the version (files of version 1, written before result files, are refused with a `ResultFileError`)
and, given a model, that its fingerprint is the edit's.

Dimension names: ``d_mlp``, ``d_model`` as in `factscope`; ``rank`` the number of factor columns.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from factscope.arch import Arch, arch_of
from factscope.bridge import Bridge
from factscope.facts import EditRequest
from factscope.models import fingerprint as model_fingerprint
from factscope.result_files import (
    ResultContents,
    ResultFileError,
    Saveable,
    fact_from_json,
    fact_to_json,
    load_result,
    plain_json,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DeltaNorm",
    "Edit",
    "EditStateError",
    "FingerprintMismatchError",
    "applied_edits",
    "compose",
]

FORMAT = "factscope.edit"
"""The kind of an edit's result file (`factscope.result_files`)."""
FORMAT_VERSION = 2
"""The layout version `Edit.save` writes and `Edit.load` reads (2: result files; 1: the older sidecar)."""

# Shapes, named once.
FactorU = Float[Tensor, "d_mlp rank"]
FactorV = Float[Tensor, "rank d_model"]
Delta = Float[Tensor, "d_mlp d_model"]
LayerDelta = tuple[FactorU, FactorV] | Delta


class EditStateError(RuntimeError):
    """Applying an edit that is applied, reverting one that is not, or reverting out of order."""


class FingerprintMismatchError(ValueError):
    """The model is not the one (with the same earlier edits) that the edit was computed on."""


class DeltaNorm(NamedTuple):
    """Size of one layer's ΔW: Frobenius norm, and relative to ‖W_out‖_F when a model was given."""

    frobenius: float
    relative: float | None = None


# --------------------------------------------------------------------------- applied stacks


@dataclass(eq=False)
class _Applied:
    edit: Edit
    originals: dict[int, Tensor]  # layer -> W_out as it was before the edit
    fingerprint_after: str


_APPLIED: weakref.WeakKeyDictionary[Bridge, list[_Applied]] = weakref.WeakKeyDictionary()


def applied_edits(model: Bridge) -> tuple[Edit, ...]:
    """The edits applied to ``model`` through `Edit.apply`, oldest first."""
    return tuple(e.edit for e in _APPLIED.get(model, ()))


# --------------------------------------------------------------------------- validation helpers


def _check_matrix(t: Any, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"expected {name} to be a matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"expected {name} to be a floating-point tensor, got {t.dtype}")
    return t.detach().clone().contiguous()


def _check_finite(t: Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"expected finite values in {name}, found {bad} NaN/inf of {t.numel()}")


def _layer_shape(d: LayerDelta) -> tuple[int, int]:
    return (d[0].shape[0], d[1].shape[1]) if isinstance(d, tuple) else tuple(d.shape)


def _dense64(d: LayerDelta, device: torch.device | None = None) -> Float[Tensor, "d_mlp d_model"]:
    """ΔW in float64 on ``device`` (default: where the delta lives; CPU for MPS, which lacks float64)."""
    if device is not None and device.type == "mps":
        device = torch.device("cpu")
    if isinstance(d, tuple):
        u, v = d
        return u.to(device=device, dtype=torch.float64) @ v.to(device=device, dtype=torch.float64)
    return d.to(device=device, dtype=torch.float64)


def _request_text(r: EditRequest) -> str:
    old = f"{r.target_true!r} → " if r.target_true is not None else ""
    return f"{r.subject!r}: {old}{r.target_new!r}"


# --------------------------------------------------------------------------- Edit


@dataclass(frozen=True, eq=False, kw_only=True)
class Edit(Saveable):
    """A weight edit of the MLP output projections: apply, revert, compose, save, inspect.

    What every editor returns; see the module docstring for the semantics. Cost: constructing and
    inspecting one is negligible (no model passes); `apply` / `revert` and `save` / `load` say theirs.

    Args:
        method: the editor's name, e.g. ``"rome"``.
        fingerprint: `factscope.fingerprint` of the model the edit was computed on (as it was then).
        deltas: layer -> ``(U, V)`` (``[d_mlp, rank]``, ``[rank, d_model]``, ΔW = U @ V) or a dense
            ``[d_mlp, d_model]`` ΔW. Tensors are copied (detached); any floating dtype and device.
        requests: the `EditRequest` s implemented (one request or a sequence).
        config: the editor's settings (JSON-able, or a dataclass instance: `dataclasses.asdict` is
            applied; stored in JSON form).
        info: JSON-able extras (stored in JSON form).

    Raises:
        TypeError, ValueError: a negative or non-integer layer, a tensor that is not a finite
            floating-point matrix, factors whose inner sizes differ, layers of different shapes,
            or a config/info that is not JSON-able.
    """

    method: str
    fingerprint: str
    deltas: Mapping[int, LayerDelta]
    requests: tuple[EditRequest, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise TypeError(f"expected `method` to be a non-empty str, got {self.method!r}")
        if not isinstance(self.fingerprint, str) or not self.fingerprint:
            raise TypeError(f"expected `fingerprint` to be a non-empty str (factscope.fingerprint(model)), "
                            f"got {self.fingerprint!r}")
        reqs = (self.requests,) if isinstance(self.requests, EditRequest) else tuple(self.requests)
        for i, r in enumerate(reqs):
            if not isinstance(r, EditRequest):
                raise TypeError(f"expected requests[{i}] to be an EditRequest, got {type(r).__name__}")
        object.__setattr__(self, "requests", reqs)
        if not isinstance(self.deltas, Mapping):
            raise TypeError(f"expected `deltas` to map layer -> (U, V) or a dense tensor, got "
                            f"{type(self.deltas).__name__}")
        deltas: dict[int, LayerDelta] = {}
        shapes: dict[int, tuple[int, int]] = {}
        for layer in sorted(self.deltas, key=lambda k: (not isinstance(k, int), str(k))):
            d = self.deltas[layer]
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise TypeError(f"expected layer indices to be integers >= 0, got {layer!r}")
            if isinstance(d, (tuple, list)):
                if len(d) != 2:
                    raise ValueError(f"expected layer {layer}'s factors as a pair (U, V), got {len(d)} items")
                u = _check_matrix(d[0], f"layer {layer}'s U")
                v = _check_matrix(d[1], f"layer {layer}'s V")
                if u.shape[1] != v.shape[0] or u.shape[1] == 0:
                    raise ValueError(f"expected layer {layer}'s U [d_mlp, rank] and V [rank, d_model] with the "
                                     f"same rank >= 1, got U {tuple(u.shape)} and V {tuple(v.shape)}")
                _check_finite(u, f"layer {layer}'s U")
                _check_finite(v, f"layer {layer}'s V")
                deltas[layer] = (u, v)
            else:
                t = _check_matrix(d, f"layer {layer}'s dense delta")
                _check_finite(t, f"layer {layer}'s dense delta")
                deltas[layer] = t
            shapes[layer] = _layer_shape(deltas[layer])
        if len(set(shapes.values())) > 1:
            raise ValueError(f"expected every layer's ΔW to have one shape [d_mlp, d_model], got {shapes}")
        object.__setattr__(self, "deltas", deltas)
        config = self.config
        if is_dataclass(config) and not isinstance(config, type):
            config = asdict(config)
        object.__setattr__(self, "config", plain_json(dict(config), "config"))
        object.__setattr__(self, "info", plain_json(dict(self.info), "info"))

    # ------------------------------------------------------------------ views

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers whose ``W_out`` this edit changes, sorted."""
        return tuple(sorted(self.deltas))

    def _get(self, layer: int) -> LayerDelta:
        if layer not in self.deltas:
            raise ValueError(f"expected one of this edit's layers {self.layers}, got {layer!r}")
        return self.deltas[layer]

    def is_low_rank(self, layer: int) -> bool:
        """Whether ``layer``'s ΔW is stored as factors ``(U, V)``.

        Args:
            layer: one of ``self.layers``.
        """
        return isinstance(self._get(layer), tuple)

    def delta(self, layer: int) -> Delta:
        """ΔW of ``layer`` as a dense float32 ``[d_mlp, d_model]`` tensor (U @ V computed in float64).

        Args:
            layer: one of ``self.layers``.
        """
        return _dense64(self._get(layer)).float()

    def rank(self, layer: int) -> int:
        """Rank of ``layer``'s ΔW: the factors' column count, or the numerical rank of a dense ΔW.

        For low-rank layers it is an upper bound (``compose`` adds the columns up); for dense ones
        `torch.linalg.matrix_rank` (an SVD of ``[d_mlp, d_model]``, O(d_mlp · d_model²)).

        Args:
            layer: one of ``self.layers``.
        """
        d = self._get(layer)
        if isinstance(d, tuple):
            return int(d[0].shape[1])
        return int(torch.linalg.matrix_rank(d.to(torch.float64)))

    def norms(self, model: Bridge | None = None) -> dict[int, DeltaNorm]:
        """Layer -> `DeltaNorm`: ‖ΔW‖_F, and with ``model`` also ‖ΔW‖_F / ‖W_out‖_F.

        ``W_out`` is the weight the edit is computed against: the saved original while this edit is
        applied to ``model``, the current weight otherwise.

        Args:
            model: a bridge (default ``None``: no relative norms).
        """
        out: dict[int, DeltaNorm] = {}
        saved = next((e.originals for e in _APPLIED.get(model, ()) if e.edit is self), {}) if model is not None else {}
        for layer in self.layers:
            d = self.deltas[layer]
            if isinstance(d, tuple):  # ‖UV‖² = Σ (UᵀU) ∘ (VVᵀ): no d_mlp × d_model product
                u, v = d[0].to(torch.float64), d[1].to(torch.float64)
                fro = math.sqrt(max(float(((u.T @ u) * (v @ v.T)).sum()), 0.0))
            else:
                fro = float(torch.linalg.matrix_norm(d.to(torch.float64)))
            rel = None
            if model is not None:
                W = saved.get(layer)
                if W is None:
                    W = self._checked_weights(model, arch_of(model), [layer])[layer]
                w = float(torch.linalg.matrix_norm(W.detach().to(torch.float64)))
                rel = fro / w if w > 0 else math.inf
            out[layer] = DeltaNorm(fro, rel)
        return out

    def to_dataframe(self, model: Bridge | None = None) -> Any:
        """One row per layer: ``layer``, ``kind`` (low-rank/dense), ``rank``, ``norm`` (‖ΔW‖_F).

        Args:
            model: a bridge (default ``None``); given, adds ``relative_norm`` (‖ΔW‖_F / ‖W_out‖_F).
        """
        import pandas as pd

        rows = []
        for layer, n in self.norms(model).items():
            row = {"layer": layer, "kind": "low-rank" if self.is_low_rank(layer) else "dense",
                   "rank": self.rank(layer), "norm": n.frobenius}
            if model is not None:
                row["relative_norm"] = n.relative
            rows.append(row)
        cols = ["layer", "kind", "rank", "norm"] + (["relative_norm"] if model is not None else [])
        return pd.DataFrame(rows, columns=cols)

    def __repr__(self) -> str:
        shown = [_request_text(r) for r in self.requests[:3]]
        if len(self.requests) > 3:
            shown.append(f"... {len(self.requests) - 3} more")
        kinds = ", ".join(f"{l}: rank {self.rank(l)}" if self.is_low_rank(l) else f"{l}: dense" for l in self.layers)
        return (f"Edit(method={self.method!r}, layers={{{kinds}}}, requests=[{'; '.join(shown)}], "
                f"fingerprint={self.fingerprint!r})")

    # ------------------------------------------------------------------ apply / revert

    def is_applied(self, model: Bridge) -> bool:
        """Whether this edit is currently applied to ``model``.

        Args:
            model: a bridge.
        """
        return any(e.edit is self for e in _APPLIED.get(model, ()))

    def _checked_weights(self, model: Bridge, a: Arch, layers: Iterable[int]) -> dict[int, Tensor]:
        """The live ``W_out`` of ``layers``, after checking the layer range and every shape."""
        out = {}
        for layer in layers:
            if layer >= a.n_layers:
                raise ValueError(f"this edit changes layer {layer}, but the model has {a.n_layers} layers "
                                 f"(expected layers in [0, {a.n_layers}))")
            W = a.W_out(model, layer)
            got = _layer_shape(self.deltas[layer])
            if tuple(W.shape) != got:
                raise ValueError(f"expected layer {layer}'s ΔW to have W_out's shape [d_mlp, d_model] = "
                                 f"{tuple(W.shape)}, got {got}"
                                 + (" (transposed?)" if got == tuple(W.shape)[::-1] else ""))
            out[layer] = W
        return out

    def check_applicable(self, model: Bridge) -> None:
        """Raise what `apply` would raise for ``model``, writing nothing.

        The one applicability check: `apply`, `factscope.probes.evaluate` and `factscope.probes.spillover`
        all call it.

        Args:
            model: the bridge the edit was computed on, with the same earlier edits applied.

        Cost: one fingerprint (milliseconds) and a finiteness scan of the stored ΔW.

        Raises:
            EditStateError: already applied to this model.
            FingerprintMismatchError: ``model`` is not the model the edit was computed on.
            ValueError: a layer out of range, a ΔW whose shape is not ``W_out``'s, a non-finite value.
        """
        stack = _APPLIED.get(model, [])
        if any(e.edit is self for e in stack):
            raise EditStateError(f"this edit is already applied to this model: {self!r}. Revert it first, or "
                                 f"apply it to another model")
        fp = model_fingerprint(model)
        if fp != self.fingerprint:
            raise FingerprintMismatchError(self._mismatch(fp, stack))
        self._checked_weights(model, arch_of(model), self.layers)
        for layer in self.layers:  # the tensors may have been changed in place since construction
            d = self.deltas[layer]
            for name, t in (zip(("U", "V"), d) if isinstance(d, tuple) else [("dense delta", d)]):
                _check_finite(t, f"layer {layer}'s {name}")

    @torch.no_grad()
    def apply(self, model: Bridge) -> Edit:
        """Write this edit into ``model``'s weights (see the module docstring). Returns the edit.

        Args:
            model: the bridge the edit was computed on, with the same earlier edits applied.

        Cost: two fingerprints (milliseconds) and, per layer, ``W_out + ΔW`` in float64; memory while
        applied: a saved copy of each touched ``W_out`` (one ``[d_mlp, d_model]`` tensor per layer).

        Raises (with the weights untouched): what `check_applicable` raises.
        """
        self.check_applicable(model)
        weights = self._checked_weights(model, arch_of(model), self.layers)
        originals: dict[int, Tensor] = {}
        try:
            for layer, W in weights.items():
                work = torch.device("cpu") if W.device.type == "mps" else W.device  # MPS has no float64
                w = (W.detach().to(work, torch.float64) + _dense64(self.deltas[layer], work)).to(W.dtype)
                _check_finite(w, f"layer {layer}'s edited W_out (in {W.dtype})")
                originals[layer] = W.detach().clone()
                W.copy_(w)
        except BaseException:
            for layer, W0 in originals.items():  # undo the layers already written
                weights[layer].copy_(W0)
            raise
        _APPLIED.setdefault(model, []).append(_Applied(self, originals, model_fingerprint(model)))
        return self

    def _mismatch(self, fp: str, stack: list[_Applied]) -> str:
        msg = (f"this {self.method} edit was computed on a model with fingerprint {self.fingerprint}, but this "
               f"model's fingerprint is {fp}; refusing to apply it to different weights. If it was computed "
               f"after other edits, apply those first, in order.")
        if stack:
            msg += " Applied to this model now, oldest first: " + "; ".join(repr(e.edit) for e in stack) + "."
            for i, e in enumerate(stack):
                if e.edit.fingerprint == self.fingerprint:
                    later = "; ".join(repr(x.edit) for x in reversed(stack[i:]))
                    msg += (f" This edit was computed on the model as it was before {e.edit.method} was applied: "
                            f"revert (newest first) {later}.")
                    break
        return msg

    @torch.no_grad()
    def revert(self, model: Bridge) -> None:
        """Restore the ``W_out`` tensors this edit replaced, bit-exactly.

        Args:
            model: the bridge it is applied to.

        Cost: a fingerprint (milliseconds) and one copy per layer; frees the saved copies.

        Raises (with the weights untouched):
            EditStateError: this edit is not applied to ``model``, or edits applied after it still are
                (they are named: revert them first, newest first).
        """
        stack = _APPLIED.get(model, [])
        idx = next((i for i, e in enumerate(stack) if e.edit is self), None)
        if idx is None:
            raise EditStateError(f"this edit is not applied to this model, so there is nothing to revert: {self!r}")
        if idx != len(stack) - 1:
            later = "; ".join(repr(e.edit) for e in reversed(stack[idx + 1:]))
            raise EditStateError(f"cannot revert {self!r}: {len(stack) - 1 - idx} edit(s) applied after it are still "
                                 f"applied. Revert them first, newest first: {later}")
        entry = stack[-1]
        if model_fingerprint(model) != entry.fingerprint_after:
            warnings.warn("the model's weights changed since this edit was applied, other than through Edit.apply; "
                          f"reverting restores layers {self.layers}' W_out as they were before the edit",
                          stacklevel=2)
        a = arch_of(model)
        for layer, W0 in entry.originals.items():
            a.W_out(model, layer).copy_(W0)
        stack.pop()
        if not stack:
            _APPLIED.pop(model, None)

    @contextlib.contextmanager
    def applied(self, model: Bridge) -> Iterator[Bridge]:
        """Context manager: apply on entry, revert on exit (also after an exception). Yields the model.

        Args:
            model: the bridge the edit was computed on. Cost: as `apply` plus `revert`.
        """
        self.apply(model)
        try:
            yield model
        finally:
            self.revert(model)

    # ------------------------------------------------------------------ save / load

    RESULT_KIND = FORMAT
    RESULT_VERSION = FORMAT_VERSION

    def to_contents(self) -> ResultContents:
        """The edit as tensors ``layer.{l}.u`` / ``.v`` / ``.dense`` and JSON meta (see the module docstring).

        Cost: negligible (no copies; `save` copies to the CPU).
        """
        tensors: dict[str, Tensor] = {}
        kinds: dict[str, str] = {}
        for layer in self.layers:
            d = self.deltas[layer]
            if isinstance(d, tuple):
                tensors[f"layer.{layer}.u"], tensors[f"layer.{layer}.v"] = d
            else:
                tensors[f"layer.{layer}.dense"] = d
            kinds[str(layer)] = "low-rank" if isinstance(d, tuple) else "dense"
        meta = {"method": self.method, "fingerprint": self.fingerprint, "layers": kinds,
                "requests": [fact_to_json(r) for r in self.requests], "config": self.config, "info": self.info}
        return ResultContents(tensors, meta)

    @classmethod
    def from_contents(cls, contents: ResultContents) -> Edit:
        """The edit that `to_contents` described.

        Args:
            contents: its tensors and meta (from `factscope.result_files.load_result`).

        Cost: the constructor's checks (a finiteness scan of the tensors).
        """
        tensors, meta = contents
        deltas: dict[int, LayerDelta] = {}
        for key, kind in meta["layers"].items():
            names = [f"layer.{key}.u", f"layer.{key}.v"] if kind == "low-rank" else [f"layer.{key}.dense"]
            missing = [n for n in names if n not in tensors]
            if missing:
                raise ResultFileError(f"expected tensors {names} for layer {key} ({kind}), missing {missing}")
            deltas[int(key)] = (tensors[names[0]], tensors[names[1]]) if kind == "low-rank" else tensors[names[0]]
        return cls(method=meta["method"], fingerprint=meta["fingerprint"], deltas=deltas,
                   requests=tuple(fact_from_json(r) for r in meta["requests"]), config=meta["config"],
                   info=meta["info"])

    @classmethod
    def load(cls, path: str | Path, model: Bridge | None = None) -> Edit:
        """Read an edit written by `save`; with ``model``, refuse one computed on another model.

        Args:
            path: the safetensors file (``path + ".json"`` must sit beside it).
            model: a bridge to check the fingerprint against (default ``None``: no check).

        Cost: reading both files and a SHA-256 of the tensors; with ``model``, a fingerprint.

        Raises:
            FileNotFoundError: either file is missing (a `factscope.result_files.MissingResultFileError`).
            ValueError: not an edit file, another format version, or the two files do not belong
                together (one was overwritten or edited): a `factscope.result_files.ResultFileError`.
            FingerprintMismatchError: ``model``'s fingerprint is not the edit's.
        """
        edit = cls.from_contents(load_result(path, kind=FORMAT, version=FORMAT_VERSION))
        if model is not None:
            fp = model_fingerprint(model)
            if fp != edit.fingerprint:
                raise FingerprintMismatchError(
                    f"the edit in {path} was computed on a model with fingerprint {edit.fingerprint}, but the model "
                    f"passed has fingerprint {fp}. If it was computed after other edits, apply those first, in order"
                )
        return edit


# --------------------------------------------------------------------------- compose


def compose(edits: Sequence[Edit]) -> Edit:
    """Merge edits into one whose ΔW per layer is the sum of theirs (see the module docstring).

    Low-rank factors are concatenated (``U = [U_1 U_2 ...]``, ``V = [V_1; V_2; ...]``, in the
    promoted dtype); a layer with any dense part becomes dense (summed in float64, stored in the
    promoted dtype). The result carries the first edit's fingerprint, the requests concatenated,
    method ``"compose(m1, m2, ...)"``, ``config = {"edits": [{method, fingerprint, config}, ...]}``
    and ``info = {"parts": [info, ...]}``.

    Applying it equals applying the edits one after another *up to float rounding, not bit-exactly*:
    in sequence the weights are rounded to their dtype after every edit, here once. The fingerprints
    of the later edits are not checked (that needs the model); compose edits that were computed in
    sequence, each on the model with the previous ones applied.

    Args:
        edits: one or more `Edit`s, in the order they were computed.

    Cost: negligible for low-rank edits (concatenation); a float64 ``[d_mlp, d_model]`` sum per
    dense layer. No model passes.
    """
    edits = list(edits)
    if not edits:
        raise ValueError("expected at least one edit to compose, got none")
    for i, e in enumerate(edits):
        if not isinstance(e, Edit):
            raise TypeError(f"expected edits[{i}] to be an Edit, got {type(e).__name__}")
    device = next((t.device for e in edits for d in e.deltas.values()
                   for t in (d if isinstance(d, tuple) else (d,))), torch.device("cpu"))
    deltas: dict[int, LayerDelta] = {}
    for layer in sorted({l for e in edits for l in e.layers}):
        parts = [e.deltas[layer] for e in edits if layer in e.deltas]
        dtype = parts[0][0].dtype if isinstance(parts[0], tuple) else parts[0].dtype
        for p in parts:
            for t in (p if isinstance(p, tuple) else (p,)):
                dtype = torch.promote_types(dtype, t.dtype)
        if all(isinstance(p, tuple) for p in parts):
            deltas[layer] = (torch.cat([p[0].to(device, dtype) for p in parts], dim=1),
                             torch.cat([p[1].to(device, dtype) for p in parts], dim=0))
        else:
            deltas[layer] = sum(_dense64(p, device) for p in parts).to(dtype)
    return Edit(
        method=f"compose({', '.join(e.method for e in edits)})",
        fingerprint=edits[0].fingerprint,
        deltas=deltas,
        requests=tuple(r for e in edits for r in e.requests),
        config={"edits": [{"method": e.method, "fingerprint": e.fingerprint, "config": e.config} for e in edits]},
        info={"parts": [e.info for e in edits]},
    )
