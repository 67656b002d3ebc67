"""rewrite_scores: CounterFact's ES/PS/NS against plain single-prompt computations."""

import math

import numpy as np
import pytest
import torch

from factscope import EditRequest, encode, target_ids
from factscope.probes.evaluate import rewrite_scores


def _plain_logprob(model, prompt: str, target: str) -> float:
    ids = encode(model, prompt) + target_ids(model, target)
    n = len(target_ids(model, target))
    with torch.no_grad():
        lp = model(torch.tensor([ids]))[0].log_softmax(-1)
    return sum(float(lp[len(ids) - n - 1 + j, ids[len(ids) - n + j]]) for j in range(n)) / n


def test_rewrite_scores_match_plain_margins(tiny):
    r = EditRequest("The {} is in downtown", "Space Needle", "Rome", target_true="Seattle city",
                    paraphrases=("Where is the Space Needle? In", "The Space Needle stands in", "Space Needle:"),
                    neighbours=("The Pike Place Market is in downtown", "The Museum of Pop Culture is in"))
    got = rewrite_scores(tiny, r)

    def margin(p):
        return _plain_logprob(tiny, p, r.target_new) - _plain_logprob(tiny, p, r.target_true)

    m0 = margin(r.text)
    mp = [margin(p) for p in r.paraphrases]
    mn = [margin(p) for p in r.neighbours]
    assert got.efficacy == float(m0 > 0)
    assert got.efficacy_margin == pytest.approx(m0, abs=1e-4)
    assert got.paraphrase == pytest.approx(sum(m > 0 for m in mp) / len(mp))
    assert got.paraphrase_margin == pytest.approx(sum(mp) / len(mp), abs=1e-4)
    assert got.neighbourhood == pytest.approx(sum(m < 0 for m in mn) / len(mn))
    assert got.neighbourhood_margin == pytest.approx(sum(mn) / len(mn), abs=1e-4)
    # swapping the targets mirrors every margin: a test that the two targets are not mixed up
    swapped = rewrite_scores(tiny, EditRequest(r.prompt, r.subject, r.target_true, target_true=r.target_new,
                                               paraphrases=r.paraphrases, neighbours=r.neighbours))
    assert swapped.efficacy_margin == pytest.approx(-got.efficacy_margin, abs=1e-5)
    assert swapped.neighbourhood_margin == pytest.approx(-got.neighbourhood_margin, abs=1e-5)


def test_rewrite_scores_without_paraphrases_or_neighbours_are_nan(tiny):
    got = rewrite_scores(tiny, EditRequest("The {} is in downtown", "Space Needle", "Rome", target_true="Seattle"))
    assert math.isnan(got.paraphrase) and math.isnan(got.neighbourhood)
    assert got.efficacy in (0.0, 1.0)


def test_rewrite_scores_refuses_a_fact(tiny):
    from factscope import Fact

    with pytest.raises(TypeError, match="EditRequest"):
        rewrite_scores(tiny, Fact("The {} is in downtown", "Space Needle", "Seattle"))


# --------------------------------------------------------------------------- evaluate / EditReport


import pandas as pd  # noqa: E402

from factscope import fingerprint  # noqa: E402
from factscope.arch import arch_of  # noqa: E402
from factscope.edit import Edit  # noqa: E402
from factscope.probes.evaluate import (  # noqa: E402
    METRICS,
    NPLUS_FORMAT,
    EditReport,
    evaluate,
    harmonic_mean,
    ngram_entropy,
)

REQ = EditRequest("The {} is in downtown", "Space Needle", "Rome", target_true="Seattle city",
                  paraphrases=("Where is the Space Needle? In", "The Space Needle stands in"),
                  neighbours=("The Pike Place Market is in downtown", "The Museum of Pop Culture is in",
                              "The Louvre is in"),
                  portability=(("The Space Needle's city has the river", "Tiber"),),
                  locality=(("The capital of France is", "Paris"),))
