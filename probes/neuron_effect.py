"""Do a fact's knowledge neurons matter more than chance? Suppress (or enhance) them and compare.

``neuron_effect(model, neurons, facts)`` measures p(answer) (the first token of ``" " + answer``,
at the last prompt token) on three groups of prompts, before and during the intervention
(`factscope.locate.suppress` or `enhance`):

- ``fact``: the facts' own prompts and paraphrases (should move);
- ``related``: their neighbours, other subjects with the same relation and answer (an
  `EditRequest`'s ``neighbours``), plus any ``related=`` given;
- ``unrelated``: facts of other relations (default: a seeded sample of the built-in facts whose
  relation differs).

The control is the same intervention on random neuron sets matched by layer and count (for each
found neuron, a random other neuron of its layer), ``n_controls`` of them, seeded. Locality predicts
a large effect on ``fact``, a small one elsewhere, and a found-neuron effect well outside the
control distribution; ``p_value`` says how often a random set did at least as much.

Cost: ``2 + n_controls`` batched forward passes over all prompts, O(n_controls · prompts) prompt
forwards (measured times: docs/guide.md). Dimension names: ``prompt``, ``control``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from factscope.arch import arch_of
from factscope.bridge import Bridge
from factscope.facts import EditRequest, Fact
from factscope.result_files import ResultContents, Saveable, nest

__all__ = ["NeuronEffect", "neuron_effect", "random_controls", "GROUPS"]

GROUPS: tuple[str, ...] = ("fact", "related", "unrelated")
"""The prompt groups `neuron_effect` measures, in order: the fact's, its neighbours', unrelated facts'."""
Record = Fact | EditRequest | tuple[str, str]


