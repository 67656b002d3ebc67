"""Result files (factscope/result_files.py): every result type saves and loads through them, comes back
equal (tensors bit for bit, meta equal, NaN included), and refuses a file that was tampered with: a
flipped tensor byte, an edited or broken sidecar, another kind, another version, a missing sidecar.

The results are built directly from random tensors where the constructor allows (no model passes);
the session and the key-statistics cache use one tiny random GPT-2.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from factscope import (
    Fact,
    MissingResultFileError,
    ResultFileError,
    builtin_facts,
    cache_dir,
    load_result,
    save_result,
    tiny_model,
)
from factscope.edit import Edit, EditSession
from factscope.edit.alphaedit import AlphaEditConfig
from factscope.edit.covariance import covariance
from factscope.locate import NeuronResult, ProfileResult, TraceResult
from factscope.probes.evaluate import METRICS, EditReport
from factscope.probes.localization import LocalizationResult
from factscope.probes.neuron_effect import NeuronEffect
from factscope.probes.overlap import OverlapResult, Pair
from factscope.probes.spillover import SpilloverFit, SpilloverProbe, SpilloverResult
from factscope.probes.stats import OLS
from factscope.result_files import plain_json, sidecar_of

COV = importlib.import_module("factscope.edit.covariance")  # the package attribute is the function
NAN, INF = float("nan"), float("inf")
REQS = builtin_facts()[:3]


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# --------------------------------------------------------------------------- equality


def assert_same(a: Any, b: Any, where: str = "result") -> None:
    """``a`` and ``b`` equal: same types, tensors and arrays bit for bit, NaN equal to NaN, dict order too."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
        bits = [t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
        assert torch.equal(*bits), f"{where}: tensor bits differ"
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), f"{where}: arrays differ"
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or a == b, f"{where}: {a} vs {b}"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def test_assert_same_can_fail():
    t = rand(3, 4)
    flipped = t.clone()
    flipped.view(torch.int32)[0, 0] ^= 1  # one bit
    for a, b in [(t, flipped), (t, t.double()), ((1, 2), [1, 2]), ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
                 (NAN, 0.0), (np.zeros(2), np.zeros(2, dtype=np.float32)), (make_trace(), make_trace(seed=1))]:
        with pytest.raises(AssertionError):
            assert_same(a, b)
    assert_same(make_trace(), make_trace())


# --------------------------------------------------------------------------- results, built cheaply


def make_edit(seed: int = 0) -> Edit:
    return Edit(method="rome", fingerprint="fp-test", requests=REQS[:2],
                deltas={1: (rand(8, 2, seed=seed), rand(2, 4, seed=seed + 1)), 3: rand(8, 4, seed=seed + 2,
                                                                                       dtype=torch.float64),
                        5: rand(8, 4, seed=seed + 3, dtype=torch.bfloat16)},
                config={"layers": [1, 3], "v_lr": 0.5, "nested": {"a": [1, 2]}},
                info={"loss": NAN, "norms": [1.5, INF, -INF], "choice": "peak", "none": None})


def make_trace(seed: int = 0) -> TraceResult:
    return TraceResult(scores={"mlp": rand(7, 4, seed=seed), "hidden": rand(7, 4, seed=seed + 1)}, clean=0.75,
                       corrupted=0.125, tokens=("<bos>", "The", " Space", " Needle", " is", " in", " downtown"),
                       subject=(2, 4), answer=" Seattle", answer_id=7535, prompt="The Space Needle is in downtown",
                       settings={"kinds": ["mlp", "hidden"], "samples": 3, "noise": 3.0, "window": 2})


def make_profile() -> ProfileResult:
    mean = {"mlp": rand(6, 4)}
    mean["mlp"][1] = NAN  # a bucket no fact has
    return ProfileResult(mean=mean, lo={"mlp": rand(6, 4, seed=1)}, hi={"mlp": rand(6, 4, seed=2)},
                         n={"mlp": torch.tensor([3, 0, 3, 2, 1, 3])}, facts=("The Space Needle is in downtown",),
                         skipped=(("The Eiffel Tower is in", "top-1 is ' the'"),), settings={"kinds": ["mlp"]})


