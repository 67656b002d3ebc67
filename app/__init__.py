"""factscope.app: the application layer, above the library.

- `factscope.app.cli`: the ``factscope`` command (``trace``, ``edit``, ``evaluate``, ``demo``, ``info`` ...).
- `factscope.app.demo`: ``factscope demo``, the main job end to end on the bundled model, written as one
  offline HTML report.

Imports run one way: core (``factscope``) <- ``locate`` <- ``edit`` <- ``probes`` <- ``figures`` <- ``app``.
Nothing in the library imports this package; it is where programs that *use* the library live.
"""
