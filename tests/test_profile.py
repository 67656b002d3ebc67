"""Layer profiles against traces averaged by hand, and the token buckets."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from factscope import Fact, predict  # noqa: E402
from factscope.locate import BUCKETS, ProfileResult, layer_profile, token_buckets, trace  # noqa: E402

TEMPLATES = [("The {} is in downtown", "Space Needle"), ("{} played", "Michael Jordan"),
             ("I saw the {} in", "Eiffel Tower"), ("The {} is in", "Colosseum"), ("{} is developed by", "iPhone"),
             ("{} plays", "Lionel Messi"), ("The mother tongue of {} is", "Albert Einstein")]


def answered(model, templates):
    """Facts whose target is the model's own top-1 answer (skipping answers ' ' + target cannot express)."""
    preds = predict(model, [p.format(s) for p, s in templates])
    facts = [Fact(p, s, a.answer.strip()) for (p, s), a in zip(templates, preds) if a.answer.strip()]
    return [f for f, ok in zip(facts, predict(model, [f.text for f in facts], [f.target for f in facts])) if ok.correct]


def test_token_buckets_by_hand():
    # BOS, The, [Space, Needle, Tower], is, in, downtown
    assert token_buckets(8, (2, 5)) == {"first subject": [2], "middle subject": [3], "last subject": [4],
                                        "first subsequent": [5], "further": [6], "last": [7]}
    # one-token subject right before the last token
    assert token_buckets(4, (2, 3)) == {"first subject": [2], "middle subject": [], "last subject": [2],
                                        "first subsequent": [], "further": [], "last": [3]}


@pytest.fixture(scope="module")
def model():
    from factscope import tiny_model

    return tiny_model("gemma3")


def test_profile_is_the_mean_of_per_fact_bucket_averages(model):
    # Targets: the model's own answers, plus one wrong fact that must be skipped.
    facts = answered(model, TEMPLATES)[:4]
    assert len(facts) >= 3
    facts.append(Fact("The {} is in", "Kremlin", "Zanzibar"))
    prof = layer_profile(model, facts, kind="hidden", samples=2, seed=5, progress=False)
    assert len(prof.skipped) == 1 and "Zanzibar" in prof.skipped[0][1]
    assert prof.facts == tuple(f.text for f in facts[:-1])
    per = []
    for i, f in enumerate(facts[:-1]):
        r = trace(model, f, kind="hidden", samples=2, seed=5 + i)
        ie = r.scores["hidden"] - r.corrupted
        b = token_buckets(len(r.tokens), r.subject)
        per.append([ie[b[name]].mean(0) if b[name] else None for name in BUCKETS])
    for bi, name in enumerate(BUCKETS):
        vals = [p[bi] for p in per if p[bi] is not None]
        assert int(prof.n["hidden"][bi]) == len(vals)
        if not vals:
            assert torch.isnan(prof.mean["hidden"][bi]).all()
            continue
        v = torch.stack(vals)
        torch.testing.assert_close(prof.mean["hidden"][bi], v.mean(0), atol=1e-6, rtol=0)
        if len(vals) > 1:
            half = 1.96 * v.std(0, unbiased=True) / math.sqrt(len(vals))
            torch.testing.assert_close(prof.hi["hidden"][bi] - prof.mean["hidden"][bi], half, atol=1e-6, rtol=0)
    row = prof.mean["hidden"][BUCKETS.index("last subject")]
    assert prof.best_layer("hidden") == int(row.argmax())
    with pytest.raises(ValueError, match="traced kind"):
        prof.best_layer("mlp")


def test_profile_round_trip_table_and_figure(model, tmp_path):
    from factscope.figures import plot_profile

    facts = answered(model, TEMPLATES)[:2]
    prof = layer_profile(model, facts, kind="all", samples=2, window=2, progress=False)
    prof.save(tmp_path / "p.safetensors")
    back = ProfileResult.load(tmp_path / "p.safetensors")
    assert back.kinds == prof.kinds and back.facts == prof.facts and back.settings == prof.settings
    assert all(torch.allclose(back.mean[k], prof.mean[k], equal_nan=True) for k in prof.kinds)
    df = prof.to_dataframe()
    assert len(df) == 3 * len(BUCKETS) * prof.mean["mlp"].shape[1]
    fig = plot_profile(prof)
    assert len([a for a in fig.axes if a.get_title()]) == 3


def test_profile_errors(model):
    with pytest.raises(ValueError, match="at least one fact"):
        layer_profile(model, [], progress=False)
    with pytest.raises(ValueError, match="every fact to have a target"):
        layer_profile(model, [Fact("The {} is in", "Colosseum")], progress=False)
    with pytest.raises(ValueError, match="answers none"):
        layer_profile(model, [Fact("The {} is in", "Colosseum", "Zanzibar")], window=2, progress=False)
    with pytest.raises(ValueError, match="window"):  # trace's settings are checked before any model pass
        layer_profile(model, [Fact("The {} is in", "Colosseum", "Zanzibar")], window=99, progress=False)


def test_recommended_layer_is_cached_on_disk(tiny, monkeypatch, tmp_path):
    import factscope.locate.profile as prof_mod
    from factscope.locate import recommended_layer

    monkeypatch.setenv("FACTSCOPE_CACHE", str(tmp_path))
    facts = answered(tiny, TEMPLATES)[:2]
    if not facts:
        pytest.skip("the tiny model answers none of the templates with a stateable target")
    first = recommended_layer(tiny, facts, samples=2, progress=False)
    direct = layer_profile(tiny, facts, kind="mlp", samples=2, window=4, progress=False)
    assert first.layer == direct.best_layer("mlp") and "cached" not in first.reason
    assert list(tmp_path.glob("profiles/*.safetensors"))

    def boom(*a, **k):
        raise AssertionError("the cached profile was not used")

    monkeypatch.setattr(prof_mod, "layer_profile", boom)
    again = recommended_layer(tiny, facts, samples=2, progress=False)
    assert again.layer == first.layer and "cached" in again.reason
    torch.testing.assert_close(again.profile.mean["mlp"], first.profile.mean["mlp"], equal_nan=True)
    with pytest.raises(AssertionError, match="not used"):  # other settings: another cache entry
        recommended_layer(tiny, facts, samples=3, progress=False)
    for f in tmp_path.glob("profiles/*.safetensors"):  # a damaged entry is recomputed, with a warning
        f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="damaged"), pytest.raises(AssertionError, match="not used"):
        recommended_layer(tiny, facts, samples=2, progress=False)
