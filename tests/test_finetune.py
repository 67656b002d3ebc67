"""FT-L on tiny random models: purity, the L∞ bound, the hooked forward, one projected Adam step, bad input."""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math

import pytest
import torch

from factscope import EditRequest, Fact, arch_of, encode, fingerprint, target_ids
from factscope.edit.finetune import FTConfig, finetune
from factscope.edit.handle import Edit

REQ = EditRequest("The {} is in downtown", "Space Needle", "Paris", target_true="Seattle")
REQ2 = EditRequest("{} plays the sport of", "Michael Jordan", "ice hockey")  # a longer target (2-9 tokens)
FAST = FTConfig(lr=1e-2, norm_bound=5e-2, steps=6, early_stop_loss=0.0)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(model, snap):
    return [n for n, p in model.named_parameters() if not torch.equal(p, snap[n])]


def plain_nll(model, requests):
    """Each request's mean NLL of its target tokens, one unpadded row at a time, by a plain forward."""
    out = []
    for r in requests:
        t = target_ids(model, r.target_new)
        with torch.no_grad():
            logits = model(torch.tensor([encode(model, r.text) + t[:-1]]))  # [1, pos, d_vocab]
        lp = logits[0, -len(t):].double().log_softmax(-1)  # the positions that predict the target
        out.append(-lp.gather(1, torch.tensor(t)[:, None]).mean())
    return torch.stack(out)


def reference_grad(model, requests, layer):
    """d(mean NLL)/dW_out at ΔW = 0, by autograd on plain unpadded forwards, an extra zero matrix added
    to the MLP output through ``key @ D``."""
    a = arch_of(model)
    D = torch.zeros(a.d_mlp, a.d_model, requires_grad=True)
    total = 0
    for r in requests:
        t = target_ids(model, r.target_new)
        keys = []
        hooks = [(a.hook("mlp_key", layer), lambda act, hook, keys=keys: keys.append(act)),
                 (a.hook("mlp_raw_out", layer), lambda act, hook, keys=keys: act + keys[0] @ D)]
        logits = model.run_with_hooks(torch.tensor([encode(model, r.text) + t[:-1]]), fwd_hooks=hooks)
        lp = logits[0, -len(t):].log_softmax(-1)
        total = total - lp.gather(1, torch.tensor(t)[:, None]).mean()
    (g,) = torch.autograd.grad(total / len(requests), [D])
    return g


def test_model_is_never_written(tiny):
    snap, fp = snapshot(tiny), fingerprint(tiny)
    e = finetune(tiny, [REQ, REQ2], layer=1, config=FAST, progress=False, verbose=False)
    assert changed(tiny, snap) == []
    assert fingerprint(tiny) == fp == e.fingerprint
    assert all(p.grad is None for p in tiny.parameters())  # not even .grad is touched
    assert e.method == "ft-l" and e.layers == (1,) and e.requests == (REQ, REQ2)
    assert not e.is_low_rank(1) and e.deltas[1].dtype == torch.float32
    assert e.config == dataclasses.asdict(FAST)


def test_only_w_out_changes_and_bound_holds(tiny):
    a = arch_of(tiny)
    snap = snapshot(tiny)
    W0 = a.W_out(tiny, 2).detach().clone()
    eps = 1e-3
    e = finetune(tiny, REQ, layer=2, norm_bound=eps, steps=3, config=FAST, progress=False, verbose=False)
    d = e.deltas[2]
    assert d.shape == (a.d_mlp, a.d_model)
    assert float(d.abs().max()) <= eps * (1 + 1e-6)
    assert e.info["max_abs_delta"] == pytest.approx(float(d.abs().max()))
    assert e.info["frac_at_bound"] > 0.5  # the bound is active: lr 1e-2 ≫ ε
    assert e.config["norm_bound"] == eps and e.config["steps"] == 3  # the overrides are recorded
    with e.applied(tiny):
        touched = changed(tiny, snap)
        assert len(touched) == 1 and torch.equal(a.W_out(tiny, 2), W0 + d)  # W_out of layer 2, nothing else
    assert changed(tiny, snap) == []


