"""Fact datasets: the built-in curated set, and loaders for CounterFact, zsRE and known_1000.

Every loader reads a local JSON (or JSON-lines) file in the dataset's official format, or a
Hugging Face dataset name through ``datasets`` when the hub is reachable (offline, it fails at once
with a message saying what to do). Records that do not fit factscope's rules raise a ValueError
naming the record, unless ``on_error="skip"``, which drops them with one warning that counts them.

``builtin_facts()`` ships with the package (``factscope/data/builtin_facts.json``): facts that the
default model (Gemma 3 270M) answers correctly, each with a counterfactual target, paraphrases and
neighbours, plus ``builtin_groups()``: banks of related entities for spillover probes. An
integration test re-checks every prompt against the model, so the set stays honest.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, TypeVar

from factscope.facts import EditRequest, Fact

__all__ = [
    "counterfact_record",
    "FactGroup",
    "builtin_facts",
    "builtin_fact",
    "calibration_split",
    "CALIBRATION_STRIDE",
    "builtin_groups",
    "load_counterfact",
    "load_zsre",
    "load_known",
    "DatasetNotAvailableError",
]

T = TypeVar("T")
OnError = Literal["raise", "skip"]


class DatasetNotAvailableError(RuntimeError):
    """A dataset name was given but the hub cannot be reached (or ``datasets`` is missing)."""


# --------------------------------------------------------------------------- reading records


def _looks_like_path(s: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else that looks like a path is one."""
    return s.endswith((".json", ".jsonl")) or s.startswith((".", "/", "~")) or s.count("/") > 1 or "\\" in s


def _read_records(source: str | os.PathLike, *, split: str) -> list[dict[str, Any]]:
    path = Path(os.fspath(source)).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
        if isinstance(data, dict):  # some dumps wrap the list, e.g. {"data": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise ValueError(f"{path}: expected a JSON list of records, got an object with keys {list(data)}")
            data = lists[0]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    if _looks_like_path(os.fspath(source)):
        raise FileNotFoundError(f"expected a dataset file at {path}, found nothing there")
    return _hub_records(os.fspath(source), split)


def _hub_records(name: str, split: str) -> list[dict[str, Any]]:
    from factscope.models import hub_reachable

    offline = any(os.environ.get(v, "") not in ("", "0", "false", "False")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    try:
        import datasets
    except ImportError:
        raise DatasetNotAvailableError(
            f"{name!r} is not a local file, and loading hub datasets needs `pip install datasets`"
        ) from None
    if offline or not hub_reachable():
        raise DatasetNotAvailableError(
            f"{name!r} is not a local file and the hub cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}. Download the dataset's JSON where there "
            f"is network and pass its path instead."
        )
    return [dict(r) for r in datasets.load_dataset(name, split=split)]


def _convert(records: Iterable[dict[str, Any]], fn: Callable[[dict[str, Any]], T], *, source: Any,
             on_error: OnError, limit: int | None) -> list[T]:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"expected on_error to be 'raise' or 'skip', got {on_error!r}")
    out: list[T] = []
    skipped: list[str] = []
    for i, rec in enumerate(records):
        if limit is not None and len(out) >= limit:
            break
        try:
            out.append(fn(rec))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            msg = f"{source}: record {i}: {type(e).__name__}: {e}"
            if on_error == "raise":
                raise ValueError(msg + " (pass on_error='skip' to drop such records)") from e
            skipped.append(msg)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} record(s) that do not fit; first: {skipped[0]}", stacklevel=3)
    return out


def _s(x: Any) -> str:
    """A target given as a string or as CounterFact's {"str": ..., "id": ...}."""
    return x["str"] if isinstance(x, dict) else x


# --------------------------------------------------------------------------- loaders


def counterfact_record(r: dict[str, Any]) -> EditRequest:
    """One CounterFact record (``requested_rewrite``, paraphrase and neighbourhood prompts) as an `EditRequest`."""
    rw = r["requested_rewrite"]
    return EditRequest(
        prompt=rw["prompt"].rstrip(),
        subject=rw["subject"].strip(),
        target_new=_s(rw["target_new"]).strip(),
        target_true=_s(rw["target_true"]).strip(),
        paraphrases=tuple(p.strip() for p in r.get("paraphrase_prompts", ())),
        neighbours=tuple(p.strip() for p in r.get("neighborhood_prompts", ())),
        relation=rw.get("relation_id", ""),
    )


