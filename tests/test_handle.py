"""The Edit handle: apply/revert bit-exactness, the applied stack, fingerprints, compose, files, views."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from factscope import EditRequest, arch_of, fingerprint, tiny_model
from factscope.edit import Edit, compose, handle
from factscope.edit.handle import EditStateError, FingerprintMismatchError

REQ = EditRequest("The {} is in downtown", "Space Needle", "London", target_true="Seattle",
                  paraphrases=("The Space Needle stands in",), locality=(("The capital of Japan is", "Tokyo"),))
REQ2 = EditRequest("The {} is located in the city of", "Eiffel Tower", "Rome", target_true="Paris")


@pytest.fixture(scope="module")
def other(arch_name):
    """A different model of the same architecture (another seed)."""
    return tiny_model(arch_name, seed=1)


def snapshot(m):
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def assert_unchanged(m, snap):
    changed = [n for n, p in m.named_parameters() if not torch.equal(p, snap[n])]
    assert not changed, f"weights changed: {changed}"


def factors(m, r=2, seed=0, dtype=torch.float32):
    a = arch_of(m)
    g = torch.Generator().manual_seed(seed)
    return (0.1 * torch.randn(a.d_mlp, r, generator=g, dtype=dtype),
            0.1 * torch.randn(r, a.d_model, generator=g, dtype=dtype))


def dense(m, seed=0):
    a = arch_of(m)
    return 0.01 * torch.randn(a.d_mlp, a.d_model, generator=torch.Generator().manual_seed(seed))


def make(m, layers, kind="low-rank", seed=0, fp=None, method="rome", requests=(REQ,)):
    deltas = {l: factors(m, seed=seed + l) if kind == "low-rank" else dense(m, seed=seed + l) for l in layers}
    return Edit(method=method, fingerprint=fp or fingerprint(m), deltas=deltas, requests=requests,
                config={"layers": tuple(layers)}, info={"why": "test"})


def plain_delta(d):
    return d[0] @ d[1] if isinstance(d, tuple) else d


def W_outs(m):
    a = arch_of(m)
    return [a.W_out(m, l).detach().clone() for l in range(a.n_layers)]


# --------------------------------------------------------------------------- apply / revert


@pytest.mark.parametrize("kind", ["low-rank", "dense"])
def test_apply_adds_delta_at_exactly_its_layers_and_revert_is_bit_exact(model, kind):
    snap, W0 = snapshot(model), W_outs(model)
    e = make(model, [1, 3], kind)
    assert not e.is_applied(model)
    assert e.apply(model) is e
    assert e.is_applied(model) and handle.applied_edits(model) == (e,)
    W1 = W_outs(model)
    for l in range(len(W0)):
        if l in (1, 3):
            torch.testing.assert_close(W1[l], W0[l] + plain_delta(e.deltas[l]), atol=1e-6, rtol=0)
            assert not torch.equal(W1[l], W0[l])
        else:
            assert torch.equal(W1[l], W0[l])
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, snap[n])]
    assert len(changed) == 2  # one parameter per touched W_out, nothing else
    assert fingerprint(model) != e.fingerprint
    e.revert(model)
    assert not e.is_applied(model) and handle.applied_edits(model) == ()
    assert_unchanged(model, snap)
    assert fingerprint(model) == e.fingerprint


@pytest.mark.parametrize("kind", ["low-rank", "dense"])
def test_context_manager_reverts_even_after_an_exception(model, kind):
    snap = snapshot(model)
    e = make(model, [0, 2], kind)
    with e.applied(model) as m:
        assert m is model and e.is_applied(model)
        assert not torch.equal(arch_of(model).W_out(model, 0), snap_W(model, snap, 0))
    assert_unchanged(model, snap)
    with pytest.raises(KeyError, match="boom"), e.applied(model):
        raise KeyError("boom")
    assert not e.is_applied(model)
    assert_unchanged(model, snap)


def snap_W(m, snap, layer):
    """W_out of ``layer`` in a snapshot, found by value identity with the live view's parameter."""
    W = arch_of(m).W_out(m, layer)
    for n, p in m.named_parameters():
        if p.data_ptr() == W.data_ptr():
            return snap[n].T if p.shape != W.shape else snap[n]
    raise AssertionError("W_out is not a parameter view")


