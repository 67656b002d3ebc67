"""Key specificity: how much of an edit's δ a rank-one update writes into *other* subjects' prompts.

ROME's update ``ΔW = u Λᵀ`` with ``u = C⁻¹k*`` moves the MLP output of any key k by
``(kᵀu / k*ᵀu) · δ``. The *response* of a prompt to the edit of request r at layer l is that
fraction, maximised over the prompt's positions (BOS and padding excluded)::

    response(prompt | r, l) = max_pos |k_posᵀ C_l⁻¹ k*_r| / (k*_rᵀ C_l⁻¹ k*_r)

1 means the update moves that prompt by all of δ (as much as the edited prompt), 0 leaves it alone.
It does not depend on δ, so it is edit-free: one forward of each prompt to the layers asked for, k*
per request (a forward of its template prompts) and C per layer (`factscope.edit.key_stats`, cached
on disk). The guide measured that it is what neighbourhood failures come from.

`key_specificity(model, requests, layers)` reads it on a *bank* of prompts about other subjects, in
two groups per request:

- **same relation**: the request's own neighbour prompts (other subjects, same answer) and the bank's
  prompts of the same relation about other subjects: the prompts an edit is most likely to spill into;
- **other relations**: the bank's prompts of other relations (a fixed, evenly spaced sample).

The default bank is the built-in facts' prompts (`factscope.builtin_facts`). `KeySpecificity` holds
the mean response of each group per (request, layer) and ``.response``, their mean, which
`factscope.edit.layer_choice` ranks layers by.

`responses` is the batched kernel (prompts × requests at several layers from one forward);
`factscope.edit.rome.update_response` is its one-request case.

Cost: one forward of the requests' template prompts per request (`k_stars`: all layers from one pass),
one forward of the bank up to the deepest layer asked for, one Cholesky solve of C per layer
(``d_mlp³/3`` flops), and C itself the first time per layer. Memory: C for every layer asked for at
once (``layers × d_mlp² × 8`` bytes: 0.6 GB for all 18 of Gemma 3 270M's) and ``[prompt, pos, request]``
responses per layer.

Dimension names: ``request`` the edit requests, ``layer`` the layers asked for, ``prompt`` bank
prompts, ``pos`` token positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from factscope.arch import arch_of, context_of
from factscope.bridge import Bridge
from factscope.checks import as_requests
from factscope.edit.key_stats import key_stats
from factscope.edit.target import TargetConfig
from factscope.edit.templates import context_templates, template_rows, template_weights
from factscope.facts import EditRequest
from factscope.result_files import ResultContents, Saveable, fact_from_json, fact_to_json
from factscope.tokens import encode, pad_left

__all__ = ["KeySpecificity", "key_specificity", "k_stars", "responses", "bank_prompts", "OTHER_RELATION_PROMPTS"]

OTHER_RELATION_PROMPTS = 24
"""How many prompts of other relations each request is read on (evenly spaced over the bank)."""


@torch.no_grad()
def k_stars(model: Bridge, requests: Sequence[EditRequest], layers: Sequence[int],
            templates: Sequence[str], *, bare_weight: float | None = None,
            progress: bool = False) -> Float[Tensor, "layer request d_mlp"]:
    """k* of every request at every layer: the MLP key at the subject's last token, averaged over the
    template prompts (float64, on the CPU) with `factscope.edit.templates.template_weights`.

    Args:
        model: a bridge.
        requests: the requests (their subjects must be in their prompts: `factscope.tokens.check_request`).
        layers: the MLPs whose keys are read (non-negative, any order).
        templates: the context templates (`factscope.edit.templates.context_templates`).
        bare_weight: the bare prompt's weight in the average; ``None``: uniform (the papers' k*).
        progress: a progress bar over the requests.

    Cost: one forward per request of its ``len(templates)`` template prompts, up to the deepest layer.
    """
    a = arch_of(model)
    dev = context_of(model).device
    out = torch.zeros(len(layers), len(requests), a.d_mlp, dtype=torch.float64)
    w = template_weights(templates, bare_weight).to(dev)  # [template]
    for j, r in enumerate(tqdm(requests, desc="k*", disable=not progress)):
        rows, last = template_rows(model, r, templates)
        ids, mask = pad_left(model, rows)
        col = torch.tensor([ids.shape[1] - len(row) + i for row, i in zip(rows, last)], device=dev)
        got: dict[int, Tensor] = {}

        def grab(l: int):
            def hook(act, hook):  # act: [row, pos, d_mlp]
                got[l] = (w @ act[torch.arange(len(rows), device=dev), col].double()).cpu()
            return hook

        model.run_with_hooks(ids.to(dev), attention_mask=mask.to(dev), stop_at_layer=max(layers) + 1,
                             fwd_hooks=[(a.hook("mlp_key", l), grab(l)) for l in set(layers)])
        for i, l in enumerate(layers):
            out[i, j] = got[l]
    return out


@torch.no_grad()
def responses(model: Bridge, prompts: Sequence[str], U: Mapping[int, Float[Tensor, "d_mlp request"]],
              k_star: Mapping[int, Float[Tensor, "d_mlp request"]], *, batch_size: int = 32
              ) -> dict[int, Float[Tensor, "prompt request"]]:
    """``max_pos |kᵀu_r| / k*_rᵀu_r`` for every prompt, request r and layer (the module docstring).

    Args:
        model: a bridge.
        prompts: full prompts (subjects filled in).
        U: ``{layer: [d_mlp, request]}`` each request's update direction (ROME's ``C⁻¹k*``).
        k_star: ``{layer: [d_mlp, request]}`` the requests' k*.
        batch_size: prompts per forward.

    Cost: one forward of the prompts up to the deepest layer of ``U`` (in batches), and a
    ``[prompt × pos, d_mlp] @ [d_mlp, request]`` product per layer.
    """
    a = arch_of(model)
    dev = context_of(model).device
    Ls = sorted(U)
    U64 = {l: U[l].double().to(dev) for l in Ls}
    denom = {l: (U64[l] * k_star[l].double().to(dev)).sum(0) for l in Ls}  # [request]
    out = {l: [] for l in Ls}
    for s in range(0, len(prompts), batch_size):
        ids, mask = pad_left(model, [encode(model, p) for p in prompts[s:s + batch_size]])
        keep = mask.clone()
        keep[torch.arange(ids.shape[0]), mask.argmax(1)] = 0  # each row's BOS: its first unpadded column
        keep = keep.to(dev).bool()

        def read(l: int):
            def hook(act, hook):  # act: [prompt, pos, d_mlp]
                r = (act.double() @ U64[l]).abs() / denom[l]  # [prompt, pos, request]
                out[l].append(r.masked_fill(~keep[:, :, None], 0).amax(1).cpu())
            return hook

        model.run_with_hooks(ids.to(dev), attention_mask=mask.to(dev), stop_at_layer=Ls[-1] + 1,
                             fwd_hooks=[(a.hook("mlp_key", l), read(l)) for l in Ls])
    return {l: torch.cat(v) for l, v in out.items()}


def bank_prompts(request: EditRequest, bank: Sequence[EditRequest],
                 n_other: int = OTHER_RELATION_PROMPTS) -> tuple[list[str], list[str]]:
    """``(same_relation, other_relations)`` prompts for ``request`` (the module docstring).

    Prompts about the request's own subject are left out of both (they should move).

    Args:
        request: the edit request.
        bank: facts whose prompts make the bank.
        n_other: at most this many other-relation prompts, evenly spaced over the bank.

    Cost: negligible.
    """
    def other_subject(p: str) -> bool:
        return request.subject not in p

    same = [p for p in request.neighbours if other_subject(p)]
    same += [f.text for f in bank if f.relation == request.relation and other_subject(f.text)]
    other = list(dict.fromkeys(f.text for f in bank if f.relation != request.relation and other_subject(f.text)))
    if len(other) > n_other:
        other = [other[round(i * (len(other) - 1) / (n_other - 1))] for i in range(n_other)] if n_other > 1 \
            else other[:n_other]
    return list(dict.fromkeys(same)), list(dict.fromkeys(other))


@dataclass(frozen=True, kw_only=True)
class KeySpecificity(Saveable):
    """Mean update responses per (request, layer) on other subjects' prompts (`key_specificity`'s result).

    Cost: negligible (plain data).

    Attributes:
        requests: the requests, in order. layers: the layers, in order (columns).
        same_relation: ``[request, layer]`` mean response over the same-relation prompts (NaN: none).
        other_relation: ``[request, layer]`` mean response over the other-relation prompts (NaN: none).
        settings: the bank's size, the config's corpus and token count, the model fingerprint.
    """

    requests: tuple[EditRequest, ...]
    layers: tuple[int, ...]
    same_relation: Float[Tensor, "request layer"]
    other_relation: Float[Tensor, "request layer"]
    settings: dict[str, Any] = field(default_factory=dict)

    RESULT_KIND = "factscope.key_specificity"
    RESULT_VERSION = 1

    @property
    def response(self) -> Float[Tensor, "request layer"]:
        """The mean of the two groups' responses (the one available where a group is empty)."""
        return torch.stack([self.same_relation, self.other_relation]).nanmean(0)

    def per_layer(self) -> Float[Tensor, "layer"]:
        """``.response`` averaged over requests: lower is more specific."""
        return self.response.nanmean(0)

    def to_contents(self) -> ResultContents:
        """The two grids as tensors; requests, layers and settings as JSON meta. Cost: negligible."""
        meta = {"requests": [fact_to_json(r) for r in self.requests], "layers": list(self.layers),
                "settings": self.settings}
        return ResultContents({"same_relation": self.same_relation, "other_relation": self.other_relation}, meta)

    @classmethod
    def from_contents(cls, contents: ResultContents) -> KeySpecificity:
        """The result `to_contents` described.

        Args:
            contents: its tensors and meta (from `factscope.result_files.load_result`).

        Cost: negligible.
        """
        t, meta = contents
        return cls(requests=tuple(fact_from_json(r) for r in meta["requests"]), layers=tuple(meta["layers"]),
                   same_relation=t["same_relation"], other_relation=t["other_relation"], settings=meta["settings"])

    def to_dataframe(self) -> Any:
        """One row per (request, layer): subject, relation, layer and the three responses."""
        import pandas as pd

        resp = self.response
        return pd.DataFrame([{"subject": r.subject, "relation": r.relation, "layer": l,
                              "same_relation": float(self.same_relation[i, j]),
                              "other_relation": float(self.other_relation[i, j]), "response": float(resp[i, j])}
                             for i, r in enumerate(self.requests) for j, l in enumerate(self.layers)])


