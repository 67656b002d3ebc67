"""Knowledge neurons on tiny random models: IG against a plain reference, completeness, refinement,
interventions, the effect probe, and bad input."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from factscope import EditRequest, Fact, ResultFileError, arch_of, encode, target_ids
from factscope.locate import (
    NeuronResult,
    coarse_neurons,
    enhance,
    neuron_attribution,
    neurons,
    refine_neurons,
    suppress,
)
from factscope.probes import neuron_effect

N = sys.modules["factscope.locate.knowledge_neurons"]  # (the package's `neurons` attribute is the function)
PROMPT, TARGET = "The Space Needle is in downtown", "Seattle"
REQ = EditRequest("The {} is in downtown", "Space Needle", "Paris", target_true="Seattle",
                  paraphrases=("The Space Needle stands in", "The Space Needle is located in"),
                  neighbours=("The Eiffel Tower is in", "Big Ben is in"))
pytestmark = pytest.mark.filterwarnings("ignore:the model's top-1 answer")


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_untouched(model, snap):
    for n, p in model.named_parameters():
        assert torch.equal(p, snap[n]), n
        assert not p.requires_grad, n
    assert all(not h._forward_hooks and not h._backward_hooks for h in model.hook_dict.values())


def p_answer(model, ids, y, hooks=()):
    """p(y) after the prompt, in one plain full forward."""
    with torch.no_grad():
        return float(model.run_with_hooks(ids, fwd_hooks=list(hooks))[0, -1].softmax(-1)[y])


def rms(x, eps):
    return (x.float().pow(2).mean(-1) + eps).sqrt()


def frozen_hooks(model, layer, s_clean):
    """Hooks holding layer ``layer``'s MLP post-norm scale at ``s_clean`` at the last position: the post-normed
    output becomes out · s_live / s_clean, s_live from the raw output of the same forward (with its graph)."""
    a = arch_of(model)
    eps = model.original_model.config.rms_norm_eps  # the HF config's, independently of the implementation
    seen = {}

    def grab(x, hook):
        seen["raw"] = x[0, -1]

    def freeze(x, hook):
        last = x[0, -1] * rms(seen["raw"], eps) / s_clean
        x = x.clone()
        x[0, -1] = last
        return x

    return [(a.hook("mlp_raw_out", layer), grab), (a.hook("mlp_out", layer), freeze)]


def clean_scales(model, ids):
    """Each layer's clean MLP post-norm denominator sqrt(mean(raw²) + ε) at the last position."""
    a = arch_of(model)
    raws = [a.hook("mlp_raw_out", l) for l in range(a.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n in raws)
    return [float(rms(cache[n][0, -1], model.original_model.config.rms_norm_eps)) for n in raws]


def reference_ig(model, prompt, target, steps, rule="midpoint", layers=None, post_norm="frozen"):
    """IG written plainly: per layer, per point, one full forward and backward of a single row. With
    ``post_norm="frozen"`` on a post-norm model, the scaled layer's post-norm scale is held at its clean value."""
    a = arch_of(model)
    ids = torch.tensor([encode(model, prompt)])
    y = target_ids(model, target)[0]
    names = [a.hook("mlp_key", l) for l in range(a.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
    frozen = post_norm == "frozen" and a.post_norm
    s_clean = clean_scales(model, ids) if frozen else None
    shift = {"midpoint": 0.5, "left": 0.0, "right": 1.0}[rule]
    out = torch.full((a.n_layers, a.d_mlp), math.nan)
    for l in range(a.n_layers) if layers is None else layers:
        act = cache[names[l]][0, -1]
        total = torch.zeros(a.d_mlp, dtype=torch.float64)
        for k in range(steps):
            w = ((k + shift) / steps * act).detach().requires_grad_(True)

            def put(x, hook, w=w):
                x = x.clone()
                x[0, -1] = w
                return x

            hooks = [(names[l], put)] + (frozen_hooks(model, l, s_clean[l]) if frozen else [])
            with torch.enable_grad():
                p = model.run_with_hooks(ids, fwd_hooks=hooks)[0, -1].softmax(-1)[y]
                (g,) = torch.autograd.grad(p, w)
            total += g.double()
        out[l] = (act.double() * total / steps).float()
    return out


# --------------------------------------------------------------------------- integrated gradients


@pytest.mark.parametrize("rule,batch_size,post_norm", [("midpoint", 7, "frozen"), ("left", None, "frozen"),
                                                       ("right", 1, "frozen"), ("midpoint", 7, "live")])
def test_ig_matches_plain_reference(tiny, rule, batch_size, post_norm):
    # batch_size 7 with 5 steps cuts batches in the middle of layers and mixes layers within a batch
    snap = snapshot(tiny)
    got = neuron_attribution(tiny, PROMPT, TARGET, steps=5, rule=rule, batch_size=batch_size, post_norm=post_norm)
    ref = reference_ig(tiny, PROMPT, TARGET, 5, rule, post_norm=post_norm)
    scale = float(ref.abs().max())
    assert scale > 1e-5  # not all zero: the comparison has teeth
    torch.testing.assert_close(got, ref, atol=1e-5 * scale, rtol=1e-4)
    assert_untouched(tiny, snap)


def test_ig_layers_subset_and_batching_agree(tiny):
    full = neuron_attribution(tiny, PROMPT, TARGET, steps=6)
    part = neuron_attribution(tiny, PROMPT, TARGET, steps=6, layers=[-1, 1], batch_size=4)
    L = arch_of(tiny).n_layers
    assert torch.isnan(part[[0, 2]]).all() and torch.isfinite(part[[1, L - 1]]).all()
    torch.testing.assert_close(part[[1, L - 1]], full[[1, L - 1]], atol=1e-7, rtol=1e-5)


def zero_last(x, hook):
    x = x.clone()
    x[0, -1] = 0
    return x


def test_completeness_converges(tiny):
    """Σ_i IG_i → p(x) − p(baseline), error ~ 1/m² (midpoint), with ``post_norm="frozen"`` (the default).

    The baseline: layer l's activation at the answer position zeroed; under a frozen post-norm (Gemma 3)
    that is the layer's post-normed output there set to 0 (w ⊙ 0 / s_clean), written here as such.
    """
    a = arch_of(tiny)
    ids = torch.tensor([encode(tiny, PROMPT)])
    y = target_ids(tiny, TARGET)[0]
    clean = p_answer(tiny, ids, y)
    kind = "mlp_out" if a.post_norm else "mlp_key"
    gaps = [clean - p_answer(tiny, ids, y, [(a.hook(kind, l), zero_last)]) for l in range(a.n_layers)]
    layer = max(range(a.n_layers), key=lambda l: abs(gaps[l]))
    gap = gaps[layer]
    assert abs(gap) > 1e-4
    err = {}
    for rule in ("midpoint", "left"):
        for m in (4, 64):
            total = float(neuron_attribution(tiny, PROMPT, TARGET, steps=m, layers=[layer], rule=rule)[layer].sum())
            err[rule, m] = abs(total - gap)
    assert err["midpoint", 64] < 0.05 * err["midpoint", 4] + 1e-6 * abs(gap), err
    assert err["midpoint", 64] < 1e-2 * abs(gap), err
    assert err["left", 64] < 0.25 * err["left", 4] + 1e-6 * abs(gap), err  # 1/m: slower, but converging
    if a.post_norm:  # f(a) is unchanged by the frozen scale: at α = 1, s_live = s_clean
        s_clean = clean_scales(tiny, ids)
        for l in range(a.n_layers):
            assert p_answer(tiny, ids, y, frozen_hooks(tiny, l, s_clean[l])) == pytest.approx(clean, rel=1e-5)


def test_live_post_norm_sums_to_zero(tiny):
    """With ``post_norm="live"`` on a post-norm model (Gemma 3) the layer's output is scale-invariant in its
    key, so f is flat on (0, 1] and the attributions sum to ~0 at every m (Euler's theorem), not the gap."""
    a = arch_of(tiny)
    if not a.post_norm:
        pytest.skip("no post-norms: 'live' is 'frozen' (tested below)")
    ids = torch.tensor([encode(tiny, PROMPT)])
    y = target_ids(tiny, TARGET)[0]
    clean = p_answer(tiny, ids, y)
    gaps = [clean - p_answer(tiny, ids, y, [(a.hook("mlp_key", l), zero_last)]) for l in range(a.n_layers)]
    layer = max(range(a.n_layers), key=lambda l: abs(gaps[l]))
    gap = gaps[layer]
    assert abs(gap) > 1e-4
    for m in (4, 64):
        total = float(neuron_attribution(tiny, PROMPT, TARGET, steps=m, layers=[layer], post_norm="live")[layer].sum())
        assert abs(total) < 1e-2 * abs(gap), (m, total, gap)  # not the gap: ~0


def test_post_norm_setting_only_matters_with_post_norms(tiny):
    frozen = neuron_attribution(tiny, PROMPT, TARGET, steps=4, post_norm="frozen")
    live = neuron_attribution(tiny, PROMPT, TARGET, steps=4, post_norm="live")
    if arch_of(tiny).post_norm:
        assert (frozen - live).abs().max() > 1e-3 * frozen.abs().max()  # the frozen scale matters
    else:
        assert torch.equal(frozen, live)  # GPT-2, Llama: bit-identical
    with pytest.raises(ValueError, match="post_norm"):
        neuron_attribution(tiny, PROMPT, TARGET, steps=4, post_norm="fixed")


# --------------------------------------------------------------------------- selection


def test_coarse_threshold_ignores_nan_and_needs_a_positive_max():
    x = torch.tensor([[0.1, 1.0, 0.25], [float("nan")] * 3, [0.2, -2.0, 0.19]])
    assert sorted(coarse_neurons(x, 0.2)) == [(0, 1), (0, 2)]  # above 0.2 × 1.0 (0.2 itself is not above)
    assert sorted(coarse_neurons(x, 0.0)) == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 2)]
    assert coarse_neurons(-x.abs(), 0.2) == []


def scores_for(sets, shape=(3, 20)):
    """Scores that rank neurons by how often they occur, ties by position: deterministic."""
    s = torch.zeros(shape)
    for st in sets:
        for l, i in st:
            s[l, i] += 1 + 0.01 * i
    return s


def test_refine_in_band_at_the_start():
    core = {(0, 1), (1, 2), (2, 3)}
    sets = [core | {(0, 10)}, core | {(1, 11)}, core]
    r = refine_neurons(sets, scores_for(sets), refine=0.7)
    assert set(r.neurons) == core and r.fraction == 0.7 and r.trajectory == [(0.7, 3)]


def test_refine_raises_p_until_at_most_five():
    core = {(0, 1), (1, 2), (2, 3)}
    many = {(0, i) for i in range(10, 18)}  # 8 neurons in 3 of the 4 prompts
    sets = [core | many, core | many, core | many, core]
    r = refine_neurons(sets, scores_for(sets), refine=0.7)
    assert r.trajectory == [(0.7, 11), (0.75, 11), (0.8, 3)]
    assert set(r.neurons) == core and r.fraction == 0.8


def test_refine_lowers_p_until_at_least_two():
    sets = [{(0, 1), (1, 2)}, {(0, 1), (1, 2), (2, 7)}, {(2, 9)}]
    r = refine_neurons(sets, scores_for(sets), refine=0.7)
    assert r.trajectory == [(0.7, 0), (0.65, 2)]  # 0.65 × 3 = 1.95: found in 2 of 3 prompts suffices
    assert set(r.neurons) == {(0, 1), (1, 2)}


def test_refine_band_jumped_keeps_the_five_best():
    sets = [{(0, i) for i in range(7)}, {(0, i) for i in range(7)}, {(1, i) for i in range(3)}]
    s = scores_for(sets)
    r = refine_neurons(sets, s, refine=0.7)
    assert r.trajectory == [(0.7, 0), (0.65, 7)]
    assert r.neurons == sorted([(0, i) for i in range(7)], key=lambda n: -float(s[n]))[:5]
    assert "jumped" in r.note and r.fraction == 0.65


def test_refine_limits():
    same = [{(0, i) for i in range(7)}] * 3  # every prompt agrees on 7: still 7 at p = 1
    r = refine_neurons(same, scores_for(same), refine=0.7)
    assert len(r.neurons) == 5 and r.fraction == 1.0 and [t[0] for t in r.trajectory] == [0.7, 0.75, 0.8, 0.85,
                                                                                             0.9, 0.95, 1.0]
    lonely = [{(1, 4)}, set(), set()]  # one neuron in all the coarse sets together
    r = refine_neurons(lonely, scores_for(lonely), refine=0.7)
    assert r.neurons == [(1, 4)] and "only 1" in r.note and r.fraction == 0.05
    assert refine_neurons([set(), set(), set()], torch.zeros(2, 2)).neurons == []
    with pytest.raises(ValueError, match="refine"):
        refine_neurons(lonely, torch.zeros(2, 5), refine=0)


# --------------------------------------------------------------------------- neurons()


def test_neurons_result_save_load_and_tables(tiny, tmp_path):
    snap = snapshot(tiny)
    r = neurons(tiny, REQ, steps=4, progress=False)
    a = arch_of(tiny)
    assert r.attributions.shape == (3, a.n_layers, a.d_mlp) and torch.isfinite(r.attributions).all()
    assert r.prompts == (REQ.text, *REQ.paraphrases) and r.target == "Seattle"
    assert r.answer_id == target_ids(tiny, "Seattle")[0]
    assert len(r.neurons) <= 5 and all(0 <= l < a.n_layers and 0 <= i < a.d_mlp for l, i, _ in r.neurons)
    # each prompt's attributions are that prompt's IG
    torch.testing.assert_close(r.attributions[1], neuron_attribution(tiny, REQ.paraphrases[0], "Seattle", steps=4))
    # the selection is refine_neurons over the coarse sets, scored by the mean
    ref = refine_neurons([coarse_neurons(x, 0.2) for x in r.attributions], r.attributions.mean(0))
    assert [(l, i) for l, i, _ in r.neurons] == ref.neurons and r.settings["refine_used"] == ref.fraction
    for l, i, s in r.neurons:
        assert s == pytest.approx(float(r.attributions[:, l, i].mean()))
    for x, toks in zip(r.activations, r.tokens):
        assert x.shape == (len(toks), len(r.neurons))
    # the IG baseline: p(answer) with one layer's activation at the answer position zeroed, run plainly
    ids = torch.tensor([encode(tiny, REQ.paraphrases[1])])
    y = r.answer_id

    def zero(x, hook):
        x = x.clone()
        x[0, -1] = 0
        return x

    plain = [p_answer(tiny, ids, y, [(a.hook("mlp_key", l), zero)]) for l in range(a.n_layers)]
    torch.testing.assert_close(r.p_baseline[2], torch.tensor(plain), atol=1e-6, rtol=1e-4)
    if a.post_norm:  # the frozen baseline, w ⊙ 0 / s_clean = 0: the same (Gemma's MLP has no bias)
        out0 = [p_answer(tiny, ids, y, [(a.hook("mlp_out", l), zero)]) for l in range(a.n_layers)]
        torch.testing.assert_close(r.p_baseline[2], torch.tensor(out0), atol=1e-6, rtol=1e-4)
    assert r.settings["post_norm"] == "frozen"
    assert r.p_clean[2] == pytest.approx(p_answer(tiny, ids, y), abs=1e-6)
    assert r.completeness().shape == (3, a.n_layers)
    df = r.to_dataframe()
    assert list(df.columns[:4]) == ["layer", "neuron", "score", "found_in"] and len(df) == len(r.neurons)
    assert len(r.to_dataframe(all_neurons=True)) == 3 * a.n_layers * a.d_mlp
    r.save(tmp_path / "n.safetensors")
    back = NeuronResult.load(tmp_path / "n.safetensors")
    assert torch.equal(back.attributions, r.attributions) and torch.equal(back.p_clean, r.p_clean)
    assert torch.equal(back.p_baseline, r.p_baseline)
    assert back.neurons == r.neurons and back.tokens == r.tokens and back.settings == r.settings
    assert all(torch.equal(x, y) for x, y in zip(back.activations, r.activations))
    side = tmp_path / "n.safetensors.json"  # an edited sidecar is refused (tests/test_result_files.py: the rest)
    meta = json.loads(side.read_text())
    del meta["meta"]["settings"]["post_norm"]
    side.write_text(json.dumps(meta))
    with pytest.raises(ResultFileError, match="sidecar was edited"):
        NeuronResult.load(tmp_path / "n.safetensors")
    assert_untouched(tiny, snap)


def test_neurons_prompts_override_and_top1_target(tiny):
    fact = Fact("The {} is in downtown", "Space Needle")  # no target: the model's own answer
    prompts = [PROMPT, "Here is a fact. " + PROMPT, "The Space Needle stands in"]
    r = neurons(tiny, fact, prompts=prompts, steps=3, layers=[2, 3], progress=False)
    with torch.no_grad():
        top = int(tiny(torch.tensor([encode(tiny, PROMPT)]))[0, -1].argmax())
    assert r.answer_id == top and r.target is None and r.prompts == tuple(prompts)
    assert torch.isnan(r.attributions[:, :2]).all() and all(l in (2, 3) for l, _, _ in r.neurons)


def test_neurons_bad_input_leaves_model_untouched(tiny):
    snap = snapshot(tiny)
    with pytest.raises(ValueError, match="at least 3 prompts"):
        neurons(tiny, Fact("The {} is in downtown", "Space Needle", "Seattle"))
    with pytest.raises(ValueError, match="at least 3 prompts"):
        neurons(tiny, REQ, prompts=[PROMPT, PROMPT + " the"])
    with pytest.raises(ValueError, match="non-empty prompt"):
        neurons(tiny, REQ, prompts=[PROMPT, "", "x"])
    with pytest.raises(ValueError, match="layer"):
        neurons(tiny, REQ, layers=[99])
    with pytest.raises(ValueError, match="steps"):
        neurons(tiny, REQ, steps=0)
    with pytest.raises(ValueError, match="rule"):
        neurons(tiny, REQ, rule="trapezoid")
    with pytest.raises(ValueError, match="post_norm"):
        neurons(tiny, REQ, post_norm="clean")
    with pytest.raises(ValueError, match="threshold"):
        neurons(tiny, REQ, threshold=1.5)
    with pytest.raises(TypeError, match="Fact or an EditRequest"):
        neurons(tiny, PROMPT)
    with pytest.raises(ValueError, match="target"):  # an empty target never gets this far
        Fact("The {} is in downtown", "Space Needle", " ")
    with pytest.raises(ValueError, match="exactly one"):  # nor a prompt without the subject
        Fact("The tower is in downtown", "Space Needle", "Seattle")
    assert_untouched(tiny, snap)


def test_exception_mid_attribution_leaves_model_clean(tiny, monkeypatch):
    snap = snapshot(tiny)
    ids = torch.tensor([encode(tiny, PROMPT)])
    with torch.no_grad():
        before = tiny(ids)

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(torch.autograd, "grad", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        neurons(tiny, REQ, steps=2, progress=False)
    monkeypatch.undo()
    assert_untouched(tiny, snap)
    with torch.no_grad():
        assert torch.equal(tiny(ids), before)


# --------------------------------------------------------------------------- suppress / enhance

CHOSEN = [(1, 3), (1, 7), (2, 5)]


def hand_patched(model, ids, chosen, positions, factor):
    """The intervention written plainly: a hook per layer setting (or scaling) each neuron."""
    a = arch_of(model)
    hooks = []
    for layer in sorted({l for l, _ in chosen}):
        def put(x, hook, layer=layer):
            x = x.clone()
            pos = range(x.shape[1]) if positions == "all" else [x.shape[1] - 1] if positions == "last" else positions
            for l, i in chosen:
                if l == layer:
                    for p in pos:
                        x[:, p, i] = 0.0 if factor is None else x[:, p, i] * factor
            return x
        hooks.append((a.hook("mlp_key", layer), put))
    with torch.no_grad():
        return model.run_with_hooks(ids, fwd_hooks=hooks)


@pytest.mark.parametrize("positions", ["last", "all", [1, -1]])
def test_suppress_and_enhance_equal_hand_patched_forwards(tiny, positions):
    ids = torch.tensor([encode(tiny, PROMPT)])
    with torch.no_grad():
        clean = tiny(ids)
        with suppress(tiny, CHOSEN, positions=positions):
            sup = tiny(ids)
        with enhance(tiny, [(l, i, 0.5) for l, i in CHOSEN], 3.0, positions=positions):  # triples are fine
            enh = tiny(ids)
        after = tiny(ids)
    torch.testing.assert_close(sup, hand_patched(tiny, ids, CHOSEN, positions, None), atol=0, rtol=0)
    torch.testing.assert_close(enh, hand_patched(tiny, ids, CHOSEN, positions, 3.0), atol=0, rtol=0)
    assert (sup - clean).abs().max() > 1e-6 and (enh - clean).abs().max() > 1e-6
    assert torch.equal(after, clean)  # nothing left behind


def test_interventions_accept_a_result_and_clean_up_after_exceptions(tiny):
    r = neurons(tiny, REQ, steps=2, progress=False)
    ids = torch.tensor([encode(tiny, PROMPT)])
    with torch.no_grad():
        clean = tiny(ids)
        with suppress(tiny, r):
            via_result = tiny(ids)
    torch.testing.assert_close(via_result, hand_patched(tiny, ids, [(l, i) for l, i, _ in r.neurons], "last", None),
                               atol=0, rtol=0)
    for cm in (suppress(tiny, CHOSEN), enhance(tiny, CHOSEN, 2.0)):
        with pytest.raises(RuntimeError, match="inside"):
            with cm:
                assert any(h._forward_hooks for h in tiny.hook_dict.values())
                raise RuntimeError("inside the context")
        assert all(not h._forward_hooks for h in tiny.hook_dict.values())
    with torch.no_grad():
        assert torch.equal(tiny(ids), clean)


def test_interventions_reject_bad_neurons(tiny):
    d_mlp = arch_of(tiny).d_mlp
    for bad, match in [([(0, d_mlp)], "neuron index"), ([(99, 0)], "layer"), ([(0,)], "layer, index"),
                       ("L0.1", "NeuronResult")]:
        with pytest.raises((ValueError, TypeError), match=match):
            with suppress(tiny, bad):
                pass
    with pytest.raises(ValueError, match="positions"):
        with enhance(tiny, CHOSEN, positions="first"):
            pass
    with pytest.raises(ValueError, match="finite"):
        enhance(tiny, CHOSEN, float("nan"))
    with pytest.raises(IndexError, match="token positions"), suppress(tiny, CHOSEN, positions=[40]), torch.no_grad():
        tiny(torch.tensor([encode(tiny, PROMPT)]))  # the prompt is shorter than 40 tokens
    assert all(not h._forward_hooks for h in tiny.hook_dict.values())


# --------------------------------------------------------------------------- neuron_effect


def test_neuron_effect_groups_controls_and_numbers(tiny):
    from factscope.predict import next_token_logits

    eff = neuron_effect(tiny, CHOSEN, REQ, n_controls=6, seed=3)
    assert eff.groups == ("fact", "related", "unrelated")
    assert [p for p, _ in eff.prompts["fact"]] == [REQ.text, *REQ.paraphrases]
    assert [p for p, _ in eff.prompts["related"]] == list(REQ.neighbours)
    assert len(eff.prompts["unrelated"]) == 16 and all(a != "" for _, a in eff.prompts["unrelated"])
    # controls: matched by layer and count, never a found neuron, seeded
    assert len(eff.controls) == 6
    for c in eff.controls:
        assert sorted(l for l, _ in c) == sorted(l for l, _ in CHOSEN) and not set(c) & set(CHOSEN)
    again = neuron_effect(tiny, CHOSEN, REQ, n_controls=6, seed=3)
    assert again.controls == eff.controls and torch.equal(again.p_control["fact"], eff.p_control["fact"])
    # the numbers are p(answer) with and without the intervention
    prompts = [p for p, _ in eff.prompts["fact"]]
    y = target_ids(tiny, "Seattle")[0]
    torch.testing.assert_close(eff.p_before["fact"], next_token_logits(tiny, prompts).softmax(-1)[:, y])
    with suppress(tiny, eff.controls[2]):
        torch.testing.assert_close(eff.p_control["fact"][2], next_token_logits(tiny, prompts).softmax(-1)[:, y])
    found, ctl = eff.change("fact")
    rel = ((eff.p_found["fact"] - eff.p_before["fact"]) / eff.p_before["fact"]).mean()
    assert found == pytest.approx(float(rel)) and ctl.shape == (6,)
    assert eff.p_value("fact") == (1 + int((ctl <= found).sum())) / 7
    df = eff.to_dataframe()
    assert list(df.group) == ["fact", "related", "unrelated"] and "p_value" in df.columns
    assert len(eff.to_dataframe(per_prompt=True)) == sum(len(v) for v in eff.prompts.values())


def test_neuron_effect_options_and_errors(tiny):
    eff = neuron_effect(tiny, CHOSEN, REQ, control=None, mode="enhance", factor=2.0,
                        unrelated=[("The capital of Japan is", "Tokyo")], related=[Fact("{} is in", "Big Ben", "London")])
    assert eff.controls == () and eff.p_value("fact") is None
    assert eff.prompts["unrelated"] == (("The capital of Japan is", "Tokyo"),)
    assert eff.prompts["related"][-1] == ("Big Ben is in", "London")
    with enhance(tiny, CHOSEN, 2.0):
        from factscope.predict import next_token_logits

        y = target_ids(tiny, "Seattle")[0]
        torch.testing.assert_close(eff.p_found["fact"], next_token_logits(tiny, [REQ.text, *REQ.paraphrases])
                                   .softmax(-1)[:, y])
    with pytest.raises(ValueError, match="mode"):
        neuron_effect(tiny, CHOSEN, REQ, mode="ablate")
    with pytest.raises(ValueError, match="at least one neuron"):
        neuron_effect(tiny, [], REQ)
    with pytest.raises(ValueError, match="answer"):
        neuron_effect(tiny, CHOSEN, Fact("The {} is in downtown", "Space Needle"))
    assert all(not h._forward_hooks for h in tiny.hook_dict.values())
