"""Integration tests on the real models (marked slow; `pytest -m "not slow"` skips them).

The default model (Gemma 3 270M) is loaded once per session; its first load converts the GGUF into
the cache. SmolLM2 is loaded for the tokenizer and architecture checks.
"""

from __future__ import annotations

import pytest
import torch

import factscope.models as models
from factscope import (
    Fact,
    arch_of,
    builtin_facts,
    builtin_groups,
    encode,
    encode_batch,
    load_model,
    model_info,
    predict,
    subject_span,
    target_ids,
)

pytestmark = pytest.mark.slow

SPAN_CASES = [
    ("The Space Needle is in downtown", "Space Needle"),
    ("Space Needle is in downtown", "Space Needle"),
    ("Where did Michael Jordan play? He played", "Michael Jordan"),
    ("  The  Eiffel Tower is in", "Eiffel Tower"),
    ("The President of the United States lives in the", "President of the United States"),
]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def test_default_model_shape_and_state(gemma):
    a = arch_of(gemma)
    assert (a.architecture, a.n_layers, a.d_model, a.d_mlp, a.d_vocab) == ("Gemma3ForCausalLM", 18, 640, 2048, 262144)
    assert a.post_norm
    assert a.hook("mlp_out", 3) == "blocks.3.ln2_post.hook_out" and a.hook("mlp_raw_out", 3) == "blocks.3.mlp.hook_out"
    assert not gemma.training and all(not p.requires_grad for p in gemma.parameters())
    assert model_info(gemma).source == "package"


def test_second_load_reads_the_cache(gemma, monkeypatch):
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("second load must not convert again"))
    m = load_model()
    assert model_info(m).path == model_info(gemma).path
    ids, mask = encode_batch(m, ["The Space Needle is in downtown"])
    with torch.no_grad():
        assert torch.equal(m(ids, attention_mask=mask, logits_to_keep=1), gemma(ids, attention_mask=mask, logits_to_keep=1))


def test_known_answers(gemma):
    preds = predict(gemma, ["The Space Needle is in downtown", "The Eiffel Tower is located in the city of"],
                    ["Seattle", "Paris"])
    assert all(p.correct for p in preds), preds.to_dataframe()


