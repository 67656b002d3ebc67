"""Key statistics C = E[kkᵀ] (factscope.edit.covariance): values against plain computations, the
corpora, the on-disk cache (keys, damage, concurrent writers), the seeded sampler and the errors."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from factscope import load_result, save_result, tiny_model
from factscope.arch import arch_of
from factscope.edit.covariance import DEFAULT_N_TOKENS, covariance, covariances, sample_corpus
from factscope.tokens import encode

cov_mod = importlib.import_module("factscope.edit.covariance")  # the package attribute is the function

TEXTS = [
    "The Space Needle is in downtown Seattle, and the Eiffel Tower is located in the city of Paris.",
    "Michael Jordan professionally played basketball for the Chicago Bulls.",
    "",  # skipped
    "The capital of Japan is Tokyo, and the capital of Italy is Rome. The Colosseum is in Rome.",
    "Toyota Camry is produced by Toyota. iPhone is developed by Apple.",
    "Albert Einstein was a physicist born in Germany who spoke German.",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def gpt2():
    return tiny_model("gpt2")


@contextlib.contextmanager
def count_forwards(model):
    """Counts entries into block 0 (one per forward) and into the unembedding."""
    calls = {"forwards": 0, "unembed": 0, "last_attn": 0}

    def bump(key):
        def pre(*_):
            calls[key] += 1
        return pre

    hs = [model.blocks[0].register_forward_pre_hook(bump("forwards")),
          model.blocks[-1].attn.register_forward_pre_hook(bump("last_attn")),
          model.unembed.register_forward_pre_hook(bump("unembed"))]
    try:
        yield calls
    finally:
        for h in hs:
            h.remove()


def windows_of(model, texts, n_tokens, seq_len):
    """[bos] + tokens, cut into windows of seq_len with BOS in front of each, n_tokens non-BOS tokens."""
    out, left = [], n_tokens
    for t in texts:
        if not t.strip():
            continue
        ids = encode(model.tokenizer, t)  # documents may be longer than the context
        bos, body = ids[:1], ids[1:]
        for s in range(0, len(body), seq_len - 1):
            chunk = body[s:s + seq_len - 1][:left]
            out.append(bos + chunk)
            left -= len(chunk)
            if left == 0:
                return out
    return out


def direct(model, windows, layer):
    """E[kkᵀ] from one run_with_cache per window, BOS dropped, in float64."""
    name = arch_of(model).hook("mlp_key", layer)
    keys = []
    for w in windows:
        _, cache = model.run_with_cache(torch.tensor([w]), names_filter=name)
        keys.append(cache[name][0, 1:])
    k = torch.cat(keys).double()
    return k.T @ k / k.shape[0], k.shape[0]


def cache_files(root: Path) -> list[Path]:
    """Every file under ``root`` but the result files' JSON sidecars (``*.safetensors.json``)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".safetensors.json"))


def sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text())


# --------------------------------------------------------------------------- values


