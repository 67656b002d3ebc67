"""Tests for `factscope.datasets`: the CounterFact / zsRE / known_1000 loaders and the built-in set.

Everything runs on small files written under ``tmp_path``; nothing touches the network or a model.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

import factscope.datasets as fds
import factscope.models
from factscope.datasets import (
    DatasetNotAvailableError,
    FactGroup,
    builtin_facts,
    builtin_groups,
    load_counterfact,
    load_known,
    load_zsre,
)
from factscope.facts import EditRequest, Fact

# --------------------------------------------------------------------------- raw records (official formats)

COUNTERFACT = [
    {
        "case_id": 0,
        "pararel_idx": 2796,
        "requested_rewrite": {
            "prompt": "The mother tongue of {} is",
            "relation_id": "P103",
            "target_new": {"str": "English", "id": "Q1860"},
            "target_true": {"str": "French", "id": "Q150"},
            "subject": "Danielle Darrieux",
        },
        "paraphrase_prompts": [
            "Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
            "An album was recorded for Capitol Nashville but never released. Danielle Darrieux spoke the language",
        ],
        "neighborhood_prompts": [
            "The mother tongue of Léon Blum is",
            "The native language of Montesquieu is",
            "François Bayrou, a native",
        ],
        "attribute_prompts": [
            "J. R. R. Tolkien is a native speaker of",
            "The mother tongue of Douglas Adams is",
        ],
        "generation_prompts": [
            "Danielle Darrieux's mother tongue is",
            "Where Danielle Darrieux is from, people speak the language of",
        ],
    },
    {
        "case_id": 1,
        "pararel_idx": 2101,
        "requested_rewrite": {
            "prompt": "{} is affiliated with the religion",
            "relation_id": "P140",
            "target_new": {"str": "Christianity", "id": "Q5043"},
            "target_true": {"str": "Islam", "id": "Q432"},
            "subject": "Edwin of Northumbria",
        },
        "paraphrase_prompts": [
            "It is the third such commemoration. Edwin of Northumbria is follower of",
            "Edwin of Northumbria follows the religion of",
        ],
        "neighborhood_prompts": [
            "Muhammad al-Nafs al-Zakiyya follows the religion of",
            "Al-Hasan ibn Ali is affiliated with the religion",
        ],
        "attribute_prompts": ["Pope Gregory XIII is affiliated with the religion"],
        "generation_prompts": ["Edwin of Northumbria's religious values strongly emphasize"],
    },
    {
        "case_id": 2,
        "pararel_idx": 4434,
        "requested_rewrite": {
            "prompt": "{}, which is located in",
            "relation_id": "P30",
            "target_new": {"str": "Europe", "id": "Q46"},
            "target_true": {"str": "Antarctica", "id": "Q51"},
            "subject": "Toko Glacier",
        },
        "paraphrase_prompts": [
            "Toko Glacier is located in",
            "Toko Glacier belongs to the continent of",
        ],
        "neighborhood_prompts": [
            "Taylor Glacier, which is located in",
            "Beardmore Glacier is located in",
        ],
        "attribute_prompts": ["Lyon, which is located in"],
        "generation_prompts": ["People around Toko Glacier speak the language of"],
    },
]

ZSRE = [
    {
        "subject": "Watts Humphrey",
        "src": "What university did Watts Humphrey attend?",
        "pred": "Trinity College",
        "rephrase": "What university did Watts Humphrey take part in?",
        "alt": "University of Michigan",
        "answers": ["Illinois Institute of Technology"],
        "loc": "nq question: who played desmond doss father in hacksaw ridge",
        "loc_ans": "Hugo Weaving",
        "cond": "Trinity College >> University of Michigan || What university did Watts Humphrey attend?",
    },
    {
        "subject": "Ramalinaceae",
        "src": "Which family does Ramalinaceae belong to?",
        "pred": "Lecanorales",
        "rephrase": "What family are Ramalinaceae?",
        "alt": "Lecanorales",
        "answers": ["Lecanorales"],  # equal to alt: the true target is unknown
        "loc": "nq question: types of skiing in the winter olympics 2018",
        "loc_ans": "Downhill",
        "cond": "Lecanorales >> Lecanorales || Which family does Ramalinaceae belong to?",
    },
    {
        "subject": "Kim Dong-hwa",
        "src": "Which position does Kim Dong-hwa play?",
        "pred": "midfielder",
        "rephrase": "What position does Kim Dong-hwa play?",
        "alt": "goalkeeper",
        "answers": ["defender", "midfielder"],
        "loc": "nq question: where does the last name hansen come from",
        "loc_ans": "Scandinavian",
        "cond": "midfielder >> goalkeeper || Which position does Kim Dong-hwa play?",
    },
]

KNOWN = [
    {
        "known_id": 0,
        "subject": "Vinson Massif",
        "attribute": "Antarctica",
        "template": "{} is located in the continent of",
        "prediction": " Antarctica. It is the highest mountain in Antarctica",
        "prompt": "Vinson Massif is located in the continent of",
        "relation_id": "P30",
    },
    {
        "known_id": 1,
        "subject": "Beats Music",
        "attribute": "Apple",
        "template": "{} is owned by",
        "prediction": " Apple Inc. The company",
        "prompt": "Beats Music is owned by",
        "relation_id": "P127",
    },
    {
        "known_id": 2,
        "subject": "Audible.com",
        "attribute": "Amazon",
        "template": "{} is owned by",
        "prediction": " Amazon.com, Inc.",
        "prompt": "Audible.com is owned by",
        "relation_id": "P127",
    },
]


def _write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def _write_jsonl(path: Path, records) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines[:1] + [""] + lines[1:]) + "\n", encoding="utf-8")  # a blank line too
    return path


def _expected_counterfact(r: dict) -> EditRequest:
    """Re-derived from the raw record as the loader's docstring describes the mapping."""
    rw = r["requested_rewrite"]
    return EditRequest(
        prompt=rw["prompt"],
        subject=rw["subject"],
        target_new=rw["target_new"]["str"],
        target_true=rw["target_true"]["str"],
        paraphrases=tuple(r["paraphrase_prompts"]),
        neighbours=tuple(r["neighborhood_prompts"]),
        relation=rw["relation_id"],
    )


