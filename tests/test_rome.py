"""ROME on tiny random models: the rank-one constraint, the averaged key, v*, and bad input."""

from __future__ import annotations

import pytest
import torch

from factscope import EditRequest, Fact, arch_of, encode, subject_span
from factscope.edit.rome import (
    ROMEConfig,
    compute_k_star,
    compute_v_star,
    context_templates,
    rank_one_update,
    realised_shares,
    rome,
    template_keys,
    update_response,
)

REQ = EditRequest("{} is in downtown", "Space Needle", "Paris")
FAST = ROMEConfig(context_lengths=((3, 2), (5, 2)), v_steps=5)
TEXTS = ["The Eiffel Tower is in Paris.", "Michael Jordan played basketball.", "Toyota makes cars in Japan.",
         "The Space Needle is in downtown Seattle.", "The mother tongue of Danielle Darrieux is French."] * 8


def keys_C(model, layer):
    """E[kkᵀ] over TEXTS, written plainly (float64), with a small ridge so it is well conditioned."""
    a = arch_of(model)
    ks = []
    for t in TEXTS:
        _, cache = model.run_with_cache(torch.tensor([encode(model, t)]), names_filter=lambda n: n == a.hook("mlp_key", layer))
        ks.append(cache[a.hook("mlp_key", layer)][0, 1:].double())
    k = torch.cat(ks)
    return k.T @ k / len(k) + 1e-3 * torch.eye(k.shape[1], dtype=torch.float64)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same(model, snap):
    for n, p in model.named_parameters():
        assert torch.equal(p, snap[n]), n


