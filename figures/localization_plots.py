"""Does localization inform editing? Hase et al. (2023)-style figure of a `LocalizationResult`.

Three panels:

1. each (fact, layer) cell's tracing effect (x) against its rewrite score (y), coloured by layer
   (colour bar), with the "tracing alone" least-squares line;
2. per layer, the mean tracing effect and the mean rewrite score over facts, with 95% bootstrap
   CIs (facts resampled);
3. R² of edit score on layer, on tracing and on both, with Hase et al.'s ROME-on-GPT-J values marked
   and the F-test of "tracing adds to layer" annotated.

Cells of facts left out of the regressions (no tracing effect) are not drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["plot_localization", "layer_colorbar"]

_TRACE_COLOR = "#238b45"  # Greens, as the MLP tracing heatmaps
_EDIT_COLOR = "#a50f15"
_BAR_COLORS = {"layer": "#6baed6", "tracing": _TRACE_COLOR, "both": "#08306b"}


def plot_localization(result: Any, *, axes: Any = None) -> Any:
    """Draw a `factscope.probes.LocalizationResult`: edit score against tracing effect, and R² bars.

    See the module docstring for the three panels.

    Args:
        result: the result of `factscope.probes.localization_vs_editing`.
        axes: three axes to draw into; a new figure when ``None``.

    Returns:
        The matplotlib Figure.

    Cost: one matplotlib figure, no model passes (measured times: docs/guide.md).
    """

    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import BoundaryNorm
    from matplotlib.ticker import MaxNLocator

    from factscope.probes.localization import HASE_ROME_GPTJ
    from factscope.probes.stats import mean_ci

    if axes is None:
        fig, axs = plt.subplots(1, 3, figsize=(12.6, 3.6), constrained_layout=True,
                                gridspec_kw={"width_ratios": [1.15, 1.2, 0.8]})
    else:
        axs = list(np.atleast_1d(axes))
        if len(axs) != 3:
            raise ValueError(f"expected 3 axes (scatter, per-layer means, R² bars), got {len(axs)}")
        fig = axs[0].figure
    te = result.tracing.numpy()
    rs = result.edit_score.numpy()
    used = np.isfinite(te).all(1) & np.isfinite(rs).all(1)
    te, rs = te[used], rs[used]
    layers = np.asarray(result.layers)

    # 1. scatter, one colour per layer
    a = axs[0]
    n_l = len(layers)
    cmap = plt.get_cmap("viridis", n_l)  # one discrete colour per edited layer
    norm = BoundaryNorm(np.arange(n_l + 1) - 0.5, n_l)
    col = np.broadcast_to(np.arange(n_l), te.shape)  # each cell's layer position
    sc = a.scatter(te.ravel(), rs.ravel(), c=col.ravel(), cmap=cmap, norm=norm, s=14, alpha=0.85, lw=0)
    fit = result.fits["tracing"]
    if te.size:
        xs = np.linspace(np.nanmin(te), np.nanmax(te), 2)
        a.plot(xs, fit.coef[0] + fit.coef[1] * xs, color="k", lw=1, ls="--",
               label=f"edit score ~ tracing (R² = {fit.r2:.3f})")
        a.legend(fontsize=7, frameon=False, loc="lower right")
    layer_colorbar(fig, sc, a, layers)
    a.set_xlabel("tracing effect (fraction of the damage restored)", fontsize=8)
    a.set_ylabel("rewrite score  (p* − p) / (1 − p)", fontsize=8)
    a.set_title("Per (fact, layer)", fontsize=9)

    # 2. per-layer means with bootstrap CIs over facts
    a = axs[1]
    for y, color, label in ((te, _TRACE_COLOR, "tracing effect"), (rs, _EDIT_COLOR, "rewrite score")):
        if y.size:
            stats = np.array([mean_ci(y[:, j]) for j in range(len(layers))])  # [layer, (mean, lo, hi)]
        else:
            stats = np.full((len(layers), 3), np.nan)
        a.plot(layers, stats[:, 0], color=color, lw=1.8, marker="o", ms=3, label=label)
        a.fill_between(layers, stats[:, 1], stats[:, 2], color=color, alpha=0.18, lw=0)
    a.axhline(0, color="k", lw=0.5)
    a.set_xlabel("layer", fontsize=8)
    a.set_ylabel(f"mean over {int(used.sum())} facts (95% CI)", fontsize=8)
    a.xaxis.set_major_locator(MaxNLocator(integer=True))
    a.set_title("Per layer", fontsize=9)
    a.legend(fontsize=7, frameon=False, loc="best")

    # 3. R² bars
    a = axs[2]
    names = ["layer", "tracing", "both"]
    r2 = [result.fits[k].r2 for k in names]
    x = np.arange(3)
    a.bar(x, r2, color=[_BAR_COLORS[k] for k in names], width=0.6)
    for xi, v in zip(x, r2):
        a.annotate(f"{v:.3f}", (xi, v if np.isfinite(v) else 0), xytext=(0, 2), textcoords="offset points",
                   ha="center", fontsize=7)
    a.scatter(x, [HASE_ROME_GPTJ[k] for k in names], marker="_", s=260, color="k", lw=1.2, zorder=3,
              label="Hase et al. 2023 (ROME, GPT-J)")
    F, p = result.f_tests["tracing_over_layer"]
    a.annotate(f"does tracing add to layer?\nΔR² = {result.delta_r2:.3f}, F = {F:.2g}, p = {p:.3g}", (0.03, 0.97),
               xycoords="axes fraction", va="top", fontsize=7)
    a.set_xticks(x)
    a.set_xticklabels(names, fontsize=8)
    a.set_ylim(0, 1.42)
    a.set_yticks(np.linspace(0, 1, 6))
    a.set_ylabel("R² of rewrite score", fontsize=8)
    a.set_title("Which predicts edit success?", fontsize=9)
    a.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(0, 0.85), handletextpad=0.2)
    for a in axs:
        a.tick_params(labelsize=7)
    s = result.settings
    fig.suptitle(f"Does localization inform editing? {s.get('editor')} edits of {len(result.facts)} facts "
                 f"({result.n_facts_used} traced) at {len(result.layers)} layers; MLP tracing window {s.get('window')}",
                 fontsize=9)
    return fig


def layer_colorbar(fig: Any, mappable: Any, ax: Any, layers: Sequence[int]) -> Any:
    """A colour bar labelled "edit layer" for a scatter coloured by layer position, at most 10 ticks.

    Args:
        fig: the figure. mappable: the scatter (colours are positions ``0 .. len(layers) − 1``).
        ax: the axes it belongs to. layers: the layer numbers, in position order.

    Cost: negligible.
    """
    n = len(layers)
    cb = fig.colorbar(mappable, ax=ax, fraction=0.06, pad=0.02)
    cb.set_label("edit layer", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    step = max(1, math.ceil(n / 10))
    cb.set_ticks(np.arange(0, n, step))
    cb.set_ticklabels([str(l) for l in list(layers)[::step]])
    return cb
