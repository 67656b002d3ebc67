"""The BOS convention, batching, targets and subject spans on the three tiny tokenizers.

The same checks run on the real Gemma and SmolLM2 tokenizers in test_integration.py.
"""

from __future__ import annotations

import pytest
import torch

from factscope import EditRequest, Fact, encode, encode_batch, subject_span, target_ids
from factscope.models import tiny_tokenizer

# (text, subject): BOS, subject first, middle, last, multi-token, doubled spaces, punctuation after.
SPAN_CASES = [
    ("The Space Needle is in downtown", "Space Needle"),
    ("Space Needle is in downtown", "Space Needle"),
    ("Michael Jordan professionally played", "Michael Jordan"),
    ("Where did Michael Jordan play? He played", "Michael Jordan"),
    ("  The  Eiffel Tower is in", "Eiffel Tower"),
    ("I visited the Eiffel Tower", "Eiffel Tower"),
    ("Toyota, a company, makes the Camry", "Toyota"),
    ("The President of the United States lives in the", "President of the United States"),
]


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma3"])
def tok(request):
    return tiny_tokenizer(request.param)


def test_encode_prepends_exactly_one_bos(tok):
    for text, _ in SPAN_CASES:
        ids = encode(tok, text)
        assert ids[0] == tok.bos_token_id
        assert ids.count(tok.bos_token_id) == 1
        assert ids[1:] == tok(text, add_special_tokens=False)["input_ids"]


def test_target_ids_start_with_a_space(tok):
    ids = target_ids(tok, "Seattle")
    assert ids == tok(" Seattle", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids).strip() == "Seattle"
    assert target_ids(tok, " Seattle ") == ids  # stray whitespace in data is normalised
    with pytest.raises(ValueError, match="non-empty target"):
        target_ids(tok, "  ")


def test_encode_batch_left_pads_with_mask(tok):
    texts = [t for t, _ in SPAN_CASES]
    ids, mask = encode_batch(tok, texts)
    assert ids.shape == mask.shape == (len(texts), max(len(encode(tok, t)) for t in texts))
    for i, t in enumerate(texts):
        row = encode(tok, t)
        assert ids[i, -len(row):].tolist() == row
        assert mask[i].tolist() == [0] * (ids.shape[1] - len(row)) + [1] * len(row)
    with pytest.raises(TypeError, match="single str"):
        encode_batch(tok, "The Space Needle")
    with pytest.raises(ValueError, match="at least one prompt"):
        encode_batch(tok, [])


@pytest.mark.parametrize("text,subject", SPAN_CASES)
def test_subject_span_decodes_to_subject(tok, text, subject):
    s, e = subject_span(tok, text, subject)
    ids = encode(tok, text)
    assert 1 <= s < e <= len(ids)  # never the BOS
    assert tok.decode(ids[s:e]).strip() == subject
    # The span is minimal: without its first or its last token, the subject is no longer whole.
    assert tok.decode(ids[s + 1:e]).strip() != subject
    assert tok.decode(ids[s:e - 1]).strip() != subject
    assert subject_span(tok, text, subject, use_offsets=False) == (s, e)  # both methods agree


def test_subject_span_of_records_uses_the_template_position(tok):
    f = Fact("{} is what tourists visit in", "Eiffel Tower", "Paris")
    assert subject_span(tok, f) == subject_span(tok, f.text, "Eiffel Tower")
    # The subject occurs twice in the text; a template marks which one is meant.
    g = Fact("Eiffel Tower fans say the {} is in", "Eiffel Tower", "Paris")
    s_first = subject_span(tok, g.text, "Eiffel Tower")
    s_tmpl = subject_span(tok, g)
    assert s_tmpl[0] > s_first[0]
    assert tok.decode(encode(tok, g.text)[s_tmpl[0]:s_tmpl[1]]).strip() == "Eiffel Tower"
    r = EditRequest("The {} is in downtown", "Space Needle", "Chicago", "Seattle")
    assert subject_span(tok, r) == subject_span(tok, r.text, "Space Needle")
    with pytest.raises(ValueError, match="record whose subject is"):
        subject_span(tok, r, "Eiffel Tower")


def test_subject_span_errors(tok):
    with pytest.raises(ValueError, match="does not occur"):
        subject_span(tok, "The Space Needle is in downtown", "Eiffel Tower")
    with pytest.raises(ValueError, match="non-empty prompt"):
        subject_span(tok, "", "Space Needle")
    with pytest.raises(ValueError, match="non-empty subject"):
        subject_span(tok, "The Space Needle", "")
    # A subject that ends inside a token: take a token of 3+ letters and ask for its first letters only.
    text = "The Space Needle is in downtown Seattle"
    pieces = [(i, tok.decode([t])) for i, t in enumerate(tok(text, add_special_tokens=False)["input_ids"])]
    i, piece = next((i, p) for i, p in pieces if len(p.strip()) >= 3 and p.strip().isalpha())
    partial = piece.strip()[:2]
    start = text.index(piece.strip())
    cut = text[:start] + partial  # the subject text as a prefix of the token's text
    with pytest.raises(ValueError, match="not a whole run of tokens"):
        subject_span(tok, text, cut[cut.rfind(" ") + 1:] if " " in cut else cut)


def test_padded_batch_matches_single_runs(tiny):
    texts = [t for t, _ in SPAN_CASES[:4]]
    ids, mask = encode_batch(tiny, texts)
    with torch.no_grad():
        batch = tiny(ids, attention_mask=mask)[:, -1]
        for i, t in enumerate(texts):
            single = tiny(torch.tensor([encode(tiny, t)]))[0, -1]
            torch.testing.assert_close(batch[i], single, atol=1e-5, rtol=0)
