"""Tables the programs print: a model's answers, an edit's before/after, a report's or a probe's cells.

Shared by the CLI and the demo (each a DataFrame, or a pair of numbers):

- `answers_frame`: the model's top-1 answer on each fact, against the expected one.
- `before_after_frame`: top-1 answers and p(target_new) before and after an edit.
- `neuron_suppression`: mean p(answer) with a `NeuronResult`'s neurons as they are and suppressed.
- `report_frame`: an `EditReport`'s summary as ``value [lo, hi]`` cells (`factscope.probes.stats.format_ci`).
- `spill_frame`: a `SpilloverResult`'s summary, one row per category and one pooled.

Cost: a batched forward pass or two per table (no gradients); the report tables one bootstrap.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import pandas as pd

from factscope.bridge import Bridge
from factscope.edit.handle import Edit
from factscope.facts import EditRequest, Fact
from factscope.locate import NeuronResult, suppress
from factscope.predict import next_token_logits, predict
from factscope.probes.evaluate import EditReport
from factscope.probes.spillover import SpilloverResult
from factscope.probes.stats import format_ci

__all__ = ["answers_frame", "before_after_frame", "neuron_suppression", "report_frame", "spill_frame"]


def answers_frame(model: Bridge, facts: Sequence[Fact | EditRequest]) -> pd.DataFrame:
    """The model's answer on each fact, one row per fact.

    Args:
        model: a bridge.
        facts: `Fact` s or `EditRequest` s with a true target.

    Returns:
        A DataFrame: ``relation``, ``prompt``, ``expected``, ``answer`` (top-1 token), ``p_answer``,
        ``p_expected`` (of the expected answer's first token), ``correct`` (top-1 is the expected first token).

    Cost: one batched forward pass per 32 prompts (`factscope.predict`), logits at the last position only.
    """
    preds = predict(model, [f.text for f in facts], [_true(f) for f in facts], k=3)
    return pd.DataFrame({
        "relation": [getattr(f, "relation", "") for f in facts], "prompt": [f.text for f in facts],
        "expected": [_true(f) for f in facts], "answer": [p.answer.strip() for p in preds],
        "p_answer": [p.top_probs[0] for p in preds], "p_expected": [p.p_target for p in preds],
        "correct": [bool(p.correct) for p in preds]})


def _true(f: Fact | EditRequest) -> str:
    return getattr(f, "target_true", None) or f.target


def before_after_frame(model: Bridge, edit: Edit, request: EditRequest) -> pd.DataFrame:
    """Top-1 answers and p(target_new) before and after ``edit``, on a request's prompt, paraphrases and neighbours.

    Args:
        model: the bridge the edit was computed on (left unchanged: the edit is applied and reverted).
        edit: an `Edit`.
        request: an `EditRequest`.

    Returns:
        A DataFrame: ``kind`` (prompt / paraphrase / neighbour), ``prompt``, ``before``, ``after``,
        ``p_new_before``, ``p_new_after``.

    Cost: two batched forward passes over 1 + paraphrases + neighbours prompts.
    """
    rows = [("prompt", request.text)] + [("paraphrase", p) for p in request.paraphrases] + \
        [("neighbour", p) for p in request.neighbours]
    prompts = [p for _, p in rows]
    before = predict(model, prompts, [request.target_new] * len(rows))
    with edit.applied(model):
        after = predict(model, prompts, [request.target_new] * len(rows))
    return pd.DataFrame({"kind": [k for k, _ in rows], "prompt": prompts,
                         "before": [b.answer.strip() for b in before], "after": [a.answer.strip() for a in after],
                         "p_new_before": [b.p_target for b in before], "p_new_after": [a.p_target for a in after]})


def neuron_suppression(model: Bridge, found: NeuronResult) -> tuple[float, float]:
    """Mean p(answer) over a `NeuronResult`'s prompts, as it is and with its neurons suppressed.

    Args:
        model: the bridge the neurons were found on (left unchanged).
        found: a `factscope.locate.NeuronResult`.

    Returns:
        ``(before, after)``; equal when no neuron was selected.

    Cost: two batched forward passes over the result's prompts.
    """
    def p() -> float:
        return float(next_token_logits(model, list(found.prompts)).softmax(-1)[:, found.answer_id].mean())

    before = p()
    if not found.neurons:
        return before, before
    with suppress(model, found):
        return before, p()


def report_frame(report: EditReport) -> pd.DataFrame:
    """An `EditReport`'s summary as printable cells: one row per metric with data, ``pre``, ``post``
    and ``post − pre``, each ``value [lo, hi]`` (bootstrap CI over requests).

    Args:
        report: a `factscope.probes.EditReport`.

    Cost: one bootstrap of the report (``report.summary()``: O(n_boot · requests)); no model passes.
    """
    s = report.summary()
    s = s[(s["n"] > 0) & s[["pre", "post"]].notna().any(axis=1)]
    ci = partial(format_ci, fmt=".3f")
    return pd.DataFrame({
        "metric": list(s.index), "n": [int(n) for n in s["n"]],
        "pre": [ci(r.pre, r.pre_lo, r.pre_hi) for r in s.itertuples()],
        "post": [ci(r.post, r.post_lo, r.post_hi) for r in s.itertuples()],
        "post − pre": [ci(r.delta, r.delta_lo, r.delta_hi) for r in s.itertuples()]})


def spill_frame(result: SpilloverResult) -> pd.DataFrame:
    """A `SpilloverResult`'s summary as printable cells: one row per category and one pooled.

    Args:
        result: a `factscope.probes.SpilloverResult`.

    Returns:
        A DataFrame: ``category``, ``n``, ``expected``, ``mean |Δlog p| [95% CI]``, ``mean KL``,
        ``flip rate``, ``slope vs whitened cos [CI]``, ``slope vs raw cos [CI]``.

    Cost: one bootstrap of the result (``result.summary()``).
    """
    ci = partial(format_ci, fmt=".3g")
    df = result.summary()
    return pd.DataFrame({
        "category": list(df.index), "n": [int(n) for n in df["n"]], "expected": list(df["expected"]),
        "mean |Δlog p| [95% CI]": [ci(r.mean, r.mean_lo, r.mean_hi) for r in df.itertuples()],
        "mean KL": list(df["mean_kl"]), "flip rate": list(df["flip_rate"]),
        "slope vs whitened cos [CI]": [ci(r.slope_white, r.slope_white_lo, r.slope_white_hi) for r in df.itertuples()],
        "slope vs raw cos [CI]": [ci(r.slope_raw, r.slope_raw_lo, r.slope_raw_hi) for r in df.itertuples()]})