REQ2 = EditRequest("{} plays the sport of", "Michael Jordan", "tennis", target_true="basketball",
                   paraphrases=("Michael Jordan is a famous",), neighbours=("Kobe Bryant plays the sport of",))


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _same(model, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.named_parameters())


def _plain_exact(model, prompt: str, target: str) -> bool:
    t = target_ids(model, target)
    ids = encode(model, prompt) + t
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]
    return all(int(logits[len(ids) - len(t) - 1 + j].argmax()) == t[j] for j in range(len(t)))


def _plain_next_logprobs(model, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([encode(model, prompt)]))[0, -1].double().log_softmax(-1)


def _plain_metrics(model, r: EditRequest) -> dict[str, float]:
    """Every per-request metric but KL and fluency, from single-prompt forwards (CounterFact's definitions)."""
    lp = lambda p, t: _plain_logprob(model, p, t)  # noqa: E731
    nplus = [NPLUS_FORMAT.format(prompt=r.text, target_new=r.target_new, neighbour=n) for n in r.neighbours]
    out = {}
    for m, prompts, sign in (("efficacy", [r.text], 1), ("paraphrase", r.paraphrases, 1),
                             ("neighbourhood", r.neighbours, -1), ("nplus", nplus, -1)):
        if not prompts:
            out[m] = out[f"{m}_dp"] = math.nan
            continue
        new = [lp(p, r.target_new) for p in prompts]
        true = [lp(p, r.target_true) for p in prompts]
        out[m] = sum(sign * (a - b) > 0 for a, b in zip(new, true)) / len(prompts)
        out[f"{m}_dp"] = sum(sign * (math.exp(a) - math.exp(b)) for a, b in zip(new, true)) / len(prompts)
    out["efficacy_em"] = float(_plain_exact(model, r.text, r.target_new))
    out["paraphrase_em"] = (sum(_plain_exact(model, p, r.target_new) for p in r.paraphrases) / len(r.paraphrases)
                            if r.paraphrases else math.nan)
    out["neighbourhood_em"] = (sum(_plain_exact(model, p, r.target_true) for p in r.neighbours) / len(r.neighbours)
                               if r.neighbours else math.nan)
    out["portability"] = (sum(_plain_exact(model, p, a) for p, a in r.portability) / len(r.portability)
                          if r.portability else math.nan)
    out["portability_logp"] = (sum(lp(p, a) for p, a in r.portability) / len(r.portability)
                               if r.portability else math.nan)
    out["locality"] = (sum(_plain_exact(model, p, a) for p, a in r.locality) / len(r.locality)
                       if r.locality else math.nan)
    return out


def _random_edit(model, layer: int, scale: float, seed: int = 0, requests=(REQ, REQ2)) -> Edit:
    a = arch_of(model)
    g = torch.Generator().manual_seed(seed)
    return Edit(deltas={layer: torch.randn(a.d_mlp, a.d_model, generator=g) * scale}, method="random",
                requests=tuple(requests), config={}, fingerprint=fingerprint(model), info={})


def _with_delta(model, edit: Edit, fn):
    """Run ``fn()`` with W_out + ΔW written by hand (not through Edit.apply), then restore."""
    a = arch_of(model)
    saved = {l: a.W_out(model, l).detach().clone() for l in edit.deltas}
    try:
        with torch.no_grad():
            for l, d in edit.deltas.items():
                a.W_out(model, l).add_(d.to(a.W_out(model, l).dtype))
        return fn()
    finally:
        with torch.no_grad():
            for l, w in saved.items():
                a.W_out(model, l).copy_(w)


