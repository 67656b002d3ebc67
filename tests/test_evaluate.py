"""rewrite_scores: CounterFact's ES/PS/NS against plain single-prompt computations."""

import math

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