def test_apply_twice_revert_unapplied_and_out_of_order_revert_raise(model):
    snap = snapshot(model)
    A = make(model, [1, 2], method="rome")
    with pytest.raises(EditStateError, match="not applied"):
        A.revert(model)
    A.apply(model)
    after_A = snapshot(model)
    with pytest.raises(EditStateError, match="already applied"):
        A.apply(model)
    assert_unchanged(model, after_A)
    B = make(model, [3], seed=5, method="memit", requests=(REQ2,))  # computed on the model with A applied
    B.apply(model)
    after_B = snapshot(model)
    with pytest.raises(EditStateError, match=r"(?s)Revert them first.*memit.*Eiffel Tower") as err:
        A.revert(model)  # B touches another layer, still out of order
    assert "rome" in str(err.value)
    assert_unchanged(model, after_B)
    assert handle.applied_edits(model) == (A, B)
    B.revert(model)
    assert_unchanged(model, after_A)
    A.revert(model)
    assert_unchanged(model, snap)
    with pytest.raises(EditStateError, match="not applied"):
        B.revert(model)
    assert_unchanged(model, snap)


# --------------------------------------------------------------------------- fingerprints and composition


def test_wrong_fingerprint_is_refused_with_weights_untouched(model, other):
    snap = snapshot(model)
    e = make(model, [1], fp=fingerprint(other))
    with pytest.raises(FingerprintMismatchError, match="apply those first") as err:
        e.apply(model)
    assert fingerprint(other) in str(err.value) and fingerprint(model) in str(err.value)
    assert not e.is_applied(model)
    assert_unchanged(model, snap)


def test_sequential_edits_apply_in_order_and_revert_lifo_bit_exactly(model):
    snap, W0 = snapshot(model), W_outs(model)
    A = make(model, [1, 2], method="rome")
    with A.applied(model):
        B = make(model, [2, 3], kind="dense", seed=9, method="kn")  # B's fingerprint: after A
    assert B.fingerprint != A.fingerprint
    with pytest.raises(FingerprintMismatchError):
        B.apply(model)  # A is not applied: B was computed on other weights
    assert_unchanged(model, snap)
    A.apply(model)
    B.apply(model)
    W2 = W_outs(model)
    torch.testing.assert_close(W2[2], W0[2] + plain_delta(A.deltas[2]) + B.deltas[2], atol=1e-6, rtol=0)
    with pytest.raises(FingerprintMismatchError, match="revert"):
        A2 = make(model, [0], fp=A.fingerprint)  # computed before A: the message says what to revert
        A2.apply(model)
    B.revert(model)
    A.revert(model)
    assert_unchanged(model, snap)


def test_compose_equals_sequential_application(model):
    snap = snapshot(model)
    A = make(model, [1, 2], method="rome", requests=(REQ,))
    with A.applied(model):
        B = make(model, [2, 3], seed=3, method="memit", requests=(REQ2,))
        with B.applied(model):
            C = make(model, [3], kind="dense", seed=7, method="ft", requests=())
            with C.applied(model):
                sequential = W_outs(model)
    assert_unchanged(model, snap)
    AB, ABC = compose([A, B]), compose([A, B, C])
    assert ABC.fingerprint == A.fingerprint and ABC.method == "compose(rome, memit, ft)"
    assert ABC.requests == (REQ, REQ2) and ABC.layers == (1, 2, 3)
    assert AB.rank(2) == 4 and AB.is_low_rank(2) and not ABC.is_low_rank(3) and ABC.is_low_rank(1)
    torch.testing.assert_close(AB.delta(2), A.delta(2) + B.delta(2), atol=1e-7, rtol=0)
    with ABC.applied(model):
        composed = W_outs(model)
    for l, (s, c) in enumerate(zip(sequential, composed)):
        torch.testing.assert_close(c, s, atol=1e-6, rtol=0, msg=f"layer {l}")
    assert_unchanged(model, snap)
    assert compose([A]).layers == A.layers
    with pytest.raises(ValueError, match="at least one"):
        compose([])


# --------------------------------------------------------------------------- validation


