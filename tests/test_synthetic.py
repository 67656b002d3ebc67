"""Tests for `factscope.synthetic`: synthetic edit requests for benchmarks and tests at scale.

The checks are independent of the module's construction: subjects are compared against each other by
brute force over all their substrings, prompts are searched for the subject with ``str.find``, and
token spans come from `factscope.subject_span` (both its offset and its prefix method) on the tiny
models' tokenizers.
"""

from __future__ import annotations

import random

import pytest

from factscope.facts import EditRequest
from factscope.synthetic import (
    MAX_SYNTHETIC_REQUESTS,
    NEIGHBOUR_POOL,
    SYNTHETIC_RELATIONS,
    synthetic_requests,
)
from factscope.tokens import encode, subject_span, tokenizer_of

RELATIONS = {rel.id: rel for rel in SYNTHETIC_RELATIONS}


@pytest.fixture(scope="module")
def five_thousand() -> list[EditRequest]:
    return synthetic_requests(5000)


def _neighbour_subject(template: str, text: str) -> str:
    """The name that fills ``template`` to give ``text``."""
    head, tail = template.split("{}")
    assert text.startswith(head) and text.endswith(tail), (template, text)
    return text[len(head): len(text) - len(tail)]


def _key(req: EditRequest) -> tuple:
    """Everything about a request but its neighbours."""
    return req.subject, req.relation, req.prompt, req.target_true, req.target_new, req.paraphrases


# --------------------------------------------------------------------------- shape of the requests


def test_requests_are_distinct_and_well_formed(five_thousand):
    reqs = five_thousand
    assert len(reqs) == 5000
    assert len({r.subject for r in reqs}) == 5000
    assert len({(r.subject, r.relation) for r in reqs}) == 5000
    for r in reqs:
        assert type(r) is EditRequest
        assert EditRequest(**{f: getattr(r, f) for f in r.__dataclass_fields__}) == r  # validates again
        rel = RELATIONS[r.relation]
        assert r.relation.startswith("syn:")
        assert r.target_new != r.target_true
        assert r.target_new in rel.objects and r.target_true in rel.objects
        assert r.prompt in rel.templates
        others = [t for t in rel.templates if t != r.prompt]
        assert sorted(r.paraphrases) == sorted(t.format(r.subject) for t in others)
        assert r.locality == () and r.portability == ()


def test_every_relation_and_template_is_used(five_thousand):
    assert {r.relation for r in five_thousand} == set(RELATIONS)
    assert {(r.relation, r.prompt) for r in five_thousand} == {
        (rel.id, t) for rel in SYNTHETIC_RELATIONS for t in rel.templates}
    assert len({(r.target_true, r.target_new) for r in five_thousand}) > 500


def test_neighbours_are_other_unedited_people_with_the_same_template(five_thousand):
    subjects = {r.subject for r in five_thousand}
    pooled = set()
    for r in five_thousand:
        assert len(r.neighbours) == 2 and len(set(r.neighbours)) == 2
        names = [_neighbour_subject(r.prompt, text) for text in r.neighbours]
        assert r.subject not in "".join(r.neighbours)
        assert not subjects & set(names)  # no request edits another request's neighbour
        pooled.update(names)
    assert len(pooled) <= NEIGHBOUR_POOL
    assert len(pooled) > NEIGHBOUR_POOL // 2


# --------------------------------------------------------------------------- collisions


def test_no_subject_is_inside_another(five_thousand):
    names = {r.subject for r in five_thousand}
    names |= {_neighbour_subject(r.prompt, t) for r in five_thousand for t in r.neighbours}
    for name in names:
        assert name == name.strip() and name.isascii() and "{" not in name and "}" not in name
        inside = {name[i:j] for i in range(len(name)) for j in range(i + 1, len(name) + 1)} - {name}
        assert not inside & names, (name, inside & names)


def test_no_subject_is_inside_a_template_or_a_target(five_thousand):
    texts = [t for rel in SYNTHETIC_RELATIONS for t in (*rel.templates, *rel.objects)]
    for r in five_thousand:
        assert not [t for t in texts if r.subject in t]
        assert r.text.count(r.subject) == 1 and r.text.find(r.subject) == r.prompt.index("{}")
        for text in r.paraphrases:
            template = next(t for t in RELATIONS[r.relation].templates if t.format(r.subject) == text)
            assert text.count(r.subject) == 1 and text.find(r.subject) == template.index("{}")
        for text in r.neighbours:
            name = _neighbour_subject(r.prompt, text)
            assert text.count(name) == 1 and text.find(name) == r.prompt.index("{}")


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_requests_and_prefix_stable():
    state = random.getstate()
    reqs = synthetic_requests(500, seed=3)
    assert random.getstate() == state  # the global RNG is neither used nor reseeded
    random.seed(12345)
    assert synthetic_requests(500, seed=3) == reqs
    assert synthetic_requests(137, seed=3) == reqs[:137]
    assert synthetic_requests(1, seed=3) == reqs[:1]


