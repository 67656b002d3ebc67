"""factscope: locate-then-edit study of factual knowledge in language models.

Core (this package): models, fact records, tokenisation, the architecture adapter, the cache, result
files (`save_result` / `load_result`: how every result is saved and checked).
Sub-packages: `factscope.locate` (causal tracing, knowledge neurons), `factscope.edit` (ROME,
MEMIT, KN, fine-tuning, AlphaEdit), `factscope.probes` (edit evaluation, locality tests) and
`factscope.figures`.

Quickstart::

    import factscope as fs
    model = fs.load_model()                      # Gemma 3 270M, offline, from a PyPI package
    fact = fs.Fact("The {} is in downtown", "Space Needle", "Seattle")
    fs.predict(model, [fact.text])               # top-k next tokens per prompt
    fs.subject_span(model, fact)                 # (start, end) token span of the subject

Dimension names used in shape annotations across the package:
``batch`` prompts, ``pos`` token positions (BOS included), ``layer`` blocks, ``d_model`` residual
width, ``d_mlp`` MLP hidden width (ROME's keys, KN's neurons), ``d_vocab`` vocabulary.
"""

from factscope.arch import Arch, UnsupportedArchitectureError, arch_of
from factscope.cache import cache_dir
from factscope.datasets import (
    DatasetNotAvailableError,
    FactGroup,
    builtin_fact,
    builtin_facts,
    builtin_groups,
    calibration_split,
    load_counterfact,
    load_known,
    load_zsre,
)
from factscope.facts import EditRequest, Fact
from factscope.models import (
    DEFAULT_MODEL,
    ModelInfo,
    ModelNotAvailableError,
    fingerprint,
    load_model,
    model_info,
    tiny_model,
)
from factscope.predict import Prediction, predict
from factscope.result_files import MissingResultFileError, ResultFileError, load_result, save_result
from factscope.synthetic import synthetic_requests
from factscope.tokens import ContextLengthError, encode, encode_batch, str_tokens, subject_span, target_ids
from factscope.versions import library_versions

__version__ = "0.1.0"

__all__ = [
    # models
    "DEFAULT_MODEL", "load_model", "tiny_model", "model_info", "ModelInfo", "fingerprint",
    "ModelNotAvailableError",
    # architecture
    "Arch", "arch_of", "UnsupportedArchitectureError",
    # facts and datasets
    "Fact", "EditRequest", "FactGroup", "builtin_facts", "builtin_fact", "builtin_groups", "calibration_split",
    "load_counterfact", "load_zsre", "load_known", "DatasetNotAvailableError", "synthetic_requests",
    # tokens and predictions
    "encode", "encode_batch", "target_ids", "subject_span", "str_tokens", "predict", "Prediction",
    # cache, result files and versions
    "cache_dir", "save_result", "load_result", "ResultFileError", "MissingResultFileError", "library_versions",
    "ContextLengthError",
    # cache and versions
    "cache_dir", "library_versions",
]
