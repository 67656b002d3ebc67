"""What predicts edit locality: NS, neighbour KL and flips per (request, layer) checked against plain
forwards with the edit added by hand; the regressions against numpy least squares, the F formula and a
hand-made bootstrap; key specificity against ROME's own pieces; the model left bit-identical; bad input
refused up front; the result saved and loaded; the figure drawn."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import f as f_dist

from factscope import EditRequest, arch_of, builtin_facts, encode, fingerprint, synthetic_requests, target_ids
from factscope.edit import Edit, handle
from factscope.locate.tracing import trace
from factscope.probes import LocalityResult, locality_predictors
from factscope.probes.locality_predictors import F_TESTS, OUTCOMES, PREDICTOR_SETS, locality_regressions

# synthetic people (2 neighbour prompts each); with the trace below, 3 or 4 of them have p_clean >
# p_corrupted on each tiny model (gpt2: all but the first, llama: all, gemma3: all but the last), so
# the regressions have 3-4 requests and the NaN path is exercised too
REQUESTS = [synthetic_requests(10)[i] for i in (0, 6, 9, 1)]
LAYERS = [1, 2]
TRACE = dict(window=2, samples=2, seed=0)
N_BOOT = 50
SCALE = {"gpt2": 0.03, "llama": 0.03, "gemma3": 0.3}  # Gemma's post-norms damp a ΔW: a larger one moves it


def fake_delta(model, request, layer, scale):
    """A known dense ΔW, different per (request, layer), that moves some neighbours and not others."""
    a = arch_of(model)
    g = torch.Generator().manual_seed(1000 * layer + sum(map(ord, request.subject)))
    k = 1 + sum(map(ord, request.subject)) % 3
    return scale * k * (layer + 1) * torch.randn(a.d_mlp, a.d_model, generator=g)


def fake_editor(scale):
    def fake(model, request, layer):
        return Edit(method="fake", fingerprint=fingerprint(model),
                    deltas={layer: fake_delta(model, request, layer, scale)}, requests=(request,))
    return fake


def run(model, arch_name, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no-damage requests on random models
        kw = {"layers": LAYERS, "edit_fn": fake_editor(SCALE[arch_name]), "n_boot": N_BOOT, "progress": False,
              "verbose": False, **TRACE, **kw}
        return locality_predictors(model, REQUESTS, **kw)


@pytest.fixture(scope="module")
def result(tiny, arch_name):
    """One fake-editor run per tiny model, shared by the tests that only read it."""
    return run(tiny, arch_name)


# --------------------------------------------------------------------------- plain recomputations


class HandEdit:
    """``delta`` added to layer ``layer``'s W_out by hand, restored on exit."""

    def __init__(self, model, layer, delta):
        self.W = arch_of(model).W_out(model, layer)
        self.delta = delta

    def __enter__(self):
        self.saved = self.W.detach().clone()
        with torch.no_grad():
            self.W.add_(self.delta.to(self.W.dtype))

    def __exit__(self, *exc):
        with torch.no_grad():
            self.W.copy_(self.saved)


@torch.no_grad()
def plain_mean_lp(model, text, target):
    """Mean per-token log p(" " + target | text) by one unpadded forward."""
    t = target_ids(model, target)
    ids = torch.tensor([encode(model, text) + t])
    lp = model(ids)[0, -len(t) - 1:-1].double().log_softmax(-1)
    return float(sum(lp[i, tok] for i, tok in enumerate(t))) / len(t)


@torch.no_grad()
def plain_next(model, text):
    """Next-token log-probabilities after ``text``, one unpadded forward."""
    return model(torch.tensor([encode(model, text)]))[0, -1].double().log_softmax(-1)


def plain_cell(model, r, layer, delta):
    """(ns, kl, flips, efficacy) of one cell, and ns before, by hand."""
    pre = [plain_next(model, n) for n in r.neighbours]
    ns0 = np.mean([plain_mean_lp(model, n, r.target_true) > plain_mean_lp(model, n, r.target_new)
                   for n in r.neighbours])
    with HandEdit(model, layer, delta):
        post = [plain_next(model, n) for n in r.neighbours]
        ns = np.mean([plain_mean_lp(model, n, r.target_true) > plain_mean_lp(model, n, r.target_new)
                      for n in r.neighbours])
        es = float(plain_mean_lp(model, r.text, r.target_new) > plain_mean_lp(model, r.text, r.target_true))
    kl = np.mean([float((q.exp() * (q - p)).sum()) for p, q in zip(pre, post)])  # KL(post ‖ pre)
    flips = np.mean([int(p.argmax()) != int(q.argmax()) for p, q in zip(pre, post)])
    return ns, kl, flips, es, ns0


