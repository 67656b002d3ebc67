"""Tests for `factscope.facts`: the `Fact` and `EditRequest` records and their validation."""

from __future__ import annotations

import dataclasses

import pytest

from factscope.facts import EditRequest, Fact

PROMPT = "The {} is in downtown"
SUBJECT = "Space Needle"


def _request(**changes):
    kw = dict(
        prompt="The mother tongue of {} is",
        subject="Danielle Darrieux",
        target_new="English",
        target_true="French",
        paraphrases=["Danielle Darrieux spoke the language", "Danielle Darrieux, a native"],
        neighbours=["The mother tongue of Léon Blum is", "Michel Rocard is a native speaker of"],
        relation="P103",
        locality=[("nq question: who wrote hamlet", "Shakespeare")],
        portability=[("The official language of Danielle Darrieux's country is", "English")],
    )
    kw.update(changes)
    return EditRequest(**kw)


# --------------------------------------------------------------------------- valid records


def test_fact_construction_and_text():
    f = Fact(PROMPT, SUBJECT, "Seattle", relation="P131")
    assert (f.prompt, f.subject, f.target, f.relation) == (PROMPT, SUBJECT, "Seattle", "P131")
    assert f.text == PROMPT.replace("{}", SUBJECT)
    assert f.text.startswith("The Space Needle")


def test_fact_defaults():
    f = Fact(PROMPT, SUBJECT)
    assert f.target is None
    assert f.relation == ""


def test_edit_request_fields_text_and_fact_round_trip():
    raw = dict(
        prompt="The mother tongue of {} is",
        subject="Danielle Darrieux",
        target_new="English",
        target_true="French",
        relation="P103",
    )
    r = EditRequest(**raw)
    for k, v in raw.items():
        assert getattr(r, k) == v
    assert r.text == raw["prompt"].replace("{}", raw["subject"])
    assert (r.paraphrases, r.neighbours, r.locality, r.portability) == ((), (), (), ())

    f = r.fact
    assert isinstance(f, Fact)
    assert f == Fact(raw["prompt"], raw["subject"], raw["target_true"], raw["relation"])
    assert f.text == r.text
    assert f.target == r.target_true


def test_edit_request_fact_without_target_true():
    r = EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English")
    assert r.target_true is None
    assert r.fact.target is None


def test_sequences_become_tuples_and_records_are_hashable():
    paraphrases = ["Danielle Darrieux spoke the language", "Danielle Darrieux, a native"]
    neighbours = ["The mother tongue of Léon Blum is"]
    locality = [["nq question: who wrote hamlet", "Shakespeare"]]
    r = _request(paraphrases=paraphrases, neighbours=neighbours, locality=locality, portability=iter(()))
    assert r.paraphrases == tuple(paraphrases) and isinstance(r.paraphrases, tuple)
    assert r.neighbours == tuple(neighbours) and isinstance(r.neighbours, tuple)
    assert r.locality == tuple(tuple(p) for p in locality)
    assert all(isinstance(p, tuple) for p in r.locality)
    assert r.portability == ()
    # mutating the caller's list afterwards does not touch the record
    paraphrases.append("Danielle Darrieux speaks")
    assert len(r.paraphrases) == 2

    # equal records hash equally, so they work as dict keys / set members
    twin = _request(paraphrases=tuple(r.paraphrases), neighbours=tuple(neighbours), locality=locality,
                    portability=())
    assert twin == r
    assert hash(twin) == hash(r)
    assert len({r, twin}) == 1
    f = Fact(PROMPT, SUBJECT, "Seattle")
    assert {f: 1}[Fact(PROMPT, SUBJECT, "Seattle")] == 1


@pytest.mark.parametrize(
    "obj, field_name, value",
    [
        (Fact(PROMPT, SUBJECT, "Seattle"), "target", "Portland"),
        (Fact(PROMPT, SUBJECT, "Seattle"), "subject", "Eiffel Tower"),
        (EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"), "target_new", "Dutch"),
        (EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"), "paraphrases", ()),
    ],
)
def test_records_are_frozen(obj, field_name, value):
    before = getattr(obj, field_name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, field_name, value)
    assert getattr(obj, field_name) == before


def test_replace_makes_a_validated_copy():
    r = _request()
    r2 = r.replace(target_new="German")
    assert r2.target_new == "German" and r.target_new == "English"
    assert r2.paraphrases == r.paraphrases
    with pytest.raises(ValueError, match="differ"):
        r.replace(target_new=r.target_true)


# --------------------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("The Space Needle is in downtown", "exactly one"),  # no {}
        ("{} and {} are both in downtown", "exactly one"),  # two {}
        ("The {{}} is in downtown", "no braces other than"),  # stray braces around the slot
        ("The {} is in {city}", "no braces other than"),  # stray named field
        ("The {} is in downtown}", "no braces other than"),  # stray closing brace
        ("The {0} is in downtown", "exactly one"),  # positional field is not the slot
        ("The {} is in downtown ", "trailing whitespace"),
        ("The {} is in downtown\n", "trailing whitespace"),
        ("", "non-empty `prompt`"),
        ("   ", "non-empty `prompt`"),
    ],
)
@pytest.mark.parametrize("make", [
    lambda p: Fact(p, SUBJECT, "Seattle"),
    lambda p: EditRequest(p, SUBJECT, "Portland", "Seattle"),
], ids=["Fact", "EditRequest"])
def test_bad_prompt(make, prompt, expected):
    with pytest.raises(ValueError) as ei:
        make(prompt)
    msg = str(ei.value)
    assert expected in msg
    assert repr(prompt) in msg  # shows what arrived


