"""The `factscope` command line, on a tiny model saved to a folder."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from factscope import arch_of, fingerprint, load_model
from factscope.app.cli import app

runner = CliRunner()


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("info", "facts", "demo", "evaluate"):
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
    from importlib.metadata import version

    for pkg in ("factscope", "torch", "transformers", "transformer-lens"):  # what a figure was made with
        assert f"{pkg} version  " in r.output and version(pkg) in r.output.split(f"{pkg} version", 1)[1].splitlines()[0]
    assert fingerprint(load_model(tiny_folder)) in r.output


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
    # evaluate the saved edit: tables, a figure, a CSV; a missing file is a clean error
    r = runner.invoke(app, ["evaluate", "--edit", str(out), "--gen-tokens", "5", "--out", str(tmp_path / "rep.png"),
                            "--csv", str(tmp_path / "rep.csv"), "--no-progress", "--model", folder])
    assert r.exit_code == 0, r.output
    assert "efficacy_em" in r.output and "fluency" in r.output and "Michael Jordan" in r.output  # no target_true: EM only
    assert (tmp_path / "rep.png").stat().st_size > 0
    import pandas as pd

    df = pd.read_csv(tmp_path / "rep.csv")
    assert len(df) == 1 and df.loc[0, "subject"] == "Michael Jordan"
    r = runner.invoke(app, ["evaluate", "--edit", str(tmp_path / "missing.safetensors"), "--model", folder])
    assert r.exit_code == 2 and "missing" in r.output


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


# --------------------------------------------------------------------------- edit --method --requests FILE


def _write(path, data) -> str:
    import json

    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


OUR_RECORDS = [
    {"id": "a", "prompt": "{} plays the sport of", "subject": "Michael Jordan", "target_new": "soccer",
     "target_true": "basketball", "paraphrases": ["Michael Jordan is a professional"],
     "neighbours": ["Kobe Bryant plays the sport of"], "relation": "P641"},
    {"prompt": "The {} is in downtown", "subject": "Space Needle", "target_new": "Paris"},
]

COUNTERFACT_RECORDS = [
    {"case_id": 0, "requested_rewrite": {"prompt": "{} plays the sport of", "relation_id": "P641",
                                         "subject": "Michael Jordan", "target_new": {"str": "tennis", "id": "Q1"},
                                         "target_true": {"str": "basketball", "id": "Q2"}},
     "paraphrase_prompts": ["Michael Jordan is a professional"],
     "neighborhood_prompts": ["Kobe Bryant plays the sport of"]},
    {"case_id": 1, "requested_rewrite": {"prompt": "The {} is in downtown", "subject": "Space Needle",
                                         "target_new": {"str": "Paris"}, "target_true": {"str": "Seattle"}},
     "paraphrase_prompts": [], "neighborhood_prompts": []},
]


def test_parse_layers_forms_and_bad_forms():
    from factscope.app.cli import parse_layers

    assert parse_layers("3-7") == [3, 4, 5, 6, 7]
    assert parse_layers("3,5,7") == [3, 5, 7]
    assert parse_layers("6") == [6]
    assert parse_layers("7,2-3, 3") == [2, 3, 7]  # mixed, sorted, no duplicates
    for bad, said in (("", "empty"), ("a", "'a'"), ("7-3", "write 3-7"), ("3-", "'3-'"), ("-1", "non-negative"),
                      ("3,,4", "bad part ''"), ("1.5", "'1.5'"), ("3-4-5", "'3-4-5'")):
        with pytest.raises(ValueError, match="--layers") as e:
            parse_layers(bad)
        assert said in str(e.value)


def test_read_requests_our_format_and_counterfact(tmp_path):
    from factscope.app.request_files import read_requests
    from factscope.datasets import load_counterfact

    ours, fmt = read_requests(_write(tmp_path / "ours.json", OUR_RECORDS))
    assert fmt == "factscope" and len(ours) == 2
    assert ours[0].subject == "Michael Jordan" and ours[0].target_true == "basketball"
    assert ours[0].paraphrases == ("Michael Jordan is a professional",) and ours[0].relation == "P641"
    assert ours[1].target_true is None and ours[1].neighbours == ()
    wrapped, _ = read_requests(_write(tmp_path / "wrapped.json", {"version": 1, "facts": OUR_RECORDS}), limit=1)
    assert wrapped == ours[:1]
    path = _write(tmp_path / "cf.json", COUNTERFACT_RECORDS)
    cf, fmt = read_requests(path)
    assert fmt == "CounterFact" and cf == load_counterfact(path)
    assert cf[0].target_new == "tennis" and cf[0].neighbours == ("Kobe Bryant plays the sport of",)
    assert cf[0].relation == "P641"


def test_read_requests_errors_name_the_file_and_record(tmp_path):
    from factscope.app.request_files import read_requests

    cases = [
        (tmp_path / "missing.json", "no such file"),
        (tmp_path / "bad.json", "not valid JSON"),
        (_write(tmp_path / "empty.json", []), "empty"),
        (_write(tmp_path / "empty_facts.json", {"facts": []}), "empty"),
        (_write(tmp_path / "scalar.json", 3), "expected a JSON list"),
        (_write(tmp_path / "nofield.json", [OUR_RECORDS[0], {"prompt": "{} is", "subject": "X"}]),
         "record 1 (factscope format): missing field(s) 'target_new'"),
        (_write(tmp_path / "template.json", [{"prompt": "X is", "subject": "X", "target_new": "y"}]),
         "record 0 (factscope format)"),
        (_write(tmp_path / "notobj.json", [OUR_RECORDS[0], "text"]), "record 1: expected a JSON object"),
        (_write(tmp_path / "cfbad.json", [{"requested_rewrite": {"prompt": "{} is", "subject": "X"}}]),
         "record 0 (CounterFact format): missing field 'target_new'"),
    ]
    (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
    for path, said in cases:
        with pytest.raises(ValueError) as e:
            read_requests(path)
        assert str(path) in str(e.value) and said in str(e.value), str(e.value)


def test_edit_command_memit_from_file_writes_a_loadable_edit(tiny_folder, tmp_path, monkeypatch):
    from factscope.edit import Edit

    folder = str(tiny_folder("gemma3"))
    monkeypatch.setenv("FACTSCOPE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests = _write(tmp_path / "cf.json", COUNTERFACT_RECORDS)
    out = tmp_path / "out" / "memit.safetensors"
    r = runner.invoke(app, ["edit", "--method", "memit", "--requests", requests, "--layers", "1-2", "--steps", "3",
                            "--corpus", "model", "--n-tokens", "1024", "--no-progress", "--save", str(out),
                            "--model", folder])
    assert r.exit_code == 0, r.output
    assert "read 2 request(s)" in r.output and "(CounterFact format)" in r.output
    assert "MEMIT: editing the MLPs at layers [1, 2]" in r.output
    assert "Michael Jordan: basketball -> tennis" in r.output and "Space Needle: Seattle -> Paris" in r.output
    assert "of 2 request(s) now answered with target_new" in r.output
    assert "layer  1" in r.output and "layer  2" in r.output
    assert out.is_file() and (tmp_path / "out" / "memit.safetensors.json").is_file()
    assert f"wrote {out} and {out}.json" in r.output
    e = Edit.load(out, model=load_model(folder))
    assert e.method == "memit" and e.layers == (1, 2) and e.info["layers"] == [1, 2]
    assert [q.target_new for q in e.requests] == ["tennis", "Paris"]


def test_edit_command_rome_applies_several_requests_in_sequence(tiny_folder, tmp_path, monkeypatch):
    from factscope.edit import Edit

    folder = str(tiny_folder("gemma3"))
    monkeypatch.setenv("FACTSCOPE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests = _write(tmp_path / "ours.json", {"facts": OUR_RECORDS})
    out = tmp_path / "rome.safetensors"
    r = runner.invoke(app, ["edit", "--method", "rome", "--requests", requests, "--layers", "1", "--steps", "2",
                            "--corpus", "model", "--n-tokens", "1024", "--no-progress", "--save", str(out),
                            "--model", folder])
    assert r.exit_code == 0, r.output
    assert "ROME: editing the MLP at layer 1; 2 requests applied one after another" in r.output
    assert "Space Needle: ? -> Paris" in r.output  # no target_true in the record
    e = Edit.load(out)
    assert e.method == "compose(rome, rome)" and e.layers == (1,) and len(e.requests) == 2
    # the model was reverted before the summary and the save: the composed edit applies to the unedited model
    Edit.load(out, model=load_model(folder))


def test_edit_command_uses_the_tuned_budget_unless_paper(tiny_folder, tmp_path, monkeypatch):
    from factscope.edit import Edit, ROMEConfig

    folder = str(tiny_folder("gemma3"))
    monkeypatch.setenv("FACTSCOPE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests = _write(tmp_path / "ours.json", {"facts": OUR_RECORDS[:1]})
    got = {}
    for flag in ([], ["--paper"]):
        out = tmp_path / f"rome{len(flag)}.safetensors"
        r = runner.invoke(app, ["edit", "--method", "rome", "--requests", requests, "--layers", "1", "--steps", "2",
                                "--corpus", "model", "--n-tokens", "1024", "--no-progress", "--save", str(out),
                                "--model", folder, *flag])
        assert r.exit_code == 0, r.output
        got[bool(flag)] = (Edit.load(out).config, r.output)
    model = load_model(folder)
    tuned, paper = ROMEConfig.for_model(model), ROMEConfig.paper()
    assert got[False][0]["v_lr"] == tuned.v_lr != paper.v_lr and got[True][0]["v_lr"] == paper.v_lr
    assert got[False][0]["early_stop_loss"] == tuned.early_stop_loss and got[True][0]["clamp_norm_factor"] == 4.0
    assert "config: custom" in got[False][1]  # --steps/--corpus change the tuned config; the line says so


def test_edit_command_bad_input_exits_with_message(tiny_folder, tmp_path):
    folder = str(tiny_folder("gemma3"))
    good = _write(tmp_path / "ours.json", OUR_RECORDS)
    cases = [
        (["--requests", str(tmp_path / "nope.json")], "nope.json: no such file"),
        (["--requests", _write(tmp_path / "empty.json", [])], "empty"),
        (["--method", "ft-l", "--requests", good], "FT-L needs --layers with one layer"),
        (["--method", "rome", "--requests", good, "--layers", "1-2"], "ROME rewrites one MLP layer"),
        (["--method", "kn", "--requests", good, "--layers", "1"], "--layers does not apply"),
        (["--method", "memit", "--requests", good, "--layers", "2-1"], "write 1-2"),
        (["--method", "memit", "--requests", good, "--layers", "x"], "bad part 'x'"),
        (["--method", "bogus", "--requests", good], "expected --method to be one of"),
        (["--requests", good, "--prompt", "{} is", "--subject", "X", "--target-new", "y"], "not both"),
        (["--prompt", "{} is", "--subject", "X"], "missing --target-new"),
        ([], "expected requests"),
    ]
    for args, said in cases:
        r = runner.invoke(app, ["edit", *args, "--model", folder])
        assert r.exit_code == 2 and said in r.output, (args, r.output)
    r = runner.invoke(app, ["edit", "--method", "memit", "--requests", good, "--layers", "1-99", "--model", folder])
    assert r.exit_code == 2 and "layer" in r.output


def test_probe_spillover_command(tiny_folder, tmp_path, monkeypatch):
    folder = str(tiny_folder("llama"))
    monkeypatch.setenv("FACTSCOPE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = runner.invoke(app, ["probe", "spillover", "--group", "michael_jordan_vs_bulls_and_peers", "--layer", "1",
                            "--out", str(tmp_path / "spill.png"), "--csv", str(tmp_path / "spill.csv"),
                            "--no-progress", "--model", folder])
    assert r.exit_code == 0, r.output
    assert "verdict" in r.output.lower() or "trend" in r.output
    assert "related" in r.output and (tmp_path / "spill.png").stat().st_size > 1000
    import pandas as pd

    df = pd.read_csv(tmp_path / "spill.csv")
    assert {"category", "delta_logp", "kl", "cos_white", "cos_raw"} <= set(df.columns)
    r = runner.invoke(app, ["probe", "spillover", "--group", "nope", "--model", folder])
    assert r.exit_code == 2 and "president_vs_secretary_of_state" in r.output
    r = runner.invoke(app, ["probe", "spillover", "--editor", "magic", "--model", folder])
    assert r.exit_code == 2 and "rome" in r.output


def test_probe_localization_command(tiny_folder, tmp_path, monkeypatch):
    folder = str(tiny_folder("llama"))
    monkeypatch.setenv("FACTSCOPE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = runner.invoke(app, ["probe", "localization", "--limit", "3", "--layers", "0,2", "--editor", "finetune",
                            "--steps", "2", "--samples", "2", "--window", "2", "--out", str(tmp_path / "loc.png"),
                            "--csv", str(tmp_path / "loc.csv"), "--no-progress", "--model", folder])
    assert r.exit_code == 0, r.output
    assert "3 fact(s) × 2 layer(s) = 6 finetune edits" in r.output and "R²" in r.output
    assert (tmp_path / "loc.png").stat().st_size > 1000
    import pandas as pd

    df = pd.read_csv(tmp_path / "loc.csv")
    assert len(df) == 6 and set(df["layer"]) == {0, 2}
    r = runner.invoke(app, ["probe", "localization", "--editor", "kn", "--model", folder])
    assert r.exit_code == 2 and "rome" in r.output
