"""factscope.app: the application layer, above the library.

- `factscope.app.cli`: the ``factscope`` command (``trace``, ``edit``, ``evaluate``, ``demo``, ``info`` ...).
- `factscope.app.demo`: ``factscope demo``, the main job end to end on the bundled model, written as one
  offline HTML report.
- `factscope.app.tables`: the tables both print (answers, before/after, report and spillover cells).
- `factscope.app.request_files`: edit requests read from JSON files (CounterFact's format or ours).
- `factscope.app.defaults`: the worked example they default to, and the demo's sizes.

Imports run one way: core (``factscope``) <- ``locate`` <- ``edit`` <- ``probes`` <- ``figures`` <- ``app``.
Nothing in the library imports this package; it is where programs that *use* the library live.
"""