def load_counterfact(source: str | os.PathLike, *, split: str = "train", limit: int | None = None,
                     on_error: OnError = "raise") -> list[EditRequest]:
    """CounterFact (Meng et al. 2022) records as `EditRequest`s.

    Reads the official ``counterfact.json``: ``requested_rewrite`` (``prompt``, ``subject``,
    ``target_new.str``, ``target_true.str``, ``relation_id``), ``paraphrase_prompts`` and
    ``neighborhood_prompts`` (neighbours share the true object).

    Args:
        source: path to the JSON/JSON-lines file, or a hub dataset name (online only).
        split: the split, for hub datasets (default ``"train"``).
        limit: keep at most this many records (default ``None``: all).
        on_error: ``"raise"`` (default) or ``"skip"`` records that do not fit (one warning counts them).

    Cost: reading and validating the file (no model); a hub name adds a download.
    """
    return _convert(_read_records(source, split=split), counterfact_record, source=source,
                    on_error=on_error, limit=limit)


def _zsre_record(r: dict[str, Any]) -> EditRequest:
    subject, src = r["subject"].strip(), r["src"].strip()
    if subject not in src:
        raise ValueError(f"expected the subject {subject!r} in the question {src!r}")
    answers = [a.strip() for a in (r.get("answers") or []) if a and a.strip()]
    alt = r["alt"].strip()
    true = answers[0] if answers and answers[0] != alt else None
    loc = ((r["loc"].strip(), r["loc_ans"].strip()),) if r.get("loc") and r.get("loc_ans") else ()
    reph = r.get("rephrase")
    return EditRequest(
        prompt=src.replace(subject, "{}", 1),
        subject=subject,
        target_new=alt,
        target_true=true,
        paraphrases=(reph.strip(),) if reph and reph.strip() else (),
        locality=loc,
        relation=r.get("relation", ""),
    )


def load_zsre(source: str | os.PathLike, *, split: str = "train", limit: int | None = None,
              on_error: OnError = "raise") -> list[EditRequest]:
    """zsRE in MEND's format as `EditRequest`s.

    Fields: ``subject``, ``src`` (the question, which must contain the subject), ``alt`` (the new
    answer), ``answers`` (the true ones; the first is ``target_true`` unless it equals ``alt``),
    ``rephrase`` (a paraphrase) and ``loc``/``loc_ans`` (an unrelated question that must keep its
    answer, kept in ``EditRequest.locality``).

    Args:
        source: path to the JSON/JSON-lines file, or a hub dataset name (online only).
        split: the split, for hub datasets (default ``"train"``).
        limit: keep at most this many records (default ``None``: all).
        on_error: ``"raise"`` (default) or ``"skip"`` records that do not fit (one warning counts them).

    Cost: reading and validating the file (no model); a hub name adds a download.
    """
    return _convert(_read_records(source, split=split), _zsre_record, source=source,
                    on_error=on_error, limit=limit)


def _known_record(r: dict[str, Any]) -> Fact:
    template = r.get("template") or r["prompt"].replace(r["subject"], "{}", 1)
    return Fact(prompt=template.rstrip(), subject=r["subject"].strip(), target=r["attribute"].strip(),
                relation=r.get("relation_id", ""))


def load_known(source: str | os.PathLike, *, split: str = "train", limit: int | None = None,
               on_error: OnError = "raise") -> list[Fact]:
    """ROME's ``known_1000.json`` as `Fact`s (``template``, ``subject``, ``attribute``, ``relation_id``).

    Args:
        source: path to the JSON/JSON-lines file, or a hub dataset name (online only).
        split: the split, for hub datasets (default ``"train"``).
        limit: keep at most this many records (default ``None``: all).
        on_error: ``"raise"`` (default) or ``"skip"`` records that do not fit (one warning counts them).

    Cost: reading and validating the file (no model); a hub name adds a download.
    """
    return _convert(_read_records(source, split=split), _known_record, source=source,
                    on_error=on_error, limit=limit)


