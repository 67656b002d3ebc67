"""Synthetic edit requests: many distinct, well-formed `EditRequest`s for benchmarks and tests at scale.

``synthetic_requests(n, seed)`` combines invented people ("Astrid Whitlock") with person relations
(occupation, sport, city of birth, native language, ...) and two different objects of that relation
(``target_true``, ``target_new``). It exists to feed the editing code volume (MEMIT with 10,000
requests in one call) and to test it; it is **not** a source of scientific data. No model knows
these people, so ``target_true`` is an arbitrary draw, not a fact: a request says "make the model
answer ``target_new``", and ``target_true`` is only a distinct alternative to score against.

What a request holds:

- ``prompt``: one of the relation's three templates; ``paraphrases``: the other two, filled with
  the subject.
- ``neighbours``: the request's template filled with two *other* synthetic people, drawn from a
  reserved pool of `NEIGHBOUR_POOL` names that are never request subjects (so one request of a batch
  never edits another's neighbour). Their "true" answer is not known to any model either: they are
  a same-relation locality set (the prediction there should not move), not facts to check.
- ``relation``: ``"syn:<name>"`` (see `SYNTHETIC_RELATIONS`); no locality or portability pairs.

How many: every "First Last" pair from the name lists below (322 × 352 = 113,344 names), less the
pool, gives at most `MAX_SYNTHETIC_REQUESTS` (113,088) requests, one per subject; asking for more
raises a ValueError that says so.

Determinism: the output depends only on ``(n, seed)`` (and the tokenizer, with ``model``), never on
the global RNG, and it is prefix-stable: ``synthetic_requests(k, seed)`` equals the first ``k`` of
``synthetic_requests(n, seed)`` for every ``k <= n``, so benchmarks at 10/100/1000 requests nest.

Collision rules (subject-span finding takes the first occurrence of the subject in a prompt):

- every subject is two plain ASCII words, capitalised, stripped, without braces; subjects are
  distinct within a call (and across the pool);
- no subject is a substring of another subject, nor of any template or target text. This holds by
  construction: a two-word subject can only sit inside another at the space, so it is enough that
  no first name ends another first name and no last name begins another last name, and that no
  word of a template or target ends with a first name or begins with a last name (so no subject
  can straddle a template's text and the filled-in name either). `_check_names` verifies it once.

Tokenisation rule: without ``model``, the subjects are plain words, which every tokenizer splits at
the spaces around them. With ``model`` (a bridge or a tokenizer), a request is kept only if, in its
prompt and in both paraphrases, `factscope.tokens.subject_span` finds the subject and the tokens of
that span decode back to exactly the subject (a leading space allowed); the same goes for each
neighbour in its prompt. A subject that fails (say, a letter the tokenizer maps to ``<unk>``) is
skipped, and the next one in the fixed order is taken, so the requests for a model are the
no-model requests that pass, in the same order (neighbours may differ where a pooled name failed).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import islice, pairwise
from numbers import Integral
from typing import Any

from factscope.bridge import Bridge
from factscope.facts import EditRequest, Fact
from factscope.tokens import encode, span_from_offsets, subject_span, tokenizer_of

__all__ = [
    "synthetic_requests",
    "SyntheticRelation",
    "SYNTHETIC_RELATIONS",
    "MAX_SYNTHETIC_REQUESTS",
    "NEIGHBOUR_POOL",
]


@dataclass(frozen=True)
class SyntheticRelation:
    """A person relation: three templates (each with one ``{}``) and its objects (single words)."""

    id: str
    templates: tuple[str, str, str]
    objects: tuple[str, ...]


def _relation(name: str, templates: tuple[str, str, str], objects: str) -> SyntheticRelation:
    return SyntheticRelation(f"syn:{name}", templates, tuple(objects.split()))


_CITIES = ("Paris London Berlin Madrid Rome Vienna Prague Warsaw Lisbon Dublin Athens Oslo Stockholm Helsinki "
           "Amsterdam Brussels Budapest Copenhagen Tokyo Chicago Boston Toronto Sydney Cairo Moscow Istanbul "
           "Munich Milan Barcelona Zurich Montreal Seattle")

SYNTHETIC_RELATIONS: tuple[SyntheticRelation, ...] = (
    _relation("occupation", ("{} works as a", "{}'s profession is a", "By profession, {} is a"),
              "doctor lawyer teacher nurse farmer pilot chef journalist banker dentist carpenter painter "
              "plumber surgeon baker poet novelist pharmacist firefighter mechanic sculptor diplomat "
              "librarian programmer photographer tailor jeweller gardener"),
    _relation("sport", ("{} professionally plays", "The sport played by {} is", "{} is a professional player of"),
              "tennis football basketball baseball golf hockey cricket rugby volleyball handball badminton "
              "squash polo lacrosse softball curling"),
    _relation("birthplace", ("{} was born in the city of", "The birthplace of {} is the city of",
                             "{} is a native of the city of"), _CITIES),
    _relation("residence", ("{} lives in the city of", "{} currently resides in", "The home of {} is in the city of"),
              _CITIES),
    _relation("native_language", ("The mother tongue of {} is", "{}'s native language is", "{} grew up speaking"),
              "French German Spanish Italian Dutch Polish Swedish Russian Japanese Portuguese Greek Turkish "
              "Finnish Danish Norwegian Czech Hungarian Korean Arabic Hindi Chinese Romanian Ukrainian Hebrew"),
    _relation("citizenship", ("{} is a citizen of", "{} holds the citizenship of",
                              "The country of citizenship of {} is"),
              "France Germany Spain Italy Poland Sweden Norway Japan Canada Brazil Mexico Egypt India Greece "
              "Portugal Austria Ireland Finland Denmark Belgium Australia Argentina Chile Peru Kenya Nigeria "
              "Turkey Hungary"),
    _relation("instrument", ("{} plays the", "The instrument played by {} is the", "{} is a musician who plays the"),
              "piano guitar violin cello flute trumpet drums saxophone clarinet harp organ banjo trombone oboe "
              "accordion ukulele harmonica bagpipes mandolin tuba"),
    _relation("employer", ("{} works for", "{} is employed by", "The employer of {} is"),
              "Google Microsoft Apple Amazon Toyota Nokia Siemens Samsung Intel IBM Boeing Airbus Sony Nintendo "
              "Netflix Adidas Nike Honda Ford Philips Volvo Lego Ikea Spotify Oracle"),
    _relation("field", ("{} is an expert in the field of", "{} works in the field of", "The research area of {} is"),
              "physics chemistry biology mathematics economics history philosophy linguistics medicine astronomy "
              "geology psychology sociology archaeology statistics ecology genetics anthropology"),
    _relation("university", ("{} studied at the University of", "{} graduated from the University of",
                             "{} earned a degree at the University of"),
              "Oxford Cambridge Chicago Toronto Edinburgh Vienna Bologna Tokyo Melbourne Michigan Glasgow "
              "Manchester Copenhagen Helsinki Warsaw Amsterdam Sydney Texas Washington California "
              "Pennsylvania Virginia"),
)

# Plain ASCII words. No first name ends another first name and no last name begins another last name
# (see the module docstring). Pairings that name famous people were left out where noticed; some
# pairing may still name a real person, which does not matter: no request relies on what a model knows.
_FIRST = tuple("""
Aaron Abigail Adam Adrian Agnes Alan Albert Alberto Alex Alexis Alfred Alice Alina Alison Amanda Amelia Amos Andrea
Andrew Angela Anita Anton Arthur Astrid Audrey Barbara Beatrice Benedict Benjamin Bernard Bertha Bianca Boris
Brenda Bruno Camille Carla Carlos Carmen Caroline Cecilia Cedric Celia Charles Charlotte Chiara Chloe Clara
Claude Claudia Colin Conrad Cora Cornelia Craig Cyril Dafne Dalia Daniel Daphne Darius Dennis Derek Diana Diego
Dmitri Dolores Dominic Dorothy Douglas Edgar Edith Edmund Edward Edwin Elena Elias Elliot Elsa Emil Emma Enrico
Erik Ernest Esther Eugene Eva Evelyn Fabian Felix Fernando Fiona Francis Frank Frederick Gabriel
Georg Gerald Gilbert Gloria Gordon Greta Gustav Hannah Harold Harriet Hector Heidi Helen Henrik Herbert Hilda
Howard Hugo Ida Igor Ingrid Irene Isaac Isabel Ivan Jacob Jasper Jerome Joanna Jonas Jorge Joseph Judith Julia
Justin Karin Karl Katrin Keith Klaus Lars Laura Leonard Leopold Lidia Linda Lionel Lorenzo Lucas Lucia Ludwig
Luisa Magnus Malcolm Marcel Marco Margaret Marina Marius Martha Martin Matilda Matthias Maurice Maxim Melanie
Melvin Miguel Miriam Monica Morris Nadia Natalia Nathan Neil Nicholas Nikolai Nina Noah Norbert Norman
Olga Oliver Oscar Otto Pablo Pamela Patrick Paula Pedro Petra Philip Pierre Priscilla Rachel Rafael Ralph
Ramon Raymond Rebecca Reginald Renata Rita Robert Roberta Roland Rosalind Rudolf Rupert Ruth Samuel Sandra
Sebastian Selma Sergei Sigrid Silvia Simon Sofia Sonia Stefan Stella Sven Sylvia Tamara Teresa Theodor Thomas
Tobias Ulrich Ursula Valentin Vera Victor Vincent Viola Walter Werner Wilma Xavier Yolanda Yuri Zora Zachary
Agatha Ambrose Anselm Apollonia Armand Augustin Aurelia Basil Beatrix Bertram Blanche Casimir Clement Clemens
Cosima Cuthbert Dagmar Desmond Dietrich Dorian Eberhard Edwina Egon Eleanor Elmer Emeric Ephraim Ernesto Eustace
Ferdinand Fidelia Florian Fritz Gaspard Gertrude Godfrey Gottfried Griselda Gunther Hamish Hedwig Horace Humphrey
Ignatius Imelda Isidore Jeremias Jocelyn Kasimir Konstantin Lavinia Leander Leonora Lucius Ludmila Magdalena
Marguerite Maximilian Mercedes Mortimer Octavia Odile Ottilie Percival Phineas Quentin Radomir Reinhold Rodrigo
Rosamund Severin Sidonie Solomon Tancred Thaddeus Tiberius Ulysses Valentina Wendelin Wilhelmina Winifred Zenobia
""".split())

_LAST = tuple("""
Abbott Ackerman Aldridge Alvarez Ambrose Andersen Armitage Ashworth Atkinson Bachmann Bailey Baldwin Barlow Barrett
Bauer Beaumont Bentley Bergstrom Blackwood Blanchard Bowman Bradshaw Brennan Brooks Burgess Caldwell
Calloway Carrington Castillo Chambers Chapman Christensen Coleman Connolly Crawford Dalton Davenport
Delgado Donovan Drummond Dufresne Dunbar Eastwood Eckhart Ellison Engel Esposito Falkner Ferreira Fischer
Fitzgerald Fleming Forsythe Fontaine Fuentes Gallagher Garrison Gerhardt Gilmore Goldberg
Goodwin Gallardo Greenberg Gutierrez Hadley Halvorsen Hammond Hartmann Hawthorne Hendricks Hoffmann Holloway
Ingram Iversen Jablonski Jankowski Jennings Kaufmann Kendrick Kessler Kowalski Kristensen Landry
Langley Lindqvist Lombardi Lundgren Maddox Marchetti Markovic Merriweather Mendoza Moreau Mortensen
Nakamura Navarro Nielsen Novak Nygaard Oakley Oberlin Okafor Olivares Osborne Pacheco Palmer Pemberton Petrov
Pfeiffer Prescott Quintero Ramirez Rasmussen Redfield Reinholt Richter Rockwell Rodrigues Rosenthal
Saltzman Sandoval Schaefer Schreiber Sorensen Stanhope Steinberg Sullivan Sutherland Takahashi Thornton Tremblay
Valdez Vasquez Vogel Wainwright Waldmann Whitaker Whitfield Wilkinson Winterbottom Yamamoto
Albrecht Ainsworth Bancroft Barrington Bertolini Bixby Brandauer Brightwater Calderon Cartwright Castellano
Dorsey Duquesne Ellsworth Farnsworth Fenwick Galloway Gascoigne Granger Hargreaves Hollister
Kensington Kettering Kimura Larkspur Lindholm Llewellyn Mancini Montague Morrow Northcott
Ogilvie Pendleton Quigley Ravensworth Rinaldi Rossetti Sandringham Satterfield Scarborough Sheffield Silverstein
Strickland Sumner Tolliver Trevelyan Vandermeer Vaughan Wetherby Whitlock Winslow Woodruff Yardley
Abernathy Achterberg Adebayo Agarwal Akerlund Alcott Almeida Altman Amundsen Anand Arbogast Aschenbach Auclair
Babcock Balogun Barnaby Battaglia Beckwith Belmonte Benedetti Birkeland Bjornstad Blomqvist Bonaventura Bracewell
Brannigan Brockhurst Bujold Carmichael Cassidy Chatterjee Cheng Cisneros Clairmont
Corcoran Cortazar Cunningham Dabrowski Dalgaard Danforth Desjardins Dietrichson Dobrowolski Dunleavy Dvorak
Eberhardt Edelman Eklund Elsner Fairweather Falconer Fanshawe Faraday Fellowes Figueroa Finnegan
Fonseca Forsberg Fairclough Gaillard Gandolfi Giordano Goncalves Greenhalgh Grundy Guillaume Gunnarsson
Habermann Halloran Hanrahan Haraldsen Hasegawa Hathaway Heathcote Hedlund Hennessy Hollingsworth Honeycutt
Ishikawa Jacobsen Jaramillo Juarez Kapoor Karlsson Kearney Kellerman Kilpatrick Kirkland
Kobayashi Kuznetsov Lachance Lafleur Lancaster Lindberg Longworth Lorenzetti Lovelace Lowenstein Lyndon
Macpherson Maldonado Malmberg Marchbanks Martinelli Matsumoto Mayfield Medeiros Merrick Molyneux Montoya
Moriarty Mulligan Nakashima Nordstrom Norrington Oyelaran Pappas Pennington Pettersson Pinheiro Pritchard
Quarrington Rademacher Ravenscroft Reddington Riordan Rosenberg Salisbury
Santangelo Schiller Schofield Sinclair Sokolov Stavros Steinmetz Stromberg Sundberg Tanaka
Thackeray Tiernan Trujillo Uchida Ulbrich Vanterpool Villanueva Voss Wakefield Weatherby Westergaard
Wexford Whittington Wickham Wojcik Worthington Yeoman Zabrowski Zeller Zielinski
""".split())

_N_NAMES = len(_FIRST) * len(_LAST)
NEIGHBOUR_POOL = 256
"""Names reserved as neighbours (never request subjects) in each seed's order."""
MAX_SYNTHETIC_REQUESTS = _N_NAMES - NEIGHBOUR_POOL
"""The most requests `synthetic_requests` can make without a model (one per subject)."""
_NEIGHBOUR_DRAWS = 8  # pooled names drawn per request; the first two that tokenise cleanly are used


