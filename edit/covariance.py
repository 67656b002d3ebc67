"""Key statistics for ROME-style edits: the uncentred second moment C = E[k kᵀ] of MLP keys.

``covariance(model, layer)`` returns C at one layer; ``covariances(model, layers)`` several layers
from the same forward passes. k is the input to the MLP's output projection (hook kind
``"mlp_key"``, see `factscope.arch`): ``act(gate) * up`` on Llama and Gemma, ``gelu(fc)`` on GPT-2.
C is *not* centred (ROME's update ``W += Λ (C⁻¹k*)ᵀ`` needs E[kkᵀ], not the covariance of k), and it
is accumulated in float64 and returned as a float64 ``[d_mlp, d_mlp]`` tensor on the CPU.

Which tokens count
------------------
Every corpus is cut into *windows* of at most ``seq_len`` tokens, each starting with BOS (see
`factscope.tokens`; a tokenizer without BOS gets none). A key is counted at every position except
BOS (the attention sink: the same token and context in every window, so its keys are atypical
outliers that would dominate C, and an edit never sits there) and padding (batches are
right-padded with an attention mask). Counting stops at exactly
``n_tokens`` keys; a corpus that runs out earlier gives a warning and C over what there was.

Corpora (``corpus=``)
---------------------
``"model"``
    Text sampled from the model itself, from BOS, at temperature 1, seeded (`sample_corpus`):
    ``ceil(n_tokens / (seq_len - 1))`` sequences of ``seq_len`` tokens. Sampling inverts the
    float64 CDF of the softmax with one uniform draw per row from a `torch.Generator` seeded with
    ``seed`` (exact categorical sampling; ``torch.multinomial`` draws one exponential per vocabulary
    entry, and cost a third of the sampler's time on Gemma's 262k vocabulary). The tokenizer's
    special tokens (BOS, EOS, PAD, ...) are never drawn, so no sequence ends early. The global RNG
    is never touched. The ids are cached (see below), so every layer and statistic reuses the same
    text. This is the offline default.
``"auto"`` (default)
    ``"wikitext-103"`` when the Hugging Face hub is reachable, else ``"model"`` with a one-line
    notice on stderr. ``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``) counts as offline; otherwise
    a TCP probe with a 3 s limit decides.
a dataset name
    Streamed with ``datasets.load_dataset(name, config, split=split, streaming=True)``; the text is the
    ``"text"`` column, empty rows skipped. Write ``"name:config"`` for a config; ``"wikitext-103"`` and
    ``"wikitext-2"`` stand for ``Salesforce/wikitext`` with their ``-raw-v1`` configs. Offline, this
    raises `DatasetNotAvailableError` at once (a statistic already in the cache is still found).
a path (``str`` or ``Path``) to a UTF-8 text file
    Split into *paragraphs* at blank lines (one or more empty or whitespace-only lines); a file
    without blank lines is one document. Each paragraph is tokenised as ``[bos] + tokens(text)`` and
    cut into windows of ``seq_len`` tokens, each continuation window getting its own BOS in front.
an iterable of strings
    Each string is a document, handled like a paragraph. It is consumed lazily, only as far as
    ``n_tokens`` needs.

Cache
-----
Statistics are cached under ``cache_dir("stats")`` (``$FACTSCOPE_CACHE/stats``), one file per layer::

    stats/mom2-<fingerprint>-L<layer>-<digest>.safetensors     tensor "mom2", float64 [d_mlp, d_mlp]
    stats/samples/<fingerprint>-<digest>.safetensors           tensor "ids", int32 [seq, pos]

``<fingerprint>`` is `factscope.models.fingerprint` (architecture, config, current weights: an edited
model gets new statistics) and ``<digest>`` hashes the key: for statistics the layer and hook, the
corpus identity, ``n_tokens``, ``seq_len``, the model's dtype and the accumulation dtype; the corpus
identity is the sampler's settings and seed for ``"model"``, the sha256 of the file's bytes for a
file, the sha256 of the texts actually consumed for an iterable, and name/config/split for a
dataset (plus the tokenizer's class, size and BOS for text). Sampled ids are keyed by fingerprint,
seed, ``seq_len``, ``n_tokens``, the sampler's batch size (the draws depend on it), the sampler
version and the device type. ``batch_size`` of the statistics' forwards is not part of the key: it
changes C only by float32 rounding (padding and batch shape change the kernels' summation order).

Every file is a result file (`factscope.result_files`: the safetensors file and its JSON sidecar,
each holding the other's SHA-256) whose meta holds ``key`` (the JSON key) and ``tokens`` (keys
counted). Both are written to a temporary name and renamed into place, the sidecar last, so readers,
and several processes computing the same statistic at once, never see a partial file (a tensor file
without its sidecar yet counts as a miss; both compute it; the last rename wins, with identical
contents). A file that cannot be read, was modified, has the wrong shape or dtype, holds non-finite
values or whose key does not match is reported with a warning and recomputed, never used.
``cache=False`` bypasses the cache both ways.

Cost
----
- Memory: one ``d_mlp²`` float64 accumulator per layer. Sampling holds up to
  ``sample_batch_size × seq_len`` tokens of KV cache and per step a ``[rows, d_vocab]`` float64
  CDF plus two float32 copies. The statistics forward holds a few ``batch_size × seq_len × d_mlp``
  float32 activations.
- Sampling is the expensive part: every token passes all blocks *and* the unembedding (on a
  large-vocabulary model such as Gemma 3 the unembedding costs more than the blocks), one position
  at a time; each decoding step has a large fixed cost, so decoding many rows at once is cheaper per
  token. This is paid once per (model, seed, n_tokens, seq_len).
- Statistics: a forward only up to the layer (``stop_at_layer``; the unembedding is skipped), plus
  an O(d_mlp²) float64 rank update per token and layer; several layers share one forward to the
  deepest.
- Measured throughputs (``benchmarks/bench_covariance.py``): docs/guide.md, "Measured costs of the editors".

``DEFAULT_N_TOKENS = 16384`` is 8 × d_mlp on Gemma 3 270M (d_mlp = 2048): n/d = 8. By the
Marchenko-Pastur law the sample second moment of white keys at n/d = 8 has its eigenvalues within
(1 ± 1/√8)² ≈ [0.42, 1.83] of the truth: every direction is estimated (full rank, condition number
inflated at most ~4×), while 4096 tokens (n/d = 2) would shrink the smallest to (1 − 1/√2)² ≈ 0.09
and fewer than 2048 leave C singular. Doubling n_tokens doubles the first-time cost; pass more (or
use a text corpus, where only the cheap statistics forward is paid) when the time is there. ROME's
reference used ~100k Wikipedia texts.

Dimension names: ``seq`` sequences, ``pos`` positions (BOS included), ``d_mlp`` key dimensions.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from factscope.arch import arch_of, context_of
from factscope.bridge import Bridge
from factscope.cache import cache_dir, key_digest
from factscope.checks import check_int
from factscope.kv import run_cached
from factscope.result_files import MissingResultFileError, ResultFileError, load_result, plain_json, save_result
from factscope.tokens import encode, tokenizer_of

__all__ = ["DEFAULT_N_TOKENS", "covariance", "covariances", "sample_corpus"]

DEFAULT_N_TOKENS = 16384
"""Keys counted per statistic: 8 × d_mlp on Gemma 3 270M (the module docstring says why)."""
DEFAULT_SEQ_LEN = 128
DEFAULT_BATCH_SIZE = 32
DEFAULT_SAMPLE_BATCH_SIZE = 256
AUTO_DATASET = "wikitext-103"
_DATASET_ALIASES: dict[str, tuple[str, str]] = {
    "wikitext-103": ("Salesforce/wikitext", "wikitext-103-raw-v1"),
    "wikitext-2": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
}
_SAMPLER = "inverse-cdf-t1-no-special-v1"
_STAT_FORMAT = "factscope-mom2-v1"
_IDS_FORMAT = "factscope-samples-v1"


# --------------------------------------------------------------------------- checks


def _check_seq_len(model: Bridge, seq_len: Any) -> int:
    check_int("seq_len", seq_len, 2)
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(n_ctx, int) and seq_len > n_ctx:
        raise ValueError(f"expected seq_len <= {n_ctx} (the model's context length), got {seq_len}")
    return seq_len


def _device(model: Bridge) -> torch.device:
    return context_of(model).device


def _model_dtype(model: Bridge) -> str:
    return str(context_of(model).dtype).removeprefix("torch.")


def _offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0", "false", "False") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_online() -> bool:
    from factscope import models

    return not _offline() and models.hub_reachable()


_ANNOUNCED: set[str] = set()  # notices already printed in this process


def _notice(msg: str) -> None:
    """Print ``msg`` to stderr once per process (an editor asks for C on every edit)."""
    from factscope.models import notice

    if msg not in _ANNOUNCED:
        _ANNOUNCED.add(msg)
        notice(msg)


# --------------------------------------------------------------------------- checked cache files


def _save(path: Path, name: str, t: Tensor, key: dict[str, Any], fmt: str, tokens: int) -> None:
    """Write ``{name: t}`` as a result file of kind ``fmt``, its key and token count in the meta."""
    save_result(path, kind=fmt, version=1, tensors={name: t}, meta={"key": key, "tokens": tokens})


def _load(path: Path, name: str, key: dict[str, Any], fmt: str, shape: Callable[[tuple[int, ...]], bool],
          dtype: torch.dtype) -> tuple[Tensor, int] | None:
    """The tensor and token count of a valid cache file; ``None`` (with a warning if it exists but is bad)."""
    try:
        tensors, meta = load_result(path, kind=fmt, version=1)
    except MissingResultFileError:  # absent, or its sidecar not written yet (a writer at work, a crash): a miss
        return None
    except (ResultFileError, OSError) as e:
        return _damaged(path, f"{type(e).__name__}: {e}")
    t, tokens = tensors.get(name), meta.get("tokens")
    if meta.get("key") != plain_json(key, "key"):
        return _damaged(path, "its key does not match the statistic asked for")
    if t is None or t.dtype != dtype or not shape(tuple(t.shape)):
        found = None if t is None else f"{t.dtype} {tuple(t.shape)}"
        return _damaged(path, f"expected a tensor {name!r} of {dtype} of the statistic's shape, found {found}")
    if type(tokens) is not int or tokens < 1:
        return _damaged(path, f"expected a positive token count, found {tokens!r}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        return _damaged(path, f"{int((~torch.isfinite(t)).sum())} non-finite values")
    return t, tokens


def _damaged(path: Path, why: str) -> None:
    warnings.warn(f"factscope: ignoring the damaged cache file {path} ({why}); recomputing it", stacklevel=4)


# --------------------------------------------------------------------------- sampling from the model


@torch.no_grad()
def _draw(logits: Float[Tensor, "batch vocab"], banned: Tensor, g: torch.Generator) -> Int[Tensor, " batch"]:
    """One token per row from softmax(logits) (temperature 1, ``banned`` ids excluded), by CDF inversion."""
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("expected finite logits while sampling from the model, got NaN or inf")
    x = logits.float()
    p = (x - x.max(-1, keepdim=True).values).exp_()
    if banned.numel():
        p[:, banned] = 0.0
    cdf = p.cumsum(-1, dtype=torch.float64)  # [batch, vocab]
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=g, dtype=torch.float64, device=total.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # r * total may round up to total
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_max_(cdf.shape[-1] - 1)


def _row_batches(rows: int, batch_size: int) -> list[int]:
    """Split ``rows`` into as few batches of at most ``batch_size`` as possible, balanced in size."""
    n = math.ceil(rows / batch_size)
    return [rows // n + (1 if i < rows % n else 0) for i in range(n)]


@torch.no_grad()
def _sample(model: Bridge, rows: int, seq_len: int, batch_size: int, seed: int, progress: bool) -> Int[Tensor, "seq pos"]:
    tok = tokenizer_of(model)
    if tok.bos_token_id is None:
        raise ValueError("expected a tokenizer with a BOS token to start sampling from, got one without")
    dev = _device(model)
    banned = torch.tensor(sorted({int(i) for i in tok.all_special_ids if i is not None}), dtype=torch.long, device=dev)
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    out = torch.empty(rows, seq_len, dtype=torch.long)
    row = 0
    bar = tqdm(total=rows * (seq_len - 1), unit="tok", desc="sampling from the model", disable=not progress)
    for b in _row_batches(rows, batch_size):
        x = torch.full((b, 1), int(tok.bos_token_id), dtype=torch.long, device=dev)
        cols, cache = [x], None
        for _ in range(seq_len - 1):
            logits, cache = run_cached(model, x, cache, logits_to_keep=1)
            x = _draw(logits[:, -1], banned, g)[:, None]
            cols.append(x)
            bar.update(b)
        del cache
        out[row:row + b] = torch.cat(cols, 1).cpu()
        row += b
    bar.close()
    return out


def _samples_key(model: Bridge, fp: str, n_tokens: int, seq_len: int, batch_size: int, seed: int) -> dict[str, Any]:
    return {"kind": "samples", "model": fp, "model_dtype": _model_dtype(model), "n_tokens": n_tokens,
            "seq_len": seq_len, "batch_size": batch_size, "seed": seed, "sampler": _SAMPLER,
            "device": _device(model).type}


def sample_corpus(
    model: Bridge,
    n_tokens: int = DEFAULT_N_TOKENS,
    *,
    seq_len: int = DEFAULT_SEQ_LEN,
    batch_size: int = DEFAULT_SAMPLE_BATCH_SIZE,
    seed: int = 0,
    progress: bool = True,
    cache: bool = True,
) -> Int[Tensor, "seq pos"]:
    """Token ids sampled from the model from BOS at temperature 1: the ``"model"`` corpus.

    Args:
        model: a bridge (`factscope.load_model`).
        n_tokens: tokens wanted after BOS; ``ceil(n_tokens / (seq_len - 1))`` rows are drawn, so the
            last row may run past ``n_tokens`` (`covariance` counts only the first ``n_tokens``).
        seq_len: tokens per row, BOS included.
        batch_size: rows decoded together (larger is faster per token; the draws depend on it, so
            it is part of the cache key). Rows are split into balanced batches.
        seed: seeds a private `torch.Generator`; the global RNG is not touched.
        progress: show a tqdm bar.
        cache: read and write ``cache_dir("stats", "samples")`` (see the module docstring).

    Returns:
        ``[seq, pos]`` int64 ids on the CPU, column 0 = BOS; no special token after it.

    Cost: one decoding step over the batch per position, each through every block and the
    unembedding; cached after (measured throughput: docs/guide.md, "Measured costs of the editors").
    Memory: the batch's KV cache (``rows × seq_len`` tokens) plus a ``[rows, d_vocab]`` float64 CDF
    per step.
    """
    from factscope.models import fingerprint

    check_int("n_tokens", n_tokens, 1)
    _check_seq_len(model, seq_len)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    rows = math.ceil(n_tokens / (seq_len - 1))
    key = _samples_key(model, fingerprint(model), n_tokens, seq_len, batch_size, seed)
    path = cache_dir("stats", "samples") / f"{key['model']}-{key_digest(key)}.safetensors"
    vocab = int(arch_of(model).d_vocab)
    if cache:
        hit = _load(path, "ids", key, _IDS_FORMAT, lambda s: s == (rows, seq_len), torch.int32)
        if hit is not None:
            if 0 <= int(hit[0].min()) and int(hit[0].max()) < vocab:
                return hit[0].long()
            _damaged(path, f"token ids outside [0, {vocab})")
    ids = _sample(model, rows, seq_len, batch_size, seed, progress)
    if cache:
        _save(path, "ids", ids.to(torch.int32), key, _IDS_FORMAT, rows * (seq_len - 1))
    return ids


# --------------------------------------------------------------------------- corpora


def _tok_identity(model: Bridge) -> str:
    tok = tokenizer_of(model)
    return f"{type(tok).__name__}:{len(tok)}:{tok.bos_token_id}"


def _text_windows(model: Bridge, texts: Iterable[Any], n_tokens: int, seq_len: int,
                  hasher: Any = None) -> list[Tensor]:
    """``[bos] + tokens`` windows of at most ``seq_len`` over ``texts``, ``n_tokens`` non-BOS tokens in all."""
    bos_id = tokenizer_of(model).bos_token_id
    bos = [] if bos_id is None else [int(bos_id)]
    step = seq_len - len(bos)
    windows: list[Tensor] = []
    left = n_tokens
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"expected the corpus to yield strings, got {type(text).__name__} at item {i}")
        if not text.strip():
            continue
        if hasher is not None:
            raw = text.encode("utf-8")
            hasher.update(len(raw).to_bytes(8, "little") + raw)
        body = encode(tokenizer_of(model), text)[len(bos):]  # a document, cut below: longer than n_ctx is fine
        for s in range(0, len(body), step):
            chunk = body[s:s + min(step, left)]
            windows.append(torch.tensor(bos + chunk, dtype=torch.long))
            left -= len(chunk)
            if left == 0:
                return windows
    return windows


def _paragraphs(path: Path, raw: bytes) -> list[str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"expected a UTF-8 text file at {path}, got bytes that are not UTF-8 ({e})") from None
    return [p.strip() for p in re.split(r"\n[ \t\r\f\v]*\n", text) if p.strip()]


def _looks_like_path(s: str) -> bool:
    """Hub ids are ``name``, ``org/name`` or ``name:config``; anything else that looks like a path is one."""
    return s.endswith((".txt", ".text", ".md")) or s.startswith((".", "/", "~")) or s.count("/") > 1 or "\\" in s


def _parse_dataset(name: str) -> tuple[str, str | None]:
    if name in _DATASET_ALIASES:
        return _DATASET_ALIASES[name]
    base, _, config = name.partition(":")
    return base, config or None


def _dataset_texts(name: str, config: str | None, split: str) -> Iterator[str]:
    from factscope.datasets import DatasetNotAvailableError

    shown = name + (f" ({config})" if config else "")
    offline = _offline()
    if not _hub_online():
        raise DatasetNotAvailableError(
            f"expected corpus {name!r} to be 'auto', 'model', a text file or a hub dataset; as a hub dataset "
            f"it cannot be loaded because {'HF_HUB_OFFLINE is set' if offline else 'the hub cannot be reached'}. "
            f"Pass corpus='model' (text sampled from the model), a path to a UTF-8 text file, or a list of strings."
        )
    try:
        import datasets
    except ImportError:
        raise DatasetNotAvailableError(f"loading the hub dataset {shown} needs `pip install datasets`") from None
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:
        raise DatasetNotAvailableError(f"could not load the hub dataset {shown}, split {split!r}: {e}") from e
    for row in ds:
        if "text" not in row:
            raise ValueError(f"expected the dataset {shown} to have a 'text' column, got columns {list(row)}")
        yield row["text"]


def _resolve(model: Bridge, corpus: Any, n_tokens: int, seq_len: int, seed: int, sample_batch_size: int,
             split: str, progress: bool) -> tuple[dict[str, Any], Callable[[], list[Tensor]]]:
    """(corpus identity for the key, a function building the windows)."""
    if isinstance(corpus, str) and corpus == "auto":
        if _hub_online():
            corpus = AUTO_DATASET
        else:
            _notice("corpus='auto': the Hugging Face hub is not reachable (or HF_HUB_OFFLINE is set), so the "
                    "key statistics use text sampled from the model itself (corpus='model')")
            corpus = "model"
    if isinstance(corpus, str) and corpus == "model":
        ident = {"type": "model", "seed": seed, "batch_size": sample_batch_size, "sampler": _SAMPLER,
                 "device": _device(model).type}

        def windows() -> list[Tensor]:
            ids = sample_corpus(model, n_tokens, seq_len=seq_len, batch_size=sample_batch_size, seed=seed,
                                progress=progress)
            out, left = [], n_tokens
            for row in ids:
                take = min(left, seq_len - 1)
                out.append(row[: take + 1])
                left -= take
                if left == 0:
                    break
            return out

        return ident, windows
    if isinstance(corpus, (str, os.PathLike)):
        s = os.fspath(corpus)
        path = Path(s).expanduser()
        if path.is_file():
            raw = path.read_bytes()  # read once: the key and the text come from the same bytes
            ident = {"type": "file", "sha256": hashlib.sha256(raw).hexdigest(), "tokenizer": _tok_identity(model)}
            return ident, lambda: _text_windows(model, _paragraphs(path, raw), n_tokens, seq_len)
        if path.is_dir():
            raise ValueError(f"expected a text file as the corpus, got the folder {path}")
        if isinstance(corpus, os.PathLike) or _looks_like_path(s):
            raise FileNotFoundError(f"expected a UTF-8 text file at {path} as the corpus, found nothing there")
        name, config = _parse_dataset(s)
        ident = {"type": "dataset", "name": name, "config": config, "split": split, "field": "text",
                 "tokenizer": _tok_identity(model)}
        return ident, lambda: _text_windows(model, _dataset_texts(name, config, split), n_tokens, seq_len)
    if isinstance(corpus, (bytes, Mapping, Tensor)) or not isinstance(corpus, Iterable):
        raise TypeError(
            "expected corpus to be 'auto', 'model', a hub dataset name, a path to a UTF-8 text file or an "
            f"iterable of strings, got {type(corpus).__name__}"
        )
    hasher = hashlib.sha256()
    done = _text_windows(model, corpus, n_tokens, seq_len, hasher)  # consumes it once, now
    ident = {"type": "texts", "sha256": hasher.hexdigest(), "tokenizer": _tok_identity(model)}
    return ident, lambda: done


# --------------------------------------------------------------------------- accumulation


class _Done(Exception):
    """Raised from the last requested layer's hook to skip the rest of the forward."""