def _expected_zsre(r: dict) -> EditRequest:
    return EditRequest(
        prompt=r["src"].replace(r["subject"], "{}"),
        subject=r["subject"],
        target_new=r["alt"],
        target_true=None if r["answers"][0] == r["alt"] else r["answers"][0],
        paraphrases=(r["rephrase"],),
        locality=((r["loc"], r["loc_ans"]),),
    )


# --------------------------------------------------------------------------- CounterFact


def test_counterfact_official_json_fields(tmp_path):
    got = load_counterfact(_write_json(tmp_path / "counterfact.json", COUNTERFACT))
    assert len(got) == len(COUNTERFACT)
    for req, raw in zip(got, COUNTERFACT):
        rw = raw["requested_rewrite"]
        assert isinstance(req, EditRequest)
        assert req.prompt == rw["prompt"]
        assert req.subject == rw["subject"]
        assert req.target_new == rw["target_new"]["str"]
        assert req.target_true == rw["target_true"]["str"]
        assert req.relation == rw["relation_id"]
        assert req.paraphrases == tuple(raw["paraphrase_prompts"])
        assert req.neighbours == tuple(raw["neighborhood_prompts"])
        assert req.text == rw["prompt"].replace("{}", rw["subject"])
        # attribute / generation prompts are not neighbours, and CounterFact has no locality pairs
        assert not set(raw["attribute_prompts"]) & set(req.neighbours + req.paraphrases)
        assert not set(raw["generation_prompts"]) & set(req.neighbours + req.paraphrases)
        assert req.locality == () and req.portability == ()
        assert req == _expected_counterfact(raw)


def test_counterfact_accepts_str_path_and_wrapped_list(tmp_path):
    p = tmp_path / "cf.json"
    p.write_text(json.dumps({"data": COUNTERFACT}), encoding="utf-8")
    assert load_counterfact(str(p)) == [_expected_counterfact(r) for r in COUNTERFACT]


def test_counterfact_object_with_several_lists_is_rejected(tmp_path):
    p = tmp_path / "cf.json"
    p.write_text(json.dumps({"a": COUNTERFACT, "b": COUNTERFACT}), encoding="utf-8")
    with pytest.raises(ValueError, match="list of records"):
        load_counterfact(p)


def test_counterfact_jsonl_matches_json(tmp_path):
    from_jsonl = load_counterfact(_write_jsonl(tmp_path / "counterfact.jsonl", COUNTERFACT))
    from_json = load_counterfact(_write_json(tmp_path / "counterfact.json", COUNTERFACT))
    assert from_jsonl == from_json == [_expected_counterfact(r) for r in COUNTERFACT]