def test_shape_mismatch_or_bad_layer_raise_before_any_weight_changes(model):
    snap = snapshot(model)
    a = arch_of(model)
    U, V = factors(model)
    transposed = Edit(method="rome", fingerprint=fingerprint(model), deltas={1: (V.T, U.T)})
    with pytest.raises(ValueError, match=r"W_out's shape.*transposed"):
        transposed.apply(model)
    out_of_range = Edit(method="rome", fingerprint=fingerprint(model), deltas={0: (U, V), a.n_layers: (U, V)})
    with pytest.raises(ValueError, match=f"has {a.n_layers} layers"):
        out_of_range.apply(model)
    assert_unchanged(model, snap)
    assert handle.applied_edits(model) == ()


def test_nan_factor_raises_before_any_weight_changes(model):
    snap = snapshot(model)
    U, V = factors(model)
    bad = U.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        Edit(method="rome", fingerprint=fingerprint(model), deltas={2: (bad, V)})
    with pytest.raises(ValueError, match="finite"):
        Edit(method="kn", fingerprint=fingerprint(model), deltas={2: torch.full_like(dense(model), float("inf"))})
    # a factor corrupted in place after construction: layer 0 is fine, layer 2 is caught, nothing written
    e = Edit(method="rome", fingerprint=fingerprint(model), deltas={0: (U, V), 2: (U, V)})
    e.deltas[2][1][0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 2's V"):
        e.apply(model)
    assert_unchanged(model, snap)
    assert not e.is_applied(model)


def test_construction_validates_its_inputs(model):
    U, V = factors(model)
    fp = fingerprint(model)
    with pytest.raises(ValueError, match="same rank"):
        Edit(method="rome", fingerprint=fp, deltas={1: (U, V[:1])})
    with pytest.raises(TypeError, match="integers >= 0"):
        Edit(method="rome", fingerprint=fp, deltas={-1: (U, V)})
    with pytest.raises(ValueError, match="one shape"):
        Edit(method="rome", fingerprint=fp, deltas={1: (U, V), 2: (U[:5], V)})
    with pytest.raises(TypeError, match="JSON-able"):
        Edit(method="rome", fingerprint=fp, deltas={1: (U, V)}, info={"bad": object()})
    with pytest.raises(TypeError, match="EditRequest"):
        Edit(method="rome", fingerprint=fp, deltas={1: (U, V)}, requests=("not a request",))

    @dataclass
    class Cfg:
        layer: int = 1
        lr: float = 0.5

    e = Edit(method="rome", fingerprint=fp, deltas={1: (U, V)}, requests=REQ, config=Cfg(),
             info={"loss": torch.tensor(0.25), "span": (1, 2)})
    assert e.requests == (REQ,) and e.config == {"layer": 1, "lr": 0.5}
    assert e.info == {"loss": 0.25, "span": [1, 2]}  # stored in JSON form
    U.zero_()  # the edit holds copies
    assert e.deltas[1][0].abs().sum() > 0


def test_deltas_in_another_dtype_are_cast_to_the_weights(model):
    snap, W0 = snapshot(model), W_outs(model)
    U, V = factors(model, dtype=torch.float64)
    e = Edit(method="rome", fingerprint=fingerprint(model), deltas={2: (U, V)})
    with e.applied(model):
        W = arch_of(model).W_out(model, 2)
        assert W.dtype == W0[2].dtype
        assert torch.equal(W, (W0[2].double() + U @ V).to(W.dtype))
    assert_unchanged(model, snap)


# --------------------------------------------------------------------------- files


def edit_with_both_kinds(m):
    return Edit(method="rome", fingerprint=fingerprint(m),
                deltas={1: factors(m, r=3), 3: dense(m).double()}, requests=(REQ, REQ2),
                config={"layers": (1, 3), "v_lr": 0.5, "nested": {"a": [1, 2]}},
                info={"layer_choice": "causal trace peak", "losses": [1.5, 0.25], "nan": None})


def test_save_load_round_trip(model, tmp_path):
    e = edit_with_both_kinds(model)
    path = tmp_path / "sub" / "edit.safetensors"
    e.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["edit.safetensors", "edit.safetensors.json"]
    header_len = int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: u64 header length + JSON
    assert path.read_bytes()[8:8 + header_len].startswith(b"{")
    side = json.loads((tmp_path / "sub" / "edit.safetensors.json").read_text())
    assert side["kind"] == "factscope.edit" and side["version"] == 2 and side["meta"]["fingerprint"] == e.fingerprint
    assert side["meta"]["layers"] == {"1": "low-rank", "3": "dense"}

    for loaded in (Edit.load(path), Edit.load(str(path), model=model)):
        assert loaded.method == e.method and loaded.fingerprint == e.fingerprint and loaded.layers == (1, 3)
        assert loaded.requests == e.requests and loaded.config == e.config and loaded.info == e.info
        assert loaded.config["layers"] == [1, 3]
        for a, b in zip(loaded.deltas[1], e.deltas[1]):
            assert torch.equal(a, b)
        assert torch.equal(loaded.deltas[3], e.deltas[3]) and loaded.deltas[3].dtype == torch.float64
    with e.applied(model):
        W_e = W_outs(model)
    with loaded.applied(model):
        W_l = W_outs(model)
    assert all(torch.equal(x, y) for x, y in zip(W_e, W_l))


def test_load_refuses_another_model_and_mismatched_files(model, other, tmp_path):
    e = edit_with_both_kinds(model)
    path = tmp_path / "edit.safetensors"
    e.save(path)
    with pytest.raises(FingerprintMismatchError, match=fingerprint(other)):
        Edit.load(path, model=other)

    side = tmp_path / "edit.safetensors.json"
    meta = json.loads(side.read_text())
    meta["meta"]["fingerprint"] = fingerprint(other)
    side.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="sidecar was edited"):
        Edit.load(path)
    with pytest.raises(ValueError):
        Edit.load(path, model=model)
    with pytest.raises(ValueError):
        Edit.load(path, model=other)

    e.save(path)  # a tensor file from another save does not pass for this sidecar
    make(model, [0]).save(tmp_path / "x.safetensors")
    path.write_bytes((tmp_path / "x.safetensors").read_bytes())
    with pytest.raises(ValueError, match="SHA-256"):
        Edit.load(path)
    side.unlink()
    with pytest.raises(FileNotFoundError, match="sidecar"):
        Edit.load(path)