def make_neurons() -> NeuronResult:
    att = rand(3, 4, 16)
    att[:, 0] = NAN  # a layer not attributed
    return NeuronResult(attributions=att, p_clean=rand(3, seed=1), p_baseline=rand(3, 4, seed=2),
                        prompts=("a {}", "b", "c"), neurons=((2, 5, 0.5), (3, 1, 0.25)), answer=" x", answer_id=5,
                        target="x", subject="s", tokens=(("<bos>", "a"), ("<bos>", "b"), ("<bos>", "c")),
                        activations=(rand(2, 2, seed=3), rand(2, 2, seed=4), rand(2, 2, seed=5)),
                        settings={"layers": [1, 2, 3], "threshold": 0.2, "post_norm": "frozen"})


def make_report() -> EditReport:
    pre = {m: rand(3, seed=i).double().numpy() for i, m in enumerate(METRICS)}
    post = {m: rand(3, seed=10 + i).double().numpy() for i, m in enumerate(METRICS)}
    pre[METRICS[1]][2] = NAN
    return EditReport(method="rome", requests=tuple(REQS), pre=pre, post=post,
                      generations={"pre": ["a b", "c"], "post": ["d", "e é"]},
                      settings={"layers": [3], "n_boot": 20, "fingerprint": "fp"})


def make_spillover() -> SpilloverResult:
    probe = dict(category="same subject", expected="move", prompt="p", subject="s", answer="a", logp_before=-1.5,
                 logp_after=-0.5, delta_logp=1.0, kl=0.25, top1_before=" a", top1_after=" b", flipped=True,
                 cos_raw=0.5, cos_white=NAN, whitened_dot_ratio=-INF)
    fits = tuple(SpilloverFit(group=g, effect="kl", x="cos_white", n=3, slope=0.5, intercept=NAN, lo=0.0, hi=1.0,
                              level=0.95, boot_slope=rand(5, seed=i).double().numpy(),
                              boot_intercept=rand(5, seed=i + 7).double().numpy()) for i, g in enumerate("ab"))
    return SpilloverResult(request=REQS[0], editor="rome", layer=3, edit=make_edit(), fits=fits, verdict="local",
                           probes=(SpilloverProbe(**probe), SpilloverProbe(**dict(probe, flipped=False))),
                           settings={"n_boot": 5, "notes": ["x"]})


def make_localization() -> LocalizationResult:
    fits = {k: OLS(coef=rand(2 + i, seed=i).double().numpy(), r2=0.5, rss=NAN, df_resid=4, rank=2, n=6)
            for i, k in enumerate(("layer", "tracing", "both"))}
    grid = {k: rand(3, 2, seed=i) for i, k in enumerate(("tracing", "edit_score", "p_before", "p_after"))}
    return LocalizationResult(facts=tuple(REQS), layers=(1, 3), **grid, p_clean=rand(3, seed=8),
                              p_corrupted=rand(3, seed=9), fits=fits, n_facts_used=3, settings={"editor": "rome"},
                              f_tests={"tracing_over_layer": (1.5, 0.25), "layer_over_tracing": (NAN, NAN)})


def make_overlap() -> OverlapResult:
    pairs = (Pair(kind="split-half", a=(0, 0), b=(0, 1), jaccard=0.5, baseline_mean=0.1, baseline_lo=0.0,
                  baseline_hi=0.2, p_value=NAN),)
    return OverlapResult(fact=Fact("The {} is in downtown", "Space Needle", "Seattle"), prompts=("a", "b", "c", "d"),
                         seeds=(0,), halves={0: ((0, 2), (1, 3))}, sets={0: (((1, 2), (3, 4)), ())}, pairs=pairs,
                         draws=rand(1, 6).double().numpy(), attribution=make_neurons(), settings={"n_random": 6})


def make_effect() -> NeuronEffect:
    groups = ("fact", "unrelated")
    return NeuronEffect(neurons=((1, 2), (3, 4)), prompts={g: (("p " + g, "a"),) for g in groups},
                        p_before={g: rand(1, seed=i) for i, g in enumerate(groups)},
                        p_found={g: rand(1, seed=5 + i) for i, g in enumerate(groups)},
                        p_control={g: rand(2, 1, seed=9 + i) for i, g in enumerate(groups)},
                        controls=(((1, 7), (3, 8)), ((1, 9), (3, 0))), settings={"mode": "suppress"})


# --------------------------------------------------------------------------- cases: save, load, compare


