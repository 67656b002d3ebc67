"""Knowledge-neuron overlap: the sets against direct `neurons` calls on each half, Jaccards against
plain set arithmetic, the matched random baseline against its closed form, and bad input."""

from __future__ import annotations

import importlib
import math
import warnings

import numpy as np
import pytest
import torch

from factscope import EditRequest, Fact, arch_of
from factscope.edit.rome import ROMEConfig, context_templates
from factscope.locate.knowledge_neurons import neurons
from factscope.probes.overlap import (
    MIN_PROMPTS,
    jaccard,
    neuron_overlap,
    overlap_prompts,
    random_jaccards,
)

FACT = EditRequest("The {} is in downtown", "Space Needle", "London", target_true="Seattle",
                   paraphrases=("The Space Needle stands in",))
KN = dict(steps=4, threshold=0.2, refine=0.7)


@pytest.fixture(scope="module")
def result(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random model does not answer Seattle
        return neuron_overlap(tiny, FACT, n_prompts=8, seeds=(0, 1, 2), n_random=300, progress=False, **KN)


# --------------------------------------------------------------------------- the sets


def test_each_half_is_what_neurons_finds_on_that_half_alone(tiny, result):
    for s in result.seeds:
        for h in (0, 1):
            prompts = [result.prompts[i] for i in result.halves[s][h]]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                direct = neurons(tiny, FACT, prompts=prompts, progress=False, **KN)
            assert result.sets[s][h] == tuple(sorted((l, i) for l, i, _ in direct.neurons)), (s, h)
    assert any(result.sets[s][0] for s in result.seeds)  # not all empty: the comparison has teeth


def test_halves_are_disjoint_seeded_splits(result):
    n = len(result.prompts)
    assert n == 8
    for s in result.seeds:
        a, b = result.halves[s]
        assert len(a) == n // 2 and len(b) == n - n // 2
        assert not set(a) & set(b) and set(a) | set(b) == set(range(n))
    assert len({result.halves[s] for s in result.seeds}) > 1  # the seeds draw different splits


def test_jaccards_match_plain_set_arithmetic(result):
    rows = result.to_dataframe()
    assert len(rows) == 3 + 3 * 4  # a split-half pair per seed, four pairs per pair of seeds
    for p, (_, row) in zip(result.pairs, rows.iterrows()):
        A, B = set(result.sets[p.a[0]][p.a[1]]), set(result.sets[p.b[0]][p.b[1]])
        want = len(A & B) / len(A | B) if A | B else math.nan
        assert p.jaccard == pytest.approx(want, nan_ok=True)
        assert (row.n_a, row.n_b, row.n_common) == (len(A), len(B), len(A & B))
        assert p.a[0] != p.b[0] if p.kind == "across-seed" else p.a == (p.b[0], 0) and p.b[1] == 1
    assert result.split_half == {s: next(p.jaccard for p in result.pairs if p.kind == "split-half" and p.a[0] == s)
                                 for s in result.seeds}
    assert len(result.across_seed) == 12 and all(0 <= j <= 1 for j in result.across_seed if not math.isnan(j))


def test_jaccard_function():
    assert jaccard({(0, 1), (1, 2)}, {(1, 2), (3, 4), (0, 5)}) == pytest.approx(1 / 4)
    assert jaccard([(0, 1)], [(0, 1)]) == 1 and jaccard([(0, 1)], []) == 0 and math.isnan(jaccard([], []))


def test_p_values_and_baseline_stats_match_the_draws(result):
    assert result.draws.shape == (len(result.pairs), 300)
    for p, d in zip(result.pairs, result.draws):
        assert p.baseline_mean == pytest.approx(float(np.mean(d)))
        assert p.p_value == pytest.approx((1 + sum(x >= p.jaccard - 1e-12 for x in d)) / (1 + len(d)))
        assert (p.baseline_lo, p.baseline_hi) == pytest.approx(tuple(np.quantile(d, [0.025, 0.975])))
    summ = result.summary().set_index("kind")
    for kind in ("split-half", "across-seed"):
        idx = [i for i, p in enumerate(result.pairs) if p.kind == kind and not math.isnan(p.jaccard)]
        obs = np.mean([result.pairs[i].jaccard for i in idx])
        rand = result.draws[idx].mean(0)  # each draw's mean over the pairs
        assert summ.loc[kind, "jaccard"] == pytest.approx(obs)
        assert summ.loc[kind, "p_value"] == pytest.approx((1 + int((rand >= obs - 1e-12).sum())) / (1 + rand.size))
    assert "split-half" in str(result) and "random" in str(result)


# --------------------------------------------------------------------------- the random baseline


def hypergeom(k, a, b, d):
    """P(|A ∩ B| = k) for independent uniform subsets of sizes a and b of d items."""
    return math.comb(a, k) * math.comb(d - a, b - k) / math.comb(d, b)


def test_single_layer_baseline_matches_the_closed_form():
    a, b, d, n = 3, 4, 12, 40_000
    exact = sum(hypergeom(i, a, b, d) * i / (a + b - i) for i in range(min(a, b) + 1))
    A = [(5, i) for i in range(a)]
    B = [(5, i) for i in range(50, 50 + b)]  # which neurons the sets hold does not matter, only counts
    draws = random_jaccards(A, B, d, n_random=n, rng=np.random.default_rng(0))
    se = draws.std() / math.sqrt(n)
    assert abs(draws.mean() - exact) < 4 * se, (draws.mean(), exact, se)
    assert exact > 0.1  # a sizeable chance overlap: the check has teeth
    # and the intersection sizes follow the hypergeometric law
    for i in range(min(a, b) + 1):
        frac = float(np.mean(np.isclose(draws, i / (a + b - i))))
        assert abs(frac - hypergeom(i, a, b, d)) < 0.01


def test_baseline_matches_sets_layer_by_layer():
    # A: 2 neurons in layer 0, 1 in layer 1; B: 1 in layer 0, 2 in layer 1; d = 6 per layer
    d = 6
    A, B = [(0, 0), (0, 1), (1, 0)], [(0, 2), (1, 1), (1, 2)]
    exact = sum(hypergeom(i, 2, 1, d) * hypergeom(j, 1, 2, d) * (i + j) / (6 - i - j)
                for i in range(2) for j in range(2))
    draws = random_jaccards(A, B, d, n_random=40_000, rng=np.random.default_rng(1))
    assert abs(draws.mean() - exact) < 4 * draws.std() / 200
    # pooled over layers (ignoring the matching), chance overlap would be lower: the matching matters
    pooled = sum(hypergeom(i, 3, 3, 2 * d) * i / (6 - i) for i in range(4))
    assert abs(draws.mean() - pooled) > 10 * draws.std() / 200
    # sets in different layers never overlap by chance
    assert (random_jaccards([(0, 1)], [(1, 1)], d, n_random=100, rng=np.random.default_rng(0)) == 0).all()


def test_baseline_is_seeded():
    A, B = [(0, 1), (0, 2)], [(0, 3), (0, 4)]
    x = random_jaccards(A, B, 8, n_random=200, rng=np.random.default_rng(3))
    assert np.array_equal(x, random_jaccards(A, B, 8, n_random=200, rng=np.random.default_rng(3)))
    with pytest.raises(ValueError, match="at most d_mlp=1"):
        random_jaccards(A, B, 1, n_random=5, rng=np.random.default_rng(0))


# --------------------------------------------------------------------------- prompts and bad input


def test_default_prompts(tiny):
    p = overlap_prompts(tiny, FACT, 8)
    assert p[:2] == (FACT.text, FACT.paraphrases[0]) and len(p) == len(set(p)) == 8
    prefixes = [t.format(FACT.text) for t in context_templates(tiny, ROMEConfig()) if t != "{}"]
    assert all(x in prefixes and x.endswith(". " + FACT.text) for x in p[2:])
    assert [prefixes.index(x) for x in p[2:]] == sorted(prefixes.index(x) for x in p[2:])  # in template order
    with pytest.raises(ValueError, match="n_prompts <="):
        overlap_prompts(tiny, FACT, 500)
    fact = Fact("The {} is in downtown", "Space Needle", "Seattle")  # no paraphrases: text + prefixes
    assert overlap_prompts(tiny, fact, 6)[0] == fact.text


@pytest.mark.parametrize("kw,err,match", [
    (dict(prompts=["a b", "c d", "e f", "g h", "i j"]), ValueError, "at least 6 prompts .* got 5"),
    (dict(prompts=["a b"] * 6), ValueError, "distinct prompts"),
    (dict(prompts="The Space Needle is in downtown"), TypeError, "sequence of strings"),
    (dict(n_prompts=5), ValueError, "n_prompts to be an integer >= 6"),
    (dict(seeds=()), ValueError, "non-empty sequence"),
    (dict(seeds=(1, 1)), ValueError, "distinct seeds"),
    (dict(seeds=(-1,)), ValueError, "integers >= 0"),
    (dict(n_random=0), ValueError, "n_random"),
    (dict(fact="Space Needle"), TypeError, "Fact or an EditRequest, got str"),
])
def test_bad_input_is_refused_before_any_attribution(tiny, monkeypatch, kw, err, match):
    neurons_mod = importlib.import_module("factscope.locate.knowledge_neurons")  # the module (the package exports a function)

    def no_ig(*a, **k):
        raise AssertionError("neurons was called before validation finished")

    monkeypatch.setattr(neurons_mod, "neurons", no_ig)
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    kw = dict(kw)
    fact = kw.pop("fact", FACT)
    with pytest.raises(err, match=match):
        neuron_overlap(tiny, fact, progress=False, **kw)
    assert all(torch.equal(p, before[n]) for n, p in tiny.named_parameters())
    assert MIN_PROMPTS == 6


def test_a_single_int_seed_and_own_prompts(tiny):
    prompts = [FACT.text, "The Space Needle stands in", "Space Needle is in downtown", "The Space Needle is in",
               "The tall Space Needle is in downtown", "Everyone knows the Space Needle is in downtown"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = neuron_overlap(tiny, FACT, prompts=prompts, seeds=4, n_random=50, progress=False, **KN)
    assert r.prompts == tuple(prompts) and r.seeds == (4,) and r.across_seed == ()
    assert r.attribution.attributions.shape == (6, arch_of(tiny).n_layers, arch_of(tiny).d_mlp)
    assert r.summary().set_index("kind").loc["across-seed", "pairs"] == 0


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_neuron_overlap_on_gemma(gemma):
    from factscope import builtin_facts

    r = neuron_overlap(gemma, builtin_facts()[0], n_prompts=6, seeds=(0,), n_random=500, progress=False)
    print(r, r.to_dataframe().to_string(), sep="\n")
    j = r.split_half[0]
    assert 0 <= j <= 1 and 1 <= len(r.sets[0][0]) <= 5 and 1 <= len(r.sets[0][1]) <= 5
    p = r.pairs[0]
    assert 0 <= p.baseline_lo <= p.baseline_hi <= 1 and 0 <= p.baseline_mean <= 1 and 0 < p.p_value <= 1
