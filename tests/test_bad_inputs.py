"""The bad-input matrix (issue 17): every public entry point refuses bad input clearly, before any work.

Each case calls one entry point with one bad argument on a tiny random model (n_ctx 128) and checks
that it raises the expected error with a message naming what was expected and what arrived, that no
block of the model ran (forward pre-hooks on the embedding and every block count calls), that it
returned quickly, and that the model is untouched: the same `factscope.fingerprint`, no edit left
applied (`factscope.edit.handle.applied_edits`), and (the ``model`` fixture) every weight unchanged.

Then the other side of the layer policy: negative layers work everywhere and give exactly what their
non-negative counterparts give, which is what the results record.
"""

from __future__ import annotations

import os
import time
from unittest import mock

import pytest
import torch

import factscope as fs
from factscope import ContextLengthError, EditRequest, Fact, arch_of, fingerprint
from factscope.edit import Edit, EditSession, alphaedit, finetune, kn, memit, rome, run_editor
from factscope.edit.handle import EditStateError, FingerprintMismatchError, applied_edits
from factscope.locate import enhance, estimate_trace_memory, layer_profile, neuron_attribution, neurons, suppress, trace
from factscope.models import ModelNotAvailableError
from factscope.predict import generate, target_scores
from factscope.probes import evaluate, localization_vs_editing, spillover
from factscope.tokens import check_context, encode, pad_left

REQ = EditRequest("The {} is in downtown", "Space Needle", "Paris", target_true="Seattle",
                  paraphrases=("The Space Needle stands in", "Visitors love the Space Needle in"))
FACT = Fact("The {} is in downtown", "Space Needle", "Seattle")
LONG_TAIL = " in the city of" * 60  # far past a tiny model's 128-token context on every tokenizer here
LONG_FACT = Fact("The {} is" + LONG_TAIL, "Space Needle", "Seattle")
LONG_REQ = EditRequest("The {} is" + LONG_TAIL, "Space Needle", "Paris", target_true="Seattle")
LONG_PROMPT = LONG_FACT.text
CUT = Fact("The {}s are tall", "Space Needle", "Seattle")  # the subject ends inside a token
PROMPTS3 = [REQ.text, *REQ.paraphrases]
BIG = 10 ** 9  # absurd sample counts