def test_other_seed_other_requests():
    a, b = synthetic_requests(300, seed=0), synthetic_requests(300, seed=1)
    assert len({r.subject for r in a} & {r.subject for r in b}) < 30
    assert [r.relation for r in a] != [r.relation for r in b]
    assert synthetic_requests(300, seed=-1) != b  # str seeding: -1 and 1 differ, unlike random.Random(±1)


def test_ten_thousand_requests():
    reqs = synthetic_requests(10_000)
    assert len({r.subject for r in reqs}) == 10_000
    assert MAX_SYNTHETIC_REQUESTS >= 50_000


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("n", [0, -3])
def test_n_below_one_is_refused(n):
    with pytest.raises(ValueError, match=rf"expected n >= 1 synthetic requests, got {n}"):
        synthetic_requests(n)


def test_n_above_the_maximum_is_refused():
    too_many = MAX_SYNTHETIC_REQUESTS + 1
    with pytest.raises(ValueError, match=rf"expected n <= {MAX_SYNTHETIC_REQUESTS}\b.*got {too_many}"):
        synthetic_requests(too_many)


@pytest.mark.parametrize("n", [2.0, "3", True, None])
def test_n_must_be_an_int(n):
    with pytest.raises(TypeError, match="expected `n` to be an int"):
        synthetic_requests(n)


def test_seed_and_model_are_checked():
    with pytest.raises(TypeError, match="expected `seed` to be an int, got str"):
        synthetic_requests(3, seed="0")
    with pytest.raises(TypeError, match="expected a TransformerBridge or a Hugging Face tokenizer"):
        synthetic_requests(3, model=object())


# --------------------------------------------------------------------------- tokenisation (tiny models)


def _span_ids(tok, text: str, subject: str, *, use_offsets: bool) -> list[int]:
    start, end = subject_span(tok, text, subject, use_offsets=use_offsets)
    return encode(tok, text)[start:end]


def _prompts(r: EditRequest) -> list[tuple[str, str]]:
    """(text, subject) for the prompt, the paraphrases and the neighbours."""
    out = [(r.text, r.subject)] + [(t, r.subject) for t in r.paraphrases]
    return out + [(t, _neighbour_subject(r.prompt, t)) for t in r.neighbours]


def test_subjects_are_clean_token_runs(tiny):
    tok = tokenizer_of(tiny)
    reqs = synthetic_requests(300, seed=5, model=tiny)
    assert len(reqs) == 300 and len({r.subject for r in reqs}) == 300
    for r in reqs:
        assert subject_span(tiny, r) == subject_span(tiny, r.text, r.subject)
        for text, subject in _prompts(r):
            for use_offsets in (True, False):
                ids = _span_ids(tok, text, subject, use_offsets=use_offsets)
                assert tok.decode(ids) in (subject, " " + subject), (text, subject, use_offsets)


def test_unclean_subjects_are_skipped_in_order(tiny, arch_name):
    """With a model: the no-model requests whose subject tokenises cleanly, in the same order.

    The tiny tokenizers of Llama and Gemma know only the letters of a small corpus (no 'z', 'q', 'O',
    ...) and map the others to ``<unk>``; GPT-2's byte-level one knows every byte.
    """
    tok = tokenizer_of(tiny)
    base = synthetic_requests(1000, seed=2)
    got = synthetic_requests(600, seed=2, model=tiny)
    assert synthetic_requests(250, seed=2, model=tiny) == got[:250]
    position = {_key(r): i for i, r in enumerate(base)}
    where = [position[_key(r)] for r in got]  # KeyError: a request that the no-model list lacks
    assert where == sorted(where)
    kept = {r.subject for r in got}
    skipped = [r for r in base[: where[-1]] if r.subject not in kept]

    def unknown(r: EditRequest) -> bool:
        for text in (r.text, *r.paraphrases):
            try:
                ids = _span_ids(tok, text, r.subject, use_offsets=True)
            except ValueError:
                return True
            if tok.unk_token_id is not None and tok.unk_token_id in ids:
                return True
        return False

    assert not [r.subject for r in got if unknown(r)]
    assert all(unknown(r) for r in skipped)
    if arch_name == "gpt2":
        assert got == base[:600]
    else:
        assert len(skipped) > 50
        assert set(got) - set(base)  # some neighbours moved on, past a pooled name with an unknown letter


def test_slow_tokenizer_path_agrees(tiny):
    """A tokenizer without offsets goes through `subject_span`'s prefix method one prompt at a time."""

    class Slow:
        is_fast = False

        def __init__(self, tok):
            self._tok = tok

        def __getattr__(self, name):
            return getattr(self._tok, name)

        def __call__(self, *args, **kwargs):
            return self._tok(*args, **kwargs)

    tok = tokenizer_of(tiny)
    assert synthetic_requests(120, seed=4, model=Slow(tok)) == synthetic_requests(120, seed=4, model=tok)
