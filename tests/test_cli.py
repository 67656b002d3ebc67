"""The `factscope` command line, on a tiny model saved to a folder."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from factscope import arch_of, load_model
from factscope.cli import app

runner = CliRunner()


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("info", "facts", "demo"):
        assert cmd in r.output


def test_info_prints_sizes_hooks_and_cache(tiny_folder, tmp_path, monkeypatch):
    tiny_folder = tiny_folder("gemma3")
    monkeypatch.setenv("FACTSCOPE_CACHE", str(tmp_path / "c"))
    r = runner.invoke(app, ["info", "--model", str(tiny_folder)])
    assert r.exit_code == 0, r.output
    a = arch_of(load_model(tiny_folder))
    lines = dict(line.split(None, 1) for line in r.output.splitlines() if line and not line.startswith(" ")
                 and len(line.split(None, 1)) == 2)
    assert lines["layers"].strip() == str(a.n_layers)
    assert f"{a.d_model} / {a.d_mlp} / {a.n_heads}" in r.output
    assert "post-norms" in r.output  # Gemma 3
    assert a.hook("mlp_key", 0) in r.output and a.hook("mlp_out", 0) in r.output
    assert str(tmp_path / "c") in r.output


def test_info_bad_model_exits_with_message(tmp_path):
    r = runner.invoke(app, ["info", "--model", str(tmp_path / "nope.gguf")])
    assert r.exit_code == 2
    assert "GGUF file at" in r.output


def test_trace_command_writes_figure_and_summary(tiny_folder, tmp_path):
    folder = tiny_folder("gemma3")
    out = tmp_path / "trace.png"
    r = runner.invoke(app, ["trace", "The Space Needle is in downtown", "--subject", "Space Needle", "--kind", "all",
                            "--samples", "2", "--window", "2", "--out", str(out), "--model", str(folder)])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 1000
    for k in ("hidden", "mlp", "attn"):
        assert f"{k:<6} peak indirect effect" in r.output
    assert "clean p=" in r.output and "corrupted p=" in r.output


def test_trace_command_bad_input(tiny_folder, tmp_path):
    folder = str(tiny_folder("gemma3"))
    r = runner.invoke(app, ["trace", "The Space Needle is in downtown", "--subject", "Eiffel Tower", "--model", folder])
    assert r.exit_code == 2 and "does not occur" in r.output
    r = runner.invoke(app, ["trace", "The Space Needle is in downtown", "--subject", "Space Needle", "--window", "99",
                            "--out", str(tmp_path / "x.png"), "--model", folder])
    assert r.exit_code == 2 and "window of 1 to" in r.output


def test_stats_and_edit_commands(tiny_folder, tmp_path, monkeypatch):
    from factscope.edit import Edit

    folder = str(tiny_folder("gemma3"))
    monkeypatch.setenv("FACTSCOPE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = runner.invoke(app, ["stats", "--layer", "1", "--layer", "2", "--corpus", "model", "--n-tokens", "1024",
                            "--model", folder])
    assert r.exit_code == 0, r.output
    assert "layer 1: C (" in r.output and "layer 2: C (" in r.output
    assert list((tmp_path / "c" / "stats").glob("*.safetensors"))
    out = tmp_path / "edit.safetensors"
    r = runner.invoke(app, ["edit", "--prompt", "{} plays the sport of", "--subject", "Michael Jordan",
                            "--target-new", "soccer", "--layer", "1", "--corpus", "model", "--n-tokens", "1024",
                            "--save", str(out), "--model", folder])
    assert r.exit_code == 0, r.output
    assert "editing the MLP at layer 1" in r.output and "p(soccer) before -> after" in r.output
    e = Edit.load(out, model=load_model(folder))
    assert e.layers == (1,) and e.requests[0].target_new == "soccer"
    r = runner.invoke(app, ["edit", "--prompt", "{} plays", "--subject", "X", "--target-new", "y", "--layer", "99",
                            "--model", folder])
    assert r.exit_code == 2 and "layer" in r.output


@pytest.mark.filterwarnings("ignore:the model's top-1 answer")
def test_neurons_command_writes_figure_html_and_result(tiny_folder, tmp_path):
    from factscope.locate import NeuronResult

    folder = str(tiny_folder("llama"))
    png, page, saved = tmp_path / "neurons.png", tmp_path / "neurons.html", tmp_path / "n.safetensors"
    r = runner.invoke(app, ["neurons", "The Space Needle is in downtown", "--subject", "Space Needle",
                            "--target", "Seattle", "--paraphrase", "The Space Needle stands in", "--steps", "3",
                            "--out", str(png), "--html", str(page), "--save", str(saved), "--model", folder])
    assert r.exit_code == 0, r.output
    assert "1 prompt(s) added with a context prefix" in r.output  # the prompt + 1 paraphrase: padded to 3
    res = NeuronResult.load(saved)
    assert res.prompts[:2] == ("The Space Needle is in downtown", "The Space Needle stands in")
    assert len(res.prompts) == 3 and res.target == "Seattle"
    assert f"{len(res.neurons)} knowledge neuron(s) over 3 prompts" in r.output
    assert png.stat().st_size > 1000
    if res.neurons:
        assert "suppressing them at the answer position" in r.output
        assert page.read_text(encoding="utf-8").count("CircuitsVis.render(") == 3


def test_neurons_command_bad_input(tiny_folder, tmp_path):
    folder = str(tiny_folder("llama"))
    r = runner.invoke(app, ["neurons", "The Space Needle is in downtown", "--subject", "Eiffel Tower",
                            "--model", folder])
    assert r.exit_code == 2 and "does not occur" in r.output
    r = runner.invoke(app, ["neurons", "The Space Needle is in downtown", "--subject", "Space Needle",
                            "--target", " ", "--model", folder])
    assert r.exit_code == 2 and "target" in r.output
    r = runner.invoke(app, ["neurons", "The Space Needle is in downtown", "--subject", "Space Needle",
                            "--steps", "0", "--out", str(tmp_path / "x.png"), "--model", folder])
    assert r.exit_code == 2 and "steps" in r.output
