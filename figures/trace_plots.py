"""Causal-tracing heatmaps in the style of ROME's Figure 1.

Tokens run down the y axis (subject tokens starred), layers along the x axis, colour is p(answer)
with the cell restored. The colour scale starts at the corrupted score, so any colour at all is
recovery. Purples: hidden states; Greens: MLP; Reds: attention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_trace", "save_figure", "CMAPS"]

CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
"""Matplotlib colour map per traced kind, as in ROME's Figure 1."""
_TITLES = {"hidden": "Restore hidden state", "mlp": "Restore MLP output", "attn": "Restore attention output"}


def _labels(result: Any) -> list[str]:
    s0, s1 = result.subject
    out = []
    for i, tok in enumerate(result.tokens):
        text = tok.replace("\n", "\\n") or "␣"
        text = text if text.strip() else repr(text)
        out.append(f"{text.strip() if text.strip() else text}*" if s0 <= i < s1 else text.strip() or text)
    return out


def plot_trace(result: Any, kind: str | None = None, *, ax: Any = None, axes: Sequence[Any] | None = None) -> Any:
    """Draw a `TraceResult` as ROME-style heatmaps: one for ``kind``, or one panel per kind.

    Tokens down the y axis (subject starred), layers along x, colour p(answer) from the corrupted
    score up (`CMAPS`).

    Args:
        result: a `factscope.locate.TraceResult` (``scores[kind]`` ``[tok, layer]``).
        kind: one kind to draw; ``None`` (default) draws every kind in the result.
        ax: the axes for a single kind (default ``None``: a new figure).
        axes: axes for several kinds, one per kind (default ``None``: a new figure).

    Returns:
        The matplotlib Figure.

    Cost: one matplotlib figure, no model passes (measured times: docs/guide.md).
    """
    import matplotlib.pyplot as plt

    kinds = list(result.kinds) if kind is None else [kind]
    if any(k not in result.scores for k in kinds):
        raise ValueError(f"expected a kind among {list(result.kinds)}, got {kind!r}")
    n_tok = len(result.tokens)
    if axes is None and ax is None:
        fig, axs = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds) + 0.6, 0.32 * n_tok + 1.6),
                                squeeze=False, constrained_layout=True)
        axs = list(axs[0])
    else:
        axs = [ax] if ax is not None else list(axes)
        fig = axs[0].figure
    labels = _labels(result)
    for i, (k, a) in enumerate(zip(kinds, axs)):
        sc = result.scores[k].numpy()
        vmax = max(float(sc.max()), result.clean)
        im = a.pcolormesh(sc, cmap=CMAPS[k], vmin=result.corrupted, vmax=vmax, shading="flat")
        a.invert_yaxis()
        a.set_yticks([t + 0.5 for t in range(n_tok)])
        a.set_yticklabels(labels if i == 0 else [], fontsize=8)
        n_layers = sc.shape[1]
        step = max(1, n_layers // 6)
        a.set_xticks([l + 0.5 for l in range(0, n_layers, step)])
        a.set_xticklabels([str(l) for l in range(0, n_layers, step)], fontsize=8)
        window = result.settings.get("window")
        suffix = f" (window {window})" if k != "hidden" and window else ""
        a.set_title(_TITLES[k] + suffix, fontsize=9)
        a.set_xlabel("layer", fontsize=8)
        cb = fig.colorbar(im, ax=a, fraction=0.06, pad=0.02)
        cb.ax.tick_params(labelsize=7)
        cb.set_label(_metric_label(result), fontsize=8)  # every panel has its own scale, so each is labelled
    fig.suptitle(f"{result.prompt} → {result.answer.strip()}   (clean p={result.clean:.2f}, corrupted "
                 f"p={result.corrupted:.2f}; * subject)", fontsize=9)
    return fig


def _metric_label(result: Any) -> str:
    """The colour bar's label: ``p(answer)``, or the logit difference against the contrast token."""
    ans = result.answer.strip()
    if result.settings.get("metric") == "logit_diff":
        return f"logit({ans}) − logit({(result.settings.get('contrast') or '').strip()})"
    return f"p({ans})"


def save_figure(fig: Any, path: str | Path, formats: Sequence[str] | None = None) -> list[Path]:
    """Save a figure to ``path``; with ``formats`` (e.g. ``("png", "svg", "pdf")``) to each suffix.

    Args:
        fig: a matplotlib Figure.
        path: the file to write; its folder is created. With ``formats`` its suffix is replaced.
        formats: suffixes to write (default ``None``: just ``path``). PNGs are written at 200 dpi.

    Returns:
        The written paths.

    Cost: one matplotlib render per format, O(tokens · layers) cells per panel; no model passes
    (measured times: docs/guide.md).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [path] if not formats else [path.with_suffix("." + f.lstrip(".")) for f in formats]
    for p in targets:
        fig.savefig(p, dpi=200, bbox_inches="tight")
    return targets
