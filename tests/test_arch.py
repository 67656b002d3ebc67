"""The architecture adapter against the raw Hugging Face forward of an identical model.

The reference is a second copy of the same tiny HF model (same seed), never booted, with plain
PyTorch forward hooks on the HF modules that each hook kind is meant to mirror.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from factscope import arch_of, encode_batch
from factscope.arch import HOOK_KINDS, UnsupportedArchitectureError
from factscope.models import tiny_hf

PROMPTS = ["The Space Needle is in downtown", "Michael Jordan played", "Paris"]


def hf_modules(model, arch: str, l: int) -> dict[str, tuple[torch.nn.Module, str]]:
    """kind -> (HF module, 'in' | 'out'): where each kind lives in the plain HF model."""
    if arch == "gpt2":
        h = model.transformer.h[l]
        return {"resid_pre": (h, "in"), "resid_mid": (h.ln_2, "in"), "resid_post": (h, "out"),
                "attn_out": (h.attn, "out"), "mlp_out": (h.mlp, "out"), "mlp_raw_out": (h.mlp, "out"),
                "mlp_key": (h.mlp.c_proj, "in")}
    h = model.model.layers[l]
    mods = {"resid_pre": (h, "in"), "resid_post": (h, "out"), "mlp_raw_out": (h.mlp, "out"),
            "mlp_key": (h.mlp.down_proj, "in")}
    if arch == "llama":
        mods |= {"resid_mid": (h.post_attention_layernorm, "in"), "attn_out": (h.self_attn, "out"),
                 "mlp_out": (h.mlp, "out")}
    else:  # gemma3: attention and MLP outputs pass post-norms before the residual
        mods |= {"resid_mid": (h.pre_feedforward_layernorm, "in"), "attn_out": (h.post_attention_layernorm, "out"),
                 "mlp_out": (h.post_feedforward_layernorm, "out")}
    return mods


def embed_module(model, arch: str) -> torch.nn.Module:
    return model.transformer.wte if arch == "gpt2" else model.model.embed_tokens


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first real token, as in an unpadded run.

    Raw HF GPT-2 counts from the first (pad) column when given only a mask; RoPE models hide the
    difference because rotary attention is shift-invariant.
    """
    return (mask.cumsum(-1) - 1).clamp(min=0)


def reference_acts(model, arch: str, ids, mask) -> tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor]:
    acts: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def first(x):
        return x[0] if isinstance(x, tuple) else x

    def grab(key, where):
        if where == "in":
            def pre(mod, args, kwargs):
                acts[key] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
            return pre
        def post(mod, args, out):
            acts[key] = first(out).detach().clone()
        return post

    try:
        for l in range(model.config.num_hidden_layers):
            for kind, (mod, where) in hf_modules(model, arch, l).items():
                if where == "in":
                    handles.append(mod.register_forward_pre_hook(grab((kind, l), "in"), with_kwargs=True))
                else:
                    handles.append(mod.register_forward_hook(grab((kind, l), "out")))
        handles.append(embed_module(model, arch).register_forward_hook(grab(("embed", None), "out")))
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    finally:
        for h in handles:
            h.remove()
    return acts, logits


def test_sizes_match_config(tiny, arch_name):
    hf, _ = tiny_hf(arch_name)
    a = arch_of(tiny)
    c = hf.config
    assert a.n_layers == c.num_hidden_layers
    assert a.d_model == c.hidden_size
    d_mlp = (c.n_inner or 4 * c.n_embd) if arch_name == "gpt2" else c.intermediate_size
    assert a.d_mlp == d_mlp
    assert a.d_vocab == c.vocab_size
    assert a.post_norm == (arch_name == "gemma3")
    assert a.architecture == type(hf).__name__


def test_every_hook_matches_raw_hf_forward(tiny, arch_name):
    hf, _ = tiny_hf(arch_name)
    a = arch_of(tiny)
    ids, mask = encode_batch(tiny, PROMPTS)
    ref, ref_logits = reference_acts(hf, arch_name, ids, mask)
    pairs = [(a.hook(k, l), (k, l)) for k in HOOK_KINDS for l in range(a.n_layers)] + [(a.hook("embed"), ("embed", None))]
    names = {n for n, _ in pairs}
    with torch.no_grad():
        logits, cache = tiny.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n in names)
    real = mask.bool()  # padded positions are not compared
    assert len(ref) == len(pairs) == 1 + len(HOOK_KINDS) * a.n_layers
    for name, key in pairs:
        got, want = cache[name], ref[key]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0, msg=f"{name} ({key})")
    torch.testing.assert_close(logits[real], ref_logits[real], atol=1e-5, rtol=0)