def plain_design(te, sp, which):
    """The design of a predictor set with its intercept, built cell by cell."""
    R, L = te.shape
    rows = []
    for i in range(R):
        for l in range(L):
            row = [1.0]
            if "layer" in which or which == "all":
                row += [1.0 if l == k else 0.0 for k in range(1, L)]
            if which in ("tracing", "tracing+layer", "all"):
                row.append(te[i, l])
            if which in ("specificity", "specificity+layer", "all"):
                row.append(sp[i, l])
            rows.append(row)
    return np.array(rows)


def plain_fit(te, sp, y, which):
    """(R², RSS, n_params, n) by numpy.linalg.lstsq."""
    A, yy = plain_design(te, sp, which), y.reshape(-1)
    coef = np.linalg.lstsq(A, yy, rcond=None)[0]
    rss = float(((yy - A @ coef) ** 2).sum())
    tss = float(((yy - yy.mean()) ** 2).sum())
    return (1 - rss / tss if tss > 0 else math.nan), rss, np.linalg.matrix_rank(A), len(yy)


def plain_f(small, big):
    (_, rss_s, k_s, n), (_, rss_b, k_b, _) = small, big
    F = ((rss_s - rss_b) / (k_b - k_s)) / (rss_b / (n - k_b))
    return F, float(f_dist.sf(F, k_b - k_s, n - k_b))


def used_arrays(result, outcome):
    keep = result.used.numpy()
    return (result.tracing.numpy()[keep], result.specificity.numpy()[keep], getattr(result, outcome).numpy()[keep])


# --------------------------------------------------------------------------- the per-cell quantities


def test_outcomes_match_plain_forwards_with_the_edit_added_by_hand(tiny, arch_name, result):
    for i, r in enumerate(REQUESTS):
        for j, l in enumerate(result.layers):
            ns, kl, flips, es, ns0 = plain_cell(tiny, r, l, fake_delta(tiny, r, l, SCALE[arch_name]))
            assert float(result.ns[i, j]) == ns and float(result.flips[i, j]) == flips
            assert float(result.efficacy[i, j]) == es
            assert float(result.kl[i, j]) == pytest.approx(kl, rel=1e-3, abs=1e-6)
            assert float(result.ns_before[i]) == ns0
    # the comparison has teeth: the edits move the neighbours, by amounts that differ across cells
    assert float(result.kl.min()) > 1e-3 and float(result.kl.std()) > 0.05 * float(result.kl.mean())
    assert len(set(result.flips.flatten().tolist())) > 1 and len(set(result.ns.flatten().tolist())) > 1


def test_outcomes_agree_with_evaluate_on_one_cell(tiny, arch_name, result):
    from factscope.probes import evaluate

    r, l = REQUESTS[1], LAYERS[1]
    e = fake_editor(SCALE[arch_name])(tiny, r, l)
    row = evaluate(tiny, e, fluency=False, progress=False, n_boot=10).to_dataframe().iloc[0]
    assert float(result.ns[1, 1]) == row.neighbourhood_post and float(result.efficacy[1, 1]) == row.efficacy_post
    assert float(result.kl[1, 1]) == pytest.approx(row.neighbourhood_kl_post, rel=1e-4, abs=1e-7)
    assert float(result.ns_before[1]) == row.neighbourhood_pre


