"""Result files: the one way every factscope result is written to disk and read back, checked.

Every saved result (a `TraceResult`, a `ProfileResult`, a `NeuronResult`, an `Edit`, an
`EditSession`'s steps, the cached key statistics, the probes' reports) is a *result file*: a pair
of files written by `save_result` and read by `load_result`. No pickle anywhere.

On disk
-------
- ``path``: safetensors with the result's tensors (any name, dtype and shape; NumPy arrays are
  stored as tensors). Its safetensors metadata holds ``format`` (``"factscope.result"``),
  ``kind``, ``version`` and ``sidecar_sha256``: the SHA-256 of the sidecar's canonical JSON
  (sorted keys, no spaces) without its ``tensors_sha256`` entry.
- ``path + ".json"``, the sidecar, plain JSON::

      {"format": "factscope.result", "kind": "factscope.trace", "version": 1,
       "factscope_version": "0.1.0", "tensors_sha256": "<SHA-256 of the bytes of path>",
       "meta": {...everything that is not a tensor...}}

``kind`` names the result type (``"factscope.edit"``, ``"factscope.trace"``, ...) and ``version``
its layout, which the type bumps when it changes. The two files check each other: the sidecar
holds the digest of the tensor file, the tensor file the digest of the sidecar, so replacing or
editing either one is noticed.

``meta`` is stored in its JSON form (`plain_json`: tuples become lists, dict keys strings, 0-d
tensors and NumPy scalars numbers, dataclass instances dicts), as UTF-8 with dict keys in their order. JSON has no NaN or
infinity, so non-finite floats are written as ``{"$float": "nan"}``, ``{"$float": "inf"}`` or
``{"$float": "-inf"}`` and read back as floats; a dict of that one key is reserved.

Writing and reading
-------------------
Both files are written atomically (`factscope.cache.atomic_file`: a temporary name, then a
rename), the tensor file first and the sidecar last, so a sidecar means its tensor file was
complete. `load_result` checks, before it uses anything: that both files exist, that the sidecar is
valid JSON of this format, the kind, the version, the tensor file's SHA-256 and the sidecar's
SHA-256. Each failure raises `ResultFileError` (a ``ValueError``; `MissingResultFileError`, also a
``FileNotFoundError``, for a missing file) naming the file, what was expected and what was found.

Result types mix in `Saveable`, which gives them ``save(path)`` and ``Type.load(path)`` from two
methods of their own: ``to_contents()`` (their tensors and JSON meta, a `ResultContents`) and
``from_contents(contents)``. Results that hold another result (a `SpilloverResult` its `Edit`) store
it under a prefix with `nest` and read it back with `unnest`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor

from factscope.cache import atomic_file
from factscope.facts import EditRequest, Fact

__all__ = [
    "FORMAT",
    "ResultContents",
    "ResultFileError",
    "MissingResultFileError",
    "Saveable",
    "save_result",
    "load_result",
    "sidecar_of",
    "plain_json",
    "nest",
    "unnest",
    "fact_to_json",
    "fact_from_json",
]

FORMAT = "factscope.result"
"""The ``format`` marker of every result file (in the sidecar and in the tensor file's metadata)."""
_FLOAT_TAG = "$float"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class ResultFileError(ValueError):
    """A result file that is not what was asked for: another kind or version, modified, or unreadable."""


class MissingResultFileError(ResultFileError, FileNotFoundError):
    """One of a result file's two files (the tensors or the JSON sidecar) does not exist."""


class ResultContents(NamedTuple):
    """What a result file holds: named tensors and the JSON meta.

    Attributes:
        tensors: name -> tensor (on the CPU after loading).
        meta: everything else, in JSON form (see `plain_json`).
    """

    tensors: dict[str, Tensor]
    meta: dict[str, Any]


# --------------------------------------------------------------------------- JSON


def plain_json(obj: Any, what: str = "meta") -> Any:
    """``obj`` in its JSON form: tuples as lists, keys as strings, 0-d tensors and NumPy scalars as numbers.

    Dataclass instances (an editor's config in a result's settings) become dicts of their fields.
    Non-finite floats stay floats here (`save_result` tags them in the file).

    Args:
        obj: dicts, lists, tuples, strings, numbers, booleans, ``None``, 0-d tensors, NumPy scalars,
            dataclass instances of those.
        what: the name used in the error (default ``"meta"``).

    Raises:
        TypeError: ``obj`` holds something else (an array, an object), named with its type.

    Cost: one JSON encode and decode of ``obj``.
    """

    def scalar(o: Any) -> Any:
        if hasattr(o, "item") and getattr(o, "ndim", None) == 0:  # 0-d tensor, NumPy scalar
            return o.item()
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
        raise TypeError(f"a {type(o).__name__} is not JSON-able")

    try:
        return json.loads(json.dumps(obj, default=scalar))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"expected `{what}` to be JSON-able (dicts, lists, tuples, strings, numbers, booleans, None, 0-d "
            f"tensors, dataclasses of those), got {obj!r:.200} ({e})"
        ) from None


