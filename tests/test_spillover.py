"""The spillover probe: per-probe shifts, key similarities and slopes against plain recomputations,
the default bank, editor dispatch, input checks, the model left bit-identical, the figure."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from factscope import (
    EditRequest,
    Fact,
    arch_of,
    builtin_groups,
    encode,
    fingerprint,
    target_ids,
    tiny_model,
)
from factscope.edit import Edit, KNConfig, registry
from factscope.edit.handle import EditStateError, FingerprintMismatchError, applied_edits
from factscope.edit.rome import ROMEConfig
from factscope.probes.spillover import (
    POOLED,
    SpilloverProbe,
    default_bank,
    inverse_sqrt,
    spillover,
)

sp = importlib.import_module("factscope.probes.spillover")  # the package attribute `spillover` is the function

REQ = EditRequest("The {} is in downtown", "Space Needle", "London", target_true="Seattle",
                  paraphrases=("The Space Needle stands in",))
BANK = {
    "paraphrase": [Fact("The {} stands in", "Space Needle", "Seattle"),
                   Fact("The {} is located in", "Space Needle", "Seattle"),
                   Fact("Visitors love the {} in", "Space Needle", "Seattle")],
    "related": [Fact("The {} is located in the city of", "Eiffel Tower", "Paris"),
                Fact("The {} is in", "Colosseum", "Rome"),
                Fact("{} is in", "Big Ben", "London"),
                Fact("The {} is in", "Kremlin", "Moscow")],
    "unrelated": [Fact("{} professionally played", "Michael Jordan", "basketball"),
                  Fact("The capital of {} is", "Japan", "Tokyo"),
                  Fact("{} plays", "Lionel Messi", "soccer"),
                  Fact("{} played the", "Beethoven", "piano")],
}
N_BOOT = 200
LAYER = 1
PRESIDENT = next(g for g in builtin_groups() if g.name == "president_vs_secretary_of_state")


def spd(d: int, seed: int = 0) -> torch.Tensor:
    A = torch.randn(d, 2 * d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return A @ A.T / (2 * d) + 0.01 * torch.eye(d, dtype=torch.float64)


def dense_edit(m, scale: float = 0.2, seed: int = 0, layer: int = LAYER) -> Edit:
    a = arch_of(m)
    D = scale * torch.randn(a.d_mlp, a.d_model, generator=torch.Generator().manual_seed(seed))
    return Edit(method="test", fingerprint=fingerprint(m), deltas={layer: D}, requests=(REQ,))


def run(m, **kw):
    kw = {"bank": BANK, "C": spd(arch_of(m).d_mlp), "n_boot": N_BOOT, "progress": False, "verbose": False, **kw}
    if "edit" not in kw:
        kw["edit"] = dense_edit(m)
    return spillover(m, REQ, **kw)


# --------------------------------------------------------------------------- plain references


@torch.no_grad()
def plain_logits(m, text: str) -> torch.Tensor:
    """Next-token logits after one unpadded prompt."""
    return m(torch.tensor([encode(m, text)]))[0, -1].double()


@torch.no_grad()
def plain_logp(m, text: str, answer: str) -> float:
    """Mean per-token log p(" " + answer | text), one unpadded row."""
    tgt = target_ids(m, answer)
    ids = encode(m, text) + tgt
    lp = m(torch.tensor([ids]))[0].double().log_softmax(-1)
    P, n = len(ids), len(tgt)
    return float(np.mean([float(lp[P - n - 1 + j, t]) for j, t in enumerate(tgt)]))


class Written:
    """Add ΔW to W_out by hand (no Edit machinery), restore on exit."""

    def __init__(self, m, layer: int, D: torch.Tensor):
        self.W, self.D = m.blocks[layer].mlp.W_out, D

    def __enter__(self):
        self.W0 = self.W.detach().clone()
        with torch.no_grad():
            self.W.add_(self.D.to(self.W.dtype))

    def __exit__(self, *exc):
        with torch.no_grad():
            self.W.copy_(self.W0)


@torch.no_grad()
def plain_key(m, fact: Fact, layer: int) -> torch.Tensor:
    """The input to layer ``layer``'s W_out at the subject's last token, unpadded, hooked by name."""
    end = fact.prompt.index("{}") + len(fact.subject)
    last = len(encode(m, fact.text[:end])) - 1
    got = []
    m.run_with_hooks(torch.tensor([encode(m, fact.text)]),
                     fwd_hooks=[(f"blocks.{layer}.mlp.out.hook_in", lambda act, hook: got.append(act.detach()))])
    return got[0][0, last].double()


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


# --------------------------------------------------------------------------- measurements


def test_shifts_match_a_plain_recomputation(model):
    e = dense_edit(model)
    r = run(model, edit=e)
    facts = [f for fs in BANK.values() for f in fs]
    assert [p.prompt for p in r.probes] == [f.text for f in facts]
    assert [p.category for p in r.probes] == [c for c, fs in BANK.items() for _ in fs]
    before = [(plain_logp(model, f.text, f.target), plain_logits(model, f.text)) for f in facts]
    with Written(model, LAYER, e.deltas[LAYER]):
        after = [(plain_logp(model, f.text, f.target), plain_logits(model, f.text)) for f in facts]
    moved = 0
    for p, (lp0, z0), (lp1, z1) in zip(r.probes, before, after):
        assert p.logp_before == pytest.approx(lp0, abs=1e-4)
        assert p.logp_after == pytest.approx(lp1, abs=1e-4)
        assert p.delta_logp == pytest.approx(lp1 - lp0, abs=1e-4)
        assert p.abs_delta_logp == abs(p.delta_logp)
        l0, l1 = z0.log_softmax(-1), z1.log_softmax(-1)
        kl = float((l1.exp() * (l1 - l0)).sum())
        assert p.kl == pytest.approx(kl, rel=1e-3, abs=1e-5)
        assert p.flipped == bool(z0.argmax() != z1.argmax())
        assert p.top1_before == model.tokenizer.decode([int(z0.argmax())])
        assert p.top1_after == model.tokenizer.decode([int(z1.argmax())])
        moved += abs(lp1 - lp0) > 1e-3
    assert moved >= len(facts) // 2, "the test edit should move most probes"


def test_similarities_match_a_plain_computation(model):
    C = spd(arch_of(model).d_mlp, seed=3)
    r = run(model, C=C, edit=dense_edit(model, layer=2))
    assert r.layer == 2
    evals, V = torch.linalg.eigh(C)
    W = V @ torch.diag(evals ** -0.5) @ V.T
    k_e = plain_key(model, Fact(REQ.prompt, REQ.subject), 2)
    facts = [f for fs in BANK.values() for f in fs]
    for p, f in zip(r.probes, facts):
        k = plain_key(model, f, 2)
        assert p.cos_raw == pytest.approx(cos(k, k_e), abs=1e-5)
        assert p.cos_white == pytest.approx(cos(W @ k, W @ k_e), abs=1e-5)
        ratio = float(k @ torch.linalg.solve(C, k_e) / (k_e @ torch.linalg.solve(C, k_e)))
        assert p.whitened_dot_ratio == pytest.approx(ratio, rel=1e-4, abs=1e-6)
    # the paraphrases share the subject: their raw keys are closer to k_e than the unrelated ones
    para, unrel = r.values("cos_raw", "paraphrase"), r.values("cos_raw", "unrelated")
    assert para.mean() > unrel.mean()


def test_inverse_sqrt_whitens_and_clamps():
    C = spd(12, seed=1)
    W = inverse_sqrt(C)
    assert torch.allclose(W @ C @ W, torch.eye(12, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(W, W.T)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    lam = torch.tensor([-1e-12, 0.0, 1e-3, 2.0], dtype=torch.float64)  # rank-deficient, a rounding negative
    W = inverse_sqrt(Q @ torch.diag(lam) @ Q.T)
    expect = Q @ torch.diag(lam.clamp_min(2.0 * sp.EIG_FLOOR) ** -0.5) @ Q.T
    assert torch.isfinite(W).all()
    assert torch.allclose(W, expect, rtol=1e-6)
    with pytest.raises(ValueError, match="square"):
        inverse_sqrt(torch.ones(3, 4))
    with pytest.raises(ValueError, match="positive eigenvalue"):
        inverse_sqrt(-torch.eye(3))


def test_zero_edit_moves_nothing(model):
    a = arch_of(model)
    e = Edit(method="zero", fingerprint=fingerprint(model), deltas={LAYER: torch.zeros(a.d_mlp, a.d_model)})
    r = run(model, edit=e)
    assert all(p.delta_logp == 0.0 and p.kl == 0.0 and not p.flipped for p in r.probes)
    assert all(p.top1_before == p.top1_after for p in r.probes)
    s = r.summary()
    assert (s["mean"] == 0).all() and (s["flip_rate"] == 0).all()


def test_slopes_match_polyfit_and_resample_probes(model):
    r = run(model, seed=7)
    df = r.to_dataframe()
    groups = {"paraphrase": df.category == "paraphrase", "related": df.category == "related",
              "unrelated": df.category == "unrelated", POOLED: df.expected == "stay"}
    assert {(f.group, f.effect, f.x) for f in r.fits} == {(g, e, x) for g in groups for e in ("abs_delta_logp", "kl")
                                                         for x in ("cos_white", "cos_raw")}
    rng = np.random.default_rng(7)
    for f in r.fits:
        sel = df[groups[f.group]]
        x, y = sel[f.x].to_numpy(), sel[f.effect].to_numpy()
        b, a0 = np.polyfit(x, y, 1)
        assert f.n == len(sel)
        assert f.slope == pytest.approx(b, rel=1e-6, abs=1e-9)
        assert f.intercept == pytest.approx(a0, rel=1e-6, abs=1e-9)
        idx = np.random.default_rng(7).integers(0, f.n, size=(N_BOOT, f.n))  # stats.bootstrap's draws
        reps = np.array([np.polyfit(x[i], y[i], 1)[0] if np.ptp(x[i]) > 1e-9 else np.nan for i in idx])
        ok = np.isfinite(reps) & np.isfinite(f.boot_slope)
        assert ok.sum() > N_BOOT // 2
        assert np.allclose(f.boot_slope[ok], reps[ok], rtol=1e-6, atol=1e-9)
        lo, hi = np.quantile(reps[np.isfinite(reps)], [0.025, 0.975])
        assert (f.lo, f.hi) == pytest.approx((lo, hi), rel=1e-6, abs=1e-9)
        band_lo, band_hi = f.band(np.array([x.min(), x.max()]))
        assert np.all(band_lo <= band_hi)
    del rng
    assert r.fit("related", "kl", "cos_raw").n == 4
    assert r.fit("no such group") is None


def test_summary_and_table(model):
    r = run(model)
    df = r.to_dataframe()
    assert len(df) == sum(map(len, BANK.values()))
    assert {"category", "expected", "prompt", "subject", "answer", "logp_before", "logp_after", "delta_logp", "kl",
            "top1_before", "top1_after", "flipped", "cos_raw", "cos_white", "whitened_dot_ratio"} <= set(df.columns)
    for effect in ("abs_delta_logp", "kl"):
        s = r.summary(effect)
        assert list(s.index) == ["paraphrase", "related", "unrelated", POOLED]
        for g in ("paraphrase", "related", "unrelated"):
            rows = df[df.category == g]
            assert s.loc[g, "n"] == len(rows)
            assert s.loc[g, "mean"] == pytest.approx(rows[effect].mean())
            assert s.loc[g, "mean_lo"] <= s.loc[g, "mean"] <= s.loc[g, "mean_hi"]
            assert s.loc[g, "mean_kl"] == pytest.approx(rows.kl.mean())
            assert s.loc[g, "flip_rate"] == pytest.approx(rows.flipped.mean())
            assert s.loc[g, "slope_white"] == pytest.approx(r.fit(g, effect, "cos_white").slope)
        assert s.loc[POOLED, "n"] == 8 and s.loc[POOLED, "expected"] == "stay"
        assert s.loc["paraphrase", "expected"] == "move"
    text = str(r)
    assert text == r.table() and r.verdict.split()[0] in text and POOLED in text
    with pytest.raises(ValueError, match="effect"):
        r.summary("nll")


def synthetic(slope: float, seed: int = 0) -> list[SpilloverProbe]:
    g = np.random.default_rng(seed)
    out = []
    for i in range(30):
        c = float(g.uniform(-0.2, 0.8))
        d = slope * c + 0.02 * float(g.normal())
        out.append(SpilloverProbe(category=("related", "unrelated")[i % 2], expected="stay", prompt=f"p{i}",
                                  subject="s", answer="a", logp_before=-1.0, logp_after=-1.0 + d, delta_logp=d,
                                  kl=abs(d), top1_before="x", top1_after="x", flipped=False, cos_raw=c,
                                  cos_white=c, whitened_dot_ratio=c))
    return out


@pytest.mark.parametrize("slope_, words", [(1.0, "rises"), (0.0, "No detectable trend"), (-1.0, "falls")])
def test_verdict_reads_the_pooled_whitened_ci(slope_, words):
    ps = synthetic(slope_)
    if slope_ < 0:  # |Δ| falling with similarity: keep the deltas positive, shrinking with c
        ps = [SpilloverProbe(**{**p.__dict__, "delta_logp": 1.0 - p.cos_white + 0.01 * (i % 3)})
              for i, p in enumerate(ps)]
    fits = sp._fits(ps, ["related", "unrelated"], 500, 0)
    v = sp._verdict(ps, fits, [], 500, 0)
    assert words in v
    assert ("refutes locality" in v) == (words == "rises")
    assert "No paraphrase probes" in v and "pooled" in v


# --------------------------------------------------------------------------- the default bank


def test_default_bank_for_the_president():
    bank, notes = default_bank(PRESIDENT.edit, n_unrelated=6, seed=0)
    req = PRESIDENT.edit
    assert list(bank) == list(sp.CATEGORIES)
    assert [f.text for f in bank["paraphrase"]] == list(req.paraphrases)
    assert all(f.target == "White House" and f.subject == req.subject for f in bank["paraphrase"])
    assert bank["same_subject"] == PRESIDENT.same_subject and bank["related"] == PRESIDENT.related
    assert bank["same_relation"] and all(f.relation == req.relation and f.subject != req.subject
                                         for f in bank["same_relation"])
    others = {f.subject for c in ("paraphrase", "same_subject", "related", "same_relation") for f in bank[c]}
    un = bank["unrelated"]
    assert len(un) == 6 and len({f.subject for f in un}) == 6
    assert all(f.relation != req.relation and f.subject not in others for f in un)
    assert default_bank(req, n_unrelated=6, seed=0)[0]["unrelated"] == un
    assert default_bank(req, n_unrelated=6, seed=1)[0]["unrelated"] != un
    assert not notes


def test_default_bank_without_a_group_says_so(model):
    req = EditRequest("The {} is in downtown", "Space Needle", "London", target_true="Seattle", relation="P131",
                      paraphrases=("The Space Needle stands in", "It stands in"))
    bank, notes = default_bank(req, n_unrelated=3)
    assert bank["same_subject"] == () and bank["related"] == ()
    assert any("no built-in group" in n for n in notes) and any("verbatim" in n for n in notes)
    a = arch_of(model)
    e = Edit(method="zero", fingerprint=fingerprint(model), deltas={LAYER: torch.zeros(a.d_mlp, a.d_model)})
    r = spillover(model, req, edit=e, C=spd(a.d_mlp), n_unrelated=3, n_boot=N_BOOT, progress=False, verbose=False)
    assert r.settings["bank"] == "default" and r.settings["group"] is None
    assert {"same_subject", "related"} <= set(r.settings["empty_categories"])
    assert "No built-in group matches" in r.verdict
    with pytest.raises(ValueError, match="target_true"):
        default_bank(req.replace(target_true=None))


def test_default_bank_runs_on_the_president_group(model):
    a = arch_of(model)
    e = Edit(method="test", fingerprint=fingerprint(model), deltas={LAYER: 0.2 * torch.randn(
        a.d_mlp, a.d_model, generator=torch.Generator().manual_seed(0))}, requests=(PRESIDENT.edit,))
    r = spillover(model, PRESIDENT.edit, edit=e, C=spd(a.d_mlp), n_boot=N_BOOT, progress=False, verbose=False)
    assert r.settings["group"] == PRESIDENT.name
    assert r.categories[0] == "paraphrase" and "related" in r.categories
    # causal attention: probes that share the text up to the subject's last token share its key
    same = [p for p in r.probes if p.prompt.startswith("The President of the United States")]
    assert len({round(p.cos_white, 9) for p in same}) == 1


# --------------------------------------------------------------------------- editors


def fake_editor(m, calls: list, kind: str):
    a = arch_of(m)

    def edit_at(layers, **info):
        return Edit(method=kind, fingerprint=fingerprint(m), requests=(REQ,), info=info,
                    deltas={l: torch.zeros(a.d_mlp, a.d_model) for l in layers})

    def f(model, request, **kw):
        calls.append((kind, kw))
        if kind in ("memit", "alphaedit"):
            return edit_at(kw["layers"] or [0, 1, 2])
        if kind == "kn":
            return edit_at([0, 2], neurons=[[0, 5], [2, 1], [2, 7], [2, 9]])
        return edit_at([kw["layer"] if kw.get("layer") is not None else 3])
    return f


EDITOR_FNS = ("rome", "memit", "alphaedit", "kn", "finetune")  # what the registry's entries call


def test_editor_dispatch(model, monkeypatch):
    calls: list = []
    for k in EDITOR_FNS:
        monkeypatch.setattr(registry, k, fake_editor(model, calls, "ft-l" if k == "finetune" else k))
    monkeypatch.setattr(registry, "default_layers", lambda m, name, config, **kw: ([3], "fake"))  # edit_layer's choice
    C = spd(arch_of(model).d_mlp)
    go = lambda **kw: spillover(model, REQ, bank=BANK, C=C, n_boot=50, progress=False, verbose=False, **kw)

    r = go(editor="rome", layer=2)
    assert calls[-1][0] == "rome" and calls[-1][1]["layer"] == 2 and calls[-1][1]["C"] is C
    assert (r.editor, r.layer) == ("rome", 2)
    r = go(editor="memit", layer=1)
    assert calls[-1][1]["layers"] == [0, 1] and (r.editor, r.layer) == ("memit", 1)
    r = go(editor="memit", layer=3)
    assert calls[-1][1]["layers"] == [0, 1, 2, 3]
    r = go(editor="memit")
    assert calls[-1][1]["layers"] is None and r.layer == 2
    r = go(editor="alphaedit", layer=2)
    assert calls[-1][0] == "alphaedit" and calls[-1][1]["layers"] == [0, 1, 2] and calls[-1][1]["C"] is None
    r = go(editor="kn", config=KNConfig(steps=5))
    assert calls[-1][1]["config"].steps == 5 and (r.editor, r.layer) == ("kn", 2)
    assert "most edited neurons" in r.settings["layer_reason"]
    for name in ("finetune", "ft-l"):
        r = go(editor=name)
        assert calls[-1][0] == "ft-l" and calls[-1][1]["layer"] == 3 and (r.editor, r.layer) == ("ft-l", 3)


def test_real_rome_on_a_tiny_model(model):
    cfg = ROMEConfig(v_steps=3, context_lengths=((3, 2),))
    r = spillover(model, REQ, editor="rome", layer=LAYER, config=cfg, bank=BANK, C=spd(arch_of(model).d_mlp),
                  n_boot=N_BOOT, progress=False, verbose=False)
    assert (r.editor, r.layer, r.edit.layers) == ("rome", LAYER, (LAYER,))
    assert any(abs(p.delta_logp) > 0 for p in r.probes)
    assert not applied_edits(model)


# --------------------------------------------------------------------------- the model stays bit-identical


def test_model_is_bit_identical_after_a_run_and_after_a_failure(model, monkeypatch):
    snap = {n: p.detach().clone() for n, p in model.named_parameters()}
    run(model)
    assert all(torch.equal(p, snap[n]) for n, p in model.named_parameters())
    real = sp.next_token_logits

    def boom(m, prompts, **kw):
        if applied_edits(m):
            raise RuntimeError("boom while the edit is applied")
        return real(m, prompts, **kw)

    monkeypatch.setattr(sp, "next_token_logits", boom)
    with pytest.raises(RuntimeError, match="boom"):
        run(model)
    assert not applied_edits(model)
    assert all(torch.equal(p, snap[n]) for n, p in model.named_parameters())


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, err, match", [
    (dict(editor="bogus"), ValueError, "editor name, one of rome, memit, alphaedit, ft-l .*'bogus'"),
    (dict(bank={}), ValueError, "at least one probe"),
    (dict(bank={"related": []}), ValueError, "at least one probe"),
    (dict(bank={"x": [Fact("The Sp{} is in downtown", "ace Needle", "Seattle")]}), ValueError, "whole run"),
    (dict(bank={"x": [Fact("The {} is in", "Space Needle")]}), ValueError, "target"),
    (dict(bank={"x": ["The Space Needle is in"]}), TypeError, "Fact"),
    (dict(bank={"x": Fact("The {} is in", "Space Needle", "Seattle")}), TypeError, "sequence of Fact"),
    (dict(bank=[Fact("The {} is in", "Space Needle", "Seattle")]), TypeError, "map category"),
    (dict(layer=99), ValueError, "layer"),
    (dict(editor="kn", layer=1), ValueError, "locates its neurons"),
    (dict(editor="memit", config=ROMEConfig()), TypeError, "MEMITConfig"),
    (dict(editor="kn", config={"steps": 1}), TypeError, "KNConfig"),
    (dict(C=torch.eye(3)), ValueError, "shape"),
    (dict(n_boot=0), ValueError, "n_boot"),
    (dict(n_unrelated=-1), ValueError, "n_unrelated"),
])
def test_bad_input_fails_before_any_edit(model, monkeypatch, kw, err, match):
    for k in EDITOR_FNS:
        monkeypatch.setattr(registry, k, lambda *a, **k_: pytest.fail("an edit was computed before the input was "
                                                                      "checked"))
    kw = {"bank": BANK, **kw}
    with pytest.raises(err, match=match):
        spillover(model, REQ, progress=False, verbose=False, **kw)


def test_bad_given_edit(model, arch_name):
    other = tiny_model(arch_name, seed=1)
    with pytest.raises(FingerprintMismatchError, match="fingerprint"):
        run(model, edit=dense_edit(other))
    e = dense_edit(model)
    with pytest.raises(ValueError, match="one of the edit's layers"):
        run(model, edit=e, layer=LAYER + 1)
    with pytest.raises(ValueError, match="config"):
        run(model, edit=e, config=ROMEConfig())
    with e.applied(model), pytest.raises(EditStateError, match="already applied"):
        run(model, edit=e)
    with pytest.raises(TypeError, match="Edit"):
        run(model, edit="rome")
    with pytest.raises(ValueError, match="target_true"), pytest.warns(UserWarning, match="not this request"):
        spillover(model, REQ.replace(target_true=None), edit=e, C=spd(arch_of(model).d_mlp), progress=False,
                  verbose=False)


# --------------------------------------------------------------------------- the figure


def test_plot_spillover(model, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from factscope.figures.spillover_plots import plot_spillover

    r = run(model)
    for effect in ("abs_delta_logp", "kl"):
        fig = plot_spillover(r, effect=effect)
        axs = fig.axes
        assert len(axs) == 2
        labels = [t.get_text() for t in axs[0].get_legend().get_texts()]
        assert "paraphrase (n=3, move)" in labels and "related (n=4, stay)" in labels
        assert any(lab.startswith("stay fit (n=8)") for lab in labels)
        path = tmp_path / f"spill_{effect}.png"
        fig.savefig(path, dpi=80)
        assert path.stat().st_size > 10_000
        plt.close(fig)
    with pytest.raises(ValueError, match="effect"):
        plot_spillover(r, effect="nll")


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_president_spillover_on_gemma(gemma, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from factscope.figures.spillover_plots import plot_spillover

    snap = {n: p.detach().clone() for n, p in gemma.named_parameters()}
    r = spillover(gemma, PRESIDENT.edit, editor="rome", progress=False, verbose=True)
    print(r)
    assert all(torch.equal(p, snap[n]) for n, p in gemma.named_parameters())
    assert r.settings["group"] == PRESIDENT.name and r.editor == "rome"
    s = r.summary()
    assert s.loc["paraphrase", "mean"] > s.loc["related", "mean"]
    assert {"paraphrase", "same_subject", "related", "same_relation", "unrelated", POOLED} <= set(s.index)
    out = tmp_path  # run with --basetemp=DIR to keep the figure
    plot_spillover(r).savefig(out / "president_rome.png", dpi=200, bbox_inches="tight")
    plot_spillover(r, effect="kl").savefig(out / "president_rome_kl.png", dpi=200, bbox_inches="tight")
    r.to_dataframe().to_csv(out / "president_rome.csv", index=False)
    assert (out / "president_rome.png").stat().st_size > 10_000