def test_counterfact_strips_whitespace_around_fields(tmp_path):
    raw = copy.deepcopy(COUNTERFACT[0])
    rw = raw["requested_rewrite"]
    rw["prompt"] += " "
    rw["subject"] = " " + rw["subject"] + " "
    rw["target_new"]["str"] = " " + rw["target_new"]["str"]
    rw["target_true"]["str"] = " " + rw["target_true"]["str"]
    raw["paraphrase_prompts"] = [p + " " for p in raw["paraphrase_prompts"]]
    (req,) = load_counterfact(_write_json(tmp_path / "cf.json", [raw]))
    assert req == _expected_counterfact(COUNTERFACT[0])


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 10])
def test_counterfact_limit(tmp_path, limit):
    got = load_counterfact(_write_json(tmp_path / "cf.json", COUNTERFACT), limit=limit)
    assert got == [_expected_counterfact(r) for r in COUNTERFACT[:limit]]


def _with_bad_middle_record():
    records = copy.deepcopy(COUNTERFACT)
    rw = records[1]["requested_rewrite"]
    rw["prompt"] = rw["prompt"].replace("{}", rw["subject"])  # no {} left
    return records


def test_counterfact_malformed_record_names_its_index(tmp_path):
    records = _with_bad_middle_record()
    bad_prompt = records[1]["requested_rewrite"]["prompt"]
    with pytest.raises(ValueError) as ei:
        load_counterfact(_write_json(tmp_path / "cf.json", records))
    msg = str(ei.value)
    assert "record 1" in msg
    assert "record 0" not in msg and "record 2" not in msg
    assert bad_prompt in msg  # the underlying complaint travels along
    assert "on_error='skip'" in msg


def test_counterfact_missing_key_names_its_index(tmp_path):
    records = copy.deepcopy(COUNTERFACT)
    del records[2]["requested_rewrite"]["subject"]
    with pytest.raises(ValueError, match="record 2"):
        load_counterfact(_write_json(tmp_path / "cf.json", records))


def test_counterfact_skip_drops_malformed_with_warning(tmp_path):
    records = _with_bad_middle_record()
    with pytest.warns(UserWarning, match="skipped 1 record") as rec:
        got = load_counterfact(_write_json(tmp_path / "cf.json", records), on_error="skip")
    assert got == [_expected_counterfact(records[0]), _expected_counterfact(records[2])]
    (w,) = [w for w in rec if "skipped" in str(w.message)]
    assert "record 1" in str(w.message)
    assert Path(w.filename).name == Path(__file__).name  # points at the caller


def test_counterfact_limit_counts_kept_records_when_skipping(tmp_path):
    records = _with_bad_middle_record()
    with pytest.warns(UserWarning, match="skipped 1"):
        got = load_counterfact(_write_json(tmp_path / "cf.json", records), on_error="skip", limit=2)
    assert got == [_expected_counterfact(records[0]), _expected_counterfact(records[2])]


def test_bad_on_error_value(tmp_path):
    with pytest.raises(ValueError) as ei:
        load_counterfact(_write_json(tmp_path / "cf.json", COUNTERFACT), on_error="ignore")
    assert "'ignore'" in str(ei.value)


# --------------------------------------------------------------------------- zsRE


@pytest.mark.parametrize("suffix, writer", [(".json", _write_json), (".jsonl", _write_jsonl)])
def test_zsre_fields(tmp_path, suffix, writer):
    got = load_zsre(writer(tmp_path / f"zsre{suffix}", ZSRE))
    assert len(got) == len(ZSRE)
    for req, raw in zip(got, ZSRE):
        assert req.subject == raw["subject"]
        assert req.prompt == raw["src"].replace(raw["subject"], "{}")
        assert req.prompt.count("{}") == 1
        assert req.text == raw["src"]
        assert req.target_new == raw["alt"]
        assert req.target_true == (None if raw["answers"][0] == raw["alt"] else raw["answers"][0])
        assert req.paraphrases == (raw["rephrase"],)
        assert req.neighbours == ()
        assert req.locality == ((raw["loc"], raw["loc_ans"]),)
        assert req == _expected_zsre(raw)
    # the record whose only answer equals alt has no known true target
    assert [r.target_true for r in got] == ["Illinois Institute of Technology", None, "defender"]


