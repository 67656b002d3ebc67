"""The editor registry: the one list of editor names, their configs, and one way to call each.

Every caller that picks an editor by name (the CLI, `factscope.probes.spillover`,
`factscope.probes.localization_vs_editing`, `factscope.edit.EditSession`, the study runner) asks
here; none keeps a list of its own. Adding an editor means adding one `EditorSpec` to `EDITORS`.

    from factscope.edit.registry import editor, run_editor
    spec = editor("ft-l")                        # aliases work: "finetune" is FT-L
    e = run_editor("memit", model, requests, layers=[4, 5, 6])   # -> Edit, model unchanged
    e = run_editor("rome", model, [request])                      # layer: the recommended one

The uniform call (`EditorSpec.run`, or `run_editor` by name)::

    run(model, requests, *, layers, config, C, progress, verbose) -> Edit

- ``requests``: a sequence of `EditRequest`. Editors that take one fact at a time (``batch`` is
  ``False``: ROME, KN) edit them one after another, each computed on the model with the earlier
  ones applied, and return them composed into one `Edit` for the unedited model (the model is
  restored before returning). What such a sequence shares is fixed once, on the unedited model,
  as `factscope.edit.EditSession` does: the layer (a one-layer editor's default is resolved before
  the first request) and the key statistics (`factscope.edit.key_stats`, for editors whose config is
  a `factscope.edit.target.TargetConfig`), so later requests neither re-trace nor re-estimate C on
  an edited model.
- ``layers``: what it means depends on ``spec.layers``: ``"one"`` (ROME, FT-L) takes exactly one
  layer, ``"many"`` (MEMIT, AlphaEdit) any set, ``"none"`` (KN: its neurons are found by
  attribution over all layers) must be ``None``. ``None`` means the editor's own default:
  `factscope.edit.layer_choice.edit_layer`'s choice for this editor and config (a layer, or MEMIT's
  and AlphaEdit's window; cached on disk). Negative layers count from the end.
- ``config``: an instance of ``spec.config_class`` (``None``: `default_config`, the tuned defaults
  for the model's architecture family where the config class has them).
- ``C``: key statistics ``{layer: [d_mlp, d_mlp]}`` to reuse (ROME takes its layer's; KN and FT-L
  need none and ignore it).
- KN needs 3 prompts per request to locate its neurons; a request with fewer is padded with
  context-prefixed copies of its prompt (`factscope.edit.kn.kn_prompts`), and with ``verbose`` a
  note says how many.

Cost: the editor's own (see each editor's docstring); the lookup is negligible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from factscope.arch import arch_of
from factscope.bridge import Bridge
from factscope.edit.alphaedit import AlphaEditConfig, alphaedit
from factscope.edit.finetune import FTConfig, finetune
from factscope.edit.handle import Edit, compose
from factscope.edit.key_stats import key_stats
from factscope.edit.layer_choice import default_layers
from factscope.edit.kn import KNConfig, kn, kn_prompts
from factscope.edit.memit import MEMITConfig, memit
from factscope.edit.rome import ROMEConfig, rome
from factscope.edit.target import TargetConfig
from factscope.facts import EditRequest
from factscope.locate.knowledge_neurons import MIN_PROMPTS

__all__ = ["EditorSpec", "EDITORS", "editor", "editor_names", "run_editor", "config_dict", "default_config", "EditorConfig",
           "LayerRule"]

EditorConfig = ROMEConfig | MEMITConfig | AlphaEditConfig | FTConfig | KNConfig
LayerRule = Literal["one", "many", "none"]
RunFn = Callable[..., Edit]


@dataclass(frozen=True, kw_only=True)
class EditorSpec:
    """One editor: its name, aliases, config class, what ``layers`` means, and the uniform call.

    Attributes:
        name: the canonical name (what `Edit.method` says), e.g. ``"ft-l"``.
        label: the name as printed, e.g. ``"FT-L"``.
        aliases: other accepted names, e.g. ``("finetune",)``.
        config_class: the editor's settings dataclass.
        layers: ``"one"``, ``"many"`` or ``"none"`` (see the module docstring).
        batch: whether one call edits many requests at once (MEMIT, AlphaEdit, FT-L).
        summary: one line for listings (the CLI's help).
        fn: the editor in the uniform signature; call it through `run` (which checks the inputs).

    Cost: negligible (plain data); calling `run` costs the editor's.
    """

    name: str
    label: str
    aliases: tuple[str, ...] = ()
    config_class: type
    layers: LayerRule
    batch: bool
    summary: str
    fn: RunFn

    @property
    def needs_stats(self) -> bool:
        """Whether the editor uses key statistics C (its config is a `TargetConfig`: ROME, MEMIT, AlphaEdit).

        Cost: negligible.
        """
        return issubclass(self.config_class, TargetConfig)

    def check_config(self, config: object | None) -> EditorConfig:
        """``config``, or the defaults when ``None``; a TypeError naming the expected class otherwise.

        Args:
            config: an instance of ``config_class``, or ``None``.

        Cost: negligible.
        """
        if config is None:
            return self.config_class()
        if type(config) is not self.config_class:
            raise TypeError(f"expected config for the {self.name} editor to be a {self.config_class.__name__} "
                            f"(or None), got {type(config).__name__}")
        return config

    def check_layers(self, model: Bridge, layers: int | Sequence[int] | None) -> list[int] | None:
        """``layers`` as a sorted list of layers in ``[0, n_layers)``, or ``None`` (the editor's default).

        Args:
            model: the bridge (for its number of layers).
            layers: an int, a sequence of ints (negatives count from the end) or ``None``.

        Cost: negligible.
        """
        if layers is None:
            return None
        if self.layers == "none":
            raise ValueError(f"the {self.name} editor chooses its own layers (got layers={layers!r}); pass None")
        out = arch_of(model).check_layers(layers)  # normalised; duplicates refused
        if self.layers == "one" and len(out) != 1:
            raise ValueError(f"the {self.name} editor edits one layer; got {len(out)} layers {layers!r}")
        return sorted(out)

    def run(self, model: Bridge, requests: EditRequest | Sequence[EditRequest], *,
            layers: int | Sequence[int] | None = None, config: EditorConfig | None = None,
            C: dict[int, Tensor] | None = None, progress: bool = True, verbose: bool = False) -> Edit:
        """The `Edit` of ``requests`` (not applied; the model is left as it was). See the module docstring.

        Args:
            model: a bridge.
            requests: one `EditRequest` or a non-empty sequence of them.
            layers: see `check_layers` (``None``: the editor's default layer choice).
            config: an instance of ``config_class`` (``None``: its defaults).
            C: key statistics ``{layer: [d_mlp, d_mlp]}`` to reuse (``None``: computed or loaded from the cache).
            progress: progress bars. verbose: the editor's one-line summary.

        Cost: the editor's, once per request for one-at-a-time editors.
        """
        reqs = [requests] if isinstance(requests, EditRequest) else list(requests)
        if not reqs or not all(isinstance(r, EditRequest) for r in reqs):
            raise TypeError(f"expected one EditRequest or a non-empty sequence of them, got {requests!r}")
        cfg = self.check_config(default_config(self, model) if config is None else config)
        ls = self.check_layers(model, layers)
        if self.batch or len(reqs) == 1:
            return self.fn(model, reqs, layers=ls, config=cfg, C=C, progress=progress, verbose=verbose)
        return self._sequential(model, reqs, layers=ls, config=cfg, C=C, progress=progress, verbose=verbose)

    def _sequential(self, model: Bridge, reqs: list[EditRequest], *, layers: list[int] | None,
                    config: EditorConfig, C: dict[int, Tensor] | None, progress: bool, verbose: bool) -> Edit:
        """One edit per request, each on the model with the earlier ones applied; composed, model restored."""
        if self.layers == "one" and layers is None:
            layers = default_layers(model, self.name, config, progress=progress)[0]
        if self.needs_stats:
            C = key_stats(model, layers or [], config, C, progress=progress)
        if verbose:
            where = f"editing the MLP at layer {layers[0]}; " if self.layers == "one" else ""
            print(f"{self.label}: {where}{len(reqs)} requests applied one after another (each computed on the "
                  f"model with the earlier ones applied), then composed into one edit")
        done: list[Edit] = []
        try:
            for r in reqs:
                done.append(self.fn(model, [r], layers=layers, config=config, C=C, progress=progress,
                                    verbose=verbose).apply(model))
        finally:
            for e in reversed(done):
                e.revert(model)
        return compose(done)


def _one_layer(model: Bridge, name: str, config: EditorConfig, layers: list[int] | None, progress: bool) -> int:
    if layers is not None:
        return layers[0]
    return default_layers(model, name, config, progress=progress)[0][0]


def _rome(model: Bridge, requests: list[EditRequest], *, layers: list[int] | None, config: ROMEConfig,
          C: dict[int, Tensor] | None, progress: bool, verbose: bool) -> Edit:
    (r,) = requests
    if layers is None and not C:  # rome picks the recommended layer itself, and says why
        return rome(model, r, config=config, progress=progress, verbose=verbose)
    layer = _one_layer(model, "rome", config, layers, progress)
    return rome(model, r, layer=layer, config=config, C=None if C is None else C.get(layer), progress=progress,
                verbose=verbose)


def _memit(model: Bridge, requests: list[EditRequest], *, layers: list[int] | None, config: MEMITConfig,
           C: dict[int, Tensor] | None, progress: bool, verbose: bool) -> Edit:
    return memit(model, requests, layers=layers, config=config, C=C, progress=progress, verbose=verbose)


def _alphaedit(model: Bridge, requests: list[EditRequest], *, layers: list[int] | None, config: AlphaEditConfig,
               C: dict[int, Tensor] | None, progress: bool, verbose: bool) -> Edit:
    return alphaedit(model, requests, layers=layers, config=config, C=C, progress=progress, verbose=verbose)


def _finetune(model: Bridge, requests: list[EditRequest], *, layers: list[int] | None, config: FTConfig,
              C: dict[int, Tensor] | None, progress: bool, verbose: bool) -> Edit:
    return finetune(model, requests, layer=_one_layer(model, "ft-l", config, layers, progress), config=config, progress=progress,
                    verbose=verbose)


def _kn(model: Bridge, requests: list[EditRequest], *, layers: list[int] | None, config: KNConfig,
        C: dict[int, Tensor] | None, progress: bool, verbose: bool) -> Edit:
    (r,) = requests
    prompts, added = kn_prompts(r)
    if added and verbose:
        print(f"KN: note: {added} prompt(s) added with a context prefix so that {r.subject!r} has the {MIN_PROMPTS} "
              f"prompts the neuron refinement needs (give the request paraphrases to avoid it)")
    return kn(model, r, prompts=prompts if added else None, config=config, progress=progress, verbose=verbose)


EDITORS: dict[str, EditorSpec] = {s.name: s for s in (
    EditorSpec(name="rome", label="ROME", config_class=ROMEConfig, layers="one", batch=False, fn=_rome,
               summary="ROME: a rank-one update of one MLP's W_out per fact (Meng et al. 2022)"),
    EditorSpec(name="memit", label="MEMIT", config_class=MEMITConfig, layers="many", batch=True, fn=_memit,
               summary="MEMIT: many facts at once, spread over a range of layers (Meng et al. 2023)"),
    EditorSpec(name="alphaedit", label="AlphaEdit", config_class=AlphaEditConfig, layers="many", batch=True, fn=_alphaedit,
               summary="AlphaEdit: MEMIT projected onto the null space of preserved keys (Fang et al. 2025)"),
    EditorSpec(name="ft-l", label="FT-L", aliases=("finetune", "ft"), config_class=FTConfig, layers="one", batch=True,
               fn=_finetune, summary="FT-L: L∞-constrained fine-tuning of one layer's W_out (the baseline)"),
    EditorSpec(name="kn", label="KN", config_class=KNConfig, layers="none", batch=False, fn=_kn,
               summary="KN: move the knowledge neurons' value slots from the old answer to the new (Dai et al. 2022)"),
)}
"""The editors by canonical name: ``rome``, ``memit``, ``alphaedit``, ``ft-l`` and ``kn``."""
_BY_NAME: dict[str, EditorSpec] = {n: s for s in EDITORS.values() for n in (s.name, *s.aliases)}


def editor_names(*, aliases: bool = False) -> tuple[str, ...]:
    """The canonical editor names (with ``aliases=True``, every accepted name).

    Args:
        aliases: include the aliases (``"finetune"`` ...) after the canonical names.

    Cost: negligible.
    """
    return tuple(_BY_NAME) if aliases else tuple(EDITORS)


def editor(name: str) -> EditorSpec:
    """The `EditorSpec` for ``name`` or one of its aliases (case-insensitive).

    Args:
        name: an editor name or alias.

    Cost: negligible.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    spec = _BY_NAME.get(name.lower()) if isinstance(name, str) else None
    if spec is None:
        known = ", ".join(f"{s.name}" + (f" ({'/'.join(s.aliases)})" if s.aliases else "") for s in EDITORS.values())
        raise ValueError(f"expected an editor name, one of {known}; got {name!r}")
    return spec


def run_editor(name: str, model: Bridge, requests: EditRequest | Sequence[EditRequest], *,
               layers: int | Sequence[int] | None = None, config: EditorConfig | None = None,
               C: dict[int, Tensor] | None = None, progress: bool = True, verbose: bool = False) -> Edit:
    """``editor(name).run(...)``: the `Edit` of ``requests`` by the named editor (model unchanged).

    Args:
        name: an editor name or alias (see `editor_names`).
        model: a bridge.
        requests: one `EditRequest` or a sequence.
        layers, config, C, progress, verbose: see the module docstring.

    Cost: the editor's.
    """
    return editor(name).run(model, requests, layers=layers, config=config, C=C, progress=progress, verbose=verbose)


def default_config(spec: EditorSpec, model: Bridge) -> EditorConfig:
    """The config ``spec``'s editor uses on ``model`` when none is given.

    `factscope.edit.target.TargetConfig.for_model` (the δ budget tuned for the model's architecture
    family) for ROME, MEMIT and AlphaEdit; the config class's defaults for the others.

    Args:
        spec: an `EditorSpec`. model: the bridge to be edited.

    Cost: negligible.
    """
    cls = spec.config_class
    return cls.for_model(model) if issubclass(cls, TargetConfig) else cls()


def config_dict(config: EditorConfig) -> dict[str, object]:
    """A config as a plain dict (for reports and JSON). Cost: negligible."""
    return dataclasses.asdict(config)
