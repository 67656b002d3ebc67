"""factscope.figures: tracing heatmaps, layer profiles, spillover plots, circuitsvis views.

Planned (issues 3, 5 and 7): `plot_trace`, `plot_profile`, `plot_neurons`, `neurons_html`.
"""

__all__: list[str] = []