def test_hooked_loss_equals_the_applied_edit(tiny):
    """The NLL optimised through the ΔW hook (left-padded batch, targets of different lengths) equals a
    plain unpadded forward of the model with W_out + ΔW written in."""
    reqs = [REQ, REQ2]
    e = finetune(tiny, reqs, layer=1, config=FAST, progress=False, verbose=False)
    before = plain_nll(tiny, reqs)
    assert e.info["losses"][0] == pytest.approx(float(before.mean()), abs=1e-5)
    with e.applied(tiny):
        after = plain_nll(tiny, reqs)
    assert e.info["final_loss"] == pytest.approx(float(after.mean()), abs=1e-5)
    lens = torch.tensor([len(target_ids(tiny, r.target_new)) for r in reqs], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(e.info["p_new_after"], dtype=torch.float64), (-after * lens).exp(),
                               rtol=1e-4, atol=1e-9)


def test_loss_falls_and_target_rises(tiny):
    e = finetune(tiny, REQ, layer=1, config=FAST, progress=False, verbose=False)
    losses = e.info["losses"]
    assert len(losses) == FAST.steps and e.info["steps_run"] == FAST.steps and not e.info["stopped_early"]
    assert all(b < a for a, b in itertools.pairwise(losses))  # strictly decreasing
    assert e.info["final_loss"] < losses[-1]
    before = float(plain_nll(tiny, [REQ])[0])
    with e.applied(tiny):
        after = float(plain_nll(tiny, [REQ])[0])
    assert after < before - 0.5
    assert e.info["p_new_after"][0] > e.info["p_new_before"][0]


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_one_step_is_a_projected_adam_step(tiny, weight_decay):
    """From ΔW = 0 one Adam step is ``-lr · ĝ/(|ĝ| + 1e-8)`` (bias-corrected moments are g and g²),
    then the clamp to ±ε; ĝ = g + wd · W_out (torch Adam's L2 term on the weight)."""
    a = arch_of(tiny)
    lr, eps = 1e-3, 4e-4
    cfg = FTConfig(lr=lr, norm_bound=eps, steps=1, early_stop_loss=0.0, weight_decay=weight_decay)
    e = finetune(tiny, [REQ, REQ2], layer=1, config=cfg, progress=False, verbose=False)
    g = reference_grad(tiny, [REQ, REQ2], 1) + weight_decay * a.W_out(tiny, 1).detach()
    ref = (-lr * g / (g.abs() + 1e-8)).clamp(-eps, eps)
    torch.testing.assert_close(e.deltas[1], ref, rtol=1e-4, atol=1e-9)
    assert e.info["frac_at_bound"] > 0.5  # lr > ε: the clamp is active


def test_early_stop_and_chunks(tiny):
    e = finetune(tiny, REQ, layer=1, config=dataclasses.replace(FAST, early_stop_loss=1e3), progress=False,
                 verbose=False)
    assert e.info["stopped_early"] and e.info["steps_run"] == 1 and float(e.deltas[1].abs().max()) == 0.0
    one = finetune(tiny, [REQ, REQ2], layer=1, config=dataclasses.replace(FAST, batch_size=1, steps=1),
                   progress=False, verbose=False)
    both = finetune(tiny, [REQ, REQ2], layer=1, config=dataclasses.replace(FAST, steps=1), progress=False,
                    verbose=False)
    assert one.info["p_new_before"] == pytest.approx(both.info["p_new_before"], rel=1e-4)  # both at ΔW = 0
    assert not torch.allclose(one.deltas[1], both.deltas[1])  # two Adam steps per epoch, not one


def test_verbose_prints_the_layer(tiny, capsys):
    finetune(tiny, REQ, layer=-1, steps=1, progress=False)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"layer {arch_of(tiny).n_layers - 1}" in out


