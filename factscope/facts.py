"""Fact records: what the model knows (`Fact`) and what we ask it to learn instead (`EditRequest`).

Both are frozen dataclasses that validate on construction, so a malformed record fails where it
is written, not deep inside a trace or an edit.

Conventions (CounterFact's):
- ``prompt`` is a template with exactly one ``{}`` standing for the subject:
  ``Fact("The {} is in downtown", "Space Needle", "Seattle")``.
- Targets are stored without a leading space. They are scored as the continuation
  ``" " + target`` (see `factscope.tokens.target_ids`).
- Prompts carry no trailing whitespace (a trailing space would make the model predict a
  space-less token and silently change every probability).
- Paraphrases and neighbours are full prompts (no ``{}``). Paraphrases are about the same
  subject (CounterFact's and zsRE's do not always spell it verbatim, so that is not required);
  neighbours are about other subjects and should still be answered ``target_true``.

Token-level checks (is the subject a whole run of tokens?) need a tokenizer and live in
`factscope.tokens.subject_span`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable

__all__ = ["Fact", "EditRequest"]


def _check_text(name: str, value: Any, *, where: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where}: expected `{name}` to be a str, got {type(value).__name__}: {value!r}")
    if not value.strip():
        raise ValueError(f"{where}: expected a non-empty `{name}`, got {value!r}")
    return value


def _check_stripped(name: str, value: Any, *, where: str, why: str = "") -> str:
    _check_text(name, value, where=where)
    if value != value.strip():
        raise ValueError(f"{where}: expected `{name}` without surrounding whitespace{why}, got {value!r}")
    return value


def _check_target(name: str, value: Any, *, where: str) -> str:
    return _check_stripped(name, value, where=where, why=f" (it is scored as ' ' + {name})")


def _check_template(prompt: Any, *, where: str) -> str:
    _check_text("prompt", prompt, where=where)
    n = prompt.count("{}")
    if n != 1:
        raise ValueError(
            f"{where}: expected the prompt to be a template with exactly one '{{}}' for the subject, "
            f"found {n} in {prompt!r}"
        )
    if prompt != prompt.rstrip():
        raise ValueError(
            f"{where}: expected no trailing whitespace in the prompt (the target is scored as "
            f"' ' + target), got {prompt!r}"
        )
    rest = prompt.replace("{}", "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"{where}: expected no braces other than the one '{{}}', got {prompt!r}")
    return prompt


def _check_full_prompts(name: str, prompts: Any, *, where: str) -> tuple[str, ...]:
    if isinstance(prompts, str) or not isinstance(prompts, Iterable):
        raise TypeError(f"{where}: expected `{name}` to be a sequence of prompts, got {prompts!r}")
    out = tuple(prompts)
    for i, p in enumerate(out):
        _check_text(f"{name}[{i}]", p, where=where)
        if "{}" in p:
            raise ValueError(f"{where}: expected `{name}[{i}]` to be a full prompt without '{{}}', got {p!r}")
        if p != p.rstrip():
            raise ValueError(f"{where}: expected no trailing whitespace in `{name}[{i}]`, got {p!r}")
    return out


@dataclass(frozen=True)
class Fact:
    """A fact the model is probed on: ``prompt.format(subject)`` should be continued by ``target``.

    Args:
        prompt: template with exactly one ``{}`` for the subject, e.g. ``"The {} is in downtown"``.
        subject: the entity, as it appears in the text, e.g. ``"Space Needle"``.
        target: the expected answer without a leading space, e.g. ``"Seattle"``. ``None`` means
            "whatever the model predicts" (tracing then follows the model's own top-1 token).
        relation: optional relation id (CounterFact's ``P17`` and so on) for grouping.

    Cost: negligible (validated on construction; no tokenizer or model).
    """

    prompt: str
    subject: str
    target: str | None = None
    relation: str = ""

    def __post_init__(self) -> None:
        where = f"Fact(subject={self.subject!r})"
        _check_template(self.prompt, where=where)
        _check_stripped("subject", self.subject, where="Fact")
        if self.target is not None:
            _check_target("target", self.target, where=where)

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)


@dataclass(frozen=True)
class EditRequest:
    """A request to rewrite a fact: after the edit, ``prompt.format(subject)`` → ``target_new``.

    Args:
        prompt: template with exactly one ``{}`` for the subject.
        subject: the entity whose fact is rewritten.
        target_new: the new answer (no leading space).
        target_true: the answer before the edit; ``None`` when unknown (zsRE-style requests).
        paraphrases: full prompts about the same subject that should follow the edit.
        neighbours: full prompts about *other* subjects whose answer must stay ``target_true``.
        relation: optional relation id.
        locality: ``(prompt, answer)`` pairs unrelated to the edit that must keep their own
            answers (zsRE's ``loc``/``loc_ans``).
        portability: ``(prompt, answer)`` pairs whose answer should follow from the edit.

    Cost: negligible (validated on construction; no tokenizer or model).
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrases: tuple[str, ...] = ()
    neighbours: tuple[str, ...] = ()
    relation: str = ""
    locality: tuple[tuple[str, str], ...] = field(default=())
    portability: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        where = f"EditRequest(subject={self.subject!r})"
        _check_template(self.prompt, where=where)
        _check_stripped("subject", self.subject, where="EditRequest")
        _check_target("target_new", self.target_new, where=where)
        if self.target_true is not None:
            _check_target("target_true", self.target_true, where=where)
            if self.target_true == self.target_new:
                raise ValueError(
                    f"{where}: expected target_new to differ from target_true, both are {self.target_new!r}"
                )
        # Normalise sequences to tuples so the record stays hashable and immutable.
        object.__setattr__(
            self, "paraphrases",
            _check_full_prompts("paraphrases", self.paraphrases, where=where),
        )
        object.__setattr__(
            self, "neighbours",
            _check_full_prompts("neighbours", self.neighbours, where=where),
        )
        object.__setattr__(self, "locality", _check_pairs("locality", self.locality, where=where))
        object.__setattr__(self, "portability", _check_pairs("portability", self.portability, where=where))

    @property
    def text(self) -> str:
        """The request prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    @property
    def fact(self) -> Fact:
        """The fact as the model knows it before the edit (target ``target_true``)."""
        return Fact(self.prompt, self.subject, self.target_true, self.relation)

    def replace(self, **changes: Any) -> "EditRequest":
        """A copy with some fields changed (validated again).

        Args:
            **changes: field names and their new values, as for `dataclasses.replace`.
        """
        return dataclasses.replace(self, **changes)


def _check_pairs(name: str, pairs: Iterable[Any], *, where: str) -> tuple[tuple[str, str], ...]:
    if isinstance(pairs, str) or not isinstance(pairs, Iterable):
        raise TypeError(f"{where}: expected `{name}` to be a sequence of (prompt, answer) pairs, got {pairs!r}")
    out = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, str) or not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{where}: expected `{name}[{i}]` to be a (prompt, answer) pair, got {pair!r}")
        p, a = pair
        _check_text(f"{name}[{i}] prompt", p, where=where)
        _check_text(f"{name}[{i}] answer", a, where=where)
        out.append((p.rstrip(), a))
    return tuple(out)
