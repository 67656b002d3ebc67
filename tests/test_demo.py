"""`factscope.app.demo` end to end on a tiny random Gemma 3 (fast): every step runs, every file and report
section is written, the report is self-contained, and the model is left as it was.

A random model knows no fact, so the layer profile is taken over facts whose target is the tiny
model's own top-1 answer (`recommended_layer` is wrapped for that); the real-model run is
`tests/test_integration.py::test_demo_command_writes_the_report_answers_and_figures`.
"""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import factscope as fs  # noqa: E402
import factscope.locate as locate  # noqa: E402
from factscope.figures import remote_urls  # noqa: E402

FILES = {"answers.csv", "trace.png", "trace.svg", "trace.pdf", "profile.png", "profile.svg", "profile.pdf",
         "neurons.png", "neurons.html", "rome_before_after.txt", "rome_edit.safetensors", "rome_edit.safetensors.json",
         "rome_report.png", "rome_report.txt", "rome_traced_before_after.txt", "rome_traced_edit.safetensors",
         "rome_traced_edit.safetensors.json", "rome_traced_report.png", "rome_traced_report.txt", "spillover.png", "spillover.csv", "memit_edit.safetensors",
         "memit_edit.safetensors.json", "memit_report.png", "memit_report.txt", "memit_requests.csv", "report.html"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from factscope.app.demo import run_demo

    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("FACTSCOPE_CACHE", str(cache))
    original = locate.recommended_layer

    def own_answers(model, facts=None, **kw):
        some = locate.one_per_relation()[:3]
        top = fs.predict(model, [f.text for f in some])
        return original(model, [fs.Fact(f.prompt, f.subject, t.answer.strip()) for f, t in zip(some, top, strict=True)], **kw)

    mp.setattr(locate, "recommended_layer", own_answers)
    model = fs.tiny_model("gemma3", 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lines: list[str] = []
    out = tmp_path_factory.mktemp("out")
    try:
        result = run_demo(out, model=model, samples=2, echo=lines.append, progress=False)
        second = run_demo(tmp_path_factory.mktemp("out2"), model=model, samples=2, echo=lines.append, progress=False)
    finally:
        mp.undo()
    return result, second, model, before, "\n".join(lines)


def test_every_file_is_written_and_the_model_is_unchanged(run):
    result, _, model, before, _ = run
    assert {p.name for p in result.out.iterdir()} == FILES
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)


def test_report_has_every_section_figure_and_table_and_loads_nothing_remote(run):
    result, _, _, _, _ = run
    page = result.report.read_text(encoding="utf-8")
    assert remote_urls(page) == []
    heads = re.findall(r"<h2>(.*?)</h2>", page)
    assert [h.split(" ")[0] for h in heads] == ["1.", "2.", "3.", "4.", "5.", "6.", "Run", "Settings"]
    imgs = re.findall(r'<img alt="[^"]+" style="width:\d+px" src="data:image/png;base64,', page)
    assert len(imgs) == 7  # trace, profile, neurons, rome_report, rome_traced_report, spillover, memit_report
    assert len(re.findall(r"<figcaption>", page)) == 7 + 1 + 2  # figures, the circuitsvis view, 2 printed texts
    assert page.count("CircuitsVis.render(") == 3  # the neurons view, one panel per prompt
    tables = re.findall(r"<table", page)
    assert len(tables) == len(re.findall(r"<caption>", page))  # every table labelled
    for name in ("answers", "efficacy", "neighbourhood", "same_subject", "Secretary of State", "MEMIT config",
                 "ROME config", "fingerprint"):
        assert name in page, name


def test_summary_timings_and_cache_line(run):
    result, second, _, _, text = run
    assert list(result.timings) == ["load the model", "answers", "locate", "neurons", "rome", "spillover", "memit",
                                    "total"]
    assert result.timings["total"] >= sum(v for k, v in result.timings.items() if k != "total")
    assert len(result.summary) == 9 and result.summary[-1].startswith("Total")  # two ROME lines and why they differ
    assert result.cached and "built and cached" in result.summary[-1]  # a fresh cache: statistics, profile
    assert second.cached == [] and "came from the cache" in second.summary[-1]
    assert "time per step:" in text and "[6/6]" in text
    assert list(result.to_dataframe()["step"]) == list(result.timings)


def test_bad_samples_is_refused_before_anything_runs(tmp_path):
    from factscope.app.demo import run_demo

    with pytest.raises((TypeError, ValueError), match="samples"):
        run_demo(tmp_path / "o", model=fs.tiny_model("gemma3", 0), samples=0)
    assert not (tmp_path / "o").exists()


def test_report_renders_offline_in_a_browser(run, browser_dom):
    result = run[0]
    dom = browser_dom(result.report)
    assert dom.count('class="colored-tokens"') == 3  # the circuitsvis view drew a panel per prompt, offline
    assert len(re.findall(r"<section id=", dom)) == 8 and dom.count("<img ") == 7
