"""Causal tracing against a plain full-recompute reference, and its invariants."""

from __future__ import annotations

import pytest
import torch

from factscope import Fact, arch_of, encode, subject_span
from factscope.locate import TraceResult, embedding_sigma, trace

FACT = Fact("The {} is in downtown", "Space Needle")


def reference_trace(model, fact, kind, *, noise, samples, window, seed):
    """ROME's algorithm written plainly: one full forward of 1 + samples rows per cell."""
    a = arch_of(model)
    ids = torch.tensor([encode(model, fact.text)])
    T, L = ids.shape[1], a.n_layers
    s0, s1 = subject_span(model, fact)
    sigma = embedding_sigma(model)
    eps = torch.randn(samples, s1 - s0, a.d_model, generator=torch.Generator().manual_seed(seed)) * (noise * sigma)
    hook_kind = {"hidden": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}[kind]
    names = [a.hook(hook_kind, l) for l in range(L)]
    with torch.no_grad():
        logits, clean = model.run_with_cache(ids, names_filter=lambda n: n in names)
    answer = int(logits[0, -1].argmax())

    def corrupt(act, hook):
        act[1:, s0:s1] += eps  # row 0 stays clean, as in ROME's batch
        return act

    out = torch.zeros(T, L)
    for t in range(T):
        for l in range(L):
            layers = [l] if kind == "hidden" else range(max(0, l - window // 2), min(L, l - window // 2 + window))
            hooks = [(a.embed, corrupt)]
            for j in layers:
                def restore(act, hook, j=j, t=t):
                    act[1:, t] = clean[names[j]][0, t]
                    return act
                hooks.append((names[j], restore))
            with torch.no_grad():
                lo = model.run_with_hooks(ids.expand(samples + 1, -1), fwd_hooks=hooks)
            out[t, l] = lo[1:, -1].softmax(-1)[:, answer].mean()
    return out


@pytest.mark.parametrize("kind,window", [("hidden", 2), ("mlp", 2), ("attn", 2), ("mlp", 3), ("attn", 4)])
def test_trace_matches_full_recompute(tiny, kind, window):
    # windows 3 and 4 (of 4 layers) clip at both ends, so shared and split-off rows are exercised
    got = trace(tiny, FACT, kind=kind, noise=3.0, samples=3, window=window, seed=7)
    ref = reference_trace(tiny, FACT, kind, noise=3.0, samples=3, window=window, seed=7)
    torch.testing.assert_close(got.scores[kind], ref, atol=1e-6, rtol=0)
    assert (ref.max() - ref.min()) > 1e-3  # the grid is not flat: the comparison has teeth


def test_invariants(tiny):
    r = trace(tiny, FACT, kind="all", samples=4, window=2, seed=1)
    a = arch_of(tiny)
    T = len(r.tokens)
    assert set(r.kinds) == {"hidden", "mlp", "attn"}
    for k in r.kinds:
        assert r.scores[k].shape == (T, a.n_layers)
    # Restoring the final hidden state at the last token gives the clean score.
    assert r.scores["hidden"][T - 1, a.n_layers - 1] == pytest.approx(r.clean, abs=1e-5)
    # Restoring before the subject changes nothing: exactly the corrupted score.
    s0, _ = r.subject
    for k in r.kinds:
        assert torch.all(r.scores[k][:s0] == r.corrupted)
    # Restoring the last layer at any earlier token cannot reach the last position's logits.
    torch.testing.assert_close(r.scores["hidden"][: T - 1, -1], torch.full((T - 1,), r.corrupted), atol=1e-5, rtol=0)


def test_restoring_every_position_of_the_last_layer_gives_clean(tiny):
    a = arch_of(tiny)
    ids = torch.tensor([encode(tiny, FACT.text)])
    s0, s1 = subject_span(tiny, FACT)
    name = a.hook("resid_post", a.n_layers - 1)
    with torch.no_grad():
        logits, clean = tiny.run_with_cache(ids, names_filter=lambda n: n == name)
        ans = int(logits[0, -1].argmax())
        eps = torch.randn(3, s1 - s0, a.d_model, generator=torch.Generator().manual_seed(0))

        def corrupt(act, hook):
            act[:, s0:s1] += 3 * eps
            return act

        def restore_all(act, hook):
            act[:] = clean[name][0]
            return act

        lo = tiny.run_with_hooks(ids.expand(3, -1), fwd_hooks=[(a.embed, corrupt), (name, restore_all)])
    r = trace(tiny, FACT, kind="hidden", samples=3)
    assert float(lo[:, -1].softmax(-1)[:, ans].mean()) == pytest.approx(r.clean, abs=1e-6)


def test_seeds(tiny):
    a = trace(tiny, FACT, kind="hidden", samples=3, seed=0)
    b = trace(tiny, FACT, kind="hidden", samples=3, seed=0)
    c = trace(tiny, FACT, kind="hidden", samples=3, seed=1)
    assert torch.equal(a.scores["hidden"], b.scores["hidden"]) and a.corrupted == b.corrupted
    assert not torch.equal(a.scores["hidden"], c.scores["hidden"])


def test_result_table_and_round_trip(tiny, tmp_path):
    r = trace(tiny, FACT, kind="all", samples=2, window=2)
    df = r.to_dataframe()
    assert len(df) == 3 * len(r.tokens) * arch_of(tiny).n_layers
    row = df[(df.kind == "mlp") & (df.token_index == 3) & (df.layer == 1)].iloc[0]
    assert row.score == pytest.approx(float(r.scores["mlp"][3, 1]))
    assert row.indirect_effect == pytest.approx(float(r.scores["mlp"][3, 1]) - r.corrupted)
    r.save(tmp_path / "t.safetensors")
    back = TraceResult.load(tmp_path / "t.safetensors")
    assert back.kinds == r.kinds and all(torch.equal(back.scores[k], r.scores[k]) for k in r.kinds)
    assert (back.clean, back.corrupted, back.tokens, back.subject, back.settings) == (
        r.clean, r.corrupted, r.tokens, r.subject, r.settings)


def test_bad_input_leaves_no_hooks(tiny):
    a = arch_of(tiny)
    with pytest.raises(ValueError, match="window of 1 to"):
        trace(tiny, FACT, window=a.n_layers + 1)
    with pytest.raises(ValueError, match="expected kind"):
        trace(tiny, FACT, kind="neurons")
    with pytest.raises(ValueError, match="positive integer"):
        trace(tiny, FACT, samples=0)
    with pytest.warns(UserWarning, match="does not predict"):
        r = trace(tiny, Fact(FACT.prompt, FACT.subject, "Zanzibar"), kind="hidden", samples=2)
    assert 0 <= r.clean < 1
    assert all(not h._forward_hooks for h in tiny.hook_dict.values())


def reference_rows(model, fact, kind, batch_ids, answer, window, score):
    """Full recompute per cell over given corrupted token rows (no noise): STR's reference."""
    a = arch_of(model)
    ids = torch.tensor([encode(model, fact.text)])
    T, L = ids.shape[1], a.n_layers
    hook_kind = {"hidden": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}[kind]
    names = [a.hook(hook_kind, l) for l in range(L)]
    with torch.no_grad():
        _, clean = model.run_with_cache(ids, names_filter=lambda n: n in names)
    out = torch.zeros(T, L)
    for t in range(T):
        for l in range(L):
            layers = [l] if kind == "hidden" else range(max(0, l - window // 2), min(L, l - window // 2 + window))
            hooks = []
            for j in layers:
                def restore(act, hook, j=j, t=t):
                    act[:, t] = clean[names[j]][0, t]
                    return act
                hooks.append((names[j], restore))
            with torch.no_grad():
                lo = model.run_with_hooks(batch_ids, fwd_hooks=hooks)
            out[t, l] = score(lo[:, -1]).mean()
    return out


POOL = ["Eiffel Tower", "Big Ben", "Colosseum", "Kremlin", "Golden Gate Bridge", "White House", "Sydney Opera House"]


@pytest.mark.parametrize("kind", ["hidden", "mlp"])
def test_str_matches_real_token_replacement(tiny, kind):
    r = trace(tiny, FACT, kind=kind, corruption="str", pool=POOL, samples=3, window=2, seed=2)
    partners = r.settings["partners"]
    assert 1 <= len(partners) <= 3 and FACT.subject not in partners
    s0, s1 = r.subject
    for p in partners:  # each partner has the subject's token count at the same place
        assert subject_span(tiny, Fact(FACT.prompt, p)) == (s0, s1)
    batch = torch.tensor([encode(tiny, FACT.prompt.format(p)) for p in partners])
    ref = reference_rows(tiny, FACT, kind, batch, r.answer_id, 2, lambda lo: lo.softmax(-1)[:, r.answer_id])
    torch.testing.assert_close(r.scores[kind], ref, atol=1e-5, rtol=0)
    assert r.settings["corruption"] == "str" and r.settings["sigma"] is None


def test_str_without_partner_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="symmetric token replacement needs another subject"):
        trace(tiny, FACT, kind="hidden", corruption="str", pool=["A very long subject name indeed, with commas"])


def test_logit_diff_uses_target_new_as_contrast(tiny):
    from factscope import EditRequest, target_ids

    req = EditRequest(FACT.prompt, FACT.subject, "Paris")  # no target_true: trace the model's top-1 token
    r = trace(tiny, req, kind="hidden", metric="logit_diff", samples=3, seed=4)
    c = target_ids(tiny, "Paris")[0]
    assert r.settings["contrast"] == tiny.tokenizer.decode([c]) and r.answer_id != c
    # The clean and corrupted ends of the scale, recomputed plainly with the same noise.
    a = arch_of(tiny)
    s0, s1 = subject_span(tiny, req)
    eps = torch.randn(3, s1 - s0, a.d_model, generator=torch.Generator().manual_seed(4)) * (3.0 * embedding_sigma(tiny))
    ids = torch.tensor([encode(tiny, req.text)])

    def corrupt(act, hook):
        act[:, s0:s1] += eps
        return act

    with torch.no_grad():
        lo = tiny.run_with_hooks(ids.expand(3, -1), fwd_hooks=[(a.embed, corrupt)])[:, -1]
        clean = tiny(ids)[0, -1]
    assert r.corrupted == pytest.approx(float((lo[:, r.answer_id] - lo[:, c]).mean()), abs=1e-5)
    assert r.clean == pytest.approx(float(clean[r.answer_id] - clean[c]), abs=1e-5)
    T, L = len(r.tokens), a.n_layers
    assert r.scores["hidden"][T - 1, L - 1] == pytest.approx(r.clean, abs=1e-4)


def test_bad_corruption_and_metric(tiny):
    with pytest.raises(ValueError, match="corruption"):
        trace(tiny, FACT, kind="hidden", corruption="uniform")
    with pytest.raises(ValueError, match="metric"):
        trace(tiny, FACT, kind="hidden", metric="rank")


def test_exception_mid_trace_leaves_model_clean(tiny, monkeypatch):
    import factscope.locate.tracing as tracing

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted mid-trace")

    monkeypatch.setattr(tracing, "_final_logits", boom)
    ids = torch.tensor([encode(tiny, FACT.text)])
    with torch.no_grad():
        before = tiny(ids)
    with pytest.raises(RuntimeError, match="interrupted"):
        trace(tiny, FACT, kind="all", samples=2, window=2)
    assert all(not h._forward_hooks and not h._forward_pre_hooks for h in tiny.hook_dict.values())
    assert all(not b._forward_pre_hooks for b in tiny.blocks)
    with torch.no_grad():
        assert torch.equal(tiny(ids), before)


@pytest.mark.parametrize("kind", ["hidden", "mlp"])
def test_trace_of_a_prompt_longer_than_the_sliding_window(tiny, kind):
    """Tiny Gemma 3 attends locally over 16 tokens: a 50-token prompt once crashed the prefix cache's crop."""
    fact = Fact("Visitors come from all over the world to see it every single day. The {} is located in the city of",
                "Eiffel Tower")
    assert len(encode(tiny, fact.text)) > 16
    got = trace(tiny, fact, kind=kind, noise=3.0, samples=2, window=2, seed=1)
    ref = reference_trace(tiny, fact, kind, noise=3.0, samples=2, window=2, seed=1)
    torch.testing.assert_close(got.scores[kind], ref, atol=1e-6, rtol=0)
