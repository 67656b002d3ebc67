"""Knowledge-neuron figures: attribution by layer with the selected neurons marked, and a circuitsvis view.

`plot_neurons` draws, per layer, the largest and the summed attribution of its neurons (one thin
line per prompt, a thick line for their mean), and marks each selected neuron at its layer and
score. `neurons_html` writes an offline HTML file in which each prompt's tokens are coloured by the
selected neurons' activations (circuitsvis ``colored_tokens_multi``, one button per neuron).
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

__all__ = ["plot_neurons", "neurons_html"]

_REDUCE_TITLES = {"max": "largest attribution in the layer", "sum": "summed attribution of the layer"}


def plot_neurons(result: Any, *, reduce: str = "both", axes: Any = None) -> Any:
    """Draw a `NeuronResult`: attribution against layer, selected neurons marked.

    Args:
        result: a `factscope.locate.NeuronResult`.
        reduce: ``"max"``, ``"sum"`` or ``"both"`` (two panels).
        axes: axes to draw into (one per panel); a new figure when ``None``.

    Returns:
        The matplotlib Figure.

    Cost: one matplotlib figure, no model passes (measured times: docs/guide.md).
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    kinds = ["max", "sum"] if reduce == "both" else [reduce]
    if any(k not in _REDUCE_TITLES for k in kinds):
        raise ValueError(f"expected reduce to be 'max', 'sum' or 'both', got {reduce!r}")
    if axes is None:
        fig, axs = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.4), squeeze=False, constrained_layout=True)
        axs = list(axs[0])
    else:
        axs = list(np.atleast_1d(axes))
        fig = axs[0].figure
    x = np.arange(result.n_layers)
    for a, k in zip(axs, kinds):
        per = result.per_layer(k).numpy()  # [prompt, layer], NaN where not attributed
        for row in per:
            a.plot(x, row, color="#9ecae1", lw=0.8, alpha=0.9)
        a.plot(x, np.nanmean(per, 0) if per.size else per, color="#08306b", lw=1.8,
               label=f"mean over {per.shape[0]} prompts")
        if k == "max":
            for l, i, s in result.neurons:
                a.scatter([l], [s], marker="*", s=90, color="#a50f15", zorder=3)
                a.annotate(f"{l}.{i}", (l, s), xytext=(4, 3), textcoords="offset points", fontsize=7, color="#a50f15")
        else:
            for l in sorted({l for l, _, _ in result.neurons}):
                a.axvline(l, color="#a50f15", lw=0.8, ls="--")
        a.axhline(0, color="k", lw=0.5)
        a.set_title(_REDUCE_TITLES[k], fontsize=9)
        a.set_xlabel("layer", fontsize=8)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.tick_params(labelsize=7)
    axs[0].set_ylabel(f"IG attribution to p({result.answer.strip()})", fontsize=8)
    axs[0].scatter([], [], marker="*", color="#a50f15", label="selected neuron (layer.index, mean score)")
    axs[0].legend(fontsize=7, frameon=False, loc="upper left")
    s = result.settings
    fig.suptitle(f"Knowledge neurons of {result.prompts[0]!r} → {result.answer.strip()}: {len(result.neurons)} "
                 f"selected (threshold {s['threshold']}, refined at p={s['refine_used']:g}, {s['steps']} IG steps)",
                 fontsize=9)
    return fig


def neurons_html(result: Any, path: str | Path | None = None) -> Any:
    """A circuitsvis view of the selected neurons' activations on every prompt, written offline.

    Each prompt is one ``colored_tokens_multi`` panel: its tokens coloured by the clean activation of
    the chosen neuron (one button per neuron, ``L{layer}.{index}``). With ``path``, the page is
    written with circuitsvis' JavaScript inlined once (``local_src``), so it opens without network.

    Args:
        result: a `factscope.locate.NeuronResult` with selected neurons (its ``activations``,
            ``[pos, neuron]`` per prompt).
        path: the HTML file to write (default ``None``: nothing is written).

    Returns:
        A circuitsvis ``RenderedHTML`` that renders inline in a notebook.

    Cost: no model passes; the page is the inlined circuitsvis JavaScript bundle (once; its size is
    in docs/guide.md) plus O(prompts · tokens · neurons) activations, written atomically.

    Raises:
        ValueError: the result has no selected neurons.
    """
    from circuitsvis.tokens import colored_tokens_multi
    from circuitsvis.utils.render import RenderedHTML

    if not result.neurons:
        raise ValueError("the result has no selected neurons, so there is nothing to show "
                         f"({result.settings.get('refine_note', '')})")
    labels = [f"L{l}.{i}" for l, i, _ in result.neurons]
    heads, views = [], []
    for k, (prompt, toks, acts) in enumerate(zip(result.prompts, result.tokens, result.activations)):
        heads.append(f"<h4 style='font-family:sans-serif'>{html.escape(prompt)} → {html.escape(result.answer.strip())} "
                     f"<small>(p = {float(result.p_clean[k]):.3f})</small></h4>")
        views.append(colored_tokens_multi(list(toks), acts.float(), labels))
    title = (f"<h3 style='font-family:sans-serif'>Knowledge neurons of {html.escape(result.prompts[0])} → "
             f"{html.escape(result.answer.strip())}: {', '.join(labels)}</h3>")
    out = RenderedHTML(title + _one_bundle(heads, [v.local_src for v in views]),
                       title + "".join(h + _closed_div(v.cdn_src) for h, v in zip(heads, views)))
    if path is not None:
        from factscope.cache import atomic_file

        path = Path(path)
        with atomic_file(path) as tmp:
            tmp.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>knowledge neurons</title></head>"
                           "<body>" + out.local_src + "</body></html>", encoding="utf-8")
    return out


_RENDER = "CircuitsVis.render("
_SELF_CLOSED_DIV = re.compile(r"<div([^<>]*?)\s*/>")


def _closed_div(src: str) -> str:
    """``<div id=... />`` → ``<div id=...></div>``: HTML has no self-closing ``div``, so a browser reads circuitsvis'
    ``<div .../>`` as an open tag, nests everything after it inside, and the first panel's render wipes the rest."""
    return _SELF_CLOSED_DIV.sub(r"<div\1></div>", src)


def _one_bundle(heads: list[str], srcs: list[str]) -> str:
    """Several circuitsvis ``local_src`` panels sharing one inlined JavaScript bundle (once, not one per panel).

    Each ``local_src`` is ``<div id=.../>`` + ``<script type="module">`` bundle + ``CircuitsVis.render(...)``
    + ``</script>``; the bundle's names are module-scoped, so the render calls go into the first script.
    Falls back to plain concatenation when a panel does not look like that.
    """
    srcs = [_closed_div(s) for s in srcs]
    parts = []
    for s in srcs:
        nl, call, end = s.find("\n"), s.rfind(_RENDER), s.rfind("</script>")
        if not (0 < nl < call < end) or not s.startswith("<div"):
            return "".join(h + s for h, s in zip(heads, srcs))
        parts.append((s[:nl], s[call:end]))
    first = srcs[0]
    bundle = first[first.find("\n"):first.rfind(_RENDER)]
    return ("".join(h + div for h, (div, _) in zip(heads, parts)) + bundle
            + "".join(call for _, call in parts) + "</script>")
