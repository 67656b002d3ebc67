"""factscope.figures: tracing heatmaps, layer profiles, spillover plots, circuitsvis views.

- `plot_trace`: ROME-style heatmaps of a `TraceResult` (one panel per kind).
- `plot_profile`: layer profiles per token bucket with 95% CI bands.
- `save_figure`: PNG/SVG/PDF output.
- Planned (issues 5 and 7): `plot_neurons`, `neurons_html`, spillover plots.
"""

from factscope.figures.profile import plot_profile
from factscope.figures.tracing import CMAPS, plot_trace, save_figure

__all__ = ["plot_trace", "plot_profile", "save_figure", "CMAPS"]