def test_zsre_subject_not_in_question_errors(tmp_path):
    records = copy.deepcopy(ZSRE)
    records[2]["subject"] = "Park Ji-sung"
    with pytest.raises(ValueError) as ei:
        load_zsre(_write_json(tmp_path / "zsre.json", records))
    msg = str(ei.value)
    assert "record 2" in msg
    assert "Park Ji-sung" in msg and records[2]["src"] in msg

    with pytest.warns(UserWarning, match="skipped 1"):
        got = load_zsre(_write_json(tmp_path / "zsre.json", records), on_error="skip")
    assert got == [_expected_zsre(r) for r in ZSRE[:2]]


def test_zsre_limit(tmp_path):
    assert load_zsre(_write_json(tmp_path / "z.json", ZSRE), limit=1) == [_expected_zsre(ZSRE[0])]


# --------------------------------------------------------------------------- known_1000


def test_known_fields(tmp_path):
    got = load_known(_write_json(tmp_path / "known_1000.json", KNOWN))
    assert len(got) == len(KNOWN)
    for f, raw in zip(got, KNOWN):
        assert isinstance(f, Fact)
        assert f == Fact(raw["template"], raw["subject"], raw["attribute"], raw["relation_id"])
        assert f.text == raw["template"].replace("{}", raw["subject"])


def test_known_without_template_uses_prompt(tmp_path):
    raw = {k: v for k, v in KNOWN[1].items() if k != "template"}
    (f,) = load_known(_write_json(tmp_path / "k.json", [raw]))
    assert f.text == raw["prompt"]
    assert f.prompt == raw["prompt"].replace(raw["subject"], "{}")
    assert (f.subject, f.target, f.relation) == (raw["subject"], raw["attribute"], raw["relation_id"])


def test_known_limit_and_bad_record(tmp_path):
    assert len(load_known(_write_json(tmp_path / "k.json", KNOWN), limit=2)) == 2
    records = copy.deepcopy(KNOWN)
    records[0]["attribute"] = ""
    with pytest.raises(ValueError, match="record 0"):
        load_known(_write_json(tmp_path / "k.json", records))


# --------------------------------------------------------------------------- missing files, hub names


@pytest.mark.parametrize("loader", [load_counterfact, load_zsre, load_known])
@pytest.mark.parametrize("as_str", [False, True])
def test_missing_file(tmp_path, loader, as_str):
    path = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError) as ei:
        loader(str(path) if as_str else path)
    assert "nope.json" in str(ei.value)


def _no_network(monkeypatch):
    """Make any attempt to reach the hub fail the test instead of hanging."""
    try:
        import datasets
    except ImportError:  # then the loaders cannot reach the hub at all
        return

    def boom(*a, **k):
        raise AssertionError("tried to download a dataset")

    monkeypatch.setattr(datasets, "load_dataset", boom)


