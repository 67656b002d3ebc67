"""Request files: the edit requests a program reads from disk (``factscope edit --requests FILE``).

Two formats, detected from the first record:

- CounterFact records (with ``requested_rewrite``), read by `factscope.datasets.counterfact_record`,
  as a JSON list or JSON lines;
- factscope's own: a list of objects with ``prompt`` (a ``{}`` template), ``subject``,
  ``target_new`` and optionally ``target_true``, ``paraphrases``, ``neighbours``, ``relation``,
  ``locality``, ``portability`` (the built-in facts' format), possibly under a ``"facts"`` key.

Every problem is a ValueError naming the file and the record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from factscope.datasets import counterfact_record
from factscope.facts import EditRequest

__all__ = ["REQUEST_FIELDS", "our_request", "read_requests"]


REQUEST_FIELDS = ("prompt", "subject", "target_new", "target_true", "paraphrases", "neighbours", "relation",
                  "locality", "portability")
"""The fields of factscope's own request format (those of `EditRequest`)."""


def our_request(r: dict[str, Any]) -> EditRequest:
    """One record of factscope's JSON request format (the built-in facts' fields) as an `EditRequest`.

    Args:
        r: a JSON object with ``prompt``, ``subject``, ``target_new`` and optionally the other `REQUEST_FIELDS`.

    Cost: negligible.
    """
    missing = [k for k in ("prompt", "subject", "target_new") if k not in r]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(map(repr, missing))} (expected prompt, subject, target_new "
                         f"and optionally target_true, paraphrases, neighbours, relation)")
    kw = {k: r[k] for k in REQUEST_FIELDS if k in r and r[k] is not None}
    for k in ("locality", "portability"):
        if k in kw:
            kw[k] = tuple(tuple(p) if isinstance(p, list) else p for p in kw[k])
    for k in ("paraphrases", "neighbours"):
        if isinstance(kw.get(k), list):
            kw[k] = tuple(kw[k])
    return EditRequest(**kw)


def read_requests(path: str | Path, limit: int | None = None) -> tuple[list[EditRequest], str]:
    """The EditRequests in ``path`` and the format's name (``"CounterFact"`` or ``"factscope"``).

    Formats, detected from the first record: CounterFact records (with ``requested_rewrite``; read by
    `factscope.datasets`' CounterFact reader, also as JSON lines), or factscope's own: a list of objects
    with ``prompt`` (a ``{}`` template), ``subject``, ``target_new`` and optionally ``target_true``,
    ``paraphrases``, ``neighbours``, ``relation`` (the built-in facts' format), possibly under a
    ``"facts"`` key. ``limit`` keeps the first N records (later ones are not read).

    Args:
        path: a ``.json`` or ``.jsonl`` file.
        limit: keep the first this-many records (default ``None``: all).

    Raises ValueError with the file name (and the record index) for anything that does not fit:
    a missing file, invalid JSON, no records, a bad record.

    Cost: reading and parsing the file; no model.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if "facts" in lists:
            data = lists["facts"]
        elif len(lists) == 1:  # e.g. {"data": [...]}
            data = next(iter(lists.values()))
        else:
            raise ValueError(f"{path}: expected a JSON list of requests (or an object with a \"facts\" list), got an "
                             f"object with keys {list(data)}")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of requests, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{path}: the list of requests is empty")
    if limit is not None:
        data = data[:limit]
    counterfact = isinstance(data[0], dict) and "requested_rewrite" in data[0]
    convert = counterfact_record if counterfact else our_request
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: record {i}: expected a JSON object, got {type(rec).__name__}: {rec!r:.80}")
        try:
            out.append(convert(rec))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            why = f"missing field {e.args[0]!r}" if isinstance(e, KeyError) else f"{e}"
            raise ValueError(f"{path}: record {i} ({'CounterFact' if counterfact else 'factscope'} format): "
                             f"{why}") from None
    return out, "CounterFact" if counterfact else "factscope"