@pytest.mark.parametrize(
    "subject, expected",
    [
        ("", "non-empty `subject`"),
        ("   ", "non-empty `subject`"),
        (" Space Needle", "without surrounding whitespace"),
        ("Space Needle ", "without surrounding whitespace"),
        ("\tSpace Needle", "without surrounding whitespace"),
    ],
)
@pytest.mark.parametrize("make", [
    lambda s: Fact(PROMPT, s, "Seattle"),
    lambda s: EditRequest(PROMPT, s, "Portland", "Seattle"),
], ids=["Fact", "EditRequest"])
def test_bad_subject(make, subject, expected):
    with pytest.raises(ValueError) as ei:
        make(subject)
    msg = str(ei.value)
    assert expected in msg
    assert repr(subject) in msg


@pytest.mark.parametrize(
    "make, bad, expected",
    [
        (lambda t: Fact(PROMPT, SUBJECT, t), "", "non-empty `target`"),
        (lambda t: Fact(PROMPT, SUBJECT, t), "  ", "non-empty `target`"),
        (lambda t: EditRequest(PROMPT, SUBJECT, t, "Seattle"), "", "non-empty `target_new`"),
        (lambda t: EditRequest(PROMPT, SUBJECT, t), " ", "non-empty `target_new`"),
        (lambda t: EditRequest(PROMPT, SUBJECT, "Portland", t), "", "non-empty `target_true`"),
        (lambda t: EditRequest(PROMPT, SUBJECT, "Seattle", "Seattle"), "Seattle", "differ"),
        (lambda t: EditRequest(PROMPT, SUBJECT, "Seattle", t), " Seattle", "without surrounding whitespace"),
        (lambda t: Fact(PROMPT, SUBJECT, t), " Paris", "without surrounding whitespace"),
        (lambda t: EditRequest(PROMPT, SUBJECT, t, "Paris"), "Rome ", "without surrounding whitespace"),
    ],
)
def test_bad_targets(make, bad, expected):
    with pytest.raises(ValueError) as ei:
        make(bad)
    msg = str(ei.value)
    assert expected in msg
    assert repr(bad) in msg


@pytest.mark.parametrize("name", ["paraphrases", "neighbours"])
@pytest.mark.parametrize(
    "value, exc, expected, shown",
    [
        ("Danielle Darrieux spoke the language", TypeError, "sequence of prompts",
         "Danielle Darrieux spoke the language"),
        (["ok prompt here", "The mother tongue of {} is"], ValueError, "without '{}'",
         "The mother tongue of {} is"),
        (["Danielle Darrieux, a native "], ValueError, "trailing whitespace", "Danielle Darrieux, a native "),
        (["fine", ""], ValueError, "non-empty", "''"),
        (["fine", 42], TypeError, "to be a str", "42"),
    ],
    ids=["single-str", "has-slot", "trailing-space", "empty", "not-str"],
)
def test_bad_full_prompts(name, value, exc, expected, shown):
    with pytest.raises(exc) as ei:
        _request(**{name: value})
    msg = str(ei.value)
    assert expected in msg
    assert name in msg
    assert shown in msg


@pytest.mark.parametrize("name", ["locality", "portability"])
@pytest.mark.parametrize(
    "value, exc, expected, shown",
    [
        ([("only a prompt",)], ValueError, "(prompt, answer) pair", "only a prompt"),
        ([("q", "a", "extra")], ValueError, "(prompt, answer) pair", "extra"),
        (["qa"], ValueError, "(prompt, answer) pair", "'qa'"),
        (("who wrote hamlet", "Shakespeare"), ValueError, "(prompt, answer) pair", "who wrote hamlet"),  # unwrapped
        ([("who wrote hamlet", "")], ValueError, "non-empty", "''"),
        ([("", "Shakespeare")], ValueError, "non-empty", "''"),
        ([("who wrote hamlet", 7)], TypeError, "to be a str", "7"),
    ],
    ids=["short", "long", "str-item", "unwrapped-pair", "empty-answer", "empty-prompt", "int-answer"],
)
def test_bad_pairs(name, value, exc, expected, shown):
    with pytest.raises(exc) as ei:
        _request(**{name: value})
    msg = str(ei.value)
    assert expected in msg
    assert name in msg
    assert shown in msg


def test_pair_that_is_not_a_sequence_is_reported():
    with pytest.raises((TypeError, ValueError)) as ei:
        _request(locality=[12345])
    msg = str(ei.value)
    assert "(prompt, answer) pair" in msg
    assert "12345" in msg
    for field in ("locality", "paraphrases"):
        with pytest.raises(TypeError, match="expected `" + field + "` to be a sequence") as ei:
            _request(**{field: None})
        assert "None" in str(ei.value)


@pytest.mark.parametrize(
    "make, shown",
    [
        (lambda: Fact(123, SUBJECT), "123"),
        (lambda: Fact(PROMPT, None), "None"),
        (lambda: Fact(PROMPT, SUBJECT, 3.5), "3.5"),
        (lambda: EditRequest(PROMPT, SUBJECT, ["Seattle"]), "['Seattle']"),
        (lambda: EditRequest(PROMPT, SUBJECT, "Portland", 99), "99"),
        (lambda: EditRequest(PROMPT, b"Space Needle", "Portland"), "b'Space Needle'"),
    ],
)
def test_wrong_types_raise_type_error(make, shown):
    with pytest.raises(TypeError) as ei:
        make()
    msg = str(ei.value)
    assert "to be a str" in msg
    assert shown in msg
