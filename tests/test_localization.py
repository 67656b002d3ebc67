"""The Hase et al. localization-vs-editing probe: tracing effects, rewrite scores and regressions
checked against plain recomputations; the model left bit-identical; bad input refused up front."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import f as f_dist

from factscope import EditRequest, arch_of, encode, fingerprint, target_ids
from factscope.edit import Edit, handle
from factscope.locate.tracing import trace
from factscope.probes.localization import (
    HASE_ROME_GPTJ,
    hase_regressions,
    localization_vs_editing,
    rewrite_score,
    tracing_effect,
)

# short prompts (tiny Gemma 3's sliding window is 16 tokens); on each tiny model 3 to 5 of them have
# p_clean > p_corrupted under the settings below, the others exercise the NaN path
FACTS = [EditRequest("The {} is in downtown", "Space Needle", "London", target_true="Seattle"),
         EditRequest("{} is located in", "Eiffel Tower", "Rome", target_true="Paris"),
         EditRequest("{} plays the sport of", "Michael Jordan", "ice hockey", target_true="basketball"),
         EditRequest("{} was made by", "Toyota", "Ford", target_true="Japan"),
         EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", target_true="French"),
         EditRequest("{} is in the city of", "Colosseum", "Paris", target_true="Rome"),
         EditRequest("The {} is located in", "Louvre", "Berlin", target_true="Paris"),
         EditRequest("{} is a famous", "Tower Bridge", "Tokyo", target_true="London")]
TRACE = dict(window=2, samples=3, seed=0)


def fake_delta(model, request, layer):
    """A known dense ΔW, different per (request, layer), big enough to move p(target_new)."""
    a = arch_of(model)
    g = torch.Generator().manual_seed(1000 * layer + sum(map(ord, request.subject)))
    return 0.2 * (layer + 1) * torch.randn(a.d_mlp, a.d_model, generator=g)


def fake_editor(model, request, layer):
    return Edit(method="fake", fingerprint=fingerprint(model), deltas={layer: fake_delta(model, request, layer)},
                requests=(request,))


def run(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # wrong answers and no-damage facts on random models
        return localization_vs_editing(model, FACTS, edit_fn=fake_editor, progress=False, verbose=False,
                                       **{**TRACE, **kw})


@pytest.fixture(scope="module")
def result(tiny):
    """One fake-editor run per tiny model, shared by the tests that only read it."""
    return run(tiny)


def plain_p(model, text, target, delta=None, layer=None):
    """p(all of " " + target's tokens | text) by one unpadded forward, log_softmax and a sum; with
    ``delta`` added to layer ``layer``'s W_out (and restored) by hand."""
    a = arch_of(model)
    t = target_ids(model, target)
    ids = torch.tensor([encode(model, text) + t])
    W = a.W_out(model, layer) if delta is not None else None
    saved = W.detach().clone() if W is not None else None
    try:
        if W is not None:
            with torch.no_grad():
                W.add_(delta)
        with torch.no_grad():
            lp = model(ids)[0, -len(t) - 1:-1].double().log_softmax(-1)  # the positions predicting the target
    finally:
        if W is not None:
            with torch.no_grad():
                W.copy_(saved)
    return math.exp(float(sum(lp[i, tok] for i, tok in enumerate(t))))


def plain_fits(te, rs):
    """R² and RSS of edit ~ layer dummies / ~ tracing / ~ both, by numpy.linalg.lstsq on a design
    built by hand (finite facts only)."""
    keep = np.isfinite(te).all(1) & np.isfinite(rs).all(1)
    te, rs = te[keep], rs[keep]
    F_, L = te.shape
    y, x, dummies = [], [], []
    for f in range(F_):
        for l in range(L):
            y.append(rs[f, l])
            x.append(te[f, l])
            dummies.append([1.0 if l == k else 0.0 for k in range(1, L)])
    y, x, dummies = np.array(y), np.array(x), np.array(dummies).reshape(len(y), L - 1)
    one = np.ones((len(y), 1))
    designs = {"layer": np.hstack([one, dummies]), "tracing": np.hstack([one, x[:, None]]),
               "both": np.hstack([one, dummies, x[:, None]])}
    out = {}
    for k, A in designs.items():
        coef = np.linalg.lstsq(A, y, rcond=None)[0]
        rss = float(((y - A @ coef) ** 2).sum())
        out[k] = (1 - rss / float(((y - y.mean()) ** 2).sum()), rss, A.shape[1], len(y))
    return out


def plain_f(small, big):
    (_, rss_s, k_s, n), (_, rss_b, k_b, _) = small, big
    F = ((rss_s - rss_b) / (k_b - k_s)) / (rss_b / (n - k_b))
    return F, float(f_dist.sf(F, k_b - k_s, n - k_b))


# --------------------------------------------------------------------------- the quantities


def test_tracing_effect_matches_a_hand_reduction_of_the_trace(model, result):
    L = arch_of(model).n_layers
    finite = 0
    for i, r in enumerate(FACTS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr = trace(model, r, kind="mlp", **TRACE)
        sc = tr.scores["mlp"]
        for l in range(L):
            if tr.clean > tr.corrupted:
                want = max((float(sc[t, l]) - tr.corrupted) / (tr.clean - tr.corrupted) for t in range(sc.shape[0]))
                assert float(result.tracing[i, l]) == pytest.approx(want, rel=1e-9, abs=1e-12)
                finite += 1
            else:
                assert math.isnan(float(result.tracing[i, l]))
        assert float(result.p_clean[i]) == tr.clean and float(result.p_corrupted[i]) == tr.corrupted
    assert 3 * L <= finite < len(FACTS) * L  # both paths exercised
    assert float(result.tracing.nan_to_num().abs().max()) > 0.05  # not all zero: the comparison has teeth


def test_tracing_effect_function():
    sc = torch.tensor([[0.1, 0.2], [0.5, 0.15]])
    torch.testing.assert_close(tracing_effect(sc, 0.6, 0.1), torch.tensor([0.8, 0.2], dtype=torch.float64))
    assert torch.isnan(tracing_effect(sc, 0.1, 0.1)).all() and torch.isnan(tracing_effect(sc, 0.1, 0.3)).all()


def test_rewrite_score_matches_a_plain_forward_with_the_known_edit(model, result):
    for i, r in enumerate(FACTS):
        p = plain_p(model, r.text, r.target_new)
        assert result.p_before[i].tolist() == pytest.approx([p] * len(result.layers), rel=1e-5)
        for j, l in enumerate(result.layers):
            p_star = plain_p(model, r.text, r.target_new, fake_delta(model, r, l), l)
            assert float(result.p_after[i, j]) == pytest.approx(p_star, rel=1e-4)
            assert float(result.edit_score[i, j]) == pytest.approx((p_star - p) / (1 - p), rel=1e-4, abs=1e-12)
    # the edits move p: the scores differ across cells (the regressions below have something to explain)
    rs = result.edit_score
    assert float(rs.std()) > 0.1 * float(rs.abs().mean()) > 0 and (result.p_after != result.p_before).all()
    assert rewrite_score(0.2, 0.6) == pytest.approx(0.5) and math.isnan(rewrite_score(1.0, 1.0))


def test_multi_token_targets_use_the_sum_of_log_probs(model, result):
    i = 2  # "ice hockey": several tokens on every tiny tokenizer
    r = FACTS[i]
    t = target_ids(model, r.target_new)
    assert len(t) > 1
    ids = torch.tensor([encode(model, r.text) + t])
    with torch.no_grad():
        lp = model(ids)[0, -len(t) - 1:-1].double().log_softmax(-1)
    per_token = [float(lp[k, tok]) for k, tok in enumerate(t)]
    assert float(result.p_before[i, 0]) == pytest.approx(math.exp(sum(per_token)), rel=1e-5)
    assert float(result.p_before[i, 0]) != pytest.approx(math.exp(np.mean(per_token)), rel=1e-2)


# --------------------------------------------------------------------------- regressions


def test_r2_and_f_tests_match_plain_least_squares(result):
    te, rs = result.tracing.numpy(), result.edit_score.numpy()
    want = plain_fits(te, rs)
    for k in ("layer", "tracing", "both"):
        assert result.fits[k].r2 == pytest.approx(want[k][0], abs=1e-10)
        assert result.fits[k].n == want[k][3] == 4 * result.n_facts_used
    F, p = plain_f(want["layer"], want["both"])
    assert result.f_tests["tracing_over_layer"] == pytest.approx((F, p), rel=1e-6)
    F2, p2 = plain_f(want["tracing"], want["both"])
    assert result.f_tests["layer_over_tracing"] == pytest.approx((F2, p2), rel=1e-6)
    assert 0 < result.fits["layer"].r2 < 1  # the fits are not degenerate
    summ = result.summary()
    assert summ["r2"].iloc[:3].tolist() == pytest.approx([want[k][0] for k in ("layer", "tracing", "both")], abs=1e-10)
    assert summ["p_value"].iloc[3] == pytest.approx(p, rel=1e-6)
    assert summ["delta_r2"].iloc[3] == pytest.approx(want["both"][0] - want["layer"][0], abs=1e-10)
    assert result.delta_r2 == pytest.approx(want["both"][0] - want["layer"][0], abs=1e-10)


def test_regressions_tell_a_tracing_signal_from_none():
    rng = np.random.default_rng(0)
    F_, L = 12, 6
    te = rng.uniform(0, 1, (F_, L))
    layer_effect = np.linspace(0.9, 0.3, L)[None]
    noise = 0.05 * rng.normal(size=(F_, L))
    fits, tests, used = hase_regressions(te, layer_effect + noise)  # tracing irrelevant
    assert used == F_ and fits["layer"].r2 > 0.9 and tests["tracing_over_layer"][1] > 0.05
    fits, tests, _ = hase_regressions(te, layer_effect + 0.5 * te + noise)  # tracing matters
    assert tests["tracing_over_layer"][1] < 1e-10 and fits["both"].r2 - fits["layer"].r2 > 0.2
    te[3, 2] = np.nan  # a fact without a tracing effect is dropped whole
    fits, _, used = hase_regressions(te, layer_effect + noise)
    assert used == F_ - 1 and fits["layer"].n == (F_ - 1) * L
    with pytest.raises(ValueError, match="shape"):
        hase_regressions(te, te[:, :3])
    fits, tests, used = hase_regressions(np.full((3, L), np.nan), layer_effect.repeat(3, 0))  # nothing usable
    assert used == 0 and math.isnan(fits["both"].r2) and all(math.isnan(v) for t in tests.values() for v in t)


def _with_tests(result, F, p, delta):
    fits = dict(result.fits)
    base = result.fits["layer"]
    fits["both"] = type(base)(coef=base.coef, r2=base.r2 + delta, rss=base.rss, df_resid=base.df_resid,
                              rank=base.rank + 1, n=base.n)
    tests = {"tracing_over_layer": (F, p), "layer_over_tracing": (1.0, 0.5)}
    return dataclasses.replace(result, fits=fits, f_tests=tests)


def test_verdict_wording(result):
    assert "does not inform" in _with_tests(result, 0.5, 0.48, 0.01).verdict
    assert "barely informs" in _with_tests(result, 9.0, 0.003, 0.01).verdict
    v = _with_tests(result, 30.0, 1e-6, 0.2).verdict
    assert v.startswith("tracing adds ΔR² = 0.200 over layer (F = 30.00")
    assert v.endswith("localization informs editing here")
    assert "undefined" in _with_tests(result, math.nan, math.nan, 0.0).verdict
    text = str(result)
    assert result.verdict in text and f"{HASE_ROME_GPTJ['layer']:.3f}" in text


def test_dataframe_has_one_row_per_cell(result):
    df = result.to_dataframe()
    assert len(df) == len(FACTS) * len(result.layers)
    row = df[(df.fact == 2) & (df.layer == 3)].iloc[0]
    assert row.edit_score == pytest.approx(float(result.edit_score[2, 3]))
    assert row.tracing == pytest.approx(float(result.tracing[2, 3]), nan_ok=True)
    assert row.target_new == "ice hockey"
    assert df.used.sum() == result.n_facts_used * len(result.layers)


def test_layers_subset_and_negative_layers(model):
    r = run(model, layers=[-1, 1])
    assert r.layers == (arch_of(model).n_layers - 1, 1)
    full = run(model)
    torch.testing.assert_close(r.edit_score, full.edit_score[:, [arch_of(model).n_layers - 1, 1]])
    torch.testing.assert_close(r.tracing, full.tracing[:, [arch_of(model).n_layers - 1, 1]], equal_nan=True)


# --------------------------------------------------------------------------- the model is left alone


@pytest.mark.parametrize("editor", ["rome", "memit", "alphaedit", "ft-l"])
def test_model_is_bit_identical_after_real_editors(model, editor):
    from factscope.edit import AlphaEditConfig, FTConfig, MEMITConfig, ROMEConfig

    cfg = {"rome": ROMEConfig(context_lengths=((3, 2),), v_steps=3),
           "memit": MEMITConfig(context_lengths=((3, 2),), v_steps=3),
           "alphaedit": AlphaEditConfig(context_lengths=((3, 2),), v_steps=3, null_space_threshold=1e9),  # P = I here
           "ft-l": FTConfig(steps=2, lr=1e-2, norm_bound=5e-2)}[editor]
    snap = {n: p.detach().clone() for n, p in model.named_parameters()}
    fp = fingerprint(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = localization_vs_editing(model, FACTS[:2], layers=[1, 2], editor=editor, config=cfg, progress=False,
                                    verbose=False, **TRACE)
    assert all(torch.equal(p, snap[n]) for n, p in model.named_parameters())
    assert fingerprint(model) == fp and not handle._APPLIED.get(model)
    assert r.settings["editor"] == editor and r.edit_score.shape == (2, 2)
    assert torch.isfinite(r.p_after).all() and (r.p_after != r.p_before).any()  # the edits did something


def test_fake_editor_run_leaves_the_model_bit_identical(model):
    snap = {n: p.detach().clone() for n, p in model.named_parameters()}
    run(model)
    assert all(torch.equal(p, snap[n]) for n, p in model.named_parameters())


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw,err,match", [
    (dict(facts=[]), ValueError, "at least one EditRequest"),
    (dict(facts="The Eiffel Tower"), TypeError, "sequence of EditRequests"),
    (dict(facts=[FACTS[0], ("a", "b")]), TypeError, r"facts\[1\] to be an EditRequest, got tuple"),
    (dict(facts=[EditRequest("{} is in", "Louvre", "Rome")]), ValueError, "target_true"),
    (dict(layers=[0, 99]), ValueError, r"layer in \[-4, 4\).*got 99"),
    (dict(layers=[]), ValueError, "non-empty sequence"),
    (dict(layers=[1, 1]), ValueError, "distinct layers"),
    (dict(layers=["1"]), TypeError, "integer layer"),
    (dict(editor="kn"), ValueError, r"editor to be one of \['rome', 'memit', 'alphaedit', 'ft-l'\].*'kn'.*own layers"),
    (dict(editor="bogus"), ValueError, r"editor to be one of \['rome', 'memit', 'alphaedit', 'ft-l'\].*'bogus'"),
    (dict(editor="rome", config="fast"), TypeError, "ROMEConfig"),
    (dict(edit_fn=fake_editor, config=object()), ValueError, "config=None with a custom edit_fn"),
    (dict(edit_fn="rome"), TypeError, "callable"),
    (dict(window=0), ValueError, r"window to be an integer in \[1, 4\], got 0"),
    (dict(samples=0), ValueError, "samples"),
    (dict(seed=-1), ValueError, "seed"),
])
def test_bad_input_is_refused_before_any_work(model, monkeypatch, kw, err, match):
    import factscope.locate.tracing as tracing_mod

    def no_trace(*a, **k):
        raise AssertionError("trace was called before validation finished")

    monkeypatch.setattr(tracing_mod, "trace", no_trace)
    kw = {"facts": FACTS[:2], "window": 2, **kw}
    facts = kw.pop("facts")
    with pytest.raises(err, match=match):
        localization_vs_editing(model, facts, progress=False, verbose=False, **kw)


def test_an_edit_fn_that_returns_no_edit_is_refused(model):
    with pytest.raises(TypeError, match="return an Edit, got NoneType"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        localization_vs_editing(model, FACTS[:1], edit_fn=lambda m, r, l: None, progress=False, verbose=False,
                                **TRACE)


# --------------------------------------------------------------------------- figure


def test_plot_localization(result, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from factscope.figures.localization_plots import plot_localization

    fig = plot_localization(result)
    axes = fig.get_axes()
    assert len(axes) == 4  # three panels and the colour bar
    scatter = axes[0].collections[0]
    assert len(scatter.get_offsets()) == result.n_facts_used * len(result.layers)
    bars = [p.get_height() for p in axes[2].patches]
    assert bars == pytest.approx([result.fits[k].r2 for k in ("layer", "tracing", "both")])
    fig.savefig(tmp_path / "loc.png")
    assert (tmp_path / "loc.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="3 axes"):
        plot_localization(result, axes=axes[:2])


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_localization_on_gemma(gemma):
    from factscope import builtin_facts
    from factscope.edit import ROMEConfig

    facts = builtin_facts()[:3]
    snap = {n: p.detach().clone() for n, p in gemma.named_parameters()}
    cheap = ROMEConfig(context_lengths=((5, 3),), v_steps=6)
    r = localization_vs_editing(gemma, facts, layers=[2, 6, 12], config=cheap, progress=False, verbose=False)
    assert all(torch.equal(p, snap[n]) for n, p in gemma.named_parameters())
    print(r, r.summary().to_string(), sep="\n")
    df = r.to_dataframe()
    te = df.pivot(index="fact", columns="layer", values="tracing")[list(r.layers)].to_numpy()
    rs = df.pivot(index="fact", columns="layer", values="edit_score")[list(r.layers)].to_numpy()
    want = plain_fits(te, rs)
    for k in ("layer", "tracing", "both"):
        assert r.fits[k].r2 == pytest.approx(want[k][0], abs=1e-10)
    assert r.n_facts_used >= 2
    assert float(r.edit_score.max()) > 0.1  # ROME raises p(target_new) somewhere
