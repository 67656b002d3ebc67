"""Edit reports as bar charts: editors side by side, each metric with its bootstrap 95% CI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["plot_report", "RATE_METRICS"]

RATE_METRICS: tuple[str, ...] = ("efficacy", "paraphrase", "neighbourhood", "nplus", "efficacy_em", "paraphrase_em",
                                 "portability", "S")
_LABELS = {"efficacy": "ES", "paraphrase": "PS", "neighbourhood": "NS", "nplus": "N+", "efficacy_em": "ES (EM)",
           "paraphrase_em": "PS (EM)", "portability": "Portab.", "S": "S",
           "neighbourhood_kl": "Neighbour KL (nats)", "fluency": "Δ fluency (bits)"}
_PALETTE = ("#08519c", "#d94801", "#238b45", "#6a51a3", "#a50f15", "#525252")


def _bars(ax: Any, x: Any, v: Any, lo: Any, hi: Any, color: str, width: float, label: str, hatch: str = "",
          annotate: bool = False) -> None:
    import numpy as np

    v, lo, hi = (np.asarray(t, dtype=float) for t in (v, lo, hi))
    err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
    ax.bar(x, np.nan_to_num(v), width, color=color if not hatch else "white", edgecolor=color, hatch=hatch,
           lw=0.8, label=label)
    ok = np.isfinite(v)
    ax.errorbar(np.asarray(x)[ok], v[ok], yerr=err[:, ok], fmt="none", ecolor="k", elinewidth=0.8, capsize=1.5)
    if annotate:  # a value label, so a bar of height 0 still reads as a measured 0, not a missing one
        for xi, vi in zip(np.asarray(x)[ok], v[ok]):
            ax.annotate(f"{vi:.2f}", (xi, 0), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=5.5, rotation=90, color="k" if hatch or vi < 0.15 else "white")


def plot_report(reports: Any, *, metrics: Sequence[str] = RATE_METRICS, labels: Sequence[str] | None = None,
                axes: Any = None) -> Any:
    """Draw edit reports (`factscope.probes.EditReport`): metric bars with 95% CIs, editors side by side.

    Left: success rates after the edit (one colour per report), with the unedited model's rates as
    hatched bars (from the first report: every report should score the same requests for the
    comparison to be fair). Then the side effects: neighbourhood KL(post ‖ pre), and the change in
    fluency (generation entropy, post − pre; negative means more repetitive text).
    Metrics with no data (e.g. portability without portability prompts) are left out.

    Args:
        reports: an `EditReport` or a sequence of them (e.g. ROME, MEMIT, KN on the same requests).
        metrics: the rate metrics of the left panel (`RATE_METRICS`; any of `factscope.probes.METRICS` or "S").
        labels: legend names; default ``None``: each report's ``method``.
        axes: three matplotlib axes to draw into (default ``None``: a new figure).

    Returns:
        The matplotlib Figure.

    Cost: each report's `EditReport.summary` (bootstrap CIs: O(n_boot · requests) per report), then
    drawing (matplotlib only; no model passes).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    reps = [reports] if not isinstance(reports, (list, tuple)) else list(reports)
    if not reps:
        raise ValueError("expected at least one EditReport, got none")
    labels = [r.method for r in reps] if labels is None else list(labels)
    if len(labels) != len(reps):
        raise ValueError(f"expected one label per report, got {len(labels)} labels for {len(reps)} reports")
    sums = [r.summary() for r in reps]
    mets = [m for m in metrics if any(s.loc[m, "n"] > 0 for s in sums)]
    if axes is None:
        fig, axs = plt.subplots(1, 3, figsize=(8.2, 2.9), constrained_layout=True,
                                gridspec_kw={"width_ratios": [max(len(mets), 1), 1.3, 1.3]})
    else:
        axs = list(axes)
        fig = axs[0].figure
    k = len(reps) + 1
    w = 0.8 / k
    x = np.arange(len(mets))
    s0 = sums[0]
    _bars(axs[0], x - 0.4 + w / 2, s0.loc[mets, "pre"], s0.loc[mets, "pre_lo"], s0.loc[mets, "pre_hi"], "#969696", w,
          "unedited", hatch="////", annotate=True)
    for j, (s, lab) in enumerate(zip(sums, labels)):
        _bars(axs[0], x - 0.4 + w * (j + 1.5), s.loc[mets, "post"], s.loc[mets, "post_lo"], s.loc[mets, "post_hi"],
              _PALETTE[j % len(_PALETTE)], w, lab, annotate=True)
    axs[0].set_xticks(x, [_LABELS.get(m, m) for m in mets], fontsize=7)
    axs[0].set_ylim(0, 1.05)
    axs[0].set_ylabel("rate", fontsize=8)
    axs[0].set_title("Edit success and specificity (95% CI over requests)", fontsize=9)
    axs[0].legend(fontsize=7, frameon=False, ncol=min(k, 4), loc="upper center", bbox_to_anchor=(0.5, -0.13))
    for ax, (m, c) in zip(axs[1:], (("neighbourhood_kl", "post"), ("fluency", "delta"))):
        for j, (s, lab) in enumerate(zip(sums, labels)):
            _bars(ax, [j], [s.loc[m, c]], [s.loc[m, f"{c}_lo"]], [s.loc[m, f"{c}_hi"]], _PALETTE[j % len(_PALETTE)],
                  0.7, lab)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(range(len(reps)), labels, fontsize=7, rotation=30 if len(reps) > 2 else 0)
        ax.set_title(_LABELS[m], fontsize=9)
    for a in axs:
        a.tick_params(labelsize=7)
        a.spines[["top", "right"]].set_visible(False)
    n = len(reps[0].requests)
    fig.suptitle(f"Edit evaluation: {n} request{'s' if n != 1 else ''} "
                 f"({', '.join(labels)})", fontsize=9)
    return fig
