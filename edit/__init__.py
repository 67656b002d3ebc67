"""factscope.edit: rewrite a fact. ROME, MEMIT, knowledge-neuron edits, FT-L and AlphaEdit.

Planned (issues 4 to 6): `covariance`, `rome`, `memit`, `kn`, `finetune`, `alphaedit`, `Edit`.
"""

__all__: list[str] = []