@pytest.mark.parametrize("loader", [load_counterfact, load_zsre, load_known])
@pytest.mark.parametrize("value", ["1", "true"])
def test_hub_name_offline_env(monkeypatch, loader, value):
    _no_network(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)

    def reachable(*a, **k):
        raise AssertionError("probed the hub although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(factscope.models, "hub_reachable", reachable)
    t0 = time.perf_counter()
    with pytest.raises(DatasetNotAvailableError) as ei:
        loader("azhx/counterfact")
    assert time.perf_counter() - t0 < 5
    msg = str(ei.value)
    assert "'azhx/counterfact'" in msg
    assert "HF_HUB_OFFLINE is set" in msg


@pytest.mark.parametrize("loader", [load_counterfact, load_zsre, load_known])
@pytest.mark.parametrize("env", [None, "0", ""])
def test_hub_name_unreachable(monkeypatch, loader, env):
    pytest.importorskip("datasets")  # without it the loader fails before probing the hub
    _no_network(monkeypatch)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    if env is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", env)  # set but meaning "online"
    calls = []
    monkeypatch.setattr(factscope.models, "hub_reachable", lambda *a, **k: calls.append(1) or False)
    t0 = time.perf_counter()
    with pytest.raises(DatasetNotAvailableError) as ei:
        loader("azhx/counterfact", split="train")
    assert time.perf_counter() - t0 < 5
    assert calls == [1]
    msg = str(ei.value)
    assert "'azhx/counterfact'" in msg
    assert "cannot be reached" in msg
    assert "HF_HUB_OFFLINE is set" not in msg


def test_dataset_not_available_is_runtime_error():
    assert issubclass(DatasetNotAvailableError, RuntimeError)


# --------------------------------------------------------------------------- built-in set

BUILTIN_JSON = Path(fds.__file__).parent / "data" / "builtin_facts.json"
needs_builtin = pytest.mark.skipif(not BUILTIN_JSON.is_file(), reason=f"{BUILTIN_JSON} not written yet")


@pytest.fixture(scope="module")
def raw_builtin():
    return json.loads(BUILTIN_JSON.read_text(encoding="utf-8"))


@needs_builtin
def test_builtin_top_level_schema(raw_builtin):
    for key in ("version", "verified_on", "facts", "groups"):
        assert key in raw_builtin


@needs_builtin
def test_builtin_facts_mirror_the_json(raw_builtin):
    facts = builtin_facts()
    assert len(facts) == len(raw_builtin["facts"])
    for req, r in zip(facts, raw_builtin["facts"]):
        assert isinstance(req, EditRequest)
        assert req == EditRequest(
            prompt=r["prompt"], subject=r["subject"], target_new=r["target_new"], target_true=r["target_true"],
            paraphrases=tuple(r["paraphrases"]), neighbours=tuple(r["neighbours"]), relation=r["relation"],
        )
        assert r["relation_name"].strip()


@needs_builtin
def test_builtin_facts_size_and_coverage(raw_builtin):
    facts = builtin_facts()
    assert len(facts) >= 60
    assert len({f.relation for f in facts}) >= 8
    ids = [r["id"] for r in raw_builtin["facts"]]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


@needs_builtin
def test_builtin_facts_each_record(raw_builtin):
    problems = []
    for r, f in zip(raw_builtin["facts"], builtin_facts()):
        where = r["id"]
        if len(f.paraphrases) < 2:
            problems.append(f"{where}: {len(f.paraphrases)} paraphrases")
        if len(f.neighbours) < 2:
            problems.append(f"{where}: {len(f.neighbours)} neighbours")
        if f.subject not in f.text:
            problems.append(f"{where}: subject not in {f.text!r}")
        problems += [f"{where}: subject not in paraphrase {p!r}" for p in f.paraphrases if f.subject not in p]
        problems += [f"{where}: subject in neighbour {n!r}" for n in f.neighbours if f.subject in n]
        if f.target_true is None or f.target_new == f.target_true:
            problems.append(f"{where}: target_new {f.target_new!r} vs target_true {f.target_true!r}")
    assert not problems, "\n".join(problems)


@needs_builtin
def test_builtin_groups_structure(raw_builtin):
    groups = builtin_groups()
    assert len(groups) >= 4
    assert len(groups) == len(raw_builtin["groups"])
    assert len({g.name for g in groups}) == len(groups)
    for g, raw in zip(groups, raw_builtin["groups"]):
        assert isinstance(g, FactGroup)
        assert (g.name, g.description) == (raw["name"], raw["description"])
        assert len(g.same_subject) >= 2, g.name
        assert len(g.related) >= 3, g.name
        assert all(isinstance(f, Fact) for f in g.same_subject + g.related)
        assert [(f.prompt, f.subject, f.target) for f in g.same_subject] == [
            (x["prompt"], x["subject"], x["target"]) for x in raw["same_subject"]]
        assert [(f.prompt, f.subject, f.target) for f in g.related] == [
            (x["prompt"], x["subject"], x["target"]) for x in raw["related"]]


@needs_builtin
def test_builtin_groups_edits_are_builtin_facts(raw_builtin):
    by_id = dict(zip((r["id"] for r in raw_builtin["facts"]), builtin_facts()))
    for g, raw in zip(builtin_groups(), raw_builtin["groups"]):
        assert raw["edit"] in by_id, f"group {g.name!r} edits unknown fact {raw['edit']!r}"
        assert g.edit == by_id[raw["edit"]]


@needs_builtin
def test_builtin_president_vs_secretary_of_state_group():
    matches = [
        g for g in builtin_groups()
        if ("President" in g.edit.subject or "President" in g.edit.prompt)
        and any("Secretary of State" in f.subject for f in g.related)
    ]
    assert matches, [(g.name, g.edit.subject, [f.subject for f in g.related]) for g in builtin_groups()]


@pytest.mark.skipif(not BUILTIN_JSON.exists(), reason="built-in facts not written yet")
def test_builtin_fact_by_id():
    import json

    from factscope import builtin_fact, builtin_facts

    ids = [r["id"] for r in json.loads(BUILTIN_JSON.read_text())["facts"]]
    assert builtin_fact(ids[3]) == builtin_facts()[3]
    with pytest.raises(KeyError, match="no built-in fact 'nope'"):
        builtin_fact("nope")