def test_mlp_key_times_W_out_is_raw_mlp_output(tiny):
    a = arch_of(tiny)
    ids, mask = encode_batch(tiny, PROMPTS[:1])
    names = [a.hook(k, l) for l in range(a.n_layers) for k in ("mlp_key", "mlp_raw_out")]
    with torch.no_grad():
        _, cache = tiny.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n in names)
    for l in range(a.n_layers):
        bias = getattr(tiny.blocks[l].mlp, "b_out", None)
        want = cache[a.hook("mlp_key", l)] @ a.W_out(tiny, l) + (0 if bias is None else bias)
        torch.testing.assert_close(cache[a.hook("mlp_raw_out", l)], want, atol=1e-5, rtol=0)


def _hf_W_out_add(hf, arch: str, l: int, delta: torch.Tensor) -> None:
    """Apply a [d_mlp, d_model] delta to the HF weight directly (Conv1D is [in, out]; Linear [out, in])."""
    with torch.no_grad():
        if arch == "gpt2":
            hf.transformer.h[l].mlp.c_proj.weight.add_(delta)
        else:
            hf.model.layers[l].mlp.down_proj.weight.add_(delta.T)


def test_W_out_round_trip(tiny, arch_name):
    hf, _ = tiny_hf(arch_name)
    a = arch_of(tiny)
    ids, mask = encode_batch(tiny, PROMPTS)
    l = a.n_layers // 2
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(a.d_mlp, a.d_model, generator=g)  # large: must visibly move the logits
    with torch.no_grad():
        before = tiny(ids, attention_mask=mask)
    W = a.W_out(tiny, l)
    saved = W.detach().clone()
    try:
        with torch.no_grad():
            W.add_(delta)
        _hf_W_out_add(hf, arch_name, l, delta)
        with torch.no_grad():
            edited = tiny(ids, attention_mask=mask)
            ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
        real = mask.bool()
        torch.testing.assert_close(edited[real], ref[real], atol=1e-5, rtol=0)
        assert (edited[real] - before[real]).abs().max() > 1e-2  # the write reached the forward
        assert a.W_out(tiny, l).data_ptr() == W.data_ptr()  # still the same live storage
    finally:
        with torch.no_grad():
            W.copy_(saved)
    with torch.no_grad():
        restored = tiny(ids, attention_mask=mask)
    assert torch.equal(restored, before)  # bit-identical after restoring the weights


def test_hook_errors(tiny):
    a = arch_of(tiny)
    with pytest.raises(ValueError, match="expected a hook kind"):
        a.hook("mlp_in", 0)
    with pytest.raises(ValueError, match=rf"\[-{a.n_layers}, {a.n_layers}\) \(negative counts from the end\).*"
                                         rf"got {a.n_layers}"):
        a.hook("mlp_key", a.n_layers)
    with pytest.raises(ValueError, match=rf"got -{a.n_layers + 1}"):
        a.hook("mlp_key", -a.n_layers - 1)
    with pytest.raises(TypeError, match="integer layer"):
        a.hook("mlp_key", 1.0)
    assert a.hook("resid_post", -1) == a.hook("resid_post", a.n_layers - 1)


def test_unsupported_architecture_names_what_is_missing(tiny):
    # A model whose blocks lack a dense MLP (as in mixture-of-experts blocks): rebuild a bridge-like
    # object around the real blocks, with the MLP of block 1 removed.
    class NoMLP(torch.nn.Module):
        pass

    blocks = [SimpleNamespace(**{k: getattr(b, k) for k in ("attn", "hook_aliases") if hasattr(b, k)})
              for b in tiny.blocks]
    blocks[1] = NoMLP()
    hook_dict = {n: h for n, h in tiny.hook_dict.items() if not n.startswith("blocks.1.mlp")}
    fake = SimpleNamespace(cfg=tiny.cfg, blocks=blocks, hook_dict=hook_dict, original_model=tiny.original_model)
    with pytest.raises(UnsupportedArchitectureError, match=r"blocks\.1\.mlp") as e:
        arch_of(fake)
    assert "W_out" in str(e.value)
    with pytest.raises(UnsupportedArchitectureError, match="hook_dict"):
        arch_of(SimpleNamespace(cfg=tiny.cfg, blocks=blocks))


def test_check_layers_normalises_and_rejects_repeats(tiny):
    a = arch_of(tiny)
    n = a.n_layers
    assert a.check_layers(-1) == (n - 1,)
    assert a.check_layers([2, -n, 1]) == (2, 0, 1)  # normalised, in the order given
    with pytest.raises(ValueError, match=rf"distinct layers.*normalised: \[{n - 1}, {n - 1}\]"):
        a.check_layers([-1, n - 1])
    with pytest.raises(ValueError, match="at least one layer"):
        a.check_layers([])
    with pytest.raises(ValueError, match="at least one layer"):
        a.check_layers("1")
    with pytest.raises(TypeError, match=r"integer layer.*got True \(bool\)"):
        a.check_layers([True])
    with pytest.raises(ValueError, match=rf"\[-{n}, {n}\).*got {n}"):
        a.check_layers([0, n])