@dataclasses.dataclass
class Case:
    """How to make, save and load one result type.

    ``save(original, folder)`` returns the result file's tensor file; ``load(path, model, original)``
    reads it back (``original`` only for what the loader must be told, such as a session's config).
    """

    make: Callable[[Any], Any]
    save: Callable[[Any, Path], Path]
    load: Callable[[Path, Any, Any], Any]
    same: Callable[[Any, Any], None] = assert_same


def plain(make: Callable[[], Any], cls: type) -> Case:
    return Case(make=lambda model: make(), save=lambda r, folder: r.save(folder / "r.safetensors"),
                load=lambda path, model, original: cls.load(path))


def make_session(model) -> tuple[EditSession, dict]:
    """An AlphaEdit session with one step applied (P = I: C = I below the threshold)."""
    eye = torch.eye(model.cfg.d_mlp, dtype=torch.float64)
    args = dict(layers=[1, 2], C={1: eye, 2: eye},
                config=AlphaEditConfig(context_lengths=((4, 2),), v_steps=3, null_space_threshold=1.5))
    s = EditSession(model, "alphaedit", progress=False, **args)
    s.edit(REQS[0])
    return s, args


def save_session(made: tuple[EditSession, dict], folder: Path) -> Path:
    s, args = made
    s.save(folder)
    args["saved"] = (list(s.history), s.cache_c)  # what the loaded session must have
    s.revert()  # the model is the base model again, for the load
    return folder / "session.safetensors"


def load_session(path: Path, model, original: tuple[EditSession, dict]) -> tuple[EditSession, dict]:
    args = original[1]
    return EditSession.load(path.parent, model, progress=False, config=args["config"], C=args["C"]), args


def same_session(a: tuple[EditSession, dict], b: tuple[EditSession, dict]) -> None:
    (s, args), (t, _) = a, b
    history, cache_c = args["saved"]
    try:
        assert (t.method, t.layers, len(t.history)) == (s.method, s.layers, 1)
        assert_same(t.history, history, "history")
        assert_same(t.cache_c, cache_c, "cache_c")
    finally:
        t.revert()


TEXTS = ["The Space Needle is in downtown Seattle, and the Eiffel Tower is located in the city of Paris.",
         "Michael Jordan professionally played basketball for the Chicago Bulls."]


def cache_file(C: torch.Tensor, folder: Path) -> Path:
    """The statistic's file in the cache (`covariance` wrote it; FACTSCOPE_CACHE is the test's folder)."""
    [path] = cache_dir("stats").glob("mom2-*.safetensors")
    return path


def load_cache(path: Path, model, original: torch.Tensor) -> torch.Tensor:
    """What the cache reads: the statistic's result file, checked (its kind is the statistics' format)."""
    return load_result(path, kind=COV._STAT_FORMAT, version=1).tensors["mom2"]


CASES: dict[str, Case] = {
    "trace": plain(make_trace, TraceResult),
    "profile": plain(make_profile, ProfileResult),
    "neurons": plain(make_neurons, NeuronResult),
    "edit": plain(make_edit, Edit),
    "edit_report": plain(make_report, EditReport),
    "spillover": plain(make_spillover, SpilloverResult),
    "localization": plain(make_localization, LocalizationResult),
    "overlap": plain(make_overlap, OverlapResult),
    "neuron_effect": plain(make_effect, NeuronEffect),
    "session": Case(make=make_session, save=save_session, load=load_session, same=same_session),
    "covariance": Case(make=lambda model: covariance(model, 1, corpus=TEXTS, n_tokens=20, seq_len=16, progress=False),
                       save=cache_file, load=load_cache),
}


@pytest.fixture(scope="module")
def gpt2():
    return tiny_model("gpt2")


@pytest.fixture
def saved(request, gpt2, tmp_path, monkeypatch):
    """``(case, original, tensor file)`` for the case named by the test's ``name`` parameter."""
    monkeypatch.setenv("FACTSCOPE_CACHE", str(tmp_path / "cache"))
    case = CASES[request.getfixturevalue("name")]
    original = case.make(gpt2)
    return case, original, case.save(original, tmp_path / "out")


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip(name, saved, gpt2):
    case, original, path = saved
    assert path.is_file() and sidecar_of(path).is_file()
    case.same(original, case.load(path, gpt2, original))