def test_rank_one_update_closed_form():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(12, 12, generator=g, dtype=torch.float64)
    C = A @ A.T + 0.1 * torch.eye(12, dtype=torch.float64)
    k, d = torch.randn(12, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    u, lam = rank_one_update(C, k, d)
    dW = u @ lam  # [d_mlp, d_model]
    torch.testing.assert_close(k @ dW, d, atol=1e-12, rtol=0)  # k* maps to v* exactly
    torch.testing.assert_close(u[:, 0], torch.linalg.inv(C) @ k, atol=1e-10, rtol=0)  # u = C⁻¹k* (checked by inverse)
    r = torch.randn(12, generator=g, dtype=torch.float64)
    k_perp = r - (r @ u[:, 0]) / (u[:, 0] @ u[:, 0]) * u[:, 0]  # uᵀk = 0
    assert (k_perp @ dW).abs().max() < 1e-12


def test_rank_one_update_rejects_bad_statistics():
    k, d = torch.ones(4, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN"):
        rank_one_update(torch.full((4, 4), float("nan")), k, d)
    with pytest.raises(ValueError, match="positive definite"):
        rank_one_update(torch.zeros(4, 4), k, d)
    with pytest.raises(ValueError, match="shape"):
        rank_one_update(torch.eye(3), k, d)


def test_templates_are_seeded_and_leave_global_rng(tiny):
    state = torch.get_rng_state()
    a = context_templates(tiny, ROMEConfig(context_lengths=((3, 3),), seed=1))
    assert torch.equal(state, torch.get_rng_state())
    b = context_templates(tiny, ROMEConfig(context_lengths=((3, 3),), seed=2))
    assert a[0] == "{}" and len(a) == 4 and all(t.endswith(". {}") for t in a[1:])
    assert a != b
    import sys

    sys.modules["factscope.edit.templates"]._TEMPLATES.clear()  # recomputed from scratch: identical
    assert context_templates(tiny, ROMEConfig(context_lengths=((3, 3),), seed=1)) == a


def test_k_star_is_the_template_average(tiny):
    templates = context_templates(tiny, FAST)
    k = compute_k_star(tiny, REQ, 1, templates)
    a = arch_of(tiny)
    name = a.hook("mlp_key", 1)
    ks = []
    for t in templates:  # one unpadded run per template
        text = t.format(REQ.prompt)
        _, cache = tiny.run_with_cache(torch.tensor([encode(tiny, text.format(REQ.subject))]),
                                       names_filter=lambda n: n == name)
        ks.append(cache[name][0, subject_span(tiny, Fact(text, REQ.subject))[1] - 1].double())
    torch.testing.assert_close(k, torch.stack(ks).mean(0), atol=1e-5, rtol=1e-5)
    for w in (0.0, 0.5, 1.0):  # the bare prompt weighted w, the T-1 prefixed templates (1-w)/(T-1) each
        want = w * ks[templates.index("{}")] + (1 - w) * torch.stack([k for t, k in zip(templates, ks) if t != "{}"]).mean(0)
        torch.testing.assert_close(compute_k_star(tiny, REQ, 1, templates, bare_weight=w), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("templates, w, want", [
    (("{}", "a. {}", "b. {}", "c. {}"), None, [0.25] * 4),
    (("{}", "a. {}", "b. {}", "c. {}"), 0.4, [0.4, 0.2, 0.2, 0.2]),
    (("a. {}", "{}", "b. {}"), 1.0, [0.0, 1.0, 0.0]),
    (("{}",), 0.3, [1.0]),
])
def test_template_weights(templates, w, want):
    from factscope.edit.templates import template_weights

    got = template_weights(templates, w)
    assert got.dtype == torch.float64 and float(got.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("templates, w, match", [((), None, "at least one"), (("a. {}",), 0.5, "bare prompt"),
                                                 (("{}", "a. {}"), 1.5, r"\[0, 1\]")])
def test_template_weights_bad_input(templates, w, match):
    from factscope.edit.templates import template_weights

    with pytest.raises(ValueError, match=match):
        template_weights(templates, w)
    with pytest.raises(ValueError, match="bare_weight"):
        ROMEConfig(bare_weight=-0.1)


def test_rome_writes_delta_at_the_weighted_k_star(tiny):
    """With ``bare_weight``, the constraint ``k* @ (W + ΔW) = k* @ W + δ`` holds at the weighted k*, and the
    bare prompt's share of δ (``info["bare_share"]``) is the one `realised_shares` gives for that k*."""
    cfg = ROMEConfig(context_lengths=((3, 2), (5, 2)), v_steps=5, bare_weight=0.6)
    C, a = keys_C(tiny, 1), arch_of(tiny)
    templates = context_templates(tiny, cfg)
    keys = template_keys(tiny, REQ, 1, templates)
    k_star = 0.6 * keys[0] + 0.4 * keys[1:len(templates)].mean(0)  # templates[0] is "{}"
    e = rome(tiny, REQ, layer=1, config=cfg, C=C, progress=False, verbose=False)
    W0 = a.W_out(tiny, 1).detach().double().clone()
    delta = compute_v_star(tiny, REQ, 1, templates, cfg).delta
    with e.applied(tiny):
        moved = k_star @ a.W_out(tiny, 1).detach().double() - k_star @ W0
    torch.testing.assert_close(moved, delta, atol=1e-4 * float(delta.abs().max()), rtol=1e-4)
    assert e.info["bare_share"] == pytest.approx(float(realised_shares(keys, C, k_star)[0]), rel=1e-6)


def test_v_star_lowers_the_loss_and_respects_the_clamp(tiny):
    templates = context_templates(tiny, FAST)
    v = compute_v_star(tiny, REQ, 2, templates, ROMEConfig(v_steps=8, early_stop_loss=0.0))
    assert len(v.losses) == 8 and v.losses[-1] < v.losses[0]
    assert v.p_new[-1] > v.p_new[0]
    tight = compute_v_star(tiny, REQ, 2, templates, ROMEConfig(v_steps=4, v_lr=5.0, clamp_norm_factor=0.01))
    assert float(tight.delta.norm()) <= 0.01 * tight.v0_norm * (1 + 1e-5)
    once = compute_v_star(tiny, REQ, 2, templates, ROMEConfig(v_steps=5, early_stop_loss=1e9))
    assert len(once.losses) == 1 and float(once.delta.norm()) == 0.0  # stopped before any step


def test_v_star_prefix_reuse_gives_the_same_numbers(tiny):
    templates = context_templates(tiny, FAST)
    cfg = ROMEConfig(v_steps=4, early_stop_loss=0.0)
    fast = compute_v_star(tiny, REQ, 1, templates, cfg)
    plain = compute_v_star(tiny, REQ, 1, templates, cfg, reuse_prefix=False)
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(plain.losses), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.delta, plain.delta, atol=1e-5, rtol=1e-4)
    assert float(fast.delta.norm()) > 0


def test_rome_edit_meets_the_constraint_and_reverts(tiny):
    layer = 1
    snap = snapshot(tiny)
    C = keys_C(tiny, layer)
    e = rome(tiny, REQ, layer=layer, config=FAST, C=C, progress=False, verbose=False)
    assert_same(tiny, snap)  # computing an edit changes nothing
    templates = context_templates(tiny, FAST)
    k_star = compute_k_star(tiny, REQ, layer, templates)
    a = arch_of(tiny)
    W0 = a.W_out(tiny, layer).detach().double().clone()
    delta = compute_v_star(tiny, REQ, layer, templates, FAST).delta  # deterministic: the same δ again
    assert float(delta.norm()) == pytest.approx(e.info["delta_norm"], rel=1e-6)
    with e.applied(tiny):
        W1 = a.W_out(tiny, layer).detach().double()
        # k* @ W_new = k* @ W + δ: the output at the averaged key moves by exactly δ
        moved = k_star @ W1 - k_star @ W0
        torch.testing.assert_close(moved, delta, atol=1e-4 * float(delta.abs().max()), rtol=1e-4)
        # the same averaged k* in v* and in the update: the mean over template prompts of the MLP
        # output at the subject's last token moves by exactly what k* does (linearity)
        outs = []
        name = a.hook("mlp_key", layer)
        for t in templates:
            text = t.format(REQ.prompt)
            _, cache = tiny.run_with_cache(torch.tensor([encode(tiny, text.format(REQ.subject))]),
                                           names_filter=lambda n: n == name)
            outs.append(cache[name][0, subject_span(tiny, Fact(text, REQ.subject))[1] - 1].double())
        k_mean = torch.stack(outs).mean(0)
        torch.testing.assert_close(k_mean @ W1 - k_mean @ W0, moved, atol=1e-4, rtol=1e-4)
        # a key with (C⁻¹k*)ᵀk = 0 maps as before
        u = torch.linalg.solve(C, k_star)
        r = torch.randn(k_star.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        k_perp = r - (r @ u) / (u @ u) * u
        assert float((k_perp @ W1 - k_perp @ W0).abs().max()) < 1e-4 * float(moved.abs().max())
        assert e.rank(layer) == 1 and e.layers == (layer,)
    assert_same(tiny, snap)


def test_rome_bad_input_leaves_model_untouched(tiny):
    snap = snapshot(tiny)
    C = keys_C(tiny, 1)
    with pytest.raises(ValueError, match="layer"):
        rome(tiny, REQ, layer=99, config=FAST, C=C, progress=False, verbose=False)
    with pytest.raises(ValueError, match="NaN"):
        rome(tiny, REQ, layer=1, config=FAST, C=torch.full_like(C, float("nan")), progress=False, verbose=False)
    with pytest.raises(TypeError, match="EditRequest"):
        rome(tiny, Fact("{} is in downtown", "Space Needle", "Seattle"), layer=1, C=C)
    assert_same(tiny, snap)
    with pytest.raises(ValueError, match="target"):  # empty or whitespace targets never get this far
        EditRequest("{} is in downtown", "Space Needle", "  ")
    with pytest.raises(ValueError):  # no place for the subject
        EditRequest("Where is it", "Space Needle", "Paris")
    with pytest.raises(ValueError, match="v_steps"):
        ROMEConfig(v_steps=0)


def test_rome_warns_when_the_target_is_already_the_answer(tiny):
    from factscope.predict import predict

    # a prompt whose top-1 token is a space-led word, so that it can be stated as a target
    for prompt in ["{} is in downtown", "{} is", "{} is a", "{} plays", "The {}", "{} in", "{} lives in the"]:
        top = predict(tiny, [prompt.format(REQ.subject)], k=1)[0].answer.strip()
        if top and "{" not in top and predict(tiny, [prompt.format(REQ.subject)], [top])[0].correct:
            break
    else:
        pytest.skip("no prompt whose top answer is a stateable target")
    req = EditRequest(prompt, REQ.subject, top)
    with pytest.warns(UserWarning, match="already answers"):
        rome(tiny, req, layer=1, config=FAST, C=keys_C(tiny, 1), progress=False, verbose=False)


def test_update_response_is_the_fraction_of_delta_the_edit_writes(tiny):
    """max over positions of ‖k @ ΔW‖ / ‖δ‖ per prompt, from plain unpadded keys and the edit's factors;
    and, where the response is large, what the applied edit really does to the MLP's output."""
    layer = 1
    C = keys_C(tiny, layer)
    e = rome(tiny, REQ, layer=layer, config=FAST, C=C, progress=False, verbose=False)
    k_star = compute_k_star(tiny, REQ, layer, context_templates(tiny, FAST))
    u, lam = e.deltas[layer]
    prompts = [REQ.text, "The Pike Place Market is in downtown", "Toyota makes cars in Japan."]
    got = update_response(tiny, prompts, layer, u[:, 0], k_star)  # batched, left-padded
    a = arch_of(tiny)
    delta = e.info["delta_norm"]

    def cached(p, kind):
        name = a.hook(kind, layer)
        _, cache = tiny.run_with_cache(torch.tensor([encode(tiny, p)]), names_filter=lambda n: n == name)
        return cache[name][0, 1:].double()  # BOS excluded

    want = torch.tensor([float((cached(p, "mlp_key") @ u @ lam).norm(dim=-1).max()) / delta for p in prompts],
                        dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-5)
    i = int(got.argmax())
    assert got[i] > 0.1  # large enough to measure above float32 rounding of W
    before = cached(prompts[i], "mlp_raw_out")
    with e.applied(tiny):
        after = cached(prompts[i], "mlp_raw_out")
    measured = float((after - before).norm(dim=-1).max()) / delta
    assert measured == pytest.approx(float(got[i]), rel=2e-2)


def test_realised_shares_are_what_the_update_writes_at_each_prompt(tiny):
    """k_r @ ΔW = s_r · δ for every template row (plain matmul), and the template rows' shares average to 1."""
    templates = context_templates(tiny, FAST)
    keys = template_keys(tiny, REQ, 1, templates, "{} is a")  # [row, d_mlp]
    k_star, C = keys[:len(templates)].mean(0), keys_C(tiny, 1)
    s = realised_shares(keys, C, k_star)
    delta = torch.randn(arch_of(tiny).d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u, lam = rank_one_update(C, k_star, delta)
    torch.testing.assert_close(keys @ (u @ lam), s[:, None] * delta[None], atol=1e-8, rtol=1e-6)
    assert abs(float(s[:len(templates)].mean()) - 1) < 1e-9
    torch.testing.assert_close(k_star, compute_k_star(tiny, REQ, 1, templates))


def test_v_star_shares_scale_delta_and_the_worst_row_stop_waits_for_every_row(tiny):
    templates = context_templates(tiny, FAST)
    R = len(templates)
    cfg = ROMEConfig(v_steps=4, early_stop_loss=0.0)
    plain = compute_v_star(tiny, REQ, 1, templates, cfg)
    ones = compute_v_star(tiny, REQ, 1, templates, cfg, shares=torch.ones(R + 1))
    torch.testing.assert_close(plain.delta, ones.delta)
    # δ added at twice the size from zero: the first loss (δ = 0) agrees, the steps differ
    twice = compute_v_star(tiny, REQ, 1, templates, cfg, shares=2 * torch.ones(R + 1))
    assert twice.losses[0] == pytest.approx(plain.losses[0]) and not torch.allclose(twice.delta, plain.delta)
    # at δ = 0 the loss is the mean row NLL; a bound just above it stops "mean" at once but not
    # "worst", since the rows' NLLs differ and the largest lies above their mean
    bound = plain.losses[0] + 1e-4
    mean_stop = compute_v_star(tiny, REQ, 1, templates, ROMEConfig(v_steps=3, early_stop_loss=bound))
    worst_stop = compute_v_star(tiny, REQ, 1, templates, ROMEConfig(v_steps=3, early_stop_loss=bound,
                                                                    early_stop_on="worst"))
    assert len(mean_stop.losses) == 1 and len(worst_stop.losses) > 1
    with pytest.raises(ValueError, match="early_stop_on"):
        ROMEConfig(early_stop_on="median")
