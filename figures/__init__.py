"""factscope.figures: tracing heatmaps, layer profiles, spillover plots, circuitsvis views.

- `plot_trace`: ROME-style heatmaps of a `TraceResult` (one panel per kind).
- `plot_profile`: layer profiles per token bucket with 95% CI bands.
- `save_figure`: PNG/SVG/PDF output.
- `plot_neurons`: knowledge-neuron attribution by layer, selected neurons marked.
- `neurons_html`: a circuitsvis view of the neurons' activations, written as an offline HTML file.
- `plot_spillover`: spillover against key similarity (whitened and raw) per category, the stay fit
  with its bootstrap band.
- `plot_localization`: tracing effect against edit score per layer, per-layer means with CIs, R² bars.
- `plot_locality_predictors`: R² of edit locality (NS, KL, flips) per predictor set with bootstrap CIs,
  and NS against key specificity per layer.
- `plot_report`: edit-evaluation metrics with 95% CIs, editors side by side.
- `write_report` / `render_report`: one self-contained offline HTML page of `Section` s holding
  `Figure`, `Table`, `Text` and `Html` (circuitsvis) blocks; `remote_urls` checks it loads nothing remote.
"""

from factscope.figures.html import Figure, Html, Section, Table, Text, remote_urls, render_report, write_report
from factscope.figures.locality_plots import plot_locality_predictors
from factscope.figures.localization_plots import plot_localization
from factscope.figures.neuron_plots import neurons_html, plot_neurons
from factscope.figures.profile_plots import plot_profile
from factscope.figures.report_plots import plot_report
from factscope.figures.spillover_plots import plot_spillover
from factscope.figures.trace_plots import CMAPS, plot_trace, save_figure

__all__ = ["plot_trace", "plot_profile", "plot_report", "plot_spillover", "plot_localization",
           "plot_locality_predictors", "plot_neurons", "neurons_html", "save_figure", "CMAPS",
           "write_report", "render_report", "remote_urls", "Section", "Figure", "Table", "Text", "Html"]
