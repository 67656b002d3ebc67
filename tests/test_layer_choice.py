"""Key specificity and the edit-layer choice (`factscope.edit.key_specificity`, `factscope.edit.layer_choice`),
and the per-family tuned configs, on tiny random models, against plain recomputations."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import pytest
import torch

from factscope import builtin_facts, calibration_split
from factscope.edit import ROMEConfig, MEMITConfig, AlphaEditConfig, edit_layer, key_specificity
from factscope.edit import layer_choice
from factscope.edit.key_specificity import bank_prompts, k_stars
from factscope.edit.key_stats import key_stats
from factscope.edit.layer_choice import LayerChoiceWarning, shortfall
from factscope.edit.rome import compute_k_star, update_response
from factscope.edit.target import config_source
from factscope.edit.templates import context_templates

REQS = builtin_facts()[:2]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_calibration_split_is_fixed_and_disjoint():
    cal, held = calibration_split()
    facts = builtin_facts()
    assert cal == facts[::4] and len(cal) + len(held) == len(facts)
    assert not {r.text for r in cal} & {r.text for r in held}
    assert {r.relation for r in cal} == {r.relation for r in facts}  # every relation calibrated


def test_k_stars_match_compute_k_star(model):
    templates = context_templates(model, ROMEConfig(context_lengths=((3, 2),)))
    for w in (None, 0.5):
        K = k_stars(model, REQS, [0, 2], templates, bare_weight=w)  # [layer, request, d_mlp]
        for i, l in enumerate([0, 2]):
            for j, r in enumerate(REQS):
                want = compute_k_star(model, r, l, templates, bare_weight=w)
                torch.testing.assert_close(K[i, j], want, rtol=1e-5, atol=1e-6)


def test_bank_prompts_leave_out_the_subject():
    r = REQS[0]
    same, other = bank_prompts(r, builtin_facts(), n_other=5)
    assert all(r.subject not in p for p in same + other)
    assert set(r.neighbours) <= set(same)
    assert len(other) == 5 and len(set(other)) == 5
    rel = {f.text: f.relation for f in builtin_facts()}
    assert all(rel.get(p, r.relation) == r.relation for p in same)
    assert all(rel[p] != r.relation for p in other)


def test_key_specificity_against_update_response(model, cache):
    cfg = ROMEConfig(context_lengths=((3, 2),), n_tokens=2048)
    ks = key_specificity(model, REQS, [0, 1], config=cfg, progress=False)
    C = key_stats(model, [0, 1], cfg, progress=False)
    templates = context_templates(model, cfg)
    for j, r in enumerate(REQS):
        same, other = bank_prompts(r, builtin_facts())
        for i, l in enumerate([0, 1]):
            k = compute_k_star(model, r, l, templates)
            u = torch.linalg.solve(C[l].double(), k)  # plain solve, not Cholesky
            for group, grid in ((same, ks.same_relation), (other, ks.other_relation)):
                want = float(update_response(model, group, l, u, k).mean())
                assert math.isclose(float(grid[j, i]), want, rel_tol=1e-4, abs_tol=1e-6)
    assert torch.allclose(ks.per_layer(), torch.stack([ks.same_relation, ks.other_relation]).mean(0).mean(0))
    assert len(ks.to_dataframe()) == len(REQS) * 2


def test_key_specificity_round_trips(model, cache, tmp_path):
    cfg = ROMEConfig(context_lengths=((3, 2),), n_tokens=2048)
    ks = key_specificity(model, REQS[:1], [1], config=cfg, progress=False)
    back = type(ks).load(ks.save(tmp_path / "ks.safetensors"))
    assert torch.equal(back.same_relation, ks.same_relation) and back.requests == ks.requests


def test_shortfall_closed_form():
    s = {"efficacy": 0.5, "paraphrase": 0.85, "neighbourhood": 1.0, "neighbourhood_kl": 1.0}
    got = shortfall(s)
    assert got == {"efficacy": pytest.approx((0.95 - 0.5) / 0.95), "paraphrase": 0.0, "neighbourhood": 0.0,
                   "neighbourhood_kl": pytest.approx((1.0 - 0.5) / 0.5)}
    assert shortfall({**s, "efficacy": math.nan})["efficacy"] == 1.0


def _small(model, **kw):
    return replace(ROMEConfig.for_model(model), context_lengths=((3, 2),), n_tokens=2048, v_steps=3, **kw)


@pytest.mark.parametrize("arch_name", ["gemma3"], indirect=True)  # the trial edits are the slow part: one (post-norm) tiny model
def test_edit_layer_follows_its_rule(model, cache):
    cfg = _small(model)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = edit_layer(model, REQS, config=cfg, n_candidates=2, progress=False, verbose=False)
    rho = c.response.double()
    # no tracing evidence on a random model: every layer is eligible; the 2 lowest-ρ layers are trialled in
    # order of ρ until one meets every target
    order = sorted(range(len(rho)), key=lambda l: (float(rho[l]), -l))[:2]
    assert [x[0] for x in c.candidates] == order[:len(c.trials)] and len(c.trials) == len(c.candidates)
    met = [i for i, t in enumerate(c.trials) if not any(shortfall(t).values())]
    assert met in ([], [len(c.trials) - 1])  # trials stop at the first candidate that meets every target
    miss = [sum(shortfall(t).values()) for t in c.trials]
    best = met[0] if met else min(range(len(c.trials)), key=lambda i: (miss[i], i))
    assert c.layers == c.candidates[best] and c.met == bool(met)
    if not c.met:
        assert any(issubclass(x.category, LayerChoiceWarning) for x in w)
        assert all(f in c.reason for f in c.failed)
    assert "key response" in c.reason and "trial on 2 calibration requests" in c.reason
    df = c.to_dataframe()
    assert int(df.chosen.sum()) == 1 and int(df[df.chosen].layer.iloc[0]) == c.layer


@pytest.mark.parametrize("arch_name", ["gemma3"], indirect=True)  # the trial edits are the slow part: one (post-norm) tiny model
def test_edit_layer_trial_scores_are_the_probes(model, cache):
    """ES, PS and neighbour KL equal `evaluate`'s means over the same edits; NS is the fraction of the
    neighbours right before the edit that stay right, recomputed here from plain log-probabilities."""
    from factscope.edit import rome
    from factscope.predict import target_logprob
    from factscope.probes import EditReport, evaluate

    def margins(r):  # [neighbour] mean per-token log p(new) − log p(true)
        nb = list(r.neighbours)
        return torch.stack([target_logprob(model, [p], [r.target_new])[0] - target_logprob(model, [p], [r.target_true])[0]
                            for p in nb])

    cfg = _small(model)
    c = edit_layer(model, REQS, config=cfg, n_candidates=1, progress=False, verbose=False)
    edits = [rome(model, r, layer=c.layer, config=cfg, progress=False, verbose=False) for r in REQS]
    post = EditReport.concat([evaluate(model, e, fluency=False, progress=False) for e in edits]).summary()["post"]
    for k in ("efficacy", "paraphrase", "neighbourhood_kl"):
        assert math.isclose(c.trials[0][k], float(post[k]), rel_tol=1e-3, abs_tol=1e-4), k
    kept = []
    for r, e in zip(REQS, edits):
        right = margins(r) < 0
        with e.applied(model):
            after = margins(r) < 0
        if right.any():
            kept.append(float(after[right].double().mean()))
    want = sum(kept) / len(kept) if kept else math.nan
    assert math.isclose(c.trials[0]["neighbourhood"], want, rel_tol=1e-6, abs_tol=1e-9) or (
        math.isnan(want) and math.isnan(c.trials[0]["neighbourhood"]))


@pytest.mark.parametrize("arch_name", ["gemma3"], indirect=True)  # the trial edits are the slow part: one (post-norm) tiny model
def test_edit_layer_is_cached(model, cache, monkeypatch):
    cfg = _small(model)
    first = edit_layer(model, REQS, config=cfg, n_candidates=1, progress=False, verbose=False)

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(layer_choice, "key_specificity", boom)
    again = edit_layer(model, REQS, config=cfg, n_candidates=1, progress=False, verbose=False)
    assert again.layers == first.layers and again.trials == first.trials
    with pytest.raises(AssertionError, match="recomputed"):  # another config is another entry
        edit_layer(model, REQS, config=_small(model, seed=1), n_candidates=1, progress=False, verbose=False)


@pytest.mark.parametrize("arch_name", ["gemma3"], indirect=True)  # the trial edits are the slow part: one (post-norm) tiny model
def test_edit_layer_windows_for_memit(model, cache):
    cfg = MEMITConfig(context_lengths=((3, 2),), n_tokens=2048, v_steps=2, n_layers=2)
    c = edit_layer(model, REQS, editor="memit", config=cfg, n_candidates=2, progress=False, verbose=False)
    assert len(c.layers) == 2 and c.layers[1] == c.layers[0] + 1
    rho = c.response.double()
    score = {w: float(rho[list(w)].mean()) for w in c.candidates}
    assert all(score[c.candidates[0]] <= v for v in score.values())


@pytest.mark.parametrize("kw, match", [
    (dict(editor="kn"), "chooses its own layers"),
    (dict(editor="nope"), "expected an editor name"),
    (dict(n_candidates=0), "n_candidates"),
    (dict(targets={"efficacy": 0.9}), "expected targets"),
    (dict(config=MEMITConfig()), "ROMEConfig"),
    (dict(n_trial=0), "n_trial"),
])
def test_edit_layer_bad_input(model, cache, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        edit_layer(model, REQS, progress=False, verbose=False, **kw)


def test_edit_layer_bad_requests(model, cache):
    from factscope import EditRequest

    cut = EditRequest("The {}s are tall", "Space Needle", "Paris", target_true="Seattle",
                      neighbours=("The Eiffel Tower is in",))  # the subject ends inside a token
    with pytest.raises(ValueError, match="subject"):
        edit_layer(model, [cut], progress=False, verbose=False)
    with pytest.raises(ValueError, match="neighbour prompts"):
        edit_layer(model, [replace(REQS[0], neighbours=())], progress=False, verbose=False)


@pytest.mark.parametrize("cls", [ROMEConfig, MEMITConfig, AlphaEditConfig])
def test_family_configs(tiny, cls):
    from factscope import arch_of

    fam = arch_of(tiny).family
    assert fam == ("post_norm" if arch_of(tiny).post_norm else "pre_norm")
    tuned = cls.for_model(tiny)
    assert cls.paper() == cls()
    for k, v in cls.TUNED.get(fam, {}).items():
        assert getattr(tuned, k) == v
    assert {k for k in cls.__dataclass_fields__ if getattr(tuned, k) != getattr(cls(), k)} <= set(cls.TUNED.get(fam, {}))
    src = config_source(tuned, tiny)
    assert src == ("paper" if not cls.TUNED.get(fam) else f"tuned for {fam.replace('_', '-')} models")
    assert config_source(cls(seed=7), tiny) == "custom"


# --------------------------------------------------------------------------- the real default model


@pytest.mark.slow
def test_edit_layer_and_rome_defaults_on_gemma(gemma):
    """On Gemma 3 270M the choice meets its own trial targets on the calibration facts, is more specific than
    the tracing peak, and is what ``rome(model, request)`` uses, with the tuned δ budget; a held-out fact's
    edit succeeds and stays smaller than the paper's budget."""
    from factscope.edit import rome
    from factscope.locate import recommended_layer
    from factscope.predict import rewrite_scores

    c = edit_layer(gemma, progress=False, verbose=False)
    cal_texts = {r.text for r in calibration_split()[0]}
    assert all(r.text in cal_texts for r in c.requests)  # fitted on calibration facts only
    assert c.met, c.reason
    peak = recommended_layer(gemma, progress=False).layer
    assert float(c.response[c.layer]) < float(c.response[peak])
    held = calibration_split()[1][0]
    e = rome(gemma, held, progress=False, verbose=False)
    assert e.info["layer"] == c.layer and e.info["config_source"] == "tuned for post-norm models"
    assert e.info["delta_norm"] <= 2.0 * e.info["v0_norm"] + 1e-6
    with e.applied(gemma):
        assert rewrite_scores(gemma, held).efficacy == 1.0
