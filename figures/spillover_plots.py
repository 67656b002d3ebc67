"""Spillover plots: how far each bank probe moved against its key's similarity to the edited key.

Two panels (whitened cosine, raw cosine). Points are probes, coloured by category; the legend gives
each category's n and whether it should move or stay. The line is the least-squares fit over the
pooled "stay" probes, with the pointwise 95% band of the bootstrap lines; its slope and CI are in
the legend. Locality predicts a flat line near 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_spillover", "CATEGORY_COLORS"]

CATEGORY_COLORS = {"paraphrase": "#d62728", "same_subject": "#ff7f0e", "related": "#1f77b4",
                   "same_relation": "#2ca02c", "unrelated": "#7f7f7f"}
_EXTRA = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
_MARKERS = {"move": "^", "stay": "o"}
_XLABELS = {"cos_white": "whitened key cosine  cos(C$^{-1/2}$k, C$^{-1/2}$k$_e$)",
            "cos_raw": "raw key cosine  cos(k, k$_e$)"}
_YLABELS = {"abs_delta_logp": "|Δ log p(answer)|  (nats per token)", "kl": "KL(p$_{after}$ ‖ p$_{before}$)  (nats)"}


def _colors(categories: list[str]) -> dict[str, str]:
    extra = iter(_EXTRA * (len(categories) // len(_EXTRA) + 1))
    return {c: CATEGORY_COLORS.get(c) or next(extra) for c in categories}


def plot_spillover(result: Any, *, effect: str = "abs_delta_logp", axes: Any = None) -> Any:
    """Draw a `factscope.probes.SpilloverResult`: ``effect`` against whitened and raw key cosine.

    Args:
        result: what `factscope.probes.spillover` returned.
        effect: ``"abs_delta_logp"`` (|Δ log p(answer)|) or ``"kl"`` (next-token KL).
        axes: two axes to draw into (a new figure when ``None``).

    Returns:
        The matplotlib Figure.

    Cost: one matplotlib figure, no model passes (measured times: docs/guide.md).
    """
    import matplotlib.pyplot as plt

    from factscope.probes.spillover import EFFECTS, POOLED

    if effect not in EFFECTS:
        raise ValueError(f"expected effect among {list(EFFECTS)}, got {effect!r}")
    if axes is None:
        fig, axs = plt.subplots(1, 2, figsize=(8.4, 3.5), constrained_layout=True, sharey=True)
        axs = list(axs)
    else:
        axs = list(axes)
        if len(axs) != 2:
            raise ValueError(f"expected two axes (whitened, raw), got {len(axs)}")
        fig = axs[0].figure
    cats = list(result.categories)
    colors = _colors(cats)
    y_all = result.values(effect)
    for a, x in zip(axs, ("cos_white", "cos_raw")):
        for c in cats:
            ps = [p for p in result.probes if p.category == c]
            xs, ys = result.values(x, c), result.values(effect, c)
            exp = ps[0].expected
            a.scatter(xs, ys, s=22, color=colors[c], marker=_MARKERS.get(exp, "o"), alpha=0.85, lw=0.4,
                      edgecolor="white", label=f"{c} (n={len(ps)}, {exp})", zorder=3)
        f = result.fit(POOLED, effect, x)
        if f is not None and np.isfinite(f.slope):
            stay_x = result.values(x, POOLED)
            grid = np.linspace(np.nanmin(stay_x), np.nanmax(stay_x), 100)
            lo, hi = f.band(grid)
            a.fill_between(grid, lo, hi, color="k", alpha=0.12, lw=0, zorder=1)
            a.plot(grid, f.intercept + f.slope * grid, color="k", lw=1.2, zorder=2,
                   label=f"stay fit (n={f.n}): slope {f.slope:.3g}\n  95% CI [{f.lo:.3g}, {f.hi:.3g}]")
        a.axhline(0, color="k", lw=0.5)
        a.set_xlabel(_XLABELS[x], fontsize=8)
        a.tick_params(labelsize=7)
        a.legend(fontsize=6.5, frameon=False, loc="upper left")
    if np.isfinite(y_all).any():
        top = float(np.nanmax(y_all))
        axs[0].set_ylim(min(0.0, float(np.nanmin(y_all))) - 0.02 * top, 1.35 * top)  # room for the legend
    axs[0].set_ylabel(_YLABELS[effect], fontsize=8)
    r = result.request
    old = f"{r.target_true} → " if r.target_true is not None else "→ "
    ls = list(result.edit.layers)
    where = f"layer {ls[0]}" if len(ls) == 1 else "layers " + ",".join(map(str, ls))
    fig.suptitle(f"{r.subject}: {old}{r.target_new}   ({result.editor.upper()} at {where}; keys compared at layer "
                 f"{result.layer}; band: 95% bootstrap CI of the stay fit)", fontsize=9)
    return fig