def _encode(obj: Any) -> Any:
    """Non-finite floats as ``{"$float": ...}``; refuses a user dict that looks like one."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {_FLOAT_TAG: "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    if isinstance(obj, dict):
        if set(obj) == {_FLOAT_TAG}:
            raise ValueError(f"expected no dict whose only key is {_FLOAT_TAG!r} in a result's meta (the tag "
                             f"result files use for non-finite floats), got {obj!r:.200}")
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_FLOAT_TAG} and obj[_FLOAT_TAG] in _NONFINITE:
            return _NONFINITE[obj[_FLOAT_TAG]]
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _canonical_sha256(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def fact_to_json(fact: Fact | EditRequest) -> dict[str, Any]:
    """A `Fact` or `EditRequest` as a JSON dict: its fields and ``"record"``, the type's name.

    Args:
        fact: the record.

    Cost: negligible.
    """
    if not isinstance(fact, (Fact, EditRequest)):
        raise TypeError(f"expected a Fact or an EditRequest, got {type(fact).__name__}")
    return {"record": type(fact).__name__, **plain_json(fact, "fact")}


def fact_from_json(d: Mapping[str, Any]) -> Fact | EditRequest:
    """The `Fact` or `EditRequest` that `fact_to_json` wrote.

    Args:
        d: the dict, with ``"record"`` ``"Fact"`` or ``"EditRequest"``.

    Cost: negligible (the record's own checks).
    """
    fields = {k: v for k, v in d.items() if k != "record"}
    types = {"Fact": Fact, "EditRequest": EditRequest}
    if d.get("record") not in types:
        raise ValueError(f"expected a fact record ('Fact' or 'EditRequest'), got {d.get('record')!r}")
    return types[d["record"]](**fields)


# --------------------------------------------------------------------------- tensors


def _standalone(tensors: Mapping[str, Tensor | np.ndarray]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors that share no memory (safetensors refuses shared storage)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"expected tensor names to be non-empty strings, got {name!r}")
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(t))
        if not isinstance(t, Tensor):
            raise TypeError(f"expected tensors[{name!r}] to be a torch.Tensor or a NumPy array, got {type(t).__name__}")
        t = t.detach().cpu().contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def nest(prefix: str, tensors: Mapping[str, Tensor | np.ndarray]) -> dict[str, Tensor | np.ndarray]:
    """``tensors`` renamed ``prefix.name``: to store several groups (or a nested result) in one file.

    Args:
        prefix: the group's name (no dots at its ends).
        tensors: name -> tensor or array.

    Cost: negligible (no copies).
    """
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unnest(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors that `nest` stored under ``prefix``, with their own names (in ``tensors``' order).

    Args:
        prefix: the group's name.
        tensors: every tensor of a loaded `ResultContents`.

    Cost: negligible (no copies).
    """
    head = f"{prefix}."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def _header_metadata(blob: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (an 8-byte length, then JSON)."""
    try:
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + n])
        meta = header.get("__metadata__") or {}
    except (ValueError, AttributeError, UnicodeDecodeError) as e:
        raise ResultFileError(f"expected a safetensors file at {path}, could not read its header: {e}") from None
    return meta


# --------------------------------------------------------------------------- save / load


def sidecar_of(path: str | os.PathLike) -> Path:
    """The JSON sidecar of the result file ``path``: ``path + ".json"``.

    Args:
        path: the tensor file.

    Cost: negligible (no file system access).
    """
    path = Path(path)
    return path.with_name(path.name + ".json")


def _check_kind_version(kind: Any, version: Any) -> None:
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"expected `kind` to be a non-empty str such as 'factscope.trace', got {kind!r}")
    if type(version) is not int or version < 1:
        raise TypeError(f"expected `version` to be an integer >= 1, got {version!r}")


def save_result(path: str | os.PathLike, *, kind: str, version: int, tensors: Mapping[str, Tensor | np.ndarray],
                meta: Mapping[str, Any]) -> Path:
    """Write a result file: ``path`` (safetensors) and its sidecar ``path + ".json"``, each atomically.

    See the module docstring for the format. Missing folders are created.

    Args:
        path: the tensor file to write.
        kind: the result type, e.g. ``"factscope.trace"``.
        version: the layout's version (an integer >= 1).
        tensors: name -> tensor or NumPy array (copied to the CPU; any dtype safetensors stores).
        meta: everything else, JSON-able (see `plain_json`; non-finite floats allowed).

    Returns:
        ``path``, as a `Path`.

    Raises:
        TypeError: a bad kind or version, a tensor that is neither a tensor nor an array, meta that is
            not JSON-able.

    Cost: serialising the tensors in memory (memory: the tensor file, once), a SHA-256 of it, writing both files.
    """
    from safetensors.torch import save

    import factscope

    _check_kind_version(kind, version)
    path = Path(path)
    head = {"format": FORMAT, "kind": kind, "version": version, "factscope_version": factscope.__version__,
            "meta": _encode(plain_json(dict(meta), "meta"))}
    stamp = {"format": FORMAT, "kind": kind, "version": str(version), "sidecar_sha256": _canonical_sha256(head)}
    blob = save(_standalone(tensors), metadata=stamp)
    with atomic_file(path) as tmp:
        tmp.write_bytes(blob)
    side = {**head, "tensors_sha256": hashlib.sha256(blob).hexdigest()}
    with atomic_file(sidecar_of(path)) as tmp:  # keys in their order: a dict's order is part of the result
        tmp.write_text(json.dumps(side, indent=1, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    return path


def _read_sidecar(path: Path) -> dict[str, Any]:
    """The parsed sidecar of ``path``, after checking that both files exist and it is this format."""
    side = sidecar_of(path)
    for p, what in ((path, "the tensor file"), (side, "its JSON sidecar")):
        if not p.is_file():
            raise MissingResultFileError(f"expected a result file saved as {path} and {side}; {what} {p} is missing")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not plain JSON")

    try:
        head = json.loads(side.read_text(encoding="utf-8"), parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise ResultFileError(f"expected plain JSON in {side}, could not parse it: {e}") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT or not isinstance(head.get("meta"), dict):
        found = ({k: head.get(k) for k in ("format", "kind", "version")} if isinstance(head, dict)
                 else type(head).__name__)
        raise ResultFileError(f"expected {side} to be a factscope result file's sidecar (format {FORMAT!r} with a "
                              f"'meta' object), found {found}")
    return head


def _check_header(head: dict[str, Any], side: Path, kind: str, version: int) -> None:
    if head.get("kind") != kind:
        raise ResultFileError(f"expected a {kind!r} result file, {side} holds a {head.get('kind')!r} one")
    found = head.get("version")
    if type(found) is not int:
        raise ResultFileError(f"expected an integer version in {side}, found {found!r}")
    if found != version:
        by = f"factscope {head.get('factscope_version')!r}"
        hint = ("a newer factscope wrote it: upgrade factscope" if found > version else
                "an older factscope wrote it, in a layout this one no longer reads: compute the result again")
        raise ResultFileError(f"expected {kind!r} version {version}, {side} has version {found} (written by {by}; "
                              f"{hint})")


def _check_pair(blob: bytes, head: dict[str, Any], path: Path, side: Path) -> None:
    if hashlib.sha256(blob).hexdigest() != head.get("tensors_sha256"):
        raise ResultFileError(f"{path} is not the tensor file that {side} was saved with (its SHA-256 differs from "
                              f"the sidecar's tensors_sha256): one of the two was overwritten or modified")
    stamp = _header_metadata(blob, path)
    want = {"format": FORMAT, "kind": head["kind"], "version": str(head["version"])}
    got = {k: stamp.get(k) for k in want}
    if got != want:
        raise ResultFileError(f"expected {path}'s metadata to say {want} as {side} does, found {got}")
    own = {k: v for k, v in head.items() if k != "tensors_sha256"}
    if stamp.get("sidecar_sha256") != _canonical_sha256(own):
        raise ResultFileError(f"{side} is not the sidecar that {path} was saved with: its SHA-256 differs from the "
                              f"one stored in the tensor file, so the sidecar was edited after saving")


def load_result(path: str | os.PathLike, *, kind: str, version: int) -> ResultContents:
    """Read and check a result file written by `save_result`; returns its tensors and meta.

    Checks, before using anything: both files exist, the sidecar is this format's JSON, its kind is
    ``kind`` and its version ``version``, and each file's SHA-256 is the one the other recorded.

    Args:
        path: the tensor file (its sidecar ``path + ".json"`` beside it).
        kind: the result type expected, e.g. ``"factscope.trace"``.
        version: the layout version expected.

    Returns:
        A `ResultContents`: the tensors (CPU) sorted by name, and the meta (non-finite floats restored).

    Raises:
        MissingResultFileError: either file is missing (also a ``FileNotFoundError``).
        ResultFileError: invalid JSON, not a result file, another kind, another version, a tensor
            file or sidecar modified or from another save.

    Cost: reading both files, a SHA-256 of the tensor file; memory: twice the tensor file, briefly.
    """
    from safetensors.torch import load as load_tensors

    _check_kind_version(kind, version)
    path = Path(path)
    head = _read_sidecar(path)
    side = sidecar_of(path)
    _check_header(head, side, kind, version)
    blob = path.read_bytes()
    _check_pair(blob, head, path, side)
    try:
        tensors = load_tensors(blob)
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise ResultFileError(f"expected safetensors in {path}, could not read them: {type(e).__name__}: {e}") from None
    return ResultContents(tensors=dict(sorted(tensors.items())), meta=_decode(head["meta"]))


# --------------------------------------------------------------------------- the mix-in

S = TypeVar("S", bound="Saveable")


class Saveable:
    """Mix-in: ``save(path)`` and ``Type.load(path)`` through `save_result` / `load_result`.

    A subclass sets ``RESULT_KIND`` (e.g. ``"factscope.trace"``) and ``RESULT_VERSION`` (bumped
    when its layout changes) and defines ``to_contents()`` and the class method ``from_contents(contents)``.

    Cost: what its `save` and `load` say.
    """

    RESULT_KIND: ClassVar[str]
    RESULT_VERSION: ClassVar[int]

    def to_contents(self) -> ResultContents:
        """The tensors and JSON meta that stand for this result (defined by each result type)."""
        raise NotImplementedError(f"{type(self).__name__} does not define to_contents()")

    @classmethod
    def from_contents(cls: type[S], contents: ResultContents) -> S:
        """The result that `to_contents` described (defined by each result type).

        Args:
            contents: tensors and meta, as `load_result` returns them.
        """
        raise NotImplementedError(f"{cls.__name__} does not define from_contents()")

    def save(self, path: str | os.PathLike) -> Path:
        """Write this result as a result file: ``path`` (safetensors) and ``path + ".json"``, atomically.

        Args:
            path: the tensor file to write; missing folders are created.

        Returns:
            ``path``, as a `Path`.

        Cost: writing the result's tensors and a SHA-256 of them (no model passes).
        """
        tensors, meta = self.to_contents()
        return save_result(path, kind=self.RESULT_KIND, version=self.RESULT_VERSION, tensors=tensors, meta=meta)

    @classmethod
    def load(cls: type[S], path: str | os.PathLike) -> S:
        """Read a result that `save` wrote, checked first (see `load_result`).

        Args:
            path: the tensor file (its sidecar ``path + ".json"`` beside it).

        Raises:
            MissingResultFileError, ResultFileError: as `load_result` raises them.

        Cost: reading both files and a SHA-256 of the tensors (no model passes).
        """
        return cls.from_contents(load_result(path, kind=cls.RESULT_KIND, version=cls.RESULT_VERSION))
