"""The KV-cache seam (factscope/kv.py), per architecture: cached passes and direct block calls against
plain full forwards, and loud failures when the libraries stop behaving as the seam expects."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from factscope import UnsupportedArchitectureError, arch_of, encode
from factscope.kv import (
    BlockCalls,
    Cache,
    check_cache,
    fill_layer,
    layer_states,
    new_cache,
    prefix,
    repeat_rows,
    run_after,
    run_cached,
)
from factscope.models import tiny_hf

PROMPT = "The Space Needle is in downtown Seattle, and the Eiffel Tower is in"
ROOT = Path(__file__).resolve().parents[1]
LIBRARY = [p for d in ("factscope", "locate", "edit", "probes", "figures") for p in (ROOT / d).rglob("*.py")]


def _ids(model, rows: int = 1) -> torch.Tensor:
    return torch.tensor([encode(model, PROMPT)]).expand(rows, -1)


@torch.no_grad()
def test_cached_continuation_equals_the_full_forward(tiny):
    ids = _ids(tiny, 3)
    whole = tiny(ids)  # [row, pos, d_vocab]
    logits, cache = run_cached(tiny, ids[:, :5])
    assert cache.get_seq_length() == 5
    torch.testing.assert_close(logits, whole[:, :5], atol=1e-5, rtol=1e-5)
    after = run_after(tiny, ids[:, 5:], cache)
    assert cache.get_seq_length() == 5  # run_after leaves the prefix as it was
    torch.testing.assert_close(after, whole[:, 5:], atol=1e-4, rtol=1e-4)
    more, same = run_cached(tiny, ids[:, 5:], cache)  # run_cached grows it
    assert same is cache and cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(more, whole[:, 5:], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_prefix_rows_and_layer_states_match_plain_slicing(tiny):
    ids = _ids(tiny, 2)
    T = ids.shape[1]
    _, cache = run_cached(tiny, ids)
    full = [(k.clone(), v.clone()) for k, v in layer_states(cache)]
    assert len(full) == arch_of(tiny).n_layers and all(k.shape[0] == 2 and k.shape[2] == T for k, _ in full)
    cut = prefix(cache, 4, torch.tensor([1, 1, 0]))
    for (k, v), (k4, v4) in zip(full, layer_states(cut)):
        torch.testing.assert_close(k4, k[[1, 1, 0], :, :4], rtol=0, atol=0)
        torch.testing.assert_close(v4, v[[1, 1, 0], :, :4], rtol=0, atol=0)
    for (k, _), (k1, _) in zip(full, layer_states(cache)):  # the source is untouched
        assert torch.equal(k, k1)
    assert prefix(cache, 0) is None
    with pytest.raises(ValueError, match=r"expected a prefix length in \[0, %d\]" % T):
        prefix(cache, T + 1)
    one = prefix(cache, 4, torch.tensor([0]))
    for (k, _), (kr, _) in zip(layer_states(one), layer_states(repeat_rows(one, 3))):
        assert torch.equal(kr, k.expand(3, -1, -1, -1))
    # a row-repeated prefix gives each row the single-row continuation
    torch.testing.assert_close(run_after(tiny, ids[:1, 4:].expand(3, -1), repeat_rows(one, 3)),
                               tiny(ids[:1])[:, 4:].expand(3, -1, -1), atol=1e-4, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("t", [0, 3, 6])
def test_direct_block_calls_reproduce_the_residual_stream(tiny, t):
    """Resume at every block from the reference residual entering it: each block's output must equal the
    forward's residual leaving it, for several rows that share the prefix cache."""
    a = arch_of(tiny)
    ids = _ids(tiny)
    names = [a.hook("resid_pre", l) for l in range(a.n_layers)] + [a.hook("resid_post", a.n_layers - 1)]
    _, ref = tiny.run_with_cache(ids.expand(2, -1), names_filter=lambda n: n in names)
    _, kv = run_cached(tiny, ids.expand(2, -1))
    calls = BlockCalls.capture(tiny, ids, prefix(kv, t, torch.tensor([0])))
    assert calls.t == t and len(calls.calls) == a.n_layers
    states = layer_states(kv)
    for j in range(a.n_layers):
        cache = new_cache()
        if t:
            fill_layer(cache, j, states[j][0][:, :, :t], states[j][1][:, :, :t])
        out = calls.run(tiny, j, ref[names[j]][:, t:], cache)
        torch.testing.assert_close(out, ref[names[j + 1]][:, t:], atol=1e-4, rtol=1e-4)