@pytest.mark.parametrize("kwargs, err, match", [
    ({"requests": []}, ValueError, "at least one"),
    ({"requests": [REQ, Fact("The {} is in", "Space Needle", "Seattle")]}, TypeError, r"requests\[1\].*Fact"),
    ({"requests": "The Space Needle is in"}, TypeError, "EditRequest"),
    ({"requests": EditRequest("The {}s are in", "Space Needle", "Paris")}, ValueError, "whole run of tokens"),
    ({"layer": 99}, ValueError, "layer in"),
    ({"layer": "1"}, TypeError, "integer layer"),
    ({"norm_bound": 0.0}, ValueError, "norm_bound > 0"),
    ({"norm_bound": -1e-3}, ValueError, "norm_bound > 0"),
    ({"norm_bound": float("nan")}, ValueError, "norm_bound to be a number"),
    ({"steps": 0}, ValueError, "steps to be a positive integer"),
    ({"steps": 2.0}, ValueError, "steps to be a positive integer"),
    ({"config": {"lr": 1e-3}}, TypeError, "FTConfig"),
])
def test_bad_input_raises_before_any_work(tiny, kwargs, err, match):
    snap = snapshot(tiny)
    args = {"requests": REQ, "layer": 1} | kwargs
    requests = args.pop("requests")
    with pytest.raises(err, match=match):
        finetune(tiny, requests, progress=False, verbose=False, **args)
    assert changed(tiny, snap) == []


def test_config_checks():
    for bad, match in [({"lr": 0.0}, "lr > 0"), ({"lr": math.inf}, "lr > 0"), ({"weight_decay": -1.0}, "weight_decay"),
                       ({"early_stop_loss": -1.0}, "early_stop_loss"), ({"batch_size": 0}, "batch_size"),
                       ({"steps": True}, "steps")]:
        with pytest.raises(ValueError, match=match):
            FTConfig(**bad)
    assert FTConfig(norm_bound=math.inf).norm_bound == math.inf  # unconstrained fine-tuning is allowed


def test_non_finite_loss_raises_and_changes_nothing(tiny, monkeypatch):
    ft = importlib.import_module("factscope.edit.finetune")  # the package exports the function under the same name

    calls = []

    def nll_going_nan(logits, batch):  # the second step's loss is NaN
        calls.append(1)
        out = ft_nll(logits, batch)
        return out * float("nan") if len(calls) == 2 else out

    ft_nll = ft.ft_nll
    monkeypatch.setattr(ft, "ft_nll", nll_going_nan)
    snap = snapshot(tiny)
    with pytest.raises(FloatingPointError, match="loss became nan at step 2"):
        finetune(tiny, REQ, layer=1, config=FAST, progress=False, verbose=False)
    assert changed(tiny, snap) == [] and len(calls) == 2


def test_edit_round_trips(tiny, tmp_path):
    e = finetune(tiny, REQ, layer=1, steps=2, progress=False, verbose=False)
    e.save(tmp_path / "ft.safetensors")
    back = Edit.load(tmp_path / "ft.safetensors", tiny)
    assert back.method == "ft-l" and back.config == e.config and back.info == e.info
    assert torch.equal(back.deltas[1], e.deltas[1])


@pytest.mark.slow
def test_finetune_on_gemma(gemma):
    from factscope import builtin_facts

    req = builtin_facts()[0]
    snap = snapshot(gemma)
    e = finetune(gemma, req, layer=6, steps=10, progress=False, verbose=False)
    assert changed(gemma, snap) == []
    eps = FTConfig().norm_bound
    assert float(e.deltas[6].abs().max()) <= eps * (1 + 1e-6)
    before = float(plain_nll(gemma, [req])[0])
    with e.applied(gemma):
        after = float(plain_nll(gemma, [req])[0])
    assert after < before  # p(target_new) rises
    assert e.info["final_loss"] == pytest.approx(after, abs=1e-3)
    assert e.info["p_new_after"][0] > max(e.info["p_new_before"][0], 0.5)  # 0.94 after 10 steps (from 0.0008)