def test_evaluate_matches_plain_computations_before_and_after(tiny):
    e = _random_edit(tiny, 1, 0.3)
    before = _params(tiny)
    rep = evaluate(tiny, e, fluency=False, progress=False, n_boot=50)
    assert _same(tiny, before)
    pre = [_plain_metrics(tiny, r) for r in e.requests]
    post = _with_delta(tiny, e, lambda: [_plain_metrics(tiny, r) for r in e.requests])
    for got, want in ((rep.pre, pre), (rep.post, post)):
        for m in want[0]:
            for i in range(len(e.requests)):
                w = want[i][m]
                if math.isnan(w):
                    assert math.isnan(got[m][i]), (m, i)
                else:
                    assert got[m][i] == pytest.approx(w, abs=2e-5), (m, i)
    # KL(post ‖ pre) on neighbours, by hand
    for i, r in enumerate(e.requests):
        p0 = [_plain_next_logprobs(tiny, p) for p in r.neighbours]
        p1 = _with_delta(tiny, e, lambda r=r: [_plain_next_logprobs(tiny, p) for p in r.neighbours])
        kl = sum(float((b.exp() * (b - a)).sum()) for a, b in zip(p0, p1)) / len(p0)
        assert rep.post["neighbourhood_kl"][i] == pytest.approx(kl, rel=1e-4, abs=1e-7)
        assert rep.pre["neighbourhood_kl"][i] == 0.0
    assert rep.post["neighbourhood_kl"].min() > 0  # the random edit moved something


def test_a_zero_edit_changes_nothing(tiny):
    a = arch_of(tiny)
    e = Edit(deltas={0: torch.zeros(a.d_mlp, a.d_model)}, method="zero", requests=(REQ,), config={},
             fingerprint=fingerprint(tiny), info={})
    rep = evaluate(tiny, e, n_gen_tokens=8, progress=False, n_boot=20)
    for m in METRICS:
        assert np.array_equal(rep.pre[m], rep.post[m], equal_nan=True) or m == "neighbourhood_kl", m
    assert rep.post["neighbourhood_kl"][0] == pytest.approx(0.0, abs=1e-12)
    assert rep.generations["pre"] == rep.generations["post"]
    s = rep.summary()
    assert s.loc["efficacy", "delta"] == 0 and s.loc["efficacy", "delta_lo"] == 0


@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # Gemma's post-norm caps any W_out change: no forcing
def test_a_hand_set_edit_that_forces_the_new_token_scores_as_known(arch):
    """ΔW at the last layer solved so every key of the probe prompts writes a huge multiple of the
    new token's unembedding: afterwards every prompt answers target_new, so ES = PS = EM = 1 and
    NS = N+ = 0, exactly."""
    from factscope import tiny_model

    m = tiny_model(arch)
    a = arch_of(m)
    L = a.n_layers - 1
    new = next(w for w in ("Rome", "Paris") if len(target_ids(m, w)) == 1)  # one token in this vocabulary
    r = EditRequest("The {} is in downtown", "Space Needle", new, target_true="Seattle",
                    paraphrases=("The Space Needle stands in",), neighbours=("The Louvre is in downtown",))
    tok = target_ids(m, new)[0]
    prompts = [r.text, *r.paraphrases, *r.neighbours,
               *[NPLUS_FORMAT.format(prompt=r.text, target_new=r.target_new, neighbour=n) for n in r.neighbours]]
    rows = [encode(m, p) + t for p in prompts for t in (target_ids(m, new), target_ids(m, "Seattle"))]
    keys = []
    for ids in rows:
        m.run_with_hooks(torch.tensor([ids]), fwd_hooks=[(a.hook("mlp_key", L),
                                                          lambda x, hook: keys.append(x[0].detach()))])
    K = torch.cat(keys).double()  # [positions, d_mlp]
    u = m.W_U.detach().double()[:, tok]
    V = (1000 * (u - u.mean()))[None].expand(len(K), -1)
    dW = torch.linalg.lstsq(K, V).solution.float()
    e = Edit(deltas={L: dW}, method="forced", requests=(r,), config={}, fingerprint=fingerprint(m), info={})
    rep = evaluate(m, e, fluency=False, progress=False, n_boot=20)
    assert rep.post["efficacy"][0] == 1 and rep.post["paraphrase"][0] == 1
    assert rep.post["efficacy_em"][0] == 1 and rep.post["paraphrase_em"][0] == 1
    assert rep.post["neighbourhood"][0] == 0 and rep.post["nplus"][0] == 0
    assert rep.post["neighbourhood_em"][0] == 0
    assert rep.post["efficacy_dp"][0] > 0.5  # p(new) near 1, p(true) near 0
    assert rep.score("post") == 0.0  # NS = 0 → S = 0