def _boot_plain(arch_name: str) -> TransformerBridge:
    """A bridge booted directly, without factscope's loader (so check_cache has not run on it)."""
    hf, tok = tiny_hf(arch_name)
    return TransformerBridge.boot_transformers("plain", hf_model=hf, tokenizer=tok).eval()


def _drop_cache(module, args, kwargs):
    """What a library that stopped handing attention its cache would do."""
    return args, {k: (None if k in ("cache", "past_key_values") else v) for k, v in kwargs.items()}


def test_a_bridge_that_drops_the_cache_is_refused_loudly(arch_name):
    bridge = _boot_plain(arch_name)
    for block in bridge.blocks:
        block.attn.register_forward_pre_hook(_drop_cache, with_kwargs=True, prepend=True)
    with pytest.raises(UnsupportedArchitectureError, match=r"does not carry a KV cache.*transformers \d"):
        check_cache(bridge)
    with pytest.raises(UnsupportedArchitectureError):  # and every cached pass refuses, not only the first
        run_cached(bridge, torch.tensor([[1, 5, 6]]))


def test_a_plain_bridge_passes_the_check_and_is_then_usable(arch_name):
    bridge = _boot_plain(arch_name)
    check_cache(bridge)
    ids = torch.tensor([encode(bridge, PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(run_after(bridge, ids[:, 4:], run_cached(bridge, ids[:, :4])[1]),
                                   bridge(ids)[:, 4:], atol=1e-4, rtol=1e-4)


def test_block_calls_refuse_a_block_that_gets_no_cache(tiny):
    ids = _ids(tiny)
    _, kv = run_cached(tiny, ids)

    def strip(module, args, kwargs):  # GPT-2's blocks get the cache positionally, the others by keyword
        return (tuple(None if isinstance(x, Cache) else x for x in args),
                {k: v for k, v in kwargs.items() if not isinstance(v, Cache)})

    h = tiny.blocks[1].register_forward_pre_hook(strip, with_kwargs=True)
    try:
        with pytest.raises(UnsupportedArchitectureError, match="expected the forward to pass block 1 one KV cache"):
            BlockCalls.capture(tiny, ids, prefix(kv, 3, torch.tensor([0])))
    finally:
        h.remove()


def test_block_calls_refuse_a_replay_that_disagrees_with_the_forward(tiny):
    """A block whose forward depends on something the captured call does not carry (here: a counter)."""
    ids = _ids(tiny)
    calls = {"n": 0}

    def drift(module, args, kwargs, out):
        calls["n"] += 1
        if calls["n"] == 1:  # only the forward's own call, not the replay
            return (out[0] + 1.0,) + tuple(out[1:]) if isinstance(out, tuple) else out + 1.0
        return None

    h = tiny.blocks[2].register_forward_hook(drift, with_kwargs=True, prepend=True)
    try:
        with pytest.raises(UnsupportedArchitectureError, match="calling block 2 directly"):
            BlockCalls.capture(tiny, ids, None)
    finally:
        h.remove()


def test_the_seam_is_the_only_place_that_touches_transformers_caches():
    """Every cache is reached through factscope/kv.py, and nothing writes a cache's attributes."""
    seam = ROOT / "factscope" / "kv.py"
    writes = re.compile(r"\.(keys|values)\s*=(?!=)|(?<!self)\.layers\s*=(?!=)")
    outside = re.compile(r"cache_utils|DynamicCache|past_key_values|\.crop\(|batch_select_indices|"
                         r"batch_repeat_interleave")
    bad = []
    for path in LIBRARY:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if writes.search(code) or (path != seam and outside.search(code)):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "cache internals touched outside factscope/kv.py:\n" + "\n".join(bad)