@dataclass(frozen=True)
class NeuronEffect(Saveable):
    """p(answer) per prompt before and during an intervention on found and on random neurons.

    What `neuron_effect` returns. Cost: negligible (plain data; no model passes).

    Attributes:
        neurons: the intervened ``(layer, index)`` neurons.
        prompts: group -> the ``(prompt, answer)`` pairs measured.
        p_before: group -> ``[prompt]`` p(answer) without intervention.
        p_found: group -> ``[prompt]`` p(answer) with the found neurons intervened on.
        p_control: group -> ``[control, prompt]`` p(answer) with each random set intervened on.
        controls: the random neuron sets, each matched to ``neurons`` by layer and count.
        settings: mode, factor, positions, control, n_controls, seed.
    """

    neurons: tuple[tuple[int, int], ...]
    prompts: dict[str, tuple[tuple[str, str], ...]]
    p_before: dict[str, Float[Tensor, "prompt"]]
    p_found: dict[str, Float[Tensor, "prompt"]]
    p_control: dict[str, Float[Tensor, "control prompt"]]
    controls: tuple[tuple[tuple[int, int], ...], ...]
    settings: dict[str, Any] = field(default_factory=dict)

    RESULT_KIND = "factscope.neuron_effect"
    RESULT_VERSION = 1
    _MEASURES = ("p_before", "p_found", "p_control")  # the tensor fields, group -> tensor

    def to_contents(self) -> ResultContents:
        """Tensors ``{p_before,p_found,p_control}.{group}``; neurons, prompts, controls, settings as meta.

        Cost: negligible (no copies).
        """
        tensors = {k: v for m in self._MEASURES for k, v in nest(m, getattr(self, m)).items()}
        meta = {"neurons": self.neurons, "prompts": self.prompts, "controls": self.controls, "settings": self.settings,
                "keys": {m: list(getattr(self, m)) for m in self._MEASURES}}
        return ResultContents(tensors, meta)

    @classmethod
    def from_contents(cls, contents: ResultContents) -> NeuronEffect:
        """The result that `to_contents` described.

        Args:
            contents: its tensors and meta (from `factscope.result_files.load_result`).

        Cost: negligible.
        """
        t, meta = contents
        measured = {m: {g: t[f"{m}.{g}"] for g in groups} for m, groups in meta["keys"].items()}
        return cls(neurons=tuple(tuple(n) for n in meta["neurons"]),
                   prompts={g: tuple(tuple(x) for x in ps) for g, ps in meta["prompts"].items()},
                   controls=tuple(tuple(tuple(n) for n in c) for c in meta["controls"]), settings=meta["settings"],
                   **measured)

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups measured (those of `GROUPS` with prompts), in order."""
        return tuple(self.prompts)

    def change(self, group: str, *, relative: bool = True) -> tuple[float, Tensor]:
        """``(found, controls)``: mean change in p(answer) over a group, found neurons and per control.

        ``controls`` is ``[control]``: one mean per random set.

        Args:
            group: one of ``self.groups``.
            relative: ``True`` (default): (p_after − p_before) / p_before, the paper's measure;
                ``False``: p_after − p_before.
        """
        if group not in self.prompts:
            raise ValueError(f"expected a group among {self.groups}, got {group!r}")
        before = self.p_before[group]

        def ch(after: Tensor) -> Tensor:
            d = after - before
            return (d / before.clamp_min(1e-12) if relative else d).mean(-1)

        return float(ch(self.p_found[group])), ch(self.p_control[group])

    def p_value(self, group: str, *, relative: bool = True) -> float | None:
        """The controls' p-value: (1 + #controls at least as effective) / (1 + n_controls).

        At least as large a drop when suppressing, as large a rise when enhancing. ``None`` without
        controls.

        Args:
            group: one of ``self.groups``.
            relative: compare relative changes (default ``True``) or absolute ones, as in `change`.
        """
        found, ctl = self.change(group, relative=relative)
        if ctl.numel() == 0:
            return None
        at_least = (ctl <= found) if self.settings["mode"] == "suppress" else (ctl >= found)
        return (1 + int(at_least.sum())) / (1 + ctl.numel())

    def to_dataframe(self, *, per_prompt: bool = False) -> Any:
        """One row per group: mean p before, the found neurons' and the controls' changes, p-value.

        Columns: prompts, mean p before, the found neurons' mean change (relative and absolute), the
        controls' mean and std of the same, and ``p_value``.

        Args:
            per_prompt: default ``False``. ``True``: one row per prompt with p before, with the found
                neurons, and the controls' mean.
        """
        import pandas as pd

        if per_prompt:
            rows = []
            for g in self.groups:
                ctl = self.p_control[g]
                for i, (prompt, answer) in enumerate(self.prompts[g]):
                    rows.append({"group": g, "prompt": prompt, "answer": answer, "p_before": float(self.p_before[g][i]),
                                 "p_found": float(self.p_found[g][i]),
                                 "p_control_mean": float(ctl[:, i].mean()) if ctl.numel() else float("nan")})
            return pd.DataFrame(rows)
        rows = []
        for g in self.groups:
            rel, rel_c = self.change(g)
            ab, ab_c = self.change(g, relative=False)
            has = rel_c.numel() > 0
            rows.append({
                "group": g, "n_prompts": len(self.prompts[g]), "p_before": float(self.p_before[g].mean()),
                "rel_change": rel, "rel_change_control": float(rel_c.mean()) if has else float("nan"),
                "rel_change_control_std": float(rel_c.std()) if rel_c.numel() > 1 else float("nan"),
                "change": ab, "change_control": float(ab_c.mean()) if has else float("nan"),
                "p_value": self.p_value(g),
            })
        return pd.DataFrame(rows)


def random_controls(model: Bridge, neurons: Sequence[tuple[int, int]], n: int, *,
                    generator: torch.Generator) -> list[tuple[tuple[int, int], ...]]:
    """``n`` random neuron sets matched to ``neurons`` by layer and count, none of them a found neuron.

    Args:
        model: the bridge (for ``d_mlp``).
        neurons: the found ``(layer, index)`` neurons.
        n: how many sets.
        generator: a seeded `torch.Generator`; the global RNG is not touched.

    Cost: negligible (no model passes).
    """
    d_mlp = arch_of(model).d_mlp
    per_layer: dict[int, set[int]] = {}
    for l, i in neurons:
        per_layer.setdefault(l, set()).add(i)
    for l, found in per_layer.items():
        if d_mlp - len(found) < len(found):
            raise ValueError(f"cannot draw {len(found)} random neurons at layer {l} distinct from the found ones: "
                             f"d_mlp is {d_mlp}")
    out = []
    for _ in range(n):
        chosen: list[tuple[int, int]] = []
        for l in sorted(per_layer):
            found = per_layer[l]
            perm = torch.randperm(d_mlp, generator=generator).tolist()
            chosen += [(l, i) for i in [i for i in perm if i not in found][:len(found)]]
        out.append(tuple(chosen))
    return out


def _pairs(records: Sequence[Record], what: str) -> list[tuple[str, str]]:
    out = []
    for r in records:
        if isinstance(r, Fact):
            prompt, answer = r.text, r.target
        elif isinstance(r, EditRequest):
            prompt, answer = r.text, r.target_true
        elif isinstance(r, (tuple, list)) and len(r) == 2 and all(isinstance(x, str) for x in r):
            prompt, answer = r
        else:
            raise TypeError(f"expected {what} as Facts, EditRequests or (prompt, answer) pairs, got {r!r}")
        if not answer:
            raise ValueError(f"expected every {what} record to have an answer (target / target_true), got {r!r}")
        out.append((prompt, answer))
    return out


def _default_unrelated(facts: Sequence[Fact | EditRequest], n: int, generator: torch.Generator) -> list[tuple[str, str]]:
    from factscope.datasets import builtin_facts

    relations = {f.relation for f in facts}
    subjects = {f.subject for f in facts}
    pool = [f for f in builtin_facts() if f.relation not in relations and f.subject not in subjects]
    pick = torch.randperm(len(pool), generator=generator)[:n].tolist()
    return [(pool[i].text, pool[i].target_true) for i in sorted(pick)]


def _p_answer(model: Bridge, pairs: list[tuple[str, str]], batch_size: int) -> Tensor:
    from factscope.predict import next_token_logits
    from factscope.tokens import target_ids

    logits = next_token_logits(model, [p for p, _ in pairs], batch_size=batch_size)  # [prompt, d_vocab]
    ids = torch.tensor([target_ids(model, a)[0] for _, a in pairs])
    return logits.softmax(-1).gather(1, ids[:, None])[:, 0]


def neuron_effect(
    model: Bridge,
    neurons: Any,
    facts: Fact | EditRequest | Sequence[Fact | EditRequest],
    *,
    related: Sequence[Record] | None = None,
    unrelated: Sequence[Record] | None = None,
    n_unrelated: int = 16,
    control: str | None = "random",
    n_controls: int = 20,
    mode: str = "suppress",
    factor: float = 2.0,
    positions: Any = "last",
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> NeuronEffect:
    """The change in p(answer) when neurons are suppressed (or enhanced), against random controls.

    Args:
        model: a bridge.
        neurons: a `factscope.locate.NeuronResult` or ``(layer, index[, score])`` items.
        facts: the fact(s) the neurons were found for (with targets); their prompts and paraphrases
            form the ``fact`` group, their neighbours the ``related`` group.
        related: more related records (Facts, EditRequests or ``(prompt, answer)`` pairs).
        unrelated: the unrelated records; default: ``n_unrelated`` built-in facts of other relations,
            drawn with ``seed``.
        n_unrelated: the size of that default sample (default 16).
        control: ``"random"`` (default: random sets matched by layer and count) or ``None``.
        n_controls: how many random sets (default 20).
        mode: ``"suppress"`` (default: activations set to 0) or ``"enhance"`` (multiplied by ``factor``).
        factor: the multiplier for ``"enhance"`` (default 2.0, the paper's).
        positions: where to intervene (see `factscope.locate.suppress`; default ``"last"``, the last token).
        seed: seeds the controls and the unrelated sample (default 0; nothing else is random).
        batch_size: prompts per forward pass (default 32). progress: a progress bar over the controls
            (default ``False``).

    Returns:
        `NeuronEffect` (``.to_dataframe()`` gives one row per group). Empty groups are left out.

    Cost: ``2 + n_controls`` batched forward passes over all prompts, O(n_controls · prompts)
    prompt forwards (measured times: docs/guide.md). Memory: one batch's activations.
    """
    from tqdm.auto import tqdm

    from factscope.locate.knowledge_neurons import enhance, neuron_list, suppress

    if mode not in ("suppress", "enhance"):
        raise ValueError(f"expected mode 'suppress' or 'enhance', got {mode!r}")
    if control not in ("random", None):
        raise ValueError(f"expected control 'random' or None, got {control!r}")
    if isinstance(n_controls, bool) or not isinstance(n_controls, int) or n_controls < (1 if control else 0):
        raise ValueError(f"expected n_controls to be a positive integer, got {n_controls!r}")
    chosen = neuron_list(model, neurons)
    if not chosen:
        raise ValueError("expected at least one neuron to intervene on, got none")
    facts = [facts] if isinstance(facts, (Fact, EditRequest)) else list(facts)
    if not facts:
        raise ValueError("expected at least one fact, got none")
    g = torch.Generator().manual_seed(seed)
    own: list[tuple[str, str]] = []
    for f in facts:
        ((prompt, answer),) = _pairs([f], "fact")
        own += [(prompt, answer)] + [(p, answer) for p in getattr(f, "paraphrases", ())]
    groups: dict[str, list[tuple[str, str]]] = {
        "fact": own,
        "related": [(p, f.target_true) for f in facts if isinstance(f, EditRequest) and f.target_true
                    for p in f.neighbours] + _pairs(related or [], "related"),
        "unrelated": _pairs(unrelated, "unrelated") if unrelated is not None else _default_unrelated(facts, n_unrelated, g),
    }
    groups = {k: v for k, v in groups.items() if v}
    pairs = [p for v in groups.values() for p in v]
    controls = random_controls(model, chosen, n_controls, generator=g) if control else []
    intervene = (lambda ns: suppress(model, ns, positions=positions)) if mode == "suppress" else \
        (lambda ns: enhance(model, ns, factor, positions=positions))
    before = _p_answer(model, pairs, batch_size)
    with intervene(chosen):
        found = _p_answer(model, pairs, batch_size)
    ctl = []
    for c in tqdm(controls, desc=f"{mode} controls", disable=not progress):
        with intervene(c):
            ctl.append(_p_answer(model, pairs, batch_size))
    ctl_t = torch.stack(ctl) if ctl else torch.zeros(0, len(pairs))  # [control, prompt]
    split: dict[str, slice] = {}
    i = 0
    for k, v in groups.items():  # each group's rows in the flat prompt list
        split[k] = slice(i, i + len(v))
        i += len(v)
    settings = dict(mode=mode, factor=factor if mode == "enhance" else 0.0, positions=positions, control=control,
                    n_controls=len(controls), seed=seed, n_unrelated=n_unrelated if unrelated is None else None)
    return NeuronEffect(neurons=tuple(chosen), prompts={k: tuple(v) for k, v in groups.items()},
                        p_before={k: before[s] for k, s in split.items()},
                        p_found={k: found[s] for k, s in split.items()},
                        p_control={k: ctl_t[:, s] for k, s in split.items()},
                        controls=tuple(controls), settings=settings)