def test_fluency_is_the_ngram_entropy_of_plain_greedy_generations(tiny):
    e = _random_edit(tiny, 0, 0.2, requests=(REQ,))
    rep = evaluate(tiny, e, n_gen_tokens=12, progress=False, n_boot=20)

    def greedy(prompt: str) -> str:
        ids = encode(tiny, prompt)
        with torch.no_grad():
            for _ in range(12):
                ids = ids + [int(tiny(torch.tensor([ids]))[0, -1].argmax())]
        return prompt + tiny.tokenizer.decode(ids[len(encode(tiny, prompt)):], skip_special_tokens=True)

    assert rep.generations["pre"] == [greedy(REQ.text)]
    assert rep.generations["post"] == _with_delta(tiny, e, lambda: [greedy(REQ.text)])
    assert rep.pre["fluency"][0] == pytest.approx(ngram_entropy(greedy(REQ.text)))


def test_ngram_entropy_closed_forms():
    assert ngram_entropy("a a a a a a") == 0.0  # one distinct bigram and trigram
    # 4 distinct words, no repeats: 3 bigrams (log2 3 bits), 2 trigrams (1 bit); weights 2/3, 4/3, mean
    assert ngram_entropy("w x y z") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2)
    # "a b a b a": bigrams ab ×2, ba ×2 → 1 bit; trigrams aba ×2, bab ×1 → H(2/3, 1/3)
    h3 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b a") == pytest.approx((2 / 3 * 1.0 + 4 / 3 * h3) / 2)


def test_harmonic_mean_and_score():
    assert harmonic_mean(1.0, 0.5, 0.25) == pytest.approx(3 / (1 + 2 + 4))
    assert harmonic_mean(1.0, 0.0, 1.0) == 0.0
    assert math.isnan(harmonic_mean(1.0, math.nan, 1.0))


def test_summary_cis_are_the_bootstrap_over_requests(tiny):
    from factscope.probes.stats import bootstrap, percentile_ci

    e = _random_edit(tiny, 1, 0.3)
    rep = evaluate(tiny, e, fluency=False, progress=False, n_boot=300, seed=3)
    s = rep.summary()
    x = rep.post["neighbourhood_dp"]
    lo, hi = percentile_ci(bootstrap(lambda i: float(x[i].mean()), len(x), n_boot=300, seed=3))
    assert s.loc["neighbourhood_dp", "post"] == pytest.approx(x.mean())
    assert (s.loc["neighbourhood_dp", "post_lo"], s.loc["neighbourhood_dp", "post_hi"]) == pytest.approx((lo, hi))
    S = harmonic_mean(*(rep.post[m].mean() for m in ("efficacy", "paraphrase", "neighbourhood")))
    assert s.loc["S", "post"] == pytest.approx(S)
    df = rep.to_dataframe()
    assert len(df) == 2 and {"efficacy_pre", "efficacy_post", "fluency_post"} <= set(df.columns)
    assert "neighbourhood_kl" in str(rep)


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    """Simulation: 400 samples of 40 draws from a skewed distribution with known mean 1 (Exp(1))."""
    from factscope.probes.stats import mean_ci

    rng = np.random.default_rng(0)
    hits = 0
    trials = 400
    for t in range(trials):
        _, lo, hi = mean_ci(rng.exponential(1.0, 40), n_boot=400, seed=t)
        hits += lo <= 1.0 <= hi
    rate = hits / trials
    assert 0.89 <= rate <= 0.98, rate  # percentile bootstrap undercovers slightly at n = 40 on a skewed law


