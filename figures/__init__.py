"""factscope.figures: tracing heatmaps, layer profiles, spillover plots, circuitsvis views.

- `plot_trace`: ROME-style heatmaps of a `TraceResult` (one panel per kind).
- `save_figure`: PNG/SVG/PDF output.
- Planned (issues 3, 5 and 7): `plot_profile`, `plot_neurons`, `neurons_html`.
"""

from factscope.figures.tracing import CMAPS, plot_trace, save_figure

__all__ = ["plot_trace", "save_figure", "CMAPS"]
