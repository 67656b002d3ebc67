"""The knowledge-neuron editor on tiny random models: the update rule, the Edit it returns, bad input."""

from __future__ import annotations

import pytest
import torch

from factscope import EditRequest, Fact, arch_of, fingerprint, target_ids
from factscope.edit import Edit, KNConfig, kn
from factscope.locate import neurons

REQ = EditRequest("The {} is in downtown", "Space Needle", "Paris", target_true="Seattle",
                  paraphrases=("The Space Needle stands in", "The Space Needle is located in"))
CHOSEN = [(1, 3), (1, 7), (2, 5)]
pytestmark = pytest.mark.filterwarnings("ignore:the model's top-1 answer")


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same(model, snap):
    for n, p in model.named_parameters():
        assert torch.equal(p, snap[n]), n


def plain_rule(v, e_old, e_new, l1, l2):
    """The official rule, step by step in float64, with ‖v‖ taken before either step."""
    v, e_old, e_new = v.double(), e_old.double(), e_new.double()
    norm = torch.sqrt((v * v).sum())
    out = v - l1 * norm / torch.sqrt((e_old * e_old).sum()) * e_old
    return out + l2 * norm / torch.sqrt((e_new * e_new).sum()) * e_new


@pytest.mark.parametrize("direction", ["embedding", "unembedding"])
def test_kn_update_is_the_official_rule(tiny, direction):
    a = arch_of(tiny)
    snap = snapshot(tiny)
    e = kn(tiny, REQ, neurons=CHOSEN, config=KNConfig(lambda_erase=1.0, lambda_insert=8.0, direction=direction),
           verbose=False)
    assert_same(tiny, snap)  # computing an edit changes nothing
    old, new = target_ids(tiny, "Seattle")[0], target_ids(tiny, "Paris")[0]
    E = tiny.W_E.detach() if direction == "embedding" else tiny.W_U.detach().T  # [d_vocab, d_model]
    before = [a.W_out(tiny, l).detach().clone() for l in range(a.n_layers)]
    with e.applied(tiny):
        for layer in range(a.n_layers):
            W0, W1 = before[layer], a.W_out(tiny, layer).detach()
            rows = [i for l, i in CHOSEN if l == layer]
            others = [i for i in range(a.d_mlp) if i not in rows]
            assert torch.equal(W1[others], W0[others])  # every other row is untouched, bit for bit
            for i in rows:
                want = plain_rule(W0[i], E[old], E[new], 1.0, 8.0).float()
                torch.testing.assert_close(W1[i], want, atol=1e-6, rtol=1e-6)
                assert (W1[i] - W0[i]).abs().max() > 1e-3
    assert_same(tiny, snap)
    assert e.method == "kn" and e.layers == (1, 2) and e.rank(1) == 2 and e.rank(2) == 1
    assert e.info["neurons"] == [list(n) for n in CHOSEN] and e.info["old_id"] == old and e.info["new_id"] == new
    assert e.config["direction"] == direction and e.fingerprint == fingerprint(tiny)


def test_embedding_scale_does_not_matter(tiny):
    """Only e/‖e‖ enters the rule: scaling an embedding row (Gemma's √d_model) changes nothing."""
    from factscope.edit.kn import kn_update

    g = torch.Generator().manual_seed(0)
    v, e_old, e_new = (torch.randn(16, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(kn_update(v, e_old, e_new), kn_update(v, 25.3 * e_old, 0.1 * e_new))
    torch.testing.assert_close(kn_update(v, e_old, e_new, lambda_erase=0, lambda_insert=0), torch.zeros(16, dtype=torch.float64))


def test_kn_edit_reverts_bit_exactly_and_round_trips(tiny, tmp_path):
    snap = snapshot(tiny)
    e = kn(tiny, REQ, neurons=CHOSEN, verbose=False)
    e.apply(tiny)
    edited = snapshot(tiny)
    e.revert(tiny)
    assert_same(tiny, snap)
    e.save(tmp_path / "kn.safetensors")
    back = Edit.load(tmp_path / "kn.safetensors", model=tiny)
    assert back.method == "kn" and back.requests == (REQ,) and back.info == e.info and back.config == e.config
    with back.applied(tiny):
        assert_same(tiny, edited)  # the loaded edit writes the same weights
    assert_same(tiny, snap)


def test_kn_locates_neurons_when_none_given(tiny):
    e = kn(tiny, REQ, config=KNConfig(steps=3), progress=False, verbose=False)
    r = neurons(tiny, REQ, steps=3, progress=False)
    assert e.info["located"] and e.info["neurons"] == [[l, i] for l, i, _ in r.neurons]
    assert e.info["refine_used"] == r.settings["refine_used"]
    same = kn(tiny, REQ, neurons=r, verbose=False)  # a NeuronResult is accepted as it is
    for l in e.layers:
        torch.testing.assert_close(e.delta(l), same.delta(l), atol=0, rtol=0)


def test_kn_without_target_true_erases_the_top1_answer(tiny):
    req = EditRequest(REQ.prompt, REQ.subject, "Paris")
    with torch.no_grad():
        from factscope import encode

        top = int(tiny(torch.tensor([encode(tiny, req.text)]))[0, -1].argmax())
    if top == target_ids(tiny, "Paris")[0]:
        pytest.skip("the tiny model already answers Paris")
    e = kn(tiny, req, neurons=CHOSEN, verbose=False)
    assert e.info["old_id"] == top


def test_kn_bad_input_leaves_model_untouched(tiny):
    snap = snapshot(tiny)
    d_mlp = arch_of(tiny).d_mlp
    with pytest.raises(TypeError, match="EditRequest"):
        kn(tiny, Fact("The {} is in downtown", "Space Needle", "Seattle"), neurons=CHOSEN)
    with pytest.raises(ValueError, match="lambda_erase"):
        kn(tiny, REQ, neurons=CHOSEN, config=KNConfig(lambda_erase=-1))
    with pytest.raises(ValueError, match="lambda_insert"):
        kn(tiny, REQ, neurons=CHOSEN, config=KNConfig(lambda_insert=float("inf")))
    with pytest.raises(ValueError, match="neuron index"):
        kn(tiny, REQ, neurons=[(1, d_mlp)], verbose=False)
    with pytest.raises(ValueError, match="layer"):
        kn(tiny, REQ, neurons=[(99, 0)], verbose=False)
    with pytest.raises(ValueError, match="at least one knowledge neuron"):
        kn(tiny, REQ, neurons=[], verbose=False)
    with pytest.raises(ValueError, match="direction"):
        kn(tiny, REQ, neurons=CHOSEN, config=KNConfig(direction="both"))
    same_start = EditRequest(REQ.prompt, REQ.subject, "Seattle Center", target_true="Seattle")
    if target_ids(tiny, "Seattle Center")[0] == target_ids(tiny, "Seattle")[0]:
        with pytest.raises(ValueError, match="different tokens"):
            kn(tiny, same_start, neurons=CHOSEN)
    with pytest.raises(ValueError, match="at least 3 prompts"):  # locating needs paraphrases
        kn(tiny, EditRequest(REQ.prompt, REQ.subject, "Paris", target_true="Seattle"))
    with pytest.raises(ValueError, match="target"):  # an empty target never gets this far
        EditRequest(REQ.prompt, REQ.subject, "")
    assert_same(tiny, snap)
    assert all(not p.requires_grad for p in tiny.parameters())