def test_meta_keeps_non_finite_floats_and_order(tmp_path):
    meta = {"z": NAN, "a": [INF, -INF, 1.5], "m": {"y": 1, "b": None}, "t": (1, 2)}
    path = save_result(tmp_path / "x.safetensors", kind="test", version=3, tensors={"w": rand(2)}, meta=meta)
    side = sidecar_of(path).read_text()
    assert "NaN" not in side and "Infinity" not in side and json.loads(side)["factscope_version"]
    tensors, back = load_result(path, kind="test", version=3)
    assert_same(back, {"z": NAN, "a": [INF, -INF, 1.5], "m": {"y": 1, "b": None}, "t": [1, 2]})
    assert_same(tensors, {"w": rand(2)})
    cfg = AlphaEditConfig(v_steps=3)  # a dataclass in the settings (an editor's config) is stored as its fields
    _, back = load_result(save_result(tmp_path / "c.safetensors", kind="test", version=1, tensors={},
                                      meta={"config": cfg}), kind="test", version=1)
    assert back["config"] == plain_json(dataclasses.asdict(cfg)) and back["config"]["v_steps"] == 3
    with pytest.raises(ValueError, match=r"\$float"):
        save_result(tmp_path / "y.safetensors", kind="test", version=1, tensors={}, meta={"x": {"$float": "nan"}})
    with pytest.raises(TypeError, match="JSON-able"):
        save_result(tmp_path / "y.safetensors", kind="test", version=1, tensors={}, meta={"x": object()})


# --------------------------------------------------------------------------- tampering


def flip_tensor_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01  # the last byte of the last tensor's data
    path.write_bytes(bytes(blob))


def edit_sidecar(path: Path, change: Callable[[dict], None]) -> None:
    side = sidecar_of(path)
    head = json.loads(side.read_text(encoding="utf-8"))
    change(head)
    side.write_text(json.dumps(head), encoding="utf-8")


def add_meta_key(head: dict) -> None:
    head["meta"]["tampered"] = True


TAMPERS: dict[str, tuple[Callable[[Path], None], type[Exception], str]] = {
    "tensor byte": (flip_tensor_byte, ResultFileError, "SHA-256"),
    "edited json": (lambda p: edit_sidecar(p, add_meta_key), ResultFileError, "sidecar was edited"),
    "invalid json": (lambda p: sidecar_of(p).write_text('{"format": "factscope.result", "meta": {'),
                     ResultFileError, "plain JSON"),
    "wrong kind": (lambda p: edit_sidecar(p, lambda h: h.update(kind="factscope.other")), ResultFileError,
                   "expected a '.*' result file, .* holds a 'factscope.other' one"),
    "future version": (lambda p: edit_sidecar(p, lambda h: h.update(version=h["version"] + 1)), ResultFileError,
                       "newer factscope"),
    "older version": (lambda p: edit_sidecar(p, lambda h: h.update(version=h["version"] - 1)), ResultFileError,
                      "older factscope"),
    "missing sidecar": (lambda p: sidecar_of(p).unlink(), MissingResultFileError, "sidecar .* is missing"),
    "another save's tensors": (lambda p: p.write_bytes(save_result(p.with_name("o.safetensors"), kind="o",
                               version=1, tensors={"x": rand(3)}, meta={}).read_bytes()), ResultFileError, "SHA-256"),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
@pytest.mark.parametrize("name", list(CASES))
def test_tampered_file_is_refused(name, tamper, saved, gpt2):
    case, original, path = saved
    how, error, match = TAMPERS[tamper]
    how(path)
    with pytest.raises(error, match=match) as info:
        case.load(path, gpt2, original)
    assert isinstance(info.value, ResultFileError) and str(path.name) in str(info.value)


@pytest.mark.parametrize("name", [n for n in CASES if n not in ("session", "covariance")])
def test_another_types_file_is_refused(name, saved, gpt2):
    """Loading a file of one result type as another names both kinds."""
    _, original, path = saved
    other = ProfileResult if name == "trace" else TraceResult
    with pytest.raises(ResultFileError, match=rf"expected a '{other.RESULT_KIND}' result file, .* holds a "
                                              rf"'{type(original).RESULT_KIND}' one"):
        other.load(path)


def test_missing_files_are_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="the tensor file .* is missing"):
        load_result(tmp_path / "none.safetensors", kind="test", version=1)
    with pytest.raises(TypeError, match="version"):
        save_result(tmp_path / "x.safetensors", kind="test", version=0, tensors={}, meta={})
