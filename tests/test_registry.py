"""The editor registry on tiny random models: names and aliases, config and layer checks, the uniform
call against the editors called directly, and the one-at-a-time editors' sequential compose against
the plain loop (compute, apply, compute the next, ...). Every test uses the guarded ``model`` fixture,
which fails the test if any weight is left changed."""

from __future__ import annotations

import pytest
import torch

from factscope import EditRequest, arch_of
from factscope.edit import AlphaEditConfig, FTConfig, KNConfig, MEMITConfig, ROMEConfig, finetune, kn, memit, rome
from factscope.edit.covariance import covariances
from factscope.edit.kn import kn_prompts, pad_prompts
from factscope.edit.registry import EDITORS, editor, editor_names, run_editor

pytestmark = [
    pytest.mark.filterwarnings("ignore:the model already answers"),
    pytest.mark.filterwarnings("ignore:the model's top-1 answer"),
    pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True"),
]

# written out here, independently of the registry
CONFIGS = {"rome": ROMEConfig, "memit": MEMITConfig, "alphaedit": AlphaEditConfig, "ft-l": FTConfig, "kn": KNConfig}
ALIASES = {"finetune": "ft-l", "ft": "ft-l", "FT-L": "ft-l", "ROME": "rome", "MeMiT": "memit"}
LAYER_RULES = {"rome": "one", "ft-l": "one", "memit": "many", "alphaedit": "many", "kn": "none"}

R1 = EditRequest("The {} is in downtown", "Space Needle", "Paris", target_true="Seattle",
                 paraphrases=("The Space Needle stands in", "The Space Needle is located in"))
R2 = EditRequest("{} plays the sport of", "Michael Jordan", "soccer", target_true="basketball",
                 paraphrases=("Michael Jordan is a famous player of", "The sport Michael Jordan played is"))
ROME_FAST = ROMEConfig(context_lengths=((3, 2),), v_steps=4, corpus="model", n_tokens=2048)
MEMIT_FAST = MEMITConfig(context_lengths=((3, 2),), v_steps=3, corpus="model", n_tokens=2048)


def W(model, layer):
    return arch_of(model).W_out(model, layer).detach().clone()


def stats(model, layers):
    return covariances(model, layers, corpus="model", n_tokens=2048, progress=False)


# --------------------------------------------------------------------------- names


def test_every_name_and_alias_resolves():
    assert editor_names() == tuple(CONFIGS)
    assert set(editor_names(aliases=True)) == set(CONFIGS) | {"finetune", "ft"}
    for name, cls in CONFIGS.items():
        spec = editor(name)
        assert spec is EDITORS[name] and spec.name == name and spec.config_class is cls
        assert spec.layers == LAYER_RULES[name] and spec.needs_stats == (name in ("rome", "memit", "alphaedit"))
        assert editor(name.upper()) is spec
    for alias, name in ALIASES.items():
        assert editor(alias) is EDITORS[name]


@pytest.mark.parametrize("bad", ["bogus", "", "rome ", 3, None])
def test_unknown_names_say_what_was_expected(bad):
    with pytest.raises(ValueError) as e:
        editor(bad)
    msg = str(e.value)
    assert "expected an editor name" in msg and repr(bad) in msg
    assert all(n in msg for n in CONFIGS) and "finetune" in msg


def test_config_classes_are_checked(model):
    for name, cls in CONFIGS.items():
        spec = editor(name)
        assert spec.check_config(None) == cls()
        ok = cls()
        assert spec.check_config(ok) is ok
        for other in CONFIGS.values():
            if other is cls:
                continue
            with pytest.raises(TypeError) as e:
                spec.check_config(other())
            assert cls.__name__ in str(e.value) and f"got {other.__name__}" in str(e.value)
    # a subclass is not the class: AlphaEdit's settings are not MEMIT's
    with pytest.raises(TypeError, match="MEMITConfig.*got AlphaEditConfig"):
        run_editor("memit", model, [R1], layers=[1], config=AlphaEditConfig())


# --------------------------------------------------------------------------- layers


def test_layer_rules(model):
    n = arch_of(model).n_layers
    one, many, none = editor("rome"), editor("memit"), editor("kn")
    assert one.check_layers(model, None) is None and many.check_layers(model, None) is None
    assert none.check_layers(model, None) is None
    assert one.check_layers(model, 1) == [1] and one.check_layers(model, [2]) == [2]
    assert one.check_layers(model, -1) == [n - 1]  # negatives count from the end
    assert many.check_layers(model, [2, -1, 0]) == sorted([2, n - 1, 0])
    assert many.check_layers(model, (1,)) == [1]
    with pytest.raises(ValueError, match="one layer; got 2 layers"):
        one.check_layers(model, [1, 2])
    with pytest.raises(ValueError, match="distinct"):
        many.check_layers(model, [1, 1])
    with pytest.raises(ValueError, match="distinct"):
        many.check_layers(model, [n - 1, -1])  # the same layer twice, once counted from the end
    with pytest.raises(ValueError, match="chooses its own layers"):
        none.check_layers(model, 1)
    for bad in ([], "1", True, 1.0):
        with pytest.raises(ValueError, match="expected layers to name at least one layer"):
            many.check_layers(model, bad)
    for bad in (n, -n - 1, [0, 99]):
        with pytest.raises(ValueError, match="layer"):
            many.check_layers(model, bad)


def test_requests_are_checked(model):
    with pytest.raises(TypeError, match="non-empty sequence"):
        run_editor("memit", model, [], layers=[1])
    with pytest.raises(TypeError, match="EditRequest"):
        run_editor("rome", model, ["The Space Needle is in downtown"], layers=[1])


