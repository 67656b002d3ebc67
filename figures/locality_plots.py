"""What predicts where an edit stays put? The figure of a `LocalityResult`.

Four panels:

1. to 3. one per locality outcome (NS, neighbour KL, neighbour top-1 flips): R² of each predictor set
   (layer, tracing, specificity, tracing + layer, specificity + layer, all) as bars, with the 95%
   bootstrap CI over requests as whiskers, and the two "adds over layer" tests (ΔR², p) annotated;
2. each (request, layer) cell's NS against its key-specificity response, coloured by layer (colour
   bar), with the "NS ~ specificity" least-squares line.

Cells of requests left out of the regressions (a NaN anywhere in their row) are not drawn.
"""

from __future__ import annotations

from typing import Any

from factscope.figures.localization_plots import layer_colorbar

__all__ = ["plot_locality_predictors"]

_BAR_COLORS = {"layer": "#6baed6", "tracing": "#238b45", "specificity": "#d94801", "tracing+layer": "#00441b",
               "specificity+layer": "#7f2704", "all": "#08306b"}  # tracing in Greens (as the MLP heatmaps)
_BAR_LABELS = {"layer": "layer", "tracing": "TE", "specificity": "S", "tracing+layer": "TE + layer",
               "specificity+layer": "S + layer", "all": "all"}
_YLABELS = {"ns": "neighbourhood score NS", "kl": "neighbour KL(post ‖ pre)", "flips": "neighbour top-1 flips"}


def _r2_panel(a: Any, result: Any, outcome: str) -> None:
    """R² bars of one outcome with CI whiskers and the two tests over layer annotated."""
    import numpy as np

    from factscope.probes.locality_predictors import F_TESTS, PREDICTOR_SETS

    names = list(PREDICTOR_SETS)
    x = np.arange(len(names))
    r2 = np.array([result.fits[outcome][k].r2 for k in names])  # [set]
    ci = np.array([result.r2_ci[outcome][k] for k in names])  # [set, (lo, hi)]
    a.bar(x, np.nan_to_num(r2), color=[_BAR_COLORS[k] for k in names], width=0.65)
    a.vlines(x, ci[:, 0], ci[:, 1], color="k", lw=1)
    a.scatter(np.r_[x, x], np.r_[ci[:, 0], ci[:, 1]], marker="_", s=30, color="k", lw=1, zorder=3)
    notes = []
    for t in ("tracing|layer", "specificity|layer"):
        s, b = F_TESTS[t]
        F, p = result.f_tests[outcome][t]
        d = result.fits[outcome][b].r2 - result.fits[outcome][s].r2
        notes.append(f"{_BAR_LABELS[t.split('|')[0]]} | layer: ΔR² = {d:.3f}, p = {p:.2g}")
    a.annotate("\n".join(notes), (0.03, 0.97), xycoords="axes fraction", va="top", fontsize=7)
    a.set_xticks(x)
    a.set_xticklabels([_BAR_LABELS[k] for k in names], fontsize=7, rotation=35, ha="right")
    a.set_ylim(0, 1.3)
    a.set_yticks(np.linspace(0, 1, 6))
    a.set_ylabel("R² (95% bootstrap CI)", fontsize=8)
    n = result.fits[outcome]["layer"].n
    a.set_title(f"{_YLABELS[outcome]} (n = {n} cells)", fontsize=9)


def plot_locality_predictors(result: Any, *, axes: Any = None) -> Any:
    """Draw a `factscope.probes.LocalityResult`: R² bars per outcome with CIs, and NS against specificity.

    See the module docstring for the four panels.

    Args:
        result: the result of `factscope.probes.locality_predictors`.
        axes: four axes to draw into (NS, KL, flips, scatter); a new figure when ``None``.

    Returns:
        The matplotlib Figure.

    Cost: one matplotlib figure, no model passes.
    """

    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import BoundaryNorm

    if axes is None:
        fig, axs = plt.subplots(1, 4, figsize=(15.5, 3.9), constrained_layout=True,
                                gridspec_kw={"width_ratios": [1, 1, 1, 1.2]})
    else:
        axs = list(np.atleast_1d(axes))
        if len(axs) != 4:
            raise ValueError(f"expected 4 axes (NS, KL and flips R² bars, NS against specificity), got {len(axs)}")
        fig = axs[0].figure
    for a, o in zip(axs[:3], ("ns", "kl", "flips")):
        _r2_panel(a, result, o)

    # 4. NS against specificity, one colour per layer
    a = axs[3]
    used = result.used.numpy()  # [request]
    sp, ns = result.specificity.numpy()[used], result.ns.numpy()[used]  # [request, layer]
    layers = np.asarray(result.layers)
    n_l = len(layers)
    cmap = plt.get_cmap("viridis", n_l)  # one discrete colour per edited layer
    norm = BoundaryNorm(np.arange(n_l + 1) - 0.5, n_l)
    col = np.broadcast_to(np.arange(n_l), sp.shape)  # each cell's layer position
    sc = a.scatter(sp.ravel(), ns.ravel(), c=col.ravel(), cmap=cmap, norm=norm, s=16, alpha=0.85, lw=0)
    fit = result.fits["ns"]["specificity"]
    if sp.size and np.isfinite(fit.coef).all() and len(fit.coef) == 2:
        xs = np.linspace(np.nanmin(sp), np.nanmax(sp), 2)
        a.plot(xs, fit.coef[0] + fit.coef[1] * xs, color="k", lw=1, ls="--",
               label=f"NS ~ S (R² = {fit.r2:.3f})")
        a.legend(fontsize=7, frameon=False, loc="best")
    layer_colorbar(fig, sc, a, layers)
    a.set_xlabel("key-specificity response S (lower: more specific)", fontsize=8)
    a.set_ylabel("neighbourhood score NS with the edit", fontsize=8)
    a.set_ylim(-0.05, 1.05)
    a.set_title(f"Per (request, layer): {int(used.sum())} requests × {n_l} layers", fontsize=9)
    for a in axs:
        a.tick_params(labelsize=7)
    s = result.settings
    fig.suptitle(f"What predicts locality? {s.get('editor')} edits of {len(result.requests)} requests "
                 f"({result.n_used} used) at {n_l} layers; R² CIs from {s.get('n_boot')} bootstrap resamples of "
                 f"requests", fontsize=9)
    return fig
