"""Figures: structure checks on tiny-model traces (labels, colour scales, files)."""

from __future__ import annotations

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


def test_single_kind_and_files(result, tmp_path):
    fig = plot_trace(result, "mlp")
    assert sum(1 for a in fig.axes if a.get_title()) == 1
    paths = save_figure(fig, tmp_path / "trace.png", ("png", "svg", "pdf"))
    assert [p.suffix for p in paths] == [".png", ".svg", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ValueError, match="expected a kind"):
        plot_trace(result, "neurons")
