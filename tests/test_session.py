"""EditSession on tiny random models: sequential steps, bit-exact revert, AlphaEdit's carried-over
keys, and a save/load round trip."""

from __future__ import annotations

import pytest
import torch

from factscope import synthetic_requests
from factscope.edit.alphaedit import AlphaEditConfig
from factscope.edit.covariance import covariances
from factscope.edit.memit import MEMITConfig
from factscope.edit.rome import ROMEConfig
from factscope.edit.session import EditSession

pytestmark = [
    pytest.mark.filterwarnings("ignore:the model already answers"),
    pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True"),
]

STEPS = 6
BATCH = 2


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same(model, snap):
    for n, p in model.named_parameters():
        assert torch.equal(p, snap[n]), n


def assert_same_cache(got, want):
    assert sorted(got) == sorted(want)
    for l in want:
        assert torch.equal(got[l], want[l]), l


def session_args(model, method):
    C = covariances(model, [1, 2], corpus="model", n_tokens=2048, progress=False)
    if method == "rome":
        return {"layers": 2, "config": ROMEConfig(context_lengths=((4, 2),), v_steps=5), "C": {2: C[2]}}
    if method == "memit":
        return {"layers": [1, 2], "config": MEMITConfig(context_lengths=((4, 2),), v_steps=5), "C": C}
    # a threshold at C's median eigenvalue: a null space of half the keys' dimensions
    thr = max(float(torch.linalg.eigvalsh(C[l]).median()) for l in (1, 2))
    return {"layers": [1, 2], "config": AlphaEditConfig(context_lengths=((4, 2),), v_steps=5,
                                                      null_space_threshold=thr), "C": C}


@pytest.mark.parametrize("method", ["memit", "alphaedit", "rome"])
def test_session_revert_save_and_load(tiny, method, tmp_path):
    model = tiny
    args = session_args(model, method)
    reqs = synthetic_requests(STEPS * BATCH, model=model)
    base = snapshot(model)
    s = EditSession(model, method, progress=False, **args)
    weights, caches = {0: base}, {0: {}}  # after each history length
    per_step = 1 if method != "rome" else BATCH  # ROME: one Edit per request
    for i in range(STEPS):
        made = s.edit(reqs[i * BATCH:(i + 1) * BATCH])
        assert len(made) == per_step and all(e.method == method for e in made)
        assert len(s.history) == len(s) == (i + 1) * per_step and s.history[-per_step:] == made
        assert all(e.is_applied(model) for e in s.history)
        weights[len(s.history)] = snapshot(model)
        caches[len(s.history)] = s.cache_c
        if method == "alphaedit":  # Σ KᵀK over the steps so far, one [request, d_mlp] K per layer and step
            assert sorted(s.cache_c) == [1, 2] and s.cache_c[2].shape == (model.cfg.d_mlp,) * 2
        else:
            assert s.cache_c == {}
    assert not all(torch.equal(p, base[n]) for n, p in model.named_parameters())
    assert [r for e in s.history for r in e.requests] == reqs
    first_run = list(s.history)

    # revert the last two steps: the weights (and AlphaEdit's cache) of step 4, bit for bit
    s.revert(2 * per_step)
    n4 = (STEPS - 2) * per_step
    assert len(s.history) == n4
    assert_same(model, weights[n4])
    assert_same_cache(s.cache_c, caches[n4])

    # step 5 recomputed by hand on the reverted model (AlphaEdit: with the cache of steps 1-4) is the
    # first run's step 5, and AlphaEdit's cache does change it
    batch5 = reqs[(STEPS - 2) * BATCH:(STEPS - 1) * BATCH]
    if method != "rome":
        from factscope.edit.alphaedit import alphaedit
        from factscope.edit.memit import memit

        kw = {"layers": s.layers, "config": args["config"], "progress": False, "verbose": False}
        if method == "memit":
            again = memit(model, batch5, C=args["C"], **kw)
        else:
            again = alphaedit(model, batch5, P=s.P, cache_c=caches[n4], **kw)
            fresh = alphaedit(model, batch5, P=s.P, **kw)
            assert not torch.allclose(fresh.delta(2), again.delta(2), rtol=1e-3, atol=0)
        for l in s.layers:
            assert torch.equal(again.delta(l), first_run[n4].delta(l)), l

    # save at step 4, revert everything: the original weights
    s.save(tmp_path / "run")
    saved = [(e.method, e.requests, e.layers) for e in s.history]
    s.revert()
    assert len(s.history) == 0 and s.cache_c == {}
    assert_same(model, base)

    # load onto the original model: step 4 again, bit for bit; then the loaded session reverts
    loaded = EditSession.load(tmp_path / "run", model, progress=False, config=args["config"], C=args["C"])
    assert loaded.method == method and loaded.layers == s.layers and len(loaded.history) == n4
    assert_same(model, weights[n4])
    assert_same_cache(loaded.cache_c, caches[n4])
    assert [(e.method, e.requests, e.layers) for e in loaded.history] == saved
    # the loaded session goes on like the original: the next step equals step 5 of the first run
    loaded.edit(reqs[(STEPS - 2) * BATCH:(STEPS - 1) * BATCH])
    assert_same(model, weights[n4 + per_step])
    assert_same_cache(loaded.cache_c, caches[n4 + per_step])
    loaded.revert()
    assert_same(model, base)