def synthetic_requests(n: int, seed: int = 0, *, model: Bridge | None = None) -> list[EditRequest]:
    """``n`` distinct, well-formed synthetic `EditRequest`s, one per invented person.

    For benchmarks and tests at scale, not for science: see the module docstring for what a request
    holds, the collision rules and the tokenisation rule.

    Args:
        n: how many requests, 1 to `MAX_SYNTHETIC_REQUESTS` (fewer with ``model``).
        seed: picks the order of the people and every draw (relation, template, targets,
            neighbours) through its own generators; the global RNG is left alone.
        model: a bridge or a tokenizer. If given, people whose name is not a clean run of tokens in
            every prompt of their request are skipped (deterministically), as are such neighbours.

    Returns:
        The requests; the first ``k`` are ``synthetic_requests(k, seed, model=model)``.

    Raises:
        TypeError: ``n`` or ``seed`` is not an integer, or ``model`` is neither a bridge nor a tokenizer.
        ValueError: ``n < 1``, or more requests than there are subjects (clean ones, with ``model``).

    Cost: O(n) string formatting without a model; with one, add five tokenisations a request,
    batched (measured times: docs/guide.md).
    """
    n, seed = _check_int("n", n), _check_int("seed", seed)
    if n < 1:
        raise ValueError(f"expected n >= 1 synthetic requests, got {n}")
    if n > MAX_SYNTHETIC_REQUESTS:
        raise ValueError(f"expected n <= {MAX_SYNTHETIC_REQUESTS} (the number of synthetic subjects), got {n}")
    _check_names()
    clean = _Clean(model)
    pool = _order(seed)[1]
    plans = _plans(seed)
    out: list[EditRequest] = []
    while len(out) < n:
        chunk = list(islice(plans, min(max(n - len(out), 16), _CHUNK)))
        if not chunk:
            raise ValueError(
                f"expected n <= {len(out)}: only {len(out)} of the {MAX_SYNTHETIC_REQUESTS} synthetic subjects "
                f"tokenise cleanly with this tokenizer, got n={n}"
            )
        clean.prefill([(plan.subject, t) for plan in chunk for t in plan.templates]
                      + [(name, plan.templates[0]) for plan in chunk for name in plan.drawn[:2]])
        out.extend(req for plan in chunk if (req := _build(plan, pool, clean)) is not None)
    return out[:n]