# --------------------------------------------------------------------------- built-in set


@dataclass(frozen=True)
class FactGroup:
    """A bank of facts around one edit, for spillover probes (see `builtin_groups`).

    Cost: negligible (plain data).

    Attributes:
        name: e.g. ``"president_vs_secretary_of_state"``.
        description: what is edited and why the other facts should not move.
        edit: the request that is applied.
        same_subject: other facts about the edited subject (should stay).
        related: facts about related entities (should stay).
    """

    name: str
    description: str
    edit: EditRequest
    same_subject: tuple[Fact, ...]
    related: tuple[Fact, ...]


@lru_cache(maxsize=1)
def _builtin_json() -> dict[str, Any]:
    return json.loads(files("factscope").joinpath("data", "builtin_facts.json").read_text(encoding="utf-8"))


def _builtin_request(r: dict[str, Any]) -> EditRequest:
    return EditRequest(
        prompt=r["prompt"], subject=r["subject"], target_new=r["target_new"], target_true=r["target_true"],
        paraphrases=tuple(r["paraphrases"]), neighbours=tuple(r["neighbours"]), relation=r["relation"],
    )


def builtin_facts() -> list[EditRequest]:
    """The curated facts (86 over 12 relations) as `EditRequest`s, in file order.

    Each has ``target_true`` (Gemma 3 270M's top-1 answer), a counterfactual ``target_new``, 2+
    paraphrases and 2+ neighbours (see the module docstring).

    Cost: negligible (the JSON is parsed once per process; no model).
    """
    return [_builtin_request(r) for r in _builtin_json()["facts"]]


CALIBRATION_STRIDE = 4
"""Every ``CALIBRATION_STRIDE``-th built-in fact, from the first, is in the calibration split."""


def calibration_split() -> tuple[list[EditRequest], list[EditRequest]]:
    """``(calibration, held_out)``: the built-in facts split once, for fitting defaults honestly.

    Every 4th fact from the first (22 of 86, spread over all 12 relations) is for *calibration*:
    tuned defaults (the edit layer, the δ budget) are fitted on it and nothing else. The other 64
    are *held out*: quality targets are reported on them and never tuned on. The split was fixed on
    2026-12-04, before the layer choice and δ budget of `factscope.edit.layer_choice` were fitted.

    Cost: negligible (no model).
    """
    facts = builtin_facts()
    cal = facts[::CALIBRATION_STRIDE]
    held = [f for i, f in enumerate(facts) if i % CALIBRATION_STRIDE]
    return cal, held


def builtin_fact(fact_id: str) -> EditRequest:
    """One built-in fact by its id, e.g. ``builtin_fact("eiffel_tower_located_in_city")``.

    Args:
        fact_id: the fact's ``id`` in ``factscope/data/builtin_facts.json``; an unknown id raises
            ``KeyError``.

    Cost: negligible (no model).
    """
    by_id = {r["id"]: r for r in _builtin_json()["facts"]}
    if fact_id not in by_id:
        raise KeyError(f"no built-in fact {fact_id!r}; ids look like {sorted(by_id)[:3]}")
    return _builtin_request(by_id[fact_id])


def builtin_groups() -> list[FactGroup]:
    """The 6 related-entity banks (`FactGroup`) for spillover probes.

    E.g. ``president_vs_secretary_of_state``: the edit moves where the President lives, and facts
    about the Secretary of State must not move.

    Cost: negligible (no model).
    """
    data = _builtin_json()
    by_id = {r["id"]: r for r in data["facts"]}

    def facts(rows: list[dict[str, Any]]) -> tuple[Fact, ...]:
        return tuple(Fact(x["prompt"], x["subject"], x["target"], x.get("relation", "")) for x in rows)

    return [
        FactGroup(g["name"], g["description"], _builtin_request(by_id[g["edit"]]),
                  facts(g["same_subject"]), facts(g["related"]))
        for g in data["groups"]
    ]