def test_matches_direct_computation(tiny):
    n, seq_len = 57, 12  # long texts are cut into several windows; the last one is cut at n
    win = windows_of(tiny, TEXTS, n, seq_len)
    assert len(win) > len(TEXTS) - 1 and sum(len(w) - 1 for w in win) == n
    ref, count = direct(tiny, win, 2)
    assert count == n
    got = covariance(tiny, 2, corpus=TEXTS, n_tokens=n, seq_len=seq_len, batch_size=1, progress=False)
    assert got.dtype == torch.float64 and got.shape == (arch_of(tiny).d_mlp,) * 2
    assert torch.allclose(got, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
    # batched windows of different lengths (right padding + mask): equal up to float32 rounding
    batched = covariance(tiny, 2, corpus=TEXTS, n_tokens=n, seq_len=seq_len, batch_size=5, cache=False,
                         progress=False)
    assert torch.allclose(batched, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_bos_is_excluded(gpt2):
    win = windows_of(gpt2, TEXTS, 40, 16)
    with_bos_name = arch_of(gpt2).hook("mlp_key", 1)
    _, cache = gpt2.run_with_cache(torch.tensor([win[0]]), names_filter=with_bos_name)
    k_all = cache[with_bos_name][0].double()
    got = covariance(gpt2, 1, corpus=[TEXTS[0]], n_tokens=len(win[0]) - 1, seq_len=16, batch_size=1,
                     progress=False)
    assert torch.allclose(got, k_all[1:].T @ k_all[1:] / (len(win[0]) - 1), rtol=0, atol=1e-10 * float(got.abs().max()))
    assert not torch.allclose(got, k_all.T @ k_all / len(win[0]), rtol=1e-3)


def test_covariances_share_one_pass(gpt2):
    kw = dict(corpus=TEXTS, n_tokens=60, seq_len=16, batch_size=64, progress=False, cache=False)
    with count_forwards(gpt2) as calls:
        both = covariances(gpt2, [2, 1], **kw)
    assert list(both) == [1, 2]
    assert calls == {"forwards": 1, "unembed": 0, "last_attn": 0}  # one batch; block 3 never runs
    for l in (1, 2):
        assert torch.allclose(both[l], covariance(gpt2, l, **kw), rtol=0, atol=1e-12 * float(both[l].abs().max()))
    # the final layer: no stop_at_layer can skip the unembedding there, the early exit does
    with count_forwards(gpt2) as calls:
        last = covariances(gpt2, [-1, 0], **kw)
    assert set(last) == {0, 3} and calls["forwards"] == 1 and calls["unembed"] == 0
    ref, _ = direct(gpt2, windows_of(gpt2, TEXTS, 60, 16), 3)
    assert torch.allclose(last[3], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_corpus_runs_out(gpt2):
    texts = TEXTS[:2]
    win = windows_of(gpt2, texts, 10**6, 16)
    ref, count = direct(gpt2, win, 1)
    with pytest.warns(UserWarning, match=rf"ran out after {count} of the 5000 tokens.*rank at most {count}"):
        got = covariance(gpt2, 1, corpus=texts, n_tokens=5000, seq_len=16, batch_size=1, progress=False)
    assert torch.allclose(got, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))


def test_nan_keys_raise():
    m = tiny_model("gpt2")
    with torch.no_grad():
        arch_of(m).W_out(m, 0)[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"expected finite MLP keys at layer 1, got NaN or inf"):
        covariance(m, 1, corpus=TEXTS, n_tokens=20, seq_len=16, progress=False)


# --------------------------------------------------------------------------- corpora


def test_file_corpus_is_paragraphs(gpt2, tmp_path):
    f = tmp_path / "corpus.txt"
    paras = [t for t in TEXTS if t]
    f.write_text("\n\n".join(paras[:2]) + "\n \n\n" + "\n\n".join(paras[2:]) + "\n", encoding="utf-8")
    kw = dict(n_tokens=70, seq_len=16, batch_size=1, progress=False)
    from_file = covariance(gpt2, 1, corpus=f, **kw)
    ref, _ = direct(gpt2, windows_of(gpt2, paras, 70, 16), 1)
    assert torch.allclose(from_file, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
    assert torch.equal(covariance(gpt2, 1, corpus=str(f), **kw), from_file)  # str path, from the cache
    f.write_text("\n\n".join(reversed(paras)), encoding="utf-8")  # new bytes: a new key
    with count_forwards(gpt2) as calls:
        changed = covariance(gpt2, 1, corpus=f, **kw)
    assert calls["forwards"] > 0 and not torch.allclose(changed, from_file)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="expected a UTF-8 text file"):
        covariance(gpt2, 1, corpus=tmp_path / "latin1.txt", **kw)
    with pytest.raises(FileNotFoundError, match="expected a UTF-8 text file at"):
        covariance(gpt2, 1, corpus=tmp_path / "missing.txt", **kw)
    with pytest.raises(FileNotFoundError):
        covariance(gpt2, 1, corpus="./nothing/here", **kw)


def test_iterable_is_consumed_lazily(gpt2):
    pulled = []

    def gen():
        for i in range(1000):
            pulled.append(i)
            yield TEXTS[i % 2]

    covariance(gpt2, 1, corpus=gen(), n_tokens=30, seq_len=64, progress=False)
    assert len(pulled) <= 3


def test_auto_offline_falls_back_to_model(gpt2, monkeypatch, capsys):
    import factscope.models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(factscope.models, "hub_reachable", lambda *a, **k: pytest.fail("must not probe offline"))
    monkeypatch.setattr(sys.modules["factscope.edit.covariance"], "_ANNOUNCED", set())
    kw = dict(n_tokens=200, seq_len=32, sample_batch_size=8, progress=False)
    auto = covariance(gpt2, 1, corpus="auto", **kw)
    err = capsys.readouterr().err
    assert "corpus='auto'" in err and "corpus='model'" in err and len(err.strip().splitlines()) == 1
    covariance(gpt2, 1, corpus="auto", **kw)  # cached now; the notice is not repeated
    assert capsys.readouterr().err == ""
    model = covariance(gpt2, 1, corpus="model", cache=False, **kw)
    assert torch.equal(auto, model)


@pytest.mark.parametrize("how", ["env", "unreachable"])
def test_dataset_offline_fails_fast(gpt2, monkeypatch, how):
    import factscope.models
    from factscope.datasets import DatasetNotAvailableError

    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(factscope.models, "hub_reachable", lambda *a, **k: pytest.fail("must not probe"))
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        monkeypatch.setattr(factscope.models, "hub_reachable", lambda *a, **k: False)
    t0 = time.perf_counter()
    with pytest.raises(DatasetNotAvailableError, match="HF_HUB_OFFLINE is set" if how == "env" else "cannot be reached"):
        covariance(gpt2, 1, corpus="wikitext-103", n_tokens=100, progress=False)
    assert time.perf_counter() - t0 < 5


def test_auto_online_streams_a_dataset(gpt2, monkeypatch):
    import datasets

    import factscope.models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(factscope.models, "hub_reachable", lambda *a, **k: True)
    calls = []

    def fake_load(name, config=None, *, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": t} for t in TEXTS])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    kw = dict(n_tokens=80, seq_len=16, batch_size=1, progress=False)
    got = covariance(gpt2, 1, corpus="auto", **kw)
    assert calls == [("Salesforce/wikitext", "wikitext-103-raw-v1", "train", True)]
    ref, _ = direct(gpt2, windows_of(gpt2, TEXTS, 80, 16), 1)
    assert torch.allclose(got, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
    assert torch.equal(covariance(gpt2, 1, corpus="wikitext-103", **kw), got) and len(calls) == 1  # cached
    covariance(gpt2, 1, corpus="someorg/mydata:cfg", split="validation", **kw)
    assert calls[-1] == ("someorg/mydata", "cfg", "validation", True)


# --------------------------------------------------------------------------- sampling


def test_sampling_is_seeded_and_leaves_global_rng(gpt2):
    state = torch.get_rng_state()
    a = sample_corpus(gpt2, 300, seq_len=32, batch_size=4, seed=3, progress=False, cache=False)
    b = sample_corpus(gpt2, 300, seq_len=32, batch_size=4, seed=3, progress=False, cache=False)
    c = sample_corpus(gpt2, 300, seq_len=32, batch_size=4, seed=4, progress=False, cache=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == (10, 32) and a.dtype == torch.long  # ceil(300 / 31) rows
    assert torch.equal(a, b) and not torch.equal(a, c)
    tok = gpt2.tokenizer
    assert (a[:, 0] == tok.bos_token_id).all()
    assert not torch.isin(a[:, 1:], torch.tensor(tok.all_special_ids)).any()
    assert len(set(a[:, 1].tolist())) > 1  # rows differ


def test_sampling_follows_the_model(gpt2):
    # The first token after BOS, over many rows, follows softmax(logits at BOS) with specials removed.
    ids = sample_corpus(gpt2, 4000, seq_len=2, batch_size=4000, seed=0, progress=False, cache=False)
    with torch.no_grad():
        p = torch.softmax(gpt2(torch.tensor([[gpt2.tokenizer.bos_token_id]]))[0, -1].double(), -1)
    p[gpt2.tokenizer.all_special_ids] = 0
    p /= p.sum()
    x, n = ids[:, 1], ids.shape[0]
    assert (p[x] > 0).all()  # no special token
    # mean log p(x) estimates -H(p): within 4 standard errors (a wrong temperature or argmax fails)
    logp = p.clamp_min(1e-300).log()
    H = -float((p * logp).sum())
    sd = float((p * (logp + H) ** 2).sum()) ** 0.5
    z = (float(logp[x].mean()) + H) / (sd / n**0.5)
    assert abs(z) < 4, z
    # the most likely tokens come up at their rates
    freq = torch.bincount(x, minlength=p.numel()).double() / n
    top = p.argsort(descending=True)[:10]
    assert ((freq[top] - p[top]).abs() < 4.5 * (p[top] * (1 - p[top]) / n).sqrt()).all()
    # the uniform distribution over the same tokens would fail the first check
    u = (p > 0).double() / (p > 0).sum()
    assert abs((float((u * logp).sum()) + H) / (sd / n**0.5)) > 20


def test_sampled_ids_are_cached_and_reused(gpt2, _cache):
    kw = dict(seq_len=32, batch_size=4, seed=1, progress=False)
    first = sample_corpus(gpt2, 120, **kw)
    files = list((_cache / "stats" / "samples").glob("*.safetensors"))
    assert len(files) == 1
    with count_forwards(gpt2) as calls:
        again = sample_corpus(gpt2, 120, **kw)
        C = covariance(gpt2, 1, corpus="model", n_tokens=120, seq_len=32, sample_batch_size=4, seed=1,
                       progress=False)
    assert torch.equal(first, again)
    assert calls["forwards"] == 1  # the statistics' forward only: the ids came from the cache
    # C of the "model" corpus is C of those ids, the last row cut at n_tokens
    win, left = [], 120
    for row in first.tolist():
        take = min(left, 31)
        win.append(row[:take + 1])
        left -= take
        if not left:
            break
    ref, _ = direct(gpt2, win, 1)
    assert torch.allclose(C, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


# --------------------------------------------------------------------------- cache


def test_cache_hit_and_key(gpt2, _cache):
    kw = dict(corpus=TEXTS, n_tokens=50, seq_len=16, progress=False)
    first = covariance(gpt2, 1, **kw)
    [path] = cache_files(_cache)
    # a result file: the key and the count in its meta, the tensor file's SHA-256 in its sidecar
    side = sidecar(path)
    assert side["kind"] == cov_mod._STAT_FORMAT and side["version"] == 1
    assert side["tensors_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    tensors, meta = load_result(path, kind=cov_mod._STAT_FORMAT, version=1)
    assert list(tensors) == ["mom2"] and torch.equal(tensors["mom2"], first)
    key = meta["key"]
    assert key["layer"] == 1 and key["n_tokens"] == 50 and key["corpus"]["type"] == "texts"
    assert key["dtype"] == "float64" and meta["tokens"] == 50
    assert path.name.startswith(f"mom2-{key['model']}-L1-")
    with count_forwards(gpt2) as calls:
        again = covariance(gpt2, 1, **kw)
    assert calls["forwards"] == 0 and torch.equal(first, again)
    variants = [
        (gpt2, dict(kw, n_tokens=49), 1),  # the same texts consumed (30 + 20 tokens), fewer counted
        (gpt2, kw, 2),
        (gpt2, dict(kw, corpus=TEXTS[::-1]), 1),
        (gpt2, dict(kw, seq_len=20), 1),
        (tiny_model("gpt2", seed=1), kw, 1),
    ]
    for i, (m, k, layer) in enumerate(variants):
        with count_forwards(m) as calls:
            covariance(m, layer, **k)
        assert calls["forwards"] > 0, i
        assert len(cache_files(_cache)) == 2 + i, i
    with count_forwards(gpt2) as calls:
        uncached = covariance(gpt2, 1, cache=False, **kw)
    assert calls["forwards"] > 0 and torch.allclose(uncached, first, rtol=0, atol=0)


def _damage(path: Path, how: str, good: torch.Tensor):
    from safetensors.torch import save

    kind = sidecar(path)["kind"]
    _, meta = load_result(path, kind=kind, version=1)

    def rewrite(t: torch.Tensor, **changes) -> None:  # a valid result file (both digests match), bad contents
        save_result(path, kind=kind, version=1, tensors={"mom2": t}, meta={**meta, **changes})

    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(4096))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "checksum":  # tensor bytes changed, the sidecar's digest stale
        path.write_bytes(save({"mom2": good * 1.01}))
    elif how == "sidecar":  # the sidecar edited: its digest in the tensor file is stale
        side = path.with_name(path.name + ".json")
        side.write_text(side.read_text().replace('"tokens": 50', '"tokens": 51'))
    elif how == "nan":
        bad = good.clone()
        bad[0, 0] = float("nan")
        rewrite(bad)
    elif how == "shape":
        rewrite(good[:-1, :-1])
    elif how == "key":
        rewrite(good, key=dict(meta["key"], n_tokens=1))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "checksum", "sidecar", "nan", "shape", "key"])
def test_damaged_cache_is_recomputed(gpt2, _cache, how):
    kw = dict(corpus=TEXTS, n_tokens=50, seq_len=16, progress=False)
    good = covariance(gpt2, 1, **kw)
    [path] = cache_files(_cache)
    _damage(path, how, good)
    with count_forwards(gpt2) as calls, pytest.warns(UserWarning, match="damaged cache file.*recomputing"):
        again = covariance(gpt2, 1, **kw)
    assert calls["forwards"] > 0 and torch.equal(again, good)
    with count_forwards(gpt2) as calls:  # repaired: loads silently
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(covariance(gpt2, 1, **kw), good)
    assert calls["forwards"] == 0


def test_damaged_sample_cache_is_resampled(gpt2, _cache):
    kw = dict(seq_len=16, batch_size=4, seed=0, progress=False)
    ids = sample_corpus(gpt2, 60, **kw)
    [path] = cache_files(_cache / "stats" / "samples")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="damaged cache file"):
        assert torch.equal(sample_corpus(gpt2, 60, **kw), ids)


CHILD = r"""
import sys, torch
torch.set_num_threads(1)
from factscope import load_result, save_result, tiny_model
from factscope.edit.covariance import covariances
m = tiny_model("gpt2")
C = covariances(m, [1, 2], corpus="model", n_tokens=6000, seq_len=64, sample_batch_size=16, batch_size=8,
                progress=False)
torch.save(C, sys.argv[1])
"""


def _valid(path: Path) -> bool:
    """Independent check of a stats file: its sidecar's SHA-256 of the tensor file, readable, finite, square.

    A tensor file whose sidecar is not written yet raises FileNotFoundError (not complete, not a miss).
    """
    from safetensors.torch import load

    side = sidecar(path)
    blob = path.read_bytes()
    assert side["tensors_sha256"] == hashlib.sha256(blob).hexdigest(), path
    [t] = load(blob).values()
    if t.is_floating_point():
        assert torch.isfinite(t).all() and t.shape[0] == t.shape[1]
    return True


def test_concurrent_processes(tmp_path, _cache):
    env = dict(os.environ, FACTSCOPE_CACHE=str(_cache), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    outs = [tmp_path / f"c{i}.pt" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(o)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for o in outs]
    seen = 0
    try:
        while True:
            running = any(p.poll() is None for p in procs)
            for f in cache_files(_cache):
                if f.name.startswith(".") or not f.name.endswith(".safetensors"):
                    continue  # temporaries: never renamed into place until complete
                try:
                    seen += _valid(f)
                except FileNotFoundError:
                    pass
            if not running:
                break
            time.sleep(0.02)
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    assert seen >= 3  # two statistics and the sampled ids, at least once each at the end
    a, b = (torch.load(o) for o in outs)
    assert set(a) == {1, 2} and all(torch.equal(a[l], b[l]) for l in a)
    left = [f for f in cache_files(_cache) if f.name.startswith(".") or f.name.endswith(".tmp")]
    assert left == []
    assert len([f for f in cache_files(_cache) if f.suffix == ".safetensors"]) == 3


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(layer=4), ValueError, r"expected a layer in \[-4, 4\).*got 4"),
        (dict(layer=1.0), TypeError, "expected an integer layer"),
        (dict(n_tokens=0), ValueError, "expected n_tokens to be an integer >= 1, got 0"),
        (dict(n_tokens=2.5), TypeError, "expected n_tokens to be an integer"),
        (dict(seq_len=1), ValueError, "expected seq_len to be an integer >= 2"),
        (dict(seq_len=1000), ValueError, r"expected seq_len <= 128 \(the model's context length\), got 1000"),
        (dict(batch_size=0), ValueError, "expected batch_size to be an integer >= 1"),
        (dict(corpus=[]), ValueError, "expected a corpus with at least one token, got an empty corpus"),
        (dict(corpus=["", "  \n"]), ValueError, "empty corpus"),
        (dict(corpus=42), TypeError, "expected corpus to be 'auto', 'model'.*got int"),
        (dict(corpus=b"text"), TypeError, "got bytes"),
        (dict(corpus={"a": 1}), TypeError, "got dict"),
        (dict(corpus=["fine", 3]), TypeError, "expected the corpus to yield strings, got int at item 1"),
    ],
)
def test_bad_input(gpt2, kwargs, exc, match):
    kw = dict(layer=1, corpus=TEXTS, n_tokens=20, progress=False)
    kw.update(kwargs)
    layer = kw.pop("layer")
    with pytest.raises(exc, match=match):
        covariance(gpt2, layer, **kw)


def test_bad_layers(gpt2):
    with pytest.raises(ValueError, match="expected at least one layer"):
        covariances(gpt2, [], corpus=TEXTS, n_tokens=10)
    with pytest.raises(TypeError, match="expected an iterable of layer indices"):
        covariances(gpt2, 1, corpus=TEXTS, n_tokens=10)
    with pytest.raises(ValueError, match="expected a UTF-8 text file|expected a text file as the corpus"):
        covariance(gpt2, 1, corpus=Path(__file__).parent, n_tokens=10)


def test_default_is_documented():
    assert DEFAULT_N_TOKENS == 16384
    assert f"DEFAULT_N_TOKENS = {DEFAULT_N_TOKENS}" in cov_mod.__doc__
    assert set(cov_mod.__all__) == {"covariance", "covariances", "sample_corpus", "DEFAULT_N_TOKENS"}


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_gemma_covariance_is_psd(gemma):
    C = covariance(gemma, 6, corpus="model", n_tokens=2048, seq_len=32, progress=False)
    assert C.shape == (2048, 2048) and torch.isfinite(C).all()
    assert torch.equal(C, C.T)
    ev = torch.linalg.eigvalsh(C)
    assert float(ev.min()) >= -1e-9 * float(ev.max())
    assert float(C.diagonal().min()) >= 0