def test_evaluate_refuses_bad_input_without_touching_the_model(tiny):
    from factscope.edit.handle import EditStateError, FingerprintMismatchError

    e = _random_edit(tiny, 1, 0.3)
    before = _params(tiny)
    with pytest.raises(TypeError, match="Edit"):
        evaluate(tiny, "not an edit", progress=False)
    with pytest.raises(ValueError, match="at least one"):
        evaluate(tiny, e, [], progress=False)
    with pytest.raises(TypeError, match="EditRequest"):
        evaluate(tiny, e, [REQ, "x"], progress=False)
    with e.applied(tiny):
        with pytest.raises(EditStateError, match="already applied"):
            evaluate(tiny, e, progress=False)
    other = Edit(deltas=e.deltas, method="x", requests=e.requests, config={}, fingerprint="0" * 64, info={})
    with pytest.raises(FingerprintMismatchError, match="fingerprint"):
        evaluate(tiny, other, progress=False)
    assert _same(tiny, before)


def test_evaluate_restores_the_model_when_scoring_fails(tiny, monkeypatch):
    import sys

    ev = sys.modules["factscope.probes.evaluate"]  # the attribute `factscope.probes.evaluate` is the function

    e = _random_edit(tiny, 1, 0.3)
    before = _params(tiny)
    calls = []

    def boom(*args, **kw):
        calls.append(1)
        if len(calls) == 2:  # the post-edit pass
            raise RuntimeError("boom")
        return real(*args, **kw)

    real = ev._per_request
    monkeypatch.setattr(ev, "_per_request", boom)
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(tiny, e, fluency=False, progress=False)
    assert _same(tiny, before) and not e.is_applied(tiny)


def test_requests_without_target_true_get_exact_match_only(tiny):
    r = EditRequest("The {} is in downtown", "Space Needle", "Rome", paraphrases=("The Space Needle stands in",),
                    neighbours=("The Louvre is in",), locality=(("The capital of France is", "Paris"),))
    e = _random_edit(tiny, 1, 0.3, requests=(r,))
    rep = evaluate(tiny, e, fluency=False, progress=False, n_boot=20)
    assert math.isnan(rep.post["efficacy"][0]) and math.isnan(rep.post["neighbourhood"][0])
    assert rep.post["efficacy_em"][0] == float(_with_delta(tiny, e, lambda: _plain_exact(tiny, r.text, "Rome")))
    assert rep.post["locality"][0] in (0.0, 1.0)


def test_concat_pools_single_edit_reports_row_by_row(tiny):
    a = evaluate(tiny, _random_edit(tiny, 1, 0.3, requests=(REQ,)), fluency=False, progress=False, n_boot=50)
    b = evaluate(tiny, _random_edit(tiny, 0, 0.3, seed=1, requests=(REQ2,)), fluency=False, progress=False, n_boot=50)
    both = EditReport.concat([a, b], method="pooled")
    assert both.method == "pooled" and both.requests == (REQ, REQ2) and both.settings["layers"] == [0, 1]
    df = both.to_dataframe()
    want = pd.concat([a.to_dataframe(), b.to_dataframe()], ignore_index=True).assign(method="pooled")
    pd.testing.assert_frame_equal(df, want)
    assert both.summary().loc["efficacy", "post"] == pytest.approx(np.mean([a.post["efficacy"][0], b.post["efficacy"][0]]))
    assert EditReport.concat([a]).to_dataframe().equals(a.to_dataframe())
    with pytest.raises(ValueError, match="at least one"):
        EditReport.concat([])
    c = evaluate(tiny, _random_edit(tiny, 1, 0.3, requests=(REQ,)), fluency=False, progress=False, n_boot=60)
    with pytest.raises(ValueError, match=r"differs from report 0 in \['n_boot'\]"):
        EditReport.concat([a, c])
