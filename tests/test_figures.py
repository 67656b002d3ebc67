"""Figures: structure checks on tiny-model traces (labels, colour scales, files)."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from factscope import Fact  # noqa: E402
from factscope.figures import CMAPS, plot_trace, save_figure  # noqa: E402
from factscope.locate import trace  # noqa: E402


@pytest.fixture(scope="module")
def result():
    from factscope import tiny_model

    return trace(tiny_model("gemma3"), Fact("The {} is in downtown", "Space Needle"), kind="all", samples=2, window=2)


def test_three_panels_with_starred_subject_and_corrupted_vmin(result):
    fig = plot_trace(result)
    heat = [a for a in fig.axes if a.collections]  # heatmap axes (colour bars have no QuadMesh title)
    panels = [a for a in heat if a.get_title()]
    assert [a.get_title().split(" (")[0] for a in panels] == ["Restore hidden state", "Restore MLP output",
                                                            "Restore attention output"]
    s0, s1 = result.subject
    labels = [t.get_text() for t in panels[0].get_yticklabels()]
    assert len(labels) == len(result.tokens)
    assert [i for i, l in enumerate(labels) if l.endswith("*")] == list(range(s0, s1))
    for a, kind in zip(panels, ("hidden", "mlp", "attn")):
        mesh = a.collections[0]
        assert mesh.get_cmap().name == CMAPS[kind]
        assert mesh.norm.vmin == pytest.approx(result.corrupted)
        assert mesh.get_array().size == result.scores[kind].numel()
    bars = [a for a in fig.axes if a not in heat or not a.get_title()]  # the colour bars, one per panel
    assert [b.get_ylabel() for b in bars] == [f"p({result.answer.strip()})"] * 3


def test_single_kind_and_files(result, tmp_path):
    fig = plot_trace(result, "mlp")
    assert sum(1 for a in fig.axes if a.get_title()) == 1
    paths = save_figure(fig, tmp_path / "trace.png", ("png", "svg", "pdf"))
    assert [p.suffix for p in paths] == [".png", ".svg", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ValueError, match="expected a kind"):
        plot_trace(result, "neurons")


# --------------------------------------------------------------------------- knowledge neurons


@pytest.fixture(scope="module")
def neuron_result():
    import warnings

    from factscope import EditRequest, tiny_model
    from factscope.locate import neurons

    req = EditRequest("The {} is in downtown", "Space Needle", "Paris", target_true="Seattle",
                      paraphrases=("The Space Needle stands in", "The Space Needle is located in"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return neurons(tiny_model("llama"), req, steps=3, progress=False)


def test_plot_neurons_marks_the_selected_neurons(neuron_result, tmp_path):
    from factscope.figures import plot_neurons

    r = neuron_result
    assert r.neurons
    fig = plot_neurons(r)
    panels = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in panels] == ["largest attribution in the layer", "summed attribution of the layer"]
    stars = [c for c in panels[0].collections if len(c.get_offsets())]
    marked = sorted(tuple(map(float, o)) for c in stars for o in c.get_offsets())
    want = sorted((float(l), s) for l, _, s in r.neurons)
    assert [m[0] for m in marked] == [w[0] for w in want]
    assert [m[1] for m in marked] == pytest.approx([w[1] for w in want])
    lines = panels[0].get_lines()
    assert len([ln for ln in lines if len(ln.get_xdata()) == r.n_layers]) == len(r.prompts) + 1  # prompts + mean
    assert save_figure(fig, tmp_path / "n.png")[0].stat().st_size > 1000
    assert len([a for a in plot_neurons(r, reduce="sum").axes if a.get_title()]) == 1
    with pytest.raises(ValueError, match="reduce"):
        plot_neurons(r, reduce="mean")


def test_neurons_html_is_offline_and_has_a_panel_per_prompt(neuron_result, tmp_path):
    import dataclasses

    from factscope.figures import neurons_html

    r = neuron_result
    out = neurons_html(r, tmp_path / "n.html")
    text = (tmp_path / "n.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "CircuitsVis.ColoredTokensMulti" in text
    assert text.count("CircuitsVis.render(") == len(r.prompts)  # one panel per prompt ...
    assert text.count("var CircuitsVis=") == 1  # ... sharing one inlined bundle
    assert "<script src=" not in text and "unpkg.com" not in text  # no JavaScript from a CDN
    assert not re.search(r"<div[^<>]*/>", text)  # no self-closed div: a browser would nest the later panels in it
    assert not re.search(r"<div[^<>]*/>", out.cdn_src)
    for l, i, _ in r.neurons:
        assert f'"L{l}.{i}"' in text
    assert out.local_src in text and hasattr(out, "_repr_html_")  # renders inline in a notebook
    with pytest.raises(ValueError, match="no selected neurons"):
        neurons_html(dataclasses.replace(r, neurons=()), tmp_path / "none.html")


def test_neurons_html_renders_every_panel_offline_in_a_browser(neuron_result, tmp_path, browser_dom):
    from factscope.figures import neurons_html

    neurons_html(neuron_result, tmp_path / "n.html")
    dom = browser_dom(tmp_path / "n.html")
    assert dom.count('class="colored-tokens"') == len(neuron_result.prompts)  # every prompt's panel drawn
    l, i, _ = neuron_result.neurons[0]
    assert dom.count(f">L{l}.{i}</div>") == len(neuron_result.prompts)  # with its neuron buttons