def test_real_gemma_hooks_match_hf_forward(gemma):
    """Post-norm placement on the real model: the bridge against the plain HF model from the cache."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_info(gemma).path, dtype=torch.float32, attn_implementation="eager").eval()
    a, l = arch_of(gemma), 6
    layer = hf.model.layers[l]
    got: dict[str, torch.Tensor] = {}
    hs = [layer.mlp.down_proj.register_forward_pre_hook(lambda m, args: got.__setitem__("mlp_key", args[0])),
          layer.mlp.register_forward_hook(lambda m, i, o: got.__setitem__("mlp_raw_out", o)),
          layer.post_feedforward_layernorm.register_forward_hook(lambda m, i, o: got.__setitem__("mlp_out", o)),
          layer.post_attention_layernorm.register_forward_hook(lambda m, i, o: got.__setitem__("attn_out", o))]
    ids = torch.tensor([encode(gemma, "The Space Needle is in downtown")])
    try:
        with torch.no_grad():
            ref_logits = hf(input_ids=ids).logits
    finally:
        for h in hs:
            h.remove()
    names = {a.hook(k, l): k for k in got}
    with torch.no_grad():
        logits, cache = gemma.run_with_cache(ids, names_filter=lambda n: n in names)
    for name, kind in names.items():
        torch.testing.assert_close(cache[name], got[kind], atol=1e-4, rtol=1e-4, msg=kind)
    torch.testing.assert_close(logits, ref_logits, atol=1e-3, rtol=1e-4)
    assert (cache[a.hook("mlp_out", l)] - cache[a.hook("mlp_raw_out", l)]).abs().max() > 1e-2  # the norm matters


def test_real_W_out_write_is_live_and_reversible(gemma):
    a = arch_of(gemma)
    ids, mask = encode_batch(gemma, ["The Space Needle is in downtown"])
    with torch.no_grad():
        before = gemma(ids, attention_mask=mask, logits_to_keep=1)
    W = a.W_out(gemma, 6)
    saved = W.detach().clone()
    g = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            W.add_(torch.outer(torch.randn(a.d_mlp, generator=g), torch.randn(a.d_model, generator=g)) * 0.05)
            after = gemma(ids, attention_mask=mask, logits_to_keep=1)
        assert (after - before).abs().max() > 1e-2
    finally:
        with torch.no_grad():
            W.copy_(saved)
    with torch.no_grad():
        assert torch.equal(gemma(ids, attention_mask=mask, logits_to_keep=1), before)


@pytest.mark.parametrize("which", ["gemma", "smollm2"])
def test_subject_spans_on_real_tokenizers(which, request):
    model = request.getfixturevalue(which)
    tok = model.tokenizer
    cases = SPAN_CASES + [(r.text, r.subject) for r in builtin_facts()]
    cases += [(p, r.subject) for r in builtin_facts() for p in r.paraphrases]
    for text, subject in cases:
        s, e = subject_span(tok, text, subject)
        ids = encode(tok, text)
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert tok.decode(ids[s:e]).strip() == subject, (text, subject)
        assert subject_span(tok, text, subject, use_offsets=False) == (s, e), (text, subject)


def test_smollm2_loads_by_name_and_by_gguf_path(smollm2):
    a = arch_of(smollm2)
    assert (a.architecture, a.n_layers, a.d_model, a.d_mlp) == ("LlamaForCausalLM", 30, 576, 1536)
    assert not a.post_norm
    assert smollm2.tokenizer.bos_token == "<|im_start|>"
    path = models._builtin_gguf("smollm2-135m", None)  # the file inside the package
    m = load_model(path)
    assert model_info(m).path == model_info(smollm2).path  # one cache entry for both ways in
    assert predict(m, ["The Eiffel Tower is located in the city of"], ["Paris"])[0].rank < 5


# ---------------------------------------------------------------- the built-in set stays honest


def _check(model, prompts: list[str], targets: list[str], what: str) -> None:
    preds = predict(model, prompts, targets, k=2)
    wrong = [f"{p.prompt!r}: expected {p.target!r}, got {p.answer!r} (p={p.top_probs[0]:.2f})"
             for p in preds if not p.correct]
    assert not wrong, f"{len(wrong)} {what} not answered as recorded:\n" + "\n".join(wrong)


def test_builtin_facts_are_answered_as_recorded(gemma):
    facts = builtin_facts()
    _check(gemma, [f.text for f in facts], [f.target_true for f in facts], "facts")


def test_builtin_paraphrases_and_neighbours_are_answered_as_recorded(gemma):
    facts = builtin_facts()
    _check(gemma, [p for f in facts for p in f.paraphrases], [f.target_true for f in facts for _ in f.paraphrases],
           "paraphrases")
    _check(gemma, [p for f in facts for p in f.neighbours], [f.target_true for f in facts for _ in f.neighbours],
           "neighbours")


def test_builtin_groups_are_answered_as_recorded(gemma):
    rows = [f for g in builtin_groups() for f in (*g.same_subject, *g.related)]
    _check(gemma, [f.text for f in rows], [f.target for f in rows], "group facts")


def test_builtin_counterfactuals_differ_in_first_token(gemma):
    for f in builtin_facts():
        assert target_ids(gemma, f.target_new)[0] != target_ids(gemma, f.target_true)[0], f


@pytest.mark.demo
def test_demo_command_writes_the_report_answers_and_figures(gemma, tmp_path):
    """`factscope demo` on Gemma 3 270M (`make test-demo`; not in `make test`, whose per-module slow tests
    check each step on the real model and whose tests/test_demo.py runs every step of the demo and checks
    its report on a tiny Gemma 3)."""
    import re

    import pandas as pd
    from typer.testing import CliRunner

    from factscope.app.cli import app
    from factscope.figures import remote_urls

    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--samples", "2"])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "answers.csv")
    facts = builtin_facts()
    assert list(df["prompt"]) == [f.text for f in facts]
    assert list(df["expected"]) == [f.target_true for f in facts]
    assert df["correct"].all()
    assert f"100.0% of {len(facts)} built-in facts" in r.output
    for name in ("trace", "profile"):
        for ext in ("png", "svg", "pdf"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 1000
    assert "recommended edit layer:" in r.output
    # the knowledge-neuron step: a figure and an offline circuitsvis page of the same fact
    assert (tmp_path / "neurons.png").stat().st_size > 1000
    assert (tmp_path / "neurons.html").read_text(encoding="utf-8").count("CircuitsVis.render(") == 3
    assert "knowledge neurons of" in r.output and "suppressing them" in r.output
    # the ROME step: the saved edit, applied, makes the model prefer the new answer; reverting restores it
    from factscope import builtin_fact
    from factscope.edit import Edit
    from factscope.locate import one_per_relation
    from factscope.predict import target_logprob

    fact = builtin_fact("eiffel_tower_located_in_city")
    assert (tmp_path / "rome_before_after.txt").read_text().count("\n") == 1 + 1 + len(fact.paraphrases) + len(fact.neighbours)
    e = Edit.load(tmp_path / "rome_edit.safetensors", model=gemma)
    before = target_logprob(gemma, [fact.text] * 2, [fact.target_new, fact.target_true])
    with e.applied(gemma):
        after = target_logprob(gemma, [fact.text] * 2, [fact.target_new, fact.target_true])
    assert before[0] < before[1] and after[0] > after[1]
    torch.testing.assert_close(target_logprob(gemma, [fact.text] * 2, [fact.target_new, fact.target_true]), before,
                               atol=0, rtol=0)
    # its evaluation report, and the spillover probe of the President / Secretary of State group
    assert (tmp_path / "rome_report.png").stat().st_size > 1000
    assert "efficacy" in (tmp_path / "rome_report.txt").read_text()
    assert (tmp_path / "spillover.png").stat().st_size > 1000
    spill = pd.read_csv(tmp_path / "spillover.csv")
    assert set(spill["category"]) >= {"paraphrase", "same_subject", "related", "unrelated"}
    assert "Secretary of State" in set(spill["subject"])
    assert "whitened key similarity" in r.output
    # the MEMIT batch: one request per relation, saved; applied, the prompts answer the new targets
    from factscope.app.defaults import MEMIT_FACTS

    reqs = one_per_relation()[:MEMIT_FACTS]
    m = Edit.load(tmp_path / "memit_edit.safetensors", model=gemma)
    assert [q.text for q in m.requests] == [q.text for q in reqs]
    per = pd.read_csv(tmp_path / "memit_requests.csv")
    assert list(per["prompt"]) == [q.text for q in reqs]
    with m.applied(gemma):
        lp_new = target_logprob(gemma, [q.text for q in reqs], [q.target_new for q in reqs])
        lp_true = target_logprob(gemma, [q.text for q in reqs], [q.target_true for q in reqs])
    assert float((lp_new > lp_true).float().mean()) >= 0.75  # MEMIT's efficacy on these facts (measured 1.0)
    assert "efficacy" in (tmp_path / "memit_report.txt").read_text()
    assert (tmp_path / "memit_report.png").stat().st_size > 1000
    # the report: one offline page with every section, figure, table and the circuitsvis view
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert remote_urls(page) == []
    heads = re.findall(r"<h2>(.*?)</h2>", page)
    assert [h.split(" ")[0] for h in heads] == ["1.", "2.", "3.", "4.", "5.", "6.", "Run", "Settings"]
    imgs = re.findall(r'<img alt="[^"]+" style="width:\d+px" src="data:image/png;base64,', page)
    assert len(imgs) == 6  # trace, profile, neurons, rome_report, spillover, memit_report
    assert page.count("<figcaption>") >= 6 + 1 + 2 and page.count("<caption>") >= 10  # + view, 2 printed reports
    assert "CircuitsVis.render(" in page and "<script crossorigin type=\"module\">" in page
    assert "Everything that determined these results" in page and fact.text in page
    assert "time per step" in r.output and ("came from the cache" in r.output or "built and cached" in r.output)


def test_trace_on_real_models(gemma, smollm2):
    """Invariants of tracing on the real models (the cell-by-cell reference check runs on tiny models)."""
    from factscope import builtin_fact
    from factscope.locate import trace

    for model in (gemma, smollm2):
        fact = builtin_fact("eiffel_tower_located_in_city")
        r = trace(model, fact.fact if model is gemma else Fact(fact.prompt, fact.subject), kind="hidden", samples=3)
        L, T = arch_of(model).n_layers, len(r.tokens)
        assert r.scores["hidden"].shape == (T, L)
        assert r.scores["hidden"][T - 1, L - 1] == pytest.approx(r.clean, abs=1e-4)
        assert torch.all(r.scores["hidden"][: r.subject[0]] == r.corrupted)
        assert r.clean > r.corrupted  # the corruption destroys the fact
    r = trace(gemma, builtin_fact("eiffel_tower_located_in_city"), kind="mlp", corruption="str", samples=3)
    assert len(r.settings["partners"]) == 3 and r.clean > r.corrupted


@pytest.mark.parametrize("name", ["gemma", "smollm2"])
def test_rome_on_real_models(name, request):
    """One ROME edit per real model: the rank-one constraint, efficacy, and a bit-exact revert."""
    from factscope import arch_of, builtin_facts
    from factscope.edit import rome
    from factscope.edit.rome import ROMEConfig, compute_k_star, context_templates
    from factscope.locate import recommended_layer
    from factscope.predict import target_logprob

    model = request.getfixturevalue(name)
    req = next(f for f in builtin_facts() if f.subject == "Michael Jordan")
    # Gemma: the traced layer from the default profile, which the README quickstart, notebooks and the MEMIT
    # test share from the cache. SmolLM2: its traced layer, 3 (docs/guide.md), without a second profile.
    layer = recommended_layer(model, progress=False).layer if name == "gemma" else 3
    snap = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Gemma: the default statistics, which the README quickstart and notebooks share from the cache;
    # SmolLM2: C from 4,096 keys (2.7 × d_mlp) rather than 16,384, enough for these checks.
    config = ROMEConfig() if name == "gemma" else ROMEConfig(n_tokens=4096)
    e = rome(model, req, layer=layer, config=config, progress=False)
    a = arch_of(model)
    k = compute_k_star(model, req, layer, context_templates(model, config))
    W0 = a.W_out(model, layer).detach().double().clone()
    with e.applied(model):
        moved = k @ a.W_out(model, layer).detach().double() - k @ W0  # = δ: k* maps to v*
        assert float(moved.norm()) == pytest.approx(e.info["delta_norm"], rel=1e-3)
        new, true = target_logprob(model, [req.text] * 2, [req.target_new, req.target_true])
        assert new > true, (name, float(new), float(true))
    for n, p in model.named_parameters():
        assert torch.equal(p, snap[n]), n
    if name != "gemma":
        return
    # the evaluation report of the same edit: the recorded facts give known pre-edit values
    from factscope.probes import evaluate

    rep = evaluate(model, e, n_gen_tokens=30, progress=False, n_boot=200)
    assert rep.pre["efficacy"][0] == 0 and rep.post["efficacy"][0] == 1
    assert rep.pre["neighbourhood"][0] == 1  # neighbours are answered with target_true (verified on Gemma)
    assert rep.pre["neighbourhood_kl"][0] == 0 and rep.post["neighbourhood_kl"][0] > 0
    assert rep.post["fluency"][0] > 0 and len(rep.generations["post"][0]) > len(req.text)
    assert 0 <= rep.score("post") <= 1
    for n, p in model.named_parameters():
        assert torch.equal(p, snap[n]), n


@pytest.mark.parametrize("name", ["gemma", "smollm2"])
def test_knowledge_neurons_on_real_models(name, request):
    """Knowledge neurons of one built-in fact per real model: 2-5 neurons, finite attributions, and a KN
    edit that changes the answer's odds and reverts bit-exactly."""
    import warnings

    from factscope import builtin_fact
    from factscope.edit import kn
    from factscope.locate import neurons, suppress
    from factscope.predict import target_logprob

    model = request.getfixturevalue(name)
    req = builtin_fact("eiffel_tower_located_in_city")
    snap = {n: p.detach().clone() for n, p in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SmolLM2 need not answer every prompt as Gemma does
        r = neurons(model, req, prompts=[req.text, *req.paraphrases[:2]], progress=False)
    L, d_mlp = arch_of(model).n_layers, arch_of(model).d_mlp
    assert r.attributions.shape == (3, L, d_mlp) and torch.isfinite(r.attributions).all()
    assert 2 <= len(r.neurons) <= 5, r.settings["refine_note"]
    assert torch.isfinite(r.p_baseline).all()
    ids = torch.tensor([encode(model, req.text)])
    with torch.no_grad():
        clean = model(ids)[0, -1].softmax(-1)[r.answer_id]
        with suppress(model, r):
            assert model(ids)[0, -1].softmax(-1)[r.answer_id] != clean
    e = kn(model, req, neurons=r, verbose=False)
    before = target_logprob(model, [req.text] * 2, [req.target_new, req.target_true])
    with e.applied(model):
        after = target_logprob(model, [req.text] * 2, [req.target_new, req.target_true])
    assert after[0] > before[0] and after[1] < before[1]  # the odds move as the rule intends
    for n, p in model.named_parameters():
        assert torch.equal(p, snap[n]), n
        assert not p.requires_grad