@torch.no_grad()
def _accumulate(model: Bridge, windows: Sequence[Tensor], layers: Sequence[int], batch_size: int,
                progress: bool) -> tuple[dict[int, Float[Tensor, "d_mlp d_mlp"]], int]:
    """Σ k kᵀ (float64) per layer over every non-BOS, non-pad position, and the count; one forward per batch."""
    a = arch_of(model)
    dev = _device(model)
    has_bos = tokenizer_of(model).bos_token_id is not None
    from factscope.tokens import pad_id

    pad = pad_id(tokenizer_of(model))
    last = max(layers)
    sums = {l: torch.zeros(a.d_mlp, a.d_mlp, dtype=torch.float64, device=dev) for l in layers}
    count = 0
    counted: list[Tensor] = []  # the current batch's [batch, pos] mask of counted positions

    def hook_for(l: int):
        def hook(act: Float[Tensor, "batch pos d_mlp"], hook: Any) -> None:
            k = act[counted[0]].to(torch.float64)  # [n, d_mlp]
            if not bool(torch.isfinite(k).all()):
                bad = int((~torch.isfinite(k)).any(-1).sum())
                raise ValueError(f"expected finite MLP keys at layer {l}, got NaN or inf at {bad} of {k.shape[0]} "
                                 f"positions in this batch (the model's activations overflow on this corpus)")
            sums[l].addmm_(k.T, k)
            if l == last and last == a.n_layers - 1:
                raise _Done  # stop_at_layer cannot skip the unembedding after the final block
        return hook

    fwd = [(a.hook("mlp_key", l), hook_for(l)) for l in layers]
    stop = last + 1 if last + 1 < a.n_layers else None
    total = sum(len(w) - (1 if has_bos else 0) for w in windows)
    bar = tqdm(total=total, unit="tok", desc=f"key statistics, layer{'s' if len(layers) > 1 else ''} "
               + ",".join(map(str, layers)), disable=not progress)
    with model.hooks(fwd_hooks=fwd):
        for i in range(0, len(windows), batch_size):
            batch = windows[i:i + batch_size]
            width = max(len(w) for w in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.bool)
            for j, w in enumerate(batch):
                ids[j, :len(w)] = w
                mask[j, :len(w)] = True
            sel = mask.clone()
            if has_bos:
                sel[:, 0] = False
            counted[:] = [sel.to(dev)]
            padded = not bool(mask.all())
            try:
                model(ids.to(dev), attention_mask=mask.long().to(dev) if padded else None, stop_at_layer=stop)
            except _Done:
                pass
            n = int(sel.sum())
            count += n
            bar.update(n)
    bar.close()
    return sums, count


