"""`predict` against a plain one-prompt-at-a-time computation."""

from __future__ import annotations

import pytest
import torch

from factscope import encode, predict, target_ids

PROMPTS = ["The Space Needle is in downtown", "Michael Jordan played", "The Eiffel Tower is in Paris"]
TARGETS = ["Seattle", None, "France"]


def test_predict_matches_plain_softmax(tiny):
    preds = predict(tiny, PROMPTS, TARGETS, k=4, batch_size=2)  # two batches, one padded
    assert len(preds) == len(PROMPTS)
    for prompt, target, p in zip(PROMPTS, TARGETS, preds):
        with torch.no_grad():
            probs = tiny(torch.tensor([encode(tiny, prompt)]))[0, -1].softmax(-1)
        top = probs.topk(4)
        assert list(p.top_tokens) == [tiny.tokenizer.decode([i]) for i in top.indices.tolist()]
        torch.testing.assert_close(torch.tensor(p.top_probs), top.values, atol=1e-5, rtol=0)
        if target is None:
            assert p.p_target is None and p.rank is None and p.correct is None
        else:
            t0 = target_ids(tiny, target)[0]
            assert p.p_target == pytest.approx(probs[t0].item(), abs=1e-5)
            assert p.rank == sorted(probs.tolist(), reverse=True).index(probs[t0].item())
            assert p.correct == (int(probs.argmax()) == t0)


def test_predictions_table_and_accuracy(tiny):
    # Use the model's own answers as targets for two prompts and a wrong one for the third.
    first = predict(tiny, PROMPTS)
    targets = [first[0].answer.strip() or None, first[1].answer.strip() or None, "Zanzibar"]
    preds = predict(tiny, PROMPTS, targets)
    df = preds.to_dataframe()
    assert list(df["prompt"]) == PROMPTS
    assert {"answer", "p_answer", "target", "p_target", "rank", "correct"} <= set(df.columns)
    scored = [p.correct for p in preds if p.correct is not None]
    assert preds.accuracy == pytest.approx(sum(scored) / len(scored))
    with pytest.raises(ValueError, match="no prediction has a target"):
        predict(tiny, PROMPTS).accuracy


def test_predict_input_errors(tiny):
    with pytest.raises(ValueError, match="one target per prompt"):
        predict(tiny, PROMPTS, ["Seattle"])
    with pytest.raises(TypeError, match="single str"):
        predict(tiny, "The Space Needle is in downtown")
    with pytest.raises(ValueError, match="at least one prompt"):
        predict(tiny, [])


def test_target_logprob_matches_single_unpadded_runs(tiny):
    from factscope import encode, target_ids
    from factscope.predict import target_logprob

    prompts = ["The Space Needle is in downtown", "Michael Jordan played", "The mother tongue of X is"]
    targets = ["Seattle", "basketball for the Bulls", "French"]
    got = target_logprob(tiny, prompts, targets)
    for g, p, t in zip(got, prompts, targets):
        ids = encode(tiny, p) + target_ids(tiny, t)
        with torch.no_grad():
            lp = tiny(torch.tensor([ids]))[0].log_softmax(-1)
        n = len(target_ids(tiny, t))
        want = sum(float(lp[len(ids) - n - 1 + j, ids[len(ids) - n + j]]) for j in range(n)) / n
        assert float(g) == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_generate_matches_plain_greedy_decoding_per_prompt(arch):
    """Left-padded batched decoding with a KV cache = each prompt decoded alone, with no cache, one token at a time."""
    from factscope import tiny_model
    from factscope.predict import generate

    m = tiny_model(arch, 0)
    prompts = ["The Space Needle is in downtown", "Paris is", "The official language of Brazil is the one", "A"]
    n = 12
    got = generate(m, prompts, max_new_tokens=n, batch_size=3)  # two batches; the first padded
    for p, g in zip(prompts, got, strict=True):
        ids = encode(m, p)
        with torch.no_grad():
            for _ in range(n):
                ids.append(int(m(torch.tensor([ids]))[0, -1].argmax()))
        assert g == p + m.tokenizer.decode(ids[-n:], skip_special_tokens=True)
    assert generate(m, prompts[1:2], max_new_tokens=n) == got[1:2]
    with pytest.raises(TypeError, match="single str"):
        generate(m, "Paris is")
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(m, prompts, max_new_tokens=0)
