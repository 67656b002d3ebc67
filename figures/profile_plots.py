"""Layer profiles: mean indirect effect per layer, one line per token bucket, 95% CI bands."""

from __future__ import annotations

from typing import Any

__all__ = ["plot_profile"]

_COLORS = {"first subject": "#9ecae1", "middle subject": "#4292c6", "last subject": "#08306b",
           "first subsequent": "#fd8d3c", "further": "#bdbdbd", "last": "#a50f15"}
_TITLES = {"hidden": "Hidden states", "mlp": "MLP outputs", "attn": "Attention outputs"}


def plot_profile(profile: Any, *, axes: Any = None) -> Any:
    """Draw a `ProfileResult`: one panel per kind, average indirect effect against layer.

    Each token bucket is a line with its 95% confidence band; the recommended edit layer (MLP at the
    last subject token) is marked when MLP effects were traced.

    Args:
        profile: a `factscope.locate.ProfileResult` (``mean[kind]`` ``[bucket, layer]``).
        axes: one axes per kind to draw into (default ``None``: a new figure).

    Returns:
        The matplotlib Figure.

    Cost: one matplotlib figure, no model passes (measured times: docs/guide.md).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from factscope.locate.profile import BUCKETS

    kinds = list(profile.kinds)
    if axes is None:
        fig, axs = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.4), squeeze=False,
                                constrained_layout=True, sharey=True)
        axs = list(axs[0])
    else:
        axs = list(axes)
        fig = axs[0].figure
    for a, k in zip(axs, kinds):
        L = profile.mean[k].shape[1]
        x = list(range(L))
        for bi, b in enumerate(BUCKETS):
            if int(profile.n[k][bi]) == 0:
                continue
            a.plot(x, profile.mean[k][bi].numpy(), color=_COLORS[b], lw=1.8, label=f"{b} (n={int(profile.n[k][bi])})")
            a.fill_between(x, profile.lo[k][bi].numpy(), profile.hi[k][bi].numpy(), color=_COLORS[b], alpha=0.18, lw=0)
        if k == "mlp":
            best = profile.best_layer("mlp")
            a.axvline(best, color="k", ls="--", lw=0.8)
            a.annotate(f"edit layer {best}", (best, a.get_ylim()[1]), xytext=(3, -12), textcoords="offset points",
                       fontsize=7)
        a.axhline(0, color="k", lw=0.5)
        a.set_title(f"{_TITLES[k]} (window {profile.settings['window']})" if k != "hidden" else _TITLES[k], fontsize=9)
        a.set_xlabel("layer", fontsize=8)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.tick_params(labelsize=7)
    axs[0].set_ylabel("average indirect effect on p(answer)", fontsize=8)
    axs[-1].legend(fontsize=7, frameon=False, loc="upper right")
    fig.suptitle(f"Causal tracing over {len(profile.facts)} facts ({len(profile.skipped)} skipped: answered "
                 f"wrongly); bands: 95% CI", fontsize=9)
    return fig
