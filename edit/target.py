"""The target value's settings: what ROME's v* and MEMIT's z optimise, and how (`TargetConfig`).

ROME and MEMIT both find their target the same way. At the subject's last token, a vector δ is
added to the model's activation (ROME: the edited MLP's raw output, giving ``v* = v₀ + δ``; MEMIT:
the residual leaving the last edited layer, giving ``z = h + δ``), and δ is optimised with Adam
(learning rate ``v_lr``, at most ``v_steps`` steps) to minimise

    NLL(target_new | template prompts)  +  kl_factor · KL(p_δ ‖ p_0)(essence_prompt)
                                        +  v_weight_decay · ‖δ‖ / ‖v₀‖²

where the template prompts are the request's prompt behind each context template
(`factscope.edit.templates`), the KL keeps the subject's "essence" (the next-token distribution
after ``essence_prompt``, e.g. ``"{} is a"``) where it was, and ‖v₀‖ is the norm of the unedited
vector (ROME's v₀, MEMIT's h). After every step ``‖δ‖ ≤ clamp_norm_factor · ‖v₀‖`` is enforced, and
the optimisation stops once the NLL is below ``early_stop_loss`` (``early_stop_on="mean"``: the NLL
averaged over the template prompts, as the papers test it; ``"worst"``: every template prompt's NLL,
so the edit wins on each prompt, the bare one included, not only on average). The KL is
`factscope.predict.kl_from_logprobs`, the one KL of the package.

Both editors then need the key statistics C = E[kkᵀ] at the edited layers (`factscope.edit.key_stats`);
``corpus`` and ``n_tokens`` say where C comes from.

`TargetConfig` holds these shared fields and checks them once; `factscope.edit.rome.ROMEConfig` and
`factscope.edit.memit.MEMITConfig` inherit it (with their papers' defaults) and add their own. The
defaults here are ROME's.

**Paper constants and tuned defaults.** A config built with no arguments (or ``paper()``) holds the
published constants, for faithful reproductions. ``for_model(model)`` holds the defaults the editors
use when no config is given: the paper's, with the fields in the class's ``TUNED[family]`` replaced,
where the family is the model's (`factscope.Arch.family`: ``"post_norm"`` for Gemma, ``"pre_norm"``
otherwise). Those fields are the *δ budget*: how far δ may go (``clamp_norm_factor``), how fast
(``v_lr``, ``v_steps``) and when it stops (``early_stop_loss``, ``early_stop_on``: once the new target
wins by a margin).
They were fitted on `factscope.calibration_split`'s calibration half (``bare_weight`` also on a dev
set of held-out facts already looked at); docs/guide.md, "Choosing the
edit layer and the δ budget", has the fit and the held-out numbers. `config_source` says which of
the three a config is, and editors record it in ``Edit.info``.

Cost: plain data, checked on construction.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import ClassVar, Literal, TypeVar

from factscope.arch import arch_of
from factscope.bridge import Bridge

__all__ = ["TargetConfig", "Corpus", "config_source"]

T = TypeVar("T", bound="TargetConfig")

Corpus = str | os.PathLike | Iterable[str]
"""Where the key statistics come from: ``"auto"``, ``"model"``, a hub dataset name, a text file, or texts."""


@dataclass(frozen=True, kw_only=True)
class TargetConfig:
    """The settings ROME's v* and MEMIT's z share (the module docstring has the loss they define).

    The base of `ROMEConfig` and `MEMITConfig`; the defaults are ROME's (GPT-2 XL). Cost:
    negligible (plain data, validated on construction).

    Attributes:
        context_lengths: ``(tokens, count)`` pairs of model-written prefixes for the context
            templates (`factscope.edit.templates.context_templates`), each ``tokens >= 1``, ``count >= 0``.
        context_top_k: top-k sampling for those prefixes, a positive integer.
        seed: seeds the prefixes (nothing else is random).
        v_steps: Adam steps for δ, a positive integer.
        v_lr: Adam's learning rate, > 0.
        v_weight_decay: the weight of ``‖δ‖ / ‖v₀‖²``, >= 0.
        clamp_norm_factor: ``‖δ‖ ≤ clamp_norm_factor · ‖v₀‖`` after every step, > 0.
        kl_factor: the weight of the KL term on ``essence_prompt``, >= 0.
        essence_prompt: the KL prompt, with one ``{}`` for the subject.
        early_stop_loss: stop once the target's NLL is below this, >= 0.
        early_stop_on: which NLL ``early_stop_loss`` tests: ``"mean"`` (over the template prompts,
            the papers' test) or ``"worst"`` (the largest template prompt's, so every prompt wins).
        bare_weight: the bare prompt's (``"{}"``) weight in the key average (ROME's k*, MEMIT's K),
            in [0, 1], the other templates sharing the rest equally; ``None``: every template
            weighs the same, as in the papers (the bare prompt gets ``1/T``). See
            `factscope.edit.templates.template_weights`.
        corpus: where the key statistics C come from (`factscope.edit.covariance`; a `Corpus`).
        n_tokens: tokens C is estimated from; ``None``: `factscope.edit.covariance`'s default.
    """

    context_lengths: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))
    context_top_k: int = 5
    seed: int = 0
    v_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    essence_prompt: str = "{} is a"
    early_stop_loss: float = 0.05
    early_stop_on: Literal["mean", "worst"] = "mean"
    bare_weight: float | None = None
    corpus: Corpus = "auto"
    n_tokens: int | None = None

    def __post_init__(self) -> None:
        me = type(self).__name__
        self._require_positive_ints("v_steps", "context_top_k")
        for name in ("v_lr", "clamp_norm_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{me}: expected {name} > 0, got {getattr(self, name)!r}")
        for name in ("v_weight_decay", "kl_factor", "early_stop_loss"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{me}: expected {name} >= 0, got {getattr(self, name)!r}")
        if self.early_stop_on not in ("mean", "worst"):
            raise ValueError(f"{me}: expected early_stop_on 'mean' or 'worst', got {self.early_stop_on!r}")
        if self.bare_weight is not None and not 0 <= self.bare_weight <= 1:
            raise ValueError(f"{me}: expected bare_weight in [0, 1] or None, got {self.bare_weight!r}")
        if self.essence_prompt.count("{}") != 1:
            raise ValueError(f"{me}: expected essence_prompt with one '{{}}', got {self.essence_prompt!r}")
        if any(n < 1 or c < 0 for n, c in self.context_lengths):
            raise ValueError(f"{me}: expected (tokens >= 1, count >= 0) pairs, got {self.context_lengths!r}")

    TUNED: ClassVar[dict[str, dict[str, object]]] = {}
    """Per architecture family, the fields `for_model` changes from the paper's constants (fitted; module docstring)."""

    @classmethod
    def paper(cls: type[T]) -> T:
        """The published constants (the class's field defaults), for faithful reproductions. Cost: negligible."""
        return cls()

    @classmethod
    def for_model(cls: type[T], model: Bridge) -> T:
        """The tuned defaults for ``model``'s architecture family (the module docstring). Cost: negligible.

        Args:
            model: a bridge (only its architecture is read).
        """
        return replace(cls(), **cls.TUNED.get(arch_of(model).family, {}))

    def _require_positive_ints(self, *names: str) -> None:
        """A ValueError naming the config class for the first of ``names`` that is not an int >= 1 (bools refused)."""
        for name in names:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{type(self).__name__}: expected {name} to be a positive integer, got {v!r}")


def config_source(config: TargetConfig, model: Bridge) -> str:
    """``"paper"``, ``"tuned for <family> models"`` or ``"custom"``: which defaults ``config`` equals.

    Args:
        config: a `TargetConfig` (subclass) instance.
        model: the bridge it is used on (its family).

    Cost: negligible.
    """
    cls = type(config)
    if config == cls.for_model(model) and cls.TUNED.get(arch_of(model).family):
        return f"tuned for {arch_of(model).family.replace('_', '-')} models"
    return "paper" if config == cls.paper() else "custom"