# --------------------------------------------------------------------------- views


def test_views(model):
    e = edit_with_both_kinds(model)
    U, V = e.deltas[1]
    assert e.layers == (1, 3)
    d1 = e.delta(1)
    assert d1.dtype == torch.float32 and d1.shape == (arch_of(model).d_mlp, arch_of(model).d_model)
    torch.testing.assert_close(d1, U @ V, atol=1e-6, rtol=0)
    assert e.rank(1) == 3 and e.rank(3) == min(d1.shape)
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        e.delta(2)

    n = e.norms()
    assert set(n) == {1, 3} and n[1].relative is None
    assert n[1].frobenius == pytest.approx(float(torch.linalg.norm(U.double() @ V.double())), rel=1e-9)
    assert n[3].frobenius == pytest.approx(float(torch.linalg.norm(e.deltas[3])), rel=1e-9)
    W1 = arch_of(model).W_out(model, 1).detach().double()
    rel = e.norms(model)[1].relative
    assert rel == pytest.approx(n[1].frobenius / float(torch.linalg.norm(W1)), rel=1e-9)
    with e.applied(model):  # relative to the weights the edit was computed on
        assert e.norms(model)[1].relative == pytest.approx(rel, rel=1e-12)

    df = e.to_dataframe()
    assert list(df.columns) == ["layer", "kind", "rank", "norm"] and list(df["layer"]) == [1, 3]
    assert list(df["kind"]) == ["low-rank", "dense"] and list(df["rank"]) == [3, min(d1.shape)]
    dfm = e.to_dataframe(model)
    assert dfm["relative_norm"].iloc[0] == pytest.approx(rel)

    r = repr(e)
    for s in ("rome", "'Space Needle'", "'London'", "'Eiffel Tower'", "'Rome'", e.fingerprint, "1: rank 3", "3: dense"):
        assert s in r, (s, r)