# --------------------------------------------------------------------------- public API


def covariances(
    model: Bridge,
    layers: Iterable[int],
    *,
    corpus: Any = "auto",
    n_tokens: int = DEFAULT_N_TOKENS,
    seq_len: int = DEFAULT_SEQ_LEN,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    sample_batch_size: int = DEFAULT_SAMPLE_BATCH_SIZE,
    split: str = "train",
    cache: bool = True,
    progress: bool = True,
) -> dict[int, Float[Tensor, "d_mlp d_mlp"]]:
    """C = E[k kᵀ] of MLP keys at several layers, from one set of forward passes.

    Layers found in the cache are loaded; the rest share one forward per batch, hooked at every
    missing layer and stopped after the deepest (``stop_at_layer``; the unembedding never runs).

    Args:
        model: a bridge.
        layers: layer indices (negative ones count from the end); duplicates are dropped.
        corpus: ``"auto"``, ``"model"``, a hub dataset name, a text-file path, or an iterable of
            strings (module docstring).
        n_tokens: keys counted (BOS and padding excluded); default `DEFAULT_N_TOKENS`.
        seq_len: window length, BOS included.
        batch_size: windows per statistics forward (memory: ``batch_size × seq_len × d_mlp`` floats
            per hooked layer).
        seed, sample_batch_size: the ``"model"`` corpus's seed and decoding batch (`sample_corpus`).
        split: the dataset split, for hub datasets.
        cache: read and write ``cache_dir("stats")``.
        progress: show tqdm bars.

    Returns:
        ``{layer: C}``, keyed by the non-negative layer index; each C float64 ``[d_mlp, d_mlp]`` on the CPU.

    Cost: cached layers are a file read each (``d_mlp² × 8`` bytes). Otherwise the corpus (for
    ``"model"``: `sample_corpus`, once per model and seed) and one statistics forward over it up to
    the deepest missing layer. Memory: one ``d_mlp²`` float64 accumulator per missing layer.
    Measured times: docs/guide.md, "Measured costs of the editors".

    Raises:
        ValueError / TypeError: bad layer, ``n_tokens < 1``, an empty corpus, a corpus of an unknown
            type, or NaN/inf keys.
        FileNotFoundError: a corpus path that does not exist.
        DatasetNotAvailableError: a dataset name with no hub access.
    """
    from factscope.models import fingerprint

    a = arch_of(model)
    if isinstance(layers, (int, str)):
        raise TypeError(f"expected an iterable of layer indices, got {layers!r}; use covariance() for one layer")
    wanted = sorted({a.check_layer(l) for l in layers})
    if not wanted:
        raise ValueError("expected at least one layer, got none")
    check_int("n_tokens", n_tokens, 1)
    _check_seq_len(model, seq_len)
    check_int("batch_size", batch_size, 1)
    check_int("sample_batch_size", sample_batch_size, 1)
    check_int("seed", seed, 0)
    ident, make_windows = _resolve(model, corpus, n_tokens, seq_len, seed, sample_batch_size, split, progress)
    fp = fingerprint(model)
    keys, paths, out = {}, {}, {}
    for l in wanted:
        keys[l] = {"kind": "mom2", "model": fp, "model_dtype": _model_dtype(model), "layer": l,
                   "hook": a.hook("mlp_key", l), "corpus": ident, "n_tokens": n_tokens, "seq_len": seq_len,
                   "dtype": "float64"}
        paths[l] = cache_dir("stats") / f"mom2-{fp}-L{l}-{key_digest(keys[l])}.safetensors"
        if cache:
            hit = _load(paths[l], "mom2", keys[l], _STAT_FORMAT, lambda s: s == (a.d_mlp, a.d_mlp), torch.float64)
            if hit is not None:
                out[l] = hit[0]
    missing = [l for l in wanted if l not in out]
    if missing:
        windows = make_windows()
        if not windows:
            raise ValueError(f"expected a corpus with at least one token, got an empty corpus ({ident['type']})")
        sums, count = _accumulate(model, windows, missing, batch_size, progress)
        if count < n_tokens:
            extra = f"; C has rank at most {count} < d_mlp = {a.d_mlp}" if count < a.d_mlp else ""
            warnings.warn(f"factscope: the corpus ran out after {count} of the {n_tokens} tokens asked for; "
                          f"C is computed from {count} tokens{extra}", stacklevel=2)
        for l in missing:
            C = (sums[l] / count).cpu()
            if not bool(torch.isfinite(C).all()):
                raise ValueError(f"expected a finite key second moment at layer {l}, got "
                                 f"{int((~torch.isfinite(C)).sum())} non-finite entries (float64 overflow)")
            C = (C + C.T) / 2  # exact symmetry; addmm's blocked sums can differ in the last bit
            if cache:
                _save(paths[l], "mom2", C, keys[l], _STAT_FORMAT, count)
            out[l] = C
    return {l: out[l] for l in wanted}