def test_tracing_effect_is_a_hand_reduction_of_the_trace(tiny, result):
    finite = 0
    for i, r in enumerate(REQUESTS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr = trace(tiny, r, kind="mlp", **TRACE)
        sc = tr.scores["mlp"]
        for j, l in enumerate(result.layers):
            if tr.clean > tr.corrupted:
                want = max((float(sc[t, l]) - tr.corrupted) / (tr.clean - tr.corrupted) for t in range(sc.shape[0]))
                assert float(result.tracing[i, j]) == pytest.approx(want, rel=1e-9, abs=1e-12)
                finite += 1
            else:
                assert math.isnan(float(result.tracing[i, j]))
    assert finite == result.n_used * len(LAYERS) and result.n_used >= 3  # enough requests for the fits
    assert result.used.tolist() == torch.isfinite(result.tracing).all(1).tolist()


def test_specificity_matches_romes_own_pieces(tiny, result):
    """S by `compute_k_star`, a dense solve of C and `update_response`, prompt group by prompt group."""
    from factscope.edit.covariance import covariances
    from factscope.edit.key_specificity import bank_prompts
    from factscope.edit.rome import compute_k_star, update_response
    from factscope.edit.target import TargetConfig
    from factscope.edit.templates import context_templates

    templates = context_templates(tiny, TargetConfig())
    Cs = covariances(tiny, LAYERS, progress=False)
    for i in (0, 2):
        same, other = bank_prompts(REQUESTS[i], builtin_facts())
        for j, l in enumerate(LAYERS):
            k = compute_k_star(tiny, REQUESTS[i], l, templates)
            u = torch.linalg.solve(Cs[l].double(), k.double())
            want = 0.5 * (float(update_response(tiny, same, l, u, k).mean())
                          + float(update_response(tiny, other, l, u, k).mean()))
            assert float(result.specificity[i, j]) == pytest.approx(want, rel=1e-6)
    assert float(result.specificity.std()) > 0 and (result.specificity > 0).all()


def test_invariants(result):
    R, L = len(REQUESTS), len(LAYERS)
    for k in ("tracing", "specificity", "ns", "kl", "flips", "efficacy"):
        assert getattr(result, k).shape == (R, L) and getattr(result, k).dtype == torch.float64
    for k in ("ns", "flips", "efficacy"):
        g = getattr(result, k)
        assert ((g >= 0) & (g <= 1)).all()
    assert set(result.efficacy.flatten().tolist()) <= {0.0, 1.0} and (result.kl >= -1e-9).all()
    for o in OUTCOMES:
        fs = result.fits[o]
        if math.isnan(fs["layer"].r2):
            continue  # a constant outcome on this tiny model
        for k in PREDICTOR_SETS:
            assert fs["all"].r2 >= fs[k].r2 - 1e-9  # nested in all
        assert fs["tracing+layer"].r2 >= fs["layer"].r2 - 1e-9 and fs["specificity+layer"].r2 >= fs["layer"].r2 - 1e-9
        for lo, hi in [*result.r2_ci[o].values(), *result.delta_r2_ci[o].values()]:
            assert lo <= hi or (math.isnan(lo) and math.isnan(hi))
    assert result.layers == tuple(LAYERS) and result.settings["n_boot"] == N_BOOT


# --------------------------------------------------------------------------- regressions


def test_r2_and_f_tests_match_plain_least_squares(result):
    defined = 0
    for o in OUTCOMES:
        te, sp, y = used_arrays(result, o)
        want = {k: plain_fit(te, sp, y, k) for k in PREDICTOR_SETS}
        for k in PREDICTOR_SETS:
            assert result.fits[o][k].r2 == pytest.approx(want[k][0], abs=1e-10, nan_ok=True)
            assert result.fits[o][k].n == want[k][3] == result.n_used * len(LAYERS)
        for t, (s, b) in F_TESTS.items():
            F, p = result.f_tests[o][t]
            if math.isnan(want[s][0]):
                assert math.isnan(F) and math.isnan(p)  # a constant outcome: nothing to test
                continue
            wF, wp = plain_f(want[s], want[b])
            assert (F, p) == pytest.approx((wF, wp), rel=1e-6, abs=1e-12)
            assert result.delta_r2(o, t) == pytest.approx(want[b][0] - want[s][0], abs=1e-10)
            defined += 1
    assert defined >= 8  # at least two outcomes have variance and every test defined
    summ = result.summary()
    row = summ[(summ.outcome == "kl") & (summ.model == "all")].iloc[0]
    assert row.r2 == pytest.approx(result.fits["kl"]["all"].r2) and row.n_cells == result.n_used * len(LAYERS)
    row = summ[(summ.outcome == "ns") & summ.model.str.endswith("(specificity|layer)")].iloc[0]
    assert (row.F, row.p_value) == pytest.approx(result.f_tests["ns"]["specificity|layer"], nan_ok=True)
    assert len(summ) == len(OUTCOMES) * (len(PREDICTOR_SETS) + len(F_TESTS))


def test_bootstrap_cis_match_a_hand_made_resampling(result):
    o = "kl"
    te, sp, y = used_arrays(result, o)
    n = len(te)
    idx = np.random.default_rng(result.settings["seed"]).integers(0, n, size=(N_BOOT, n))  # [resample, request]
    reps = {k: np.array([plain_fit(te[i], sp[i], y[i], k)[0] for i in idx]) for k in ("layer", "specificity+layer")}
    for k in reps:
        v = reps[k][np.isfinite(reps[k])]
        assert result.r2_ci[o][k] == pytest.approx(tuple(np.quantile(v, [0.025, 0.975])), abs=1e-10)
    d = reps["specificity+layer"] - reps["layer"]
    d = d[np.isfinite(d)]
    assert result.delta_r2_ci[o]["specificity|layer"] == pytest.approx(tuple(np.quantile(d, [0.025, 0.975])),
                                                                       abs=1e-10)
    lo, hi = result.r2_ci[o]["layer"]
    assert lo < hi  # the resamples differ


def test_regressions_tell_a_specificity_signal_from_none():
    rng = np.random.default_rng(0)
    R, L = 30, 4
    te, sp = rng.uniform(0, 1, (R, L)), rng.uniform(0, 1, (R, L))
    layer_effect = np.linspace(0.9, 0.3, L)[None]
    y = layer_effect - 0.6 * sp + 0.05 * rng.normal(size=(R, L))  # specificity matters, tracing does not
    fit = locality_regressions(te, sp, y, n_boot=200, seed=0)
    assert fit.n_used == R and fit.f_tests["specificity|layer"][1] < 1e-10
    assert fit.f_tests["specificity|tracing+layer"][1] < 1e-10
    assert fit.delta_r2_ci["specificity|layer"][0] > 0.2  # the CI is well away from 0
    d_te = fit.fits["tracing+layer"].r2 - fit.fits["layer"].r2
    lo, hi = fit.delta_r2_ci["tracing|layer"]
    assert 0 <= d_te < 0.03 and lo <= d_te <= hi < 0.06  # tracing adds next to nothing
    te[3, 2] = np.nan  # a request with a NaN is dropped whole
    fit = locality_regressions(te, sp, y, n_boot=20)
    assert fit.n_used == R - 1 and fit.fits["layer"].n == (R - 1) * L
    fit = locality_regressions(te, sp, np.ones((R, L)), n_boot=20)  # a constant outcome: nothing to explain
    assert math.isnan(fit.fits["all"].r2) and all(math.isnan(v) for t in fit.f_tests.values() for v in t)
    fit = locality_regressions(np.full((3, L), np.nan), sp[:3], y[:3], n_boot=20)  # nothing usable
    assert fit.n_used == 0 and math.isnan(fit.fits["all"].r2) and math.isnan(fit.r2_ci["all"][0])
    with pytest.raises(ValueError, match="shape"):
        locality_regressions(te, sp[:, :3], y)
    with pytest.raises(ValueError, match="n_boot"):
        locality_regressions(te, sp, y, n_boot=0)


# --------------------------------------------------------------------------- the result


def test_save_and_load_round_trip(result, tmp_path):
    path = result.save(tmp_path / "loc.safetensors")
    back = LocalityResult.load(path)
    for k in ("tracing", "specificity", "ns", "kl", "flips", "efficacy", "ns_before"):
        assert torch.equal(getattr(back, k).nan_to_num(7.0), getattr(result, k).nan_to_num(7.0))
        assert torch.isnan(getattr(back, k)).tolist() == torch.isnan(getattr(result, k)).tolist()
    assert back.requests == result.requests and back.layers == result.layers and back.n_used == result.n_used
    for o in OUTCOMES:
        for k in PREDICTOR_SETS:
            a, b = back.fits[o][k], result.fits[o][k]
            assert np.array_equal(a.coef, b.coef, equal_nan=True) and (a.rss, a.rank, a.n) == pytest.approx(
                (b.rss, b.rank, b.n), nan_ok=True)
    assert str(back) == str(result) and back.settings == result.settings
    assert back.summary().equals(result.summary())
    with pytest.raises(ValueError, match="factscope.locality_predictors"):
        from factscope.probes import LocalizationResult

        LocalizationResult.load(path)


def test_dataframe_has_one_row_per_cell(result):
    df = result.to_dataframe()
    assert len(df) == len(REQUESTS) * len(LAYERS)
    row = df[(df.request == 2) & (df.layer == LAYERS[1])].iloc[0]
    assert row.kl == float(result.kl[2, 1]) and row.specificity == float(result.specificity[2, 1])
    assert row.subject == REQUESTS[2].subject and row.n_neighbours == 2
    assert df.used.sum() == result.n_used * len(LAYERS)


def _with_tests(result, significant):
    """``result`` with every outcome's F-tests replaced: p = 0.001 for the tests in ``significant``, 0.6 otherwise."""
    tests = {o: {t: (20.0 if t in significant else 0.3, 0.001 if t in significant else 0.6) for t in F_TESTS}
             for o in OUTCOMES}
    return dataclasses.replace(result, f_tests=tests)


def test_verdict_wording(result):
    v = _with_tests(result, {"specificity|layer", "specificity|tracing+layer"}).verdicts["ns"]
    assert v.startswith("neighbourhood score NS: tracing adds nothing significant over layer (ΔR² = ")
    assert "specificity adds over layer (ΔR² = " in v and "and over tracing + layer" in v and "p = 0.001" in v
    v = _with_tests(result, {"tracing|layer"}).verdicts["kl"]
    assert "tracing adds over layer" in v and "but not once specificity is known" in v
    assert "specificity adds nothing significant over layer" in v
    v = _with_tests(result, {"tracing|specificity+layer"}).verdicts["flips"]
    assert "tracing adds only once specificity is known" in v
    nan = dataclasses.replace(result, f_tests={o: {t: (math.nan, math.nan) for t in F_TESTS} for o in OUTCOMES})
    assert "tracing: undefined" in nan.verdicts["ns"] and "specificity: undefined" in nan.verdicts["ns"]
    few = {o: {t: (math.nan, math.nan) if "+" in t else (9.0, 0.01) for t in F_TESTS} for o in OUTCOMES}
    v = dataclasses.replace(result, f_tests=few).verdicts["kl"]  # too few cells for the fit with all predictors
    assert "tracing adds over layer (ΔR² = " in v and "whether it adds once specificity is known is undefined" in v
    text = str(result)
    assert all(v in text for v in result.verdicts.values()) and "bootstrap resamples of requests" in text


# --------------------------------------------------------------------------- the model is left alone


def test_fake_editor_run_leaves_the_model_bit_identical_and_says_what_runs(model, arch_name, capsys):
    snap = {n: p.detach().clone() for n, p in model.named_parameters()}
    run(model, arch_name, verbose=True, n_boot=5)
    assert all(torch.equal(p, snap[n]) for n, p in model.named_parameters())
    assert not handle._APPLIED.get(model)
    out = capsys.readouterr().out
    assert "4 MLP traces" in out and "4 requests × 2 layers = 8 fake edits" in out and "8 neighbour prompts" in out


def test_rome_run_leaves_the_model_bit_identical(model):
    from factscope.edit import ROMEConfig

    cfg = ROMEConfig(context_lengths=((3, 2),), v_steps=3)
    snap = {n: p.detach().clone() for n, p in model.named_parameters()}
    fp = fingerprint(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = locality_predictors(model, REQUESTS[:2], layers=[-2, 1], config=cfg, n_boot=5, progress=False,
                                verbose=False, **TRACE)
    assert all(torch.equal(p, snap[n]) for n, p in model.named_parameters())
    assert fingerprint(model) == fp and not handle._APPLIED.get(model)
    assert r.layers == (arch_of(model).n_layers - 2, 1) and r.settings["editor"] == "rome"
    assert r.settings["config"]["v_steps"] == 3 and torch.isfinite(r.kl).all() and (r.kl > 0).all()


# --------------------------------------------------------------------------- bad input


NO_NEIGHBOURS = EditRequest("{} is located in", "Eiffel Tower", "Rome", target_true="Paris")
LONG = EditRequest("{} is located in", "Eiffel Tower", "Rome", target_true="Paris",
                   neighbours=["The Louvre " + "and the Louvre " * 200 + "is located in"])


@pytest.mark.parametrize("kw,err,match", [
    (dict(requests=[]), ValueError, "at least one EditRequest in requests"),
    (dict(requests="The Eiffel Tower"), TypeError, "sequence of EditRequests"),
    (dict(requests=[REQUESTS[0], ("a", "b")]), TypeError, r"requests\[1\] to be an EditRequest, got tuple"),
    (dict(requests=[EditRequest("{} is in", "Louvre", "Rome", neighbours=["Big Ben is in"])]), ValueError,
     r"requests\[0\] \('Louvre'\) to have a target_true"),
    (dict(requests=[REQUESTS[0], NO_NEIGHBOURS]), ValueError,
     r"requests\[1\] \('Eiffel Tower'\) to have neighbour prompts"),
    (dict(requests=[LONG]), ValueError, "context"),
    (dict(layers=[0, 99]), ValueError, r"layer in \[-4, 4\).*got 99"),
    (dict(layers=[1]), ValueError, r"at least 2 distinct layers .*got \[1\]"),
    (dict(layers=[1, -3]), ValueError, "distinct layers"),
    (dict(layers=[]), ValueError, "non-empty sequence"),
    (dict(editor="kn"), ValueError, r"editor to be one of \['rome', 'memit', 'alphaedit', 'ft-l'\].*'kn'"),
    (dict(editor="bogus"), ValueError, r"editor to be one of .*'bogus'"),
    (dict(editor="rome", config="fast"), TypeError, "ROMEConfig"),
    (dict(edit_fn="rome"), TypeError, "callable"),
    (dict(n_boot=0), ValueError, r"n_boot to be an integer >= 1, got 0"),
    (dict(window=0), ValueError, r"window to be an integer in \[1, 4\], got 0"),
    (dict(samples=0), ValueError, "samples"),
    (dict(seed=-1), ValueError, "seed"),
])
def test_bad_input_is_refused_before_any_work(model, monkeypatch, kw, err, match):
    import importlib

    ks_mod = importlib.import_module("factscope.edit.key_specificity")  # the package exports a function of that name
    tracing_mod = importlib.import_module("factscope.locate.tracing")

    def no_work(*a, **k):
        raise AssertionError("work started before validation finished")

    monkeypatch.setattr(tracing_mod, "trace", no_work)
    monkeypatch.setattr(ks_mod, "key_specificity", no_work)
    kw = {"requests": REQUESTS[:2], "layers": LAYERS, "window": 2, **kw}
    reqs = kw.pop("requests")
    with pytest.raises(err, match=match):
        locality_predictors(model, reqs, progress=False, verbose=False, **kw)


def test_an_edit_fn_that_returns_no_edit_is_refused(model):
    with pytest.raises(TypeError, match="return an Edit, got NoneType"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        locality_predictors(model, REQUESTS[:1], layers=LAYERS, edit_fn=lambda m, r, l: None, n_boot=5,
                            progress=False, verbose=False, **TRACE)


# --------------------------------------------------------------------------- figure


def test_plot_locality_predictors(result, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from factscope.figures import plot_locality_predictors

    fig = plot_locality_predictors(result)
    axes = fig.get_axes()
    assert len(axes) == 5  # three R² panels, the scatter and its colour bar
    for a, o in zip(axes[:3], OUTCOMES):
        bars = [p.get_height() for p in a.patches]
        assert bars == pytest.approx([np.nan_to_num(result.fits[o][k].r2) for k in PREDICTOR_SETS])
        assert f"n = {result.n_used * len(LAYERS)} cells" in a.get_title()
    assert len(axes[3].collections[0].get_offsets()) == result.n_used * len(LAYERS)
    assert axes[4].get_ylabel() == "edit layer"
    fig.savefig(tmp_path / "loc.png")
    assert (tmp_path / "loc.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="4 axes"):
        plot_locality_predictors(result, axes=axes[:3])


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_locality_predictors_on_gemma(gemma):
    from factscope.edit import ROMEConfig

    reqs = builtin_facts()[:2]
    snap = {n: p.detach().clone() for n, p in gemma.named_parameters()}
    cheap = ROMEConfig(context_lengths=((5, 2),), v_steps=4)
    r = locality_predictors(gemma, reqs, layers=[3, 9], config=cheap, samples=2, n_boot=50, progress=False,
                            verbose=False)
    assert all(torch.equal(p, snap[n]) for n, p in gemma.named_parameters())
    print(r, r.summary().to_string(), sep="\n")
    for k in ("ns", "flips", "efficacy"):
        g = getattr(r, k)
        assert ((g >= 0) & (g <= 1)).all()
    assert (r.kl >= -1e-9).all() and torch.isfinite(r.specificity).all() and (r.specificity > 0).all()
    assert float(r.kl.max()) > 0 and r.n_used <= len(reqs)  # the edits moved the neighbours
    for o in OUTCOMES:
        fs = r.fits[o]
        if not math.isnan(fs["layer"].r2):
            assert all(fs["all"].r2 >= fs[k].r2 - 1e-9 for k in PREDICTOR_SETS)