# --------------------------------------------------------------------------- building requests

_CHUNK = 2048  # candidates whose prompts are tokenised in one batch


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"expected `{name}` to be an int, got {type(value).__name__}: {value!r}")
    return int(value)


def _name(index: int) -> str:
    first, last = divmod(index, len(_LAST))
    return f"{_FIRST[first]} {_LAST[last]}"


@lru_cache(maxsize=8)
def _order(seed: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(candidate subjects as name indices, neighbour pool as names): one shuffle of all names per seed."""
    order = list(range(_N_NAMES))
    random.Random(f"factscope.synthetic/order/{seed}").shuffle(order)
    return tuple(order[:MAX_SYNTHETIC_REQUESTS]), tuple(map(_name, order[MAX_SYNTHETIC_REQUESTS:]))


@dataclass(frozen=True)
class _Plan:
    """Every draw for one candidate: templates[0] is the prompt, ``drawn`` the neighbour candidates."""

    subject: str
    relation: SyntheticRelation
    templates: tuple[str, ...]
    target_true: str
    target_new: str
    drawn: tuple[str, ...]


def _plans(seed: int) -> Iterator[_Plan]:
    """Plans in the seed's fixed order. Each candidate consumes the same draws whether or not it is
    kept later, so a kept request does not depend on how many were skipped before it."""
    candidates, pool = _order(seed)
    rng = random.Random(f"factscope.synthetic/draws/{seed}")
    for index in candidates:
        rel = rng.choice(SYNTHETIC_RELATIONS)
        templates = tuple(rng.sample(rel.templates, len(rel.templates)))
        target_true, target_new = rng.sample(rel.objects, 2)
        drawn = tuple(pool[i] for i in rng.sample(range(len(pool)), _NEIGHBOUR_DRAWS))
        yield _Plan(_name(index), rel, templates, target_true, target_new, drawn)


def _build(plan: _Plan, pool: tuple[str, ...], clean: _Clean) -> EditRequest | None:
    """The request, or ``None`` if its subject is not clean in every template."""
    if not all(clean(plan.subject, t) for t in plan.templates):
        return None
    prompt = plan.templates[0]
    neighbours = _neighbours(prompt, plan.drawn, pool, clean)
    if neighbours is None:
        return None
    return EditRequest(
        prompt=prompt,
        subject=plan.subject,
        target_new=plan.target_new,
        target_true=plan.target_true,
        paraphrases=tuple(t.format(plan.subject) for t in plan.templates[1:]),
        neighbours=neighbours,
        relation=plan.relation.id,
    )


def _neighbours(template: str, drawn: tuple[str, ...], pool: tuple[str, ...],
                clean: _Clean) -> tuple[str, str] | None:
    """The template filled with the first two clean pooled names: the drawn ones, then the pool in order."""
    if not (clean(drawn[0], template) and clean(drawn[1], template)):
        clean.prefill([(name, template) for name in (*drawn, *pool)])  # one batch, not one call a name
    found: list[str] = []
    for name in (*drawn, *pool):
        if name not in found and clean(name, template):
            found.append(name)
            if len(found) == 2:
                return template.format(found[0]), template.format(found[1])
    return None


# --------------------------------------------------------------------------- tokenisation


class _Clean:
    """``clean(subject, template)``: the module's tokenisation rule, cached; always true without a model.

    `prefill` checks many pairs at once. A fast tokenizer encodes them in one batch through its
    backend (the ids and offsets that ``tokenizer(text, add_special_tokens=False)`` gives) and the
    span comes from the same offsets rule as `factscope.tokens.subject_span`'s; a slow tokenizer
    goes through `subject_span` pair by pair.
    """

    def __init__(self, model: Bridge) -> None:
        self.tok = None if model is None else tokenizer_of(model)
        self.cache: dict[tuple[str, str], bool] = {}

    def __call__(self, subject: str, template: str) -> bool:
        if self.tok is None:
            return True
        if (subject, template) not in self.cache:
            self.prefill([(subject, template)])
        return self.cache[subject, template]

    def prefill(self, pairs: list[tuple[str, str]]) -> None:
        if self.tok is None:
            return
        todo = list(dict.fromkeys(p for p in pairs if p not in self.cache))
        if not todo:
            return
        backend = getattr(self.tok, "backend_tokenizer", None) if getattr(self.tok, "is_fast", False) else None
        checked = _check_batch(backend, todo) if backend is not None else map(self._check_one, todo)
        self.cache.update(zip(todo, checked))

    def _check_one(self, pair: tuple[str, str]) -> bool:
        subject, template = pair
        fact = Fact(template, subject)
        try:
            start, end = subject_span(self.tok, fact)
        except ValueError:
            return False
        return self.tok.decode(encode(self.tok, fact.text)[start:end]) in (subject, " " + subject)


def _check_batch(backend: Any, pairs: list[tuple[str, str]]) -> list[bool]:
    """The tokenisation rule for each (subject, template), with one call of a `tokenizers.Tokenizer`."""
    texts = [template.format(subject) for subject, template in pairs]
    out = []
    for (subject, template), text, enc in zip(pairs, texts, backend.encode_batch(texts, add_special_tokens=False)):
        a = template.index("{}")
        try:
            start, end = span_from_offsets(enc.offsets, text, a, a + len(subject))
        except ValueError:
            out.append(False)
            continue
        out.append(backend.decode(enc.ids[start:end], skip_special_tokens=False) in (subject, " " + subject))
    return out


# --------------------------------------------------------------------------- the collision rules


def _word_collides(word: str) -> bool:
    """Whether a subject could start or end inside ``word``: it ends with a first name or starts with a last name."""
    return word.endswith(_FIRST) or word.startswith(_LAST)


@cache
def _check_names() -> None:
    """Check the name lists against the collision rules once (a failure is a bug in this module)."""
    for kind, names, key in (("first", _FIRST, lambda s: s[::-1]), ("last", _LAST, lambda s: s)):
        bad = [x for x in names if not (x.isascii() and x.isalpha() and x[0].isupper() and x[1:].islower())]
        if bad or len(set(names)) != len(names):
            raise RuntimeError(f"synthetic {kind} names: expected distinct plain words, got {bad or 'duplicates'}")
        # Sorted by `key`, a name that starts (first names reversed: ends) another is right before one it starts.
        keys = sorted(map(key, names))
        hits = [(key(a), key(b)) for a, b in pairwise(keys) if b.startswith(a)]
        if hits:
            raise RuntimeError(f"synthetic {kind} names: expected none inside another at the edge, got {hits}")
    words = {w for rel in SYNTHETIC_RELATIONS for t in (*rel.templates, *rel.objects) for w in t.split()}
    bad = sorted(w for w in words if _word_collides(w.replace("{}", "")))
    if bad:
        raise RuntimeError(f"synthetic templates and objects: expected no word that a subject can start or "
                           f"end inside, got {bad}")