# --------------------------------------------------------------------------- the uniform call


def test_batch_editors_are_the_editors_called_directly(model):
    """MEMIT and FT-L through the registry (layers unsorted, negative) give the direct call's deltas."""
    n = arch_of(model).n_layers
    C = stats(model, [1, n - 1])
    got = run_editor("memit", model, [R1, R2], layers=[n - 1, 1], config=MEMIT_FAST, C=C, progress=False)
    want = memit(model, [R1, R2], layers=[1, n - 1], config=MEMIT_FAST, C=C, progress=False, verbose=False)
    assert got.layers == want.layers == (1, n - 1) and got.requests == (R1, R2)
    for l in want.layers:
        assert torch.equal(got.delta(l), want.delta(l))
    cfg = FTConfig(steps=3, norm_bound=1e-2, lr=1e-2)
    got = run_editor("finetune", model, [R1, R2], layers=-1, config=cfg, progress=False)
    want = finetune(model, [R1, R2], layer=n - 1, config=cfg, progress=False, verbose=False)
    assert got.method == "ft-l" and got.layers == (n - 1,) and torch.equal(got.delta(n - 1), want.delta(n - 1))


def test_sequential_rome_is_the_plain_loop(model):
    """Two ROME requests: the registry's composed edit is the loop rome → apply → rome → apply, with C
    estimated once on the unedited model (not again on the edited one)."""
    layer = 1
    C = stats(model, [layer])[layer]  # the unedited model's, what ROME_FAST's corpus/n_tokens give
    base = W(model, layer)
    e1 = rome(model, R1, layer=layer, config=ROME_FAST, C=C, progress=False, verbose=False).apply(model)
    e2 = rome(model, R2, layer=layer, config=ROME_FAST, C=C, progress=False, verbose=False).apply(model)
    W_seq = W(model, layer)
    e2.revert(model)
    e1.revert(model)
    assert torch.equal(W(model, layer), base)

    got = run_editor("rome", model, [R1, R2], layers=[layer], config=ROME_FAST, progress=False)  # C=None
    assert torch.equal(W(model, layer), base)  # computed and restored
    assert got.method == "compose(rome, rome)" and got.requests == (R1, R2) and got.layers == (layer,)
    U, V = got.deltas[layer]  # the factors of the two edits, side by side
    (u1, v1), (u2, v2) = e1.deltas[layer], e2.deltas[layer]
    assert torch.equal(U, torch.cat([u1, u2], 1)) and torch.equal(V, torch.cat([v1, v2], 0))
    with got.applied(model):
        torch.testing.assert_close(W(model, layer), W_seq, rtol=1e-5, atol=1e-6 * float(W_seq.abs().max()))
    # given C for the layer, the same edit again
    again = run_editor("rome", model, [R1, R2], layers=layer, config=ROME_FAST, C={layer: C}, progress=False)
    assert torch.equal(again.deltas[layer][0], U) and torch.equal(again.deltas[layer][1], V)


def test_sequential_kn_is_the_plain_loop(model):
    """Two KN requests: neurons located on the model with the first edit applied, as in the plain loop."""
    cfg = KNConfig(steps=3)
    before = {l: W(model, l) for l in range(arch_of(model).n_layers)}
    e1 = kn(model, R1, config=cfg, progress=False, verbose=False).apply(model)
    e2 = kn(model, R2, config=cfg, progress=False, verbose=False).apply(model)
    after = {l: W(model, l) for l in before}
    e2.revert(model)
    e1.revert(model)

    got = run_editor("kn", model, [R1, R2], config=cfg, progress=False)
    assert all(torch.equal(W(model, l), w) for l, w in before.items())
    assert got.method == "compose(kn, kn)" and got.requests == (R1, R2)
    assert set(got.layers) == set(e1.layers) | set(e2.layers)
    with got.applied(model):
        for l, w in after.items():
            torch.testing.assert_close(W(model, l), w, rtol=1e-5, atol=1e-6 * float(w.abs().max()))


# --------------------------------------------------------------------------- KN's prompts


def test_kn_prompts_pad_to_three_with_context_copies():
    bare = EditRequest("The {} is in downtown", "Space Needle", "Paris", target_true="Seattle")
    text = "The Space Needle is in downtown"
    assert kn_prompts(bare) == ([text, f"Here is a fact. {text}", f"From an encyclopedia: {text}"], 2)
    assert kn_prompts(R1) == ([R1.text, *R1.paraphrases], 0)
    # repeats are dropped before counting
    assert pad_prompts([text, text, "The Space Needle stands in"]) == (
        [text, "The Space Needle stands in", f"Here is a fact. {text}"], 1)


def test_the_registry_pads_kn_requests_and_says_so(model, capsys):
    bare = EditRequest(R1.prompt, R1.subject, R1.target_new, target_true=R1.target_true)
    cfg = KNConfig(steps=3)
    with pytest.raises(ValueError, match="at least 3 prompts"):  # the editor itself does not pad
        kn(model, bare, config=cfg, progress=False, verbose=False)
    got = run_editor("kn", model, bare, config=cfg, progress=False, verbose=True)
    assert "KN: note: 2 prompt(s) added with a context prefix" in capsys.readouterr().out
    want = kn(model, bare, prompts=kn_prompts(bare)[0], config=cfg, progress=False, verbose=False)
    assert got.layers == want.layers and got.info["neurons"] == want.info["neurons"]
    for l in want.layers:
        assert torch.equal(got.delta(l), want.delta(l))
    run_editor("kn", model, R1, config=cfg, progress=False, verbose=True)  # enough prompts: no note
    assert "note" not in capsys.readouterr().out
