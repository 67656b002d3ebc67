"""AlphaEdit (Fang et al., ICLR 2025): MEMIT's update projected onto the null space of preserved knowledge.

MEMIT trades the new keys K against the preserved keys through λC. AlphaEdit instead removes the
preserved keys' directions from the update altogether:

- **P** — the eigenvectors Û of the key statistics C (`factscope.edit.covariance`, E[kkᵀ]) whose
  eigenvalues are below ``null_space_threshold``; ``P = Û Ûᵀ`` (``[d_mlp, d_mlp]``), once per layer on
  the *unedited* model. A key k from C's distribution has ``E‖kP‖² = Σ_{Û} σᵢ``, tiny, so any
  ``ΔW = P X`` leaves the preserved keys' outputs (``k ΔW = (kP) X``) nearly unchanged.
- **Update** — per layer, with MEMIT's keys K (``[request, d_mlp]``) and raw residuals R (``[request, d_model]``):
  ``ΔW = (P (KᵀK + K_pᵀK_p) + α I)⁻¹ P Kᵀ R`` (the authors' code, in this package's ``[d_mlp, d_model]``
  orientation), solved by LU in float64. ``K_pᵀK_p`` (``cache_c``) accumulates the keys of earlier
  batches in sequential editing, so later batches do not overwrite them; `EditSession` keeps it.
  ΔW = P·(…) lies in P's range by construction.
- z, the templates, the layer-by-layer spreading and the post-norm mapping are MEMIT's
  (`factscope.edit.memit`).

Defaults are the authors' Llama3-8B settings (`hparams/AlphaEdit/Llama3-8B.json`): threshold 2e-2,
α (``L2``) 10, and MEMIT's z settings. The threshold is absolute, so its meaning depends on the keys'
scale; the null-space dimension per layer is printed (``verbose``) and stored in ``edit.info``.

Cost: MEMIT's, plus one ``eigh`` of C per layer (O(d_mlp³)) and one ``d_mlp × d_mlp`` LU solve per
layer. Memory: MEMIT's plus P per layer (``d_mlp² · 8`` B).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from factscope.bridge import Bridge
from factscope.edit.handle import Edit
from factscope.edit.key_stats import key_stats
from factscope.edit.layer_update import layer_delta, run_layers
from factscope.edit.memit import MEMITConfig, compute_zs, prepare
from factscope.edit.target import config_source
from factscope.edit.templates import context_templates
from factscope.facts import EditRequest
from factscope.models import fingerprint

__all__ = ["AlphaEditConfig", "alphaedit", "alphaedit_with_keys", "null_space_projection", "alphaedit_solve"]


@dataclass(frozen=True, kw_only=True)
class AlphaEditConfig(MEMITConfig):
    """`MEMITConfig` plus AlphaEdit's two settings (defaults: the authors' Llama3-8B ones).

    The other fields are `MEMITConfig`'s, with its defaults. Cost: negligible (plain data).

    Attributes:
        null_space_threshold: eigenvalues of C below this span the null space P projects onto (2e-2).
        L2: α, the ridge term of the solve (10).
    """

    null_space_threshold: float = 2e-2
    L2: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.null_space_threshold > 0:
            raise ValueError(f"AlphaEditConfig: expected null_space_threshold > 0, got {self.null_space_threshold!r}")
        if not self.L2 > 0:
            raise ValueError(f"AlphaEditConfig: expected L2 > 0, got {self.L2!r}")


def null_space_projection(C: Float[Tensor, "d_mlp d_mlp"], threshold: float) -> Float[Tensor, "d_mlp d_mlp"]:
    """``P = Û Ûᵀ`` over C's eigenvectors with eigenvalue < ``threshold`` (float64).

    Args:
        C: ``[d_mlp, d_mlp]`` the key statistics of the unedited model (symmetrised before ``eigh``).
        threshold: eigenvalues below it span the null space.

    Raises:
        ValueError: C not square or not finite.

    Cost: one ``eigh`` of C, O(d_mlp³).
    """
    C = C.double()
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"expected a square C, got shape {tuple(C.shape)}")
    if not bool(torch.isfinite(C).all()):
        raise ValueError("expected finite key statistics C, got NaN or inf; recompute them (cache=False)")
    evals, evecs = torch.linalg.eigh((C + C.T) / 2)
    U = evecs[:, evals < threshold]
    return U @ U.T


def alphaedit_solve(P: Float[Tensor, "d_mlp d_mlp"], K: Float[Tensor, "request d_mlp"],
                    cache_c: Float[Tensor, "d_mlp d_mlp"] | None, alpha: float) -> Float[Tensor, "d_mlp request"]:
    """``U = (P (KᵀK + cache_c) + α I)⁻¹ P Kᵀ`` (float64 LU); AlphaEdit's ``ΔW = U R``.

    Args:
        P: ``[d_mlp, d_mlp]`` the null-space projection (`null_space_projection`).
        K: ``[request, d_mlp]`` the new keys.
        cache_c: ``[d_mlp, d_mlp]`` Σ KᵀK of earlier batches, or ``None``.
        alpha: α, the ridge term (``AlphaEditConfig.L2``).

    Cost: one ``d_mlp × d_mlp`` LU solve, O(d_mlp³).
    """
    P, K = P.double(), K.double()
    KK = K.T @ K if cache_c is None else K.T @ K + cache_c.double()
    M = P @ KK + alpha * torch.eye(P.shape[0], dtype=torch.float64)
    return torch.linalg.solve(M, P @ K.T)


def alphaedit(
    model: Bridge,
    requests: EditRequest | Sequence[EditRequest],
    *,
    layers: Sequence[int] | None = None,
    config: AlphaEditConfig | None = None,
    C: dict[int, Tensor] | None = None,
    P: dict[int, Tensor] | None = None,
    cache_c: dict[int, Tensor] | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> Edit:
    """Compute an AlphaEdit edit: MEMIT's update projected onto the null space of preserved keys.

    See the module docstring for the algorithm. The model is not changed.

    Args:
        model, requests, layers, progress, verbose: as `factscope.edit.memit`.
        config: `AlphaEditConfig`; ``None``: ``AlphaEditConfig.for_model(model)`` (the tuned δ budget and AlphaEdit's
            settings for the model's family); ``AlphaEditConfig.paper()``: the authors' settings.
        C: ``{layer: E[kkᵀ]}`` ``[d_mlp, d_mlp]`` of the unedited model, used only to build P when
            ``P`` is not given; default ``None``: `factscope.edit.covariances` (cached on disk).
        P: ``{layer: projection}`` ``[d_mlp, d_mlp]``; default ``None``: from C and
            ``config.null_space_threshold``.
        cache_c: ``{layer: Σ KᵀK}`` ``[d_mlp, d_mlp]`` of earlier batches (sequential editing;
            `EditSession` keeps it); default ``None``: none.

    Returns:
        An `Edit`; ``info`` holds MEMIT's fields plus the null-space dimension per layer. Its keys
        per layer (needed to grow ``cache_c``) are returned by `alphaedit_with_keys`.

    Cost: `memit`'s (z dominates), plus per layer one ``eigh`` of C when P is not given and one
    ``d_mlp × d_mlp`` LU solve, both O(d_mlp³). Memory: MEMIT's plus P per layer (``d_mlp² · 8`` B).
    """
    return alphaedit_with_keys(model, requests, layers=layers, config=config, C=C, P=P, cache_c=cache_c,
                               progress=progress, verbose=verbose)[0]


def alphaedit_with_keys(model: Bridge, requests: EditRequest | Sequence[EditRequest], *,
                        layers: int | Sequence[int] | None = None, config: AlphaEditConfig | None = None,
                        C: dict[int, Tensor] | None = None, P: dict[int, Tensor] | None = None,
                        cache_c: dict[int, Tensor] | None = None, progress: bool = True,
                        verbose: bool = True) -> tuple[Edit, dict[int, Tensor]]:
    """`alphaedit`, also returning ``{layer: K}`` (``[request, d_mlp]`` float64) as used in each layer's solve.

    `EditSession` grows ``cache_c`` from these keys.

    Args:
        model, requests, layers, config, C, P, cache_c, progress, verbose: as `alphaedit`.

    Cost: `alphaedit`'s.
    """
    config = AlphaEditConfig.for_model(model) if config is None else config
    if not isinstance(config, AlphaEditConfig):
        raise TypeError(f"AlphaEdit: expected an AlphaEditConfig, got {type(config).__name__}")
    reqs, layers, why = prepare(model, requests, layers, config, progress=progress, verbose=verbose, what="AlphaEdit")
    fp = fingerprint(model)
    P = dict(P or {})
    missing = [l for l in layers if l not in P]
    if missing:
        C = key_stats(model, missing, config, C, progress=progress)
        P.update({l: null_space_projection(C[l], config.null_space_threshold) for l in missing})
    dims = {l: int(round(float(torch.trace(P[l])))) for l in layers}
    if verbose:
        print(f"AlphaEdit: null-space dimensions {dims} (eigenvalues of C below {config.null_space_threshold})")
    templates = context_templates(model, config)
    zs = compute_zs(model, reqs, layers[-1], templates, config, progress=progress)
    cc = cache_c or {}
    up = run_layers(model, reqs, layers, templates, zs.z,
                    lambda l, K, R: (alphaedit_solve(P[l], K, cc.get(l), config.L2), R),
                    key_chunk=config.key_chunk, progress=progress, what="AlphaEdit", bare_weight=config.bare_weight)
    info = dict(layers=layers, layer_reason=why, config_source=config_source(config, model), residual_error=up.errors, z_steps=list(zs.steps),
                p_new=list(zs.p_new), templates=list(templates), null_space_dim={str(l): d for l, d in dims.items()})
    edit = Edit(deltas={l: layer_delta(*d) for l, d in up.deltas.items()}, method="alphaedit", requests=tuple(reqs),
                config=dataclasses.asdict(config), fingerprint=fp, info=info)
    return edit, up.keys