def covariance(
    model: Bridge,
    layer: int,
    *,
    corpus: Any = "auto",
    n_tokens: int = DEFAULT_N_TOKENS,
    seq_len: int = DEFAULT_SEQ_LEN,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    sample_batch_size: int = DEFAULT_SAMPLE_BATCH_SIZE,
    split: str = "train",
    cache: bool = True,
    progress: bool = True,
) -> Float[Tensor, "d_mlp d_mlp"]:
    """C = E[k kᵀ], the uncentred second moment of MLP keys at one layer: float64 ``[d_mlp, d_mlp]``.

    A thin wrapper of `covariances` (see there and the module docstring); returned on the CPU.

    Args:
        layer: the layer (negative counts from the end).
        model, corpus, n_tokens, seq_len, batch_size, seed, sample_batch_size, split, cache, progress:
            as for `covariances` (defaults: ``corpus="auto"``, ``n_tokens`` `DEFAULT_N_TOKENS`
            = 16384, ``seq_len`` 128, ``batch_size`` 32, ``seed`` 0, ``sample_batch_size`` 256,
            ``split="train"``, ``cache=True``, ``progress=True``).

    Cost: cached on disk: later calls read ``d_mlp² × 8`` bytes. The first call samples the corpus
    (offline default; once per model and seed), then runs the statistics forward up to ``layer``.
    Memory: see the module docstring (the sampler's KV cache and CDF; the accumulator
    ``d_mlp² × 8`` bytes). Measured times: docs/guide.md, "Measured costs of the editors".

    Example:
        >>> C = covariance(model, 6, corpus="model")   # doctest: +SKIP
        >>> u = torch.linalg.solve(C, k_star.double())  # ROME's C⁻¹k*
    """
    l = arch_of(model).check_layer(layer)
    return covariances(model, [l], corpus=corpus, n_tokens=n_tokens, seq_len=seq_len, batch_size=batch_size,
                       seed=seed, sample_batch_size=sample_batch_size, split=split, cache=cache,
                       progress=progress)[l]
