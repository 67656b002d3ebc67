"""Shared fixtures. Tiny random models are session-scoped; tests that write weights restore them."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)  # two threads on a busy 2-core machine give erratic stalls
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHS = ("gpt2", "llama", "gemma3")


@pytest.fixture(scope="session", params=ARCHS)
def arch_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny(arch_name):
    from factscope import tiny_model

    return tiny_model(arch_name)


@pytest.fixture
def model(tiny):
    """The session's tiny model, guarded: afterwards no edit may be left applied and every parameter
    must be unchanged (the test fails if not; the weights are restored either way)."""
    from factscope.edit import handle

    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    yield tiny
    leftover = handle._APPLIED.pop(tiny, None)
    changed = [n for n, p in tiny.named_parameters() if not torch.equal(p, before[n])]
    with torch.no_grad():
        for n, p in tiny.named_parameters():
            p.copy_(before[n])
    assert not leftover, f"test left edits applied: {leftover}"
    assert not changed, f"test left weights changed: {changed}"


@pytest.fixture(scope="session")
def gemma():
    """The real default model (slow tests only)."""
    from factscope import load_model

    return load_model()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """``tiny_folder(arch, seed)``: a tiny HF model and tokenizer saved as a local model folder."""
    from factscope.models import tiny_hf

    def make(arch: str, seed: int = 0):
        hf, tok = tiny_hf(arch, seed=seed)
        folder = tmp_path_factory.mktemp(f"tiny-{arch}-{seed}")
        hf.save_pretrained(folder)
        tok.save_pretrained(folder)
        return folder

    return make


@pytest.fixture
def browser_dom(tmp_path):
    """``dom(page)``: the DOM of an HTML file after its JavaScript ran in headless Chromium, with every host
    unresolvable (so only what the page holds can render). Skips the test when no Chromium is installed,
    unless FACTSCOPE_REQUIRE_BROWSER=1 (as in CI, which installs it): then the test fails instead."""
    import shutil
    import subprocess

    exe = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if exe is None:
        if os.environ.get("FACTSCOPE_REQUIRE_BROWSER") == "1":
            pytest.fail("FACTSCOPE_REQUIRE_BROWSER=1 but no headless Chromium is installed (Debian: apt install chromium)")
        pytest.skip("needs headless Chromium (Debian: apt install chromium)")

    def dom(page) -> str:
        out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
                              f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000",
                              "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    return dom