def _spd(d: int) -> torch.Tensor:
    A = torch.randn(d, 2 * d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return A @ A.T / (2 * d) + 0.01 * torch.eye(d, dtype=torch.float64)


def _n(m) -> int:
    return arch_of(m).n_layers


def _offline(fn):
    def run(m):
        with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
            return fn(m)
    return run


def _little_memory(fn):
    def run(m):
        with mock.patch("factscope.checks.available_bytes", lambda device=None: 2 ** 20):
            return fn(m)
    return run


def _foreign_edit(m) -> Edit:
    """An edit made for another model (its fingerprint differs)."""
    a = arch_of(m)
    return Edit(method="test", fingerprint="0123456789abcdef", deltas={1: torch.zeros(a.d_mlp, a.d_model)},
                requests=(REQ,))


def _own_edit(m) -> Edit:
    a = arch_of(m)
    return Edit(method="test", fingerprint=fingerprint(m), deltas={1: torch.zeros(a.d_mlp, a.d_model)},
                requests=(REQ,))


def _rome_session(m) -> EditSession:
    return EditSession(m, "rome", layers=1, C={1: _spd(arch_of(m).d_mlp)}, progress=False)


Q = dict(progress=False, verbose=False)

CASES = [
    # ------------------------------------------------------------------ loading
    pytest.param(_offline(lambda m: fs.load_model("no-such-model-xyz")), ModelNotAvailableError,
                 r"'no-such-model-xyz' is neither a bundled model.*HF_HUB_OFFLINE", id="load_model-unknown-name"),
    pytest.param(lambda m: fs.load_model("./no/such/folder"), FileNotFoundError,
                 "expected a model folder or .gguf file", id="load_model-missing-path"),
    pytest.param(lambda m: fs.load_model(42), TypeError, "expected a model name or path, got int",
                 id="load_model-not-a-name"),
    pytest.param(lambda m: fs.tiny_model("bert"), ValueError, "expected arch to be one of .*got 'bert'",
                 id="tiny_model-unknown-arch"),
    # ------------------------------------------------------------------ trace
    pytest.param(lambda m: trace(m, Fact("", "Space Needle", "Seattle")), ValueError,
                 "expected a non-empty `prompt`, got ''", id="trace-empty-prompt"),
    pytest.param(lambda m: trace(m, "The Space Needle is in downtown"), TypeError,
                 "expected fact to be a Fact or an EditRequest, got str", id="trace-not-a-fact"),
    pytest.param(lambda m: trace(m, CUT, window=2), ValueError, "not a whole run of tokens",
                 id="trace-subject-not-in-prompt"),
    pytest.param(lambda m: trace(m, LONG_FACT, window=2), ContextLengthError,
                 r"fit the model's context of n_ctx=128 tokens .*got \d+ tokens", id="trace-longer-than-n_ctx"),
    pytest.param(lambda m: trace(m, FACT, window=2, samples=BIG), MemoryError,
                 r"trace of a \d+-token prompt .* 1000000000 samples.* would need about .* GiB .* is free on cpu; "
                 r"use fewer samples", id="trace-absurd-samples"),
    pytest.param(_little_memory(lambda m: trace(m, FACT, window=2)), MemoryError,
                 r"would need about \d+ MiB of memory, but only 1 MiB is free", id="trace-estimate-exceeds-free"),
    pytest.param(lambda m: trace(m, FACT, window=2, samples=0), ValueError,
                 "expected samples to be a positive integer, got 0", id="trace-zero-samples"),
    pytest.param(lambda m: trace(m, FACT, window=2, kind="neurons"), ValueError,
                 "expected kind to be 'all', 'hidden', 'mlp' or 'attn', got 'neurons'", id="trace-bad-kind"),
    pytest.param(lambda m: trace(m, FACT, window=99), ValueError,
                 r"expected a window of 1 to 4 layers .*got 99", id="trace-window-out-of-range"),
    # ------------------------------------------------------------------ layer_profile
    pytest.param(lambda m: layer_profile(m, [], progress=False), ValueError, "expected at least one fact, got none",
                 id="layer_profile-no-facts"),
    pytest.param(lambda m: layer_profile(m, FACT, progress=False), TypeError,
                 "expected facts to be a sequence of Facts or EditRequests, got Fact", id="layer_profile-one-fact"),
    pytest.param(lambda m: layer_profile(m, [FACT, "Paris"], window=2, progress=False), TypeError,
                 r"expected facts\[1\] to be a Fact or an EditRequest, got str", id="layer_profile-not-a-fact"),
    pytest.param(lambda m: layer_profile(m, [FACT, LONG_FACT], window=2, progress=False), ContextLengthError,
                 "n_ctx=128", id="layer_profile-longer-than-n_ctx"),
    # ------------------------------------------------------------------ editors
    pytest.param(lambda m: rome(m, "Space Needle -> Paris", layer=1, **Q), TypeError,
                 "ROME: expected an EditRequest, got str", id="rome-not-a-request"),
    pytest.param(lambda m: rome(m, REQ, layer=4, **Q), ValueError,
                 r"expected a layer in \[-4, 4\) \(negative counts from the end\) .*got 4", id="rome-layer-out-of-range"),
    pytest.param(lambda m: rome(m, REQ, layer=-5, **Q), ValueError, r"in \[-4, 4\).*got -5",
                 id="rome-negative-layer-out-of-range"),
    pytest.param(lambda m: rome(m, REQ, layer=1.0, **Q), TypeError, r"integer layer .*got 1.0 \(float\)",
                 id="rome-float-layer"),
    pytest.param(lambda m: rome(m, REQ, layer=True, **Q), TypeError, r"integer layer .*got True \(bool\)",
                 id="rome-bool-layer"),
    pytest.param(lambda m: rome(m, LONG_REQ, layer=1, **Q), ContextLengthError, "n_ctx=128",
                 id="rome-longer-than-n_ctx"),
    pytest.param(lambda m: memit(m, [REQ], layers=[1, 1], **Q), ValueError,
                 r"expected distinct layers in layers, got \[1, 1\]", id="memit-duplicate-layers"),
    pytest.param(lambda m: memit(m, [REQ], layers=[1, -3], **Q), ValueError,
                 r"distinct layers.*normalised: \[1, 1\]", id="memit-same-layer-twice-via-negative"),
    pytest.param(lambda m: memit(m, [REQ], layers=[1, 99], **Q), ValueError, r"\[-4, 4\).*got 99",
                 id="memit-layer-out-of-range"),
    pytest.param(lambda m: memit(m, [], layers=[1], **Q), ValueError, "expected at least one EditRequest",
                 id="memit-no-requests"),
    pytest.param(lambda m: memit(m, [REQ, FACT], layers=[1], **Q), TypeError,
                 r"MEMIT: expected requests\[1\] to be an EditRequest, got Fact", id="memit-not-a-request"),
    pytest.param(lambda m: alphaedit(m, [REQ], layers=["1"], **Q), TypeError, "integer layer .*got '1' \\(str\\)",
                 id="alphaedit-str-layer"),
    pytest.param(lambda m: finetune(m, [REQ], layer=-5, **Q), ValueError, r"\[-4, 4\).*got -5",
                 id="finetune-layer-out-of-range"),
    pytest.param(lambda m: finetune(m, FACT, layer=1, **Q), TypeError,
                 "expected requests to be an EditRequest or a sequence of EditRequests, got Fact",
                 id="finetune-not-a-request"),
    pytest.param(lambda m: finetune(m, [LONG_REQ], layer=1, **Q), ContextLengthError, "FT-L: the prompt",
                 id="finetune-longer-than-n_ctx"),
    pytest.param(lambda m: kn(m, FACT, neurons=[(0, 1)], **Q), TypeError, "KN: expected an EditRequest, got Fact",
                 id="kn-not-a-request"),
    pytest.param(lambda m: kn(m, REQ, neurons=[(4, 0)], **Q), ValueError, r"\[-4, 4\).*got 4",
                 id="kn-neuron-layer-out-of-range"),
    pytest.param(lambda m: kn(m, REQ, neurons=[(0, 10 ** 6)], **Q), ValueError,
                 r"expected a neuron index in \[0, \d+\) .*got 1000000", id="kn-neuron-index-out-of-range"),
    pytest.param(lambda m: kn(m, LONG_REQ, neurons=[(0, 1)], **Q), ContextLengthError, "n_ctx=128",
                 id="kn-longer-than-n_ctx"),
    pytest.param(lambda m: run_editor("sgd", m, [REQ]), ValueError, "expected an editor name, one of rome.*got 'sgd'",
                 id="run_editor-unknown-editor"),
    pytest.param(lambda m: run_editor("kn", m, [REQ], layers=[1]), ValueError, "chooses its own layers",
                 id="run_editor-kn-with-layers"),
    # ------------------------------------------------------------------ sequential editing
    pytest.param(lambda m: EditSession(m, "sgd"), ValueError,
                 r"expected an editor name, one of rome, memit, .*; got 'sgd'", id="EditSession-bad-method"),
    pytest.param(lambda m: EditSession(m, "rome", layers=[1, 2]), ValueError, "the rome editor edits one layer; got 2 layers",
                 id="EditSession-rome-two-layers"),
    pytest.param(lambda m: EditSession(m, "memit", layers=[0, -4]), ValueError, r"normalised: \[0, 0\]",
                 id="EditSession-duplicate-layers"),
    pytest.param(lambda m: _rome_session(m).edit([REQ, FACT]), TypeError,
                 r"expected requests\[1\] to be an EditRequest, got Fact", id="EditSession.edit-bad-batch"),
    pytest.param(lambda m: _rome_session(m).edit([REQ, LONG_REQ]), ContextLengthError,
                 "n_ctx=128", id="EditSession.edit-longer-than-n_ctx"),
    # ------------------------------------------------------------------ edits and probes
    pytest.param(lambda m: _foreign_edit(m).apply(m), FingerprintMismatchError, "fingerprint",
                 id="Edit.apply-other-model"),
    pytest.param(lambda m: _own_edit(m).revert(m), EditStateError, "not applied to this model",
                 id="Edit.revert-not-applied"),
    pytest.param(lambda m: evaluate(m, "the edit", [REQ], progress=False), TypeError,
                 "expected an Edit .*got str", id="evaluate-not-an-edit"),
    pytest.param(lambda m: evaluate(m, _foreign_edit(m), [REQ], progress=False), FingerprintMismatchError,
                 "fingerprint", id="evaluate-edit-of-other-model"),
    pytest.param(lambda m: evaluate(m, _own_edit(m), [REQ], n_gen_tokens=200, progress=False), ContextLengthError,
                 "plus max_new_tokens=200", id="evaluate-generation-past-n_ctx"),
    pytest.param(lambda m: evaluate(m, _own_edit(m), [LONG_REQ], fluency=False, progress=False), ContextLengthError,
                 "n_ctx=128", id="evaluate-longer-than-n_ctx"),
    pytest.param(lambda m: spillover(m, REQ, editor="sgd", **Q), ValueError,
                 "expected an editor name, one of rome.*got 'sgd'", id="spillover-unknown-editor"),
    pytest.param(lambda m: spillover(m, REQ, layer=99, **Q), ValueError, r"\[-4, 4\).*got 99",
                 id="spillover-layer-out-of-range"),
    pytest.param(lambda m: spillover(m, REQ, editor="kn", layer=1, **Q), ValueError,
                 "expected layer=None for the kn editor", id="spillover-kn-with-layer"),
    pytest.param(lambda m: spillover(m, LONG_REQ, **Q), ContextLengthError, "n_ctx=128",
                 id="spillover-longer-than-n_ctx"),
    pytest.param(lambda m: localization_vs_editing(m, [REQ], layers=[1, -3], **Q), ValueError,
                 r"distinct layers.*normalised: \[1, 1\]", id="localization-duplicate-layers"),
    pytest.param(lambda m: localization_vs_editing(m, [REQ], editor="sgd", **Q), ValueError, "got 'sgd'",
                 id="localization-unknown-editor"),
    # ------------------------------------------------------------------ knowledge neurons
    pytest.param(lambda m: neurons(m, FACT, progress=False), ValueError, "expected at least 3 prompts",
                 id="neurons-too-few-prompts"),
    pytest.param(lambda m: neurons(m, FACT, prompts=[*PROMPTS3[:2], LONG_PROMPT], progress=False),
                 ContextLengthError, "n_ctx=128", id="neurons-longer-than-n_ctx"),
    pytest.param(lambda m: neurons(m, REQ, layers=[2, -2], progress=False), ValueError, r"normalised: \[2, 2\]",
                 id="neurons-duplicate-layers"),
    pytest.param(lambda m: neuron_attribution(m, REQ.text, "Seattle", layers=[]), ValueError,
                 "at least one layer", id="neuron_attribution-no-layers"),
    pytest.param(lambda m: suppress(m, [(9, 0)]).__enter__(), ValueError, r"\[-4, 4\).*got 9",
                 id="suppress-layer-out-of-range"),
    pytest.param(lambda m: enhance(m, [(0, 0)], factor=float("inf")).__enter__(), ValueError,
                 "expected a finite factor, got inf", id="enhance-infinite-factor"),
    # ------------------------------------------------------------------ predictions
    pytest.param(lambda m: fs.predict(m, []), ValueError, "expected at least one prompt, got none",
                 id="predict-empty-list"),
    pytest.param(lambda m: fs.predict(m, REQ.text), TypeError, "got a single str; wrap it in a list",
                 id="predict-single-str"),
    pytest.param(lambda m: fs.predict(m, [REQ.text, FACT.text], ["Seattle"]), ValueError,
                 "expected one target per prompt, got 1 targets for 2 prompts", id="predict-target-count"),
    pytest.param(lambda m: fs.predict(m, [REQ.text], k=0), ValueError, r"expected k to be an integer in \[1, \d+\], got 0",
                 id="predict-k-zero"),
    pytest.param(lambda m: fs.predict(m, [REQ.text, LONG_PROMPT]), ContextLengthError, "n_ctx=128",
                 id="predict-longer-than-n_ctx"),
    pytest.param(lambda m: target_scores(m, [REQ.text], ["Seattle" + " and more" * 70]), ContextLengthError,
                 "followed by the target", id="target_scores-longer-than-n_ctx"),
    pytest.param(lambda m: generate(m, [REQ.text], max_new_tokens=200), ContextLengthError,
                 "plus max_new_tokens=200", id="generate-past-n_ctx"),
]


@pytest.fixture
def guarded(model):
    """``check(fn, exc, match)``: ``fn(model)`` raises ``exc`` (message matching), quickly, with no block run
    and the model untouched."""
    ran: list[str] = []
    a = arch_of(model)
    mods = [("embed", model.embed)] + [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    hooks = [mod.register_forward_pre_hook(lambda mod, args, name=name: ran.append(name)) for name, mod in mods]
    fp = fingerprint(model)
    assert a.n_layers == 4 and fs.arch.context_of(model).n_ctx == 128  # the messages below assume these

    def check(fn, exc, match):
        t = time.perf_counter()
        with pytest.raises(exc, match=match):
            fn(model)
        took = time.perf_counter() - t
        assert ran == [], f"the model ran ({ran[:3]}...) before the error"
        assert fingerprint(model) == fp
        assert applied_edits(model) == ()
        assert took < 10, f"took {took:.1f} s to refuse"

    try:
        yield check
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("fn, exc, match", CASES)
def test_bad_input_is_refused_before_any_work(guarded, fn, exc, match):
    guarded(fn, exc, match)


def test_the_matrix_is_wide():
    assert len(CASES) >= 24
    assert len({c.id for c in CASES}) == len(CASES)


def test_a_long_prompt_is_refused_before_anything_is_allocated(monkeypatch):
    """A prompt longer than n_ctx reaches neither the allocator nor the model: the error names both lengths."""
    m = fs.tiny_model("gpt2")
    assert m.cfg.n_ctx == 128

    def boom(*args, **kwargs):
        raise AssertionError("the model ran on a prompt longer than its context")

    hooks = [m.embed.register_forward_pre_hook(boom)] + [b.register_forward_pre_hook(boom) for b in m.blocks]
    monkeypatch.setattr(torch, "randn", boom)  # trace's first allocation is the noise
    try:
        n = len(encode(m.tokenizer, LONG_PROMPT))  # a bare tokenizer knows no context: no check
        assert n > 128
        t = time.perf_counter()
        with pytest.raises(ContextLengthError, match=rf"n_ctx=128 tokens \(BOS included\), got {n} tokens"):
            trace(m, LONG_FACT, window=2)
        assert time.perf_counter() - t < 5
        with pytest.raises(ValueError):  # a ContextLengthError is a ValueError
            encode(m, LONG_PROMPT)
        with pytest.raises(ContextLengthError, match="longest of 2 token rows"):
            pad_left(m, [[1, 2], list(range(129))])
        pad_left(m.tokenizer, [[1, 2], list(range(129))])  # no model, no context to check
        assert check_context(m, 128) == 128
    finally:
        for h in hooks:
            h.remove()


def test_trace_memory_estimate_grows_with_the_work(tiny):
    T = len(encode(tiny, FACT.text))
    one = estimate_trace_memory(tiny, T, kind="mlp", samples=10)
    assert estimate_trace_memory(tiny, T, kind="all", samples=10) > 2 * one
    assert estimate_trace_memory(tiny, T, kind="mlp", samples=20) > 1.8 * one
    assert estimate_trace_memory(tiny, 4 * T, kind="mlp", samples=10) > 4 * one
    from factscope.checks import available_bytes, check_memory

    free = available_bytes()
    assert free is None or free > 0
    check_memory(1, what="nothing", hint="none")  # fits
    with pytest.raises(MemoryError, match=r"x would need about 2\.0 GiB of memory, but only 1 MiB is given as the "
                                          r"limit; do less"):
        check_memory(2 ** 31, what="x", hint="do less", cap=2 ** 20)


# --------------------------------------------------------------------------- negative layers work


ROME_FAST = dict(context_lengths=((3, 2), (5, 2)), v_steps=4)


def test_rome_negative_layer_is_the_same_edit(model):
    from factscope.edit.rome import ROMEConfig

    n = _n(model)
    C = _spd(arch_of(model).d_mlp)
    cfg = ROMEConfig(**ROME_FAST)
    neg = rome(model, REQ, layer=-1, config=cfg, C=C, **Q)
    pos = rome(model, REQ, layer=n - 1, config=cfg, C=C, **Q)
    assert neg.layers == pos.layers == (n - 1,) and neg.info["layer"] == n - 1
    for x, y in zip(neg.delta(n - 1), pos.delta(n - 1)):
        assert torch.equal(x, y)


def test_negative_layers_are_recorded_normalised(model):
    from factscope.edit.memit import MEMITConfig, prepare
    from factscope.locate.knowledge_neurons import neuron_list
    from factscope.probes.localization import check_probe_layers

    a = arch_of(model)
    n = a.n_layers
    # KN: neurons given as (layer, index) pairs
    e_neg = kn(model, REQ, neurons=[(-1, 3), (0, 5)], **Q)
    e_pos = kn(model, REQ, neurons=[(n - 1, 3), (0, 5)], **Q)
    assert e_neg.layers == e_pos.layers == (0, n - 1)
    assert all(torch.equal(x, y) for l in e_neg.layers for x, y in zip(e_neg.delta(l), e_pos.delta(l)))
    assert e_neg.info["neurons"] == [[n - 1, 3], [0, 5]]
    assert neuron_list(model, [(-1, 3)]) == [(n - 1, 3)]
    # suppress / enhance: the same hooks
    with suppress(model, [(-1, 3)]):
        p_neg = fs.predict(model, [REQ.text])[0].top_probs
    with suppress(model, [(n - 1, 3)]):
        p_pos = fs.predict(model, [REQ.text])[0].top_probs
    assert p_neg == p_pos
    # attribution layers
    x_neg = neuron_attribution(model, REQ.text, "Seattle", layers=[-1], steps=2)
    x_pos = neuron_attribution(model, REQ.text, "Seattle", layers=[n - 1], steps=2)
    assert torch.equal(x_neg.nan_to_num(), x_pos.nan_to_num()) and not torch.isnan(x_neg[n - 1]).any()
    # MEMIT / AlphaEdit front half, EditSession, localization_vs_editing's layers
    assert prepare(model, [REQ], [-1, 0], MEMITConfig(), progress=False, verbose=False, what="MEMIT")[1] == [0, n - 1]
    C = {l: _spd(a.d_mlp) for l in (0, n - 1)}
    assert EditSession(model, "memit", layers=[-1, 0], C=C, progress=False).layers == [0, n - 1]
    assert EditSession(model, "rome", layers=-1, C=C, progress=False).layers == [n - 1]
    assert check_probe_layers(model, [-1, 1]) == (n - 1, 1)
    # FT-L
    from factscope.edit.finetune import FTConfig

    ft = finetune(model, [REQ], layer=-1, config=FTConfig(steps=1), **Q)
    assert ft.layers == (n - 1,) and ft.info["layer"] == n - 1
    assert applied_edits(model) == ()


def test_spillover_records_the_normalised_layer(model):
    a = arch_of(model)
    n = a.n_layers
    e = Edit(method="test", fingerprint=fingerprint(model), deltas={n - 1: 0.1 * torch.ones(a.d_mlp, a.d_model)},
             requests=(REQ,))
    bank = {"paraphrase": [Fact("The {} stands in", "Space Needle", "Seattle")],
            "unrelated": [Fact("The capital of {} is", "Japan", "Tokyo"), Fact("{} plays", "Lionel Messi", "soccer")]}
    r = spillover(model, REQ, edit=e, layer=-1, bank=bank, C=_spd(a.d_mlp), n_boot=20, **Q)
    assert r.layer == n - 1