def key_specificity(
    model: Bridge,
    requests: Sequence[EditRequest],
    layers: Sequence[int] | None = None,
    *,
    bank: Sequence[EditRequest] | None = None,
    config: TargetConfig | None = None,
    C: Mapping[int, Float[Tensor, "d_mlp d_mlp"]] | None = None,
    progress: bool = True,
) -> KeySpecificity:
    """Each request's mean update response at each layer on other subjects' prompts (module docstring).

    Args:
        model: a bridge (unchanged).
        requests: `EditRequest` s (their subjects in their prompts).
        layers: the layers to read (negatives count from the end); ``None``: every layer.
        bank: facts whose prompts make the bank; ``None``: `factscope.builtin_facts`.
        config: where C and the templates come from (a `TargetConfig`; ``None``: ``TargetConfig()``,
            whose fields are ROME's published defaults).
        C: key statistics already at hand, ``{layer: [d_mlp, d_mlp]}`` (others from the disk cache).
        progress: progress bars.

    Returns:
        `KeySpecificity` (``.response``, ``.per_layer()``, ``.to_dataframe()``).

    Raises:
        TypeError / ValueError: bad requests or layers (before any model pass).

    Cost: see the module docstring: edit-free, one forward per request and one of the bank.
    """
    from factscope.datasets import builtin_facts
    from factscope.models import fingerprint
    from factscope.tokens import check_context, check_request

    reqs = as_requests(requests)
    for r in reqs:
        check_request(model, r, what="key_specificity")
    a = arch_of(model)
    Ls = tuple(range(a.n_layers)) if layers is None else a.check_layers(layers)
    cfg = config if config is not None else TargetConfig()
    bank = list(builtin_facts() if bank is None else as_requests(bank, "bank"))
    groups = [bank_prompts(r, bank) for r in reqs]
    prompts = list(dict.fromkeys(p for g in groups for ps in g for p in ps))
    for p in prompts:  # before any model pass
        check_context(model, len(encode(model, p)), what=f"the bank prompt {p!r}")
    Cs = key_stats(model, list(Ls), cfg, C, progress=progress)
    K = k_stars(model, reqs, Ls, context_templates(model, cfg), bare_weight=cfg.bare_weight, progress=progress)  # [layer, request, d_mlp]
    U, Ks = {}, {}
    for i, l in enumerate(tqdm(Ls, desc="C⁻¹k*", disable=not progress)):
        L, info = torch.linalg.cholesky_ex(Cs[l].double().cpu())
        if int(info) != 0:
            raise ValueError(f"key_specificity: expected a positive definite C at layer {l}, but its Cholesky "
                             f"factorisation failed at column {int(info)}: estimate it from more tokens")
        Ks[l] = K[i].T.contiguous()  # [d_mlp, request]
        U[l] = torch.cholesky_solve(Ks[l], L)
    index = {p: i for i, p in enumerate(prompts)}
    R = responses(model, prompts, U, Ks)  # {layer: [prompt, request]}
    same = torch.full((len(reqs), len(Ls)), math.nan, dtype=torch.float64)
    other = torch.full((len(reqs), len(Ls)), math.nan, dtype=torch.float64)
    for j, (s, o) in enumerate(groups):
        for i, l in enumerate(Ls):
            if s:
                same[j, i] = R[l][[index[p] for p in s], j].mean()
            if o:
                other[j, i] = R[l][[index[p] for p in o], j].mean()
    settings = dict(model=fingerprint(model), bank=len(bank), corpus=str(cfg.corpus), n_tokens=cfg.n_tokens)
    return KeySpecificity(requests=tuple(reqs), layers=Ls, same_relation=same, other_relation=other,
                          settings=settings)
