"""Spillover: does an edit stay where it was put? The locality hypothesis, tested on one edit.

What
----
``spillover(model, request)`` edits one fact (ROME by default; any editor of
`factscope.edit.registry` to compare: MEMIT, AlphaEdit, KN, FT-L; or a precomputed
`factscope.edit.Edit`) and measures how much every prompt of a *bank* moved. The bank has categories of `Fact` s (prompt template, subject, answer):

==================  ======================================================================  =========
category            default content (``bank=None``)                                          expected
==================  ======================================================================  =========
``paraphrase``      the request's paraphrases that spell the subject verbatim, answer          move
                    ``target_true``
``same_subject``    other facts about the edited subject (the matching `builtin_groups` entry)  stay
``related``         facts about related entities, e.g. the Secretary of State when the          stay
                    President's residence is edited (the same group)
``same_relation``   built-in facts with the request's relation and another subject              stay
``unrelated``       ``n_unrelated`` built-in facts of other relations, seeded, whose subjects   stay
                    appear nowhere else in the bank
==================  ======================================================================  =========

The matching group is the `FactGroup` whose ``edit`` has the request's subject and prompt; without
one, ``same_subject`` and ``related`` are empty (the settings and the verdict say so). Default-bank
probes whose subject is not a whole run of tokens for this tokenizer are dropped with a note; a
prompt already in an earlier category is dropped too. A bank you pass replaces the default
entirely and is validated strictly (any category name; ``EXPECTED`` says ``"paraphrase"`` should
move, every other category should stay).

How, per probe (on the unedited model, then with ``with edit.applied(model):``)
---------------------------------------------------------------------------------
- ``logp_before``, ``logp_after``: the mean per-token log p(" " + answer), teacher-forced
  (`factscope.predict.target_logprob`); ``delta_logp`` = after − before; the effect is ``|Δlog p|``.
- ``kl``: KL(p_after ‖ p_before) of the next-token distributions after the prompt (nats,
  `factscope.predict.next_token_logits`, computed in float64).
- ``top1_before``, ``top1_after`` (decoded) and ``flipped`` (the argmax token changed).
- Key similarity at the *similarity layer* (the edited layer for single-layer edits, the highest
  edited layer for MEMIT, the layer holding most neurons for KN): k = the MLP key (the input to
  ``W_out``, ``arch.hook("mlp_key", layer)``) at the probe subject's last token on the unedited
  model, k_e the same for the request's own prompt. ``cos_raw`` = cos(k, k_e); ``cos_white`` =
  cos(Wk, Wk_e) with W = C^{-1/2}, C = E[kkᵀ] (`factscope.edit.covariance`, or ``C=``);
  ``whitened_dot_ratio`` = kᵀC⁻¹k_e / k_eᵀC⁻¹k_e, the fraction of its value change a rank-one ROME
  edit made at k_e would write at k (ROME's own k* is averaged over context templates, so for ROME
  this is close to, not equal to, the edit's response). W comes from ``torch.linalg.eigh`` with the
  eigenvalues clamped below at ``max eigenvalue × EIG_FLOOR`` (1e-10), so a rank-deficient C gives a
  finite pseudo-whitening instead of infinities.

Fits and verdict
----------------
For each category with at least 3 probes, and pooled over all "stay" categories (``POOLED``): the
least-squares slope of the effect on ``cos_white`` and on ``cos_raw``, with a percentile-bootstrap
95% CI that resamples probes (`factscope.probes.stats`, seeded). Both effects (``"abs_delta_logp"``,
``"kl"``) are fitted. The verdict reads the pooled stay probes, ``|Δlog p|`` on whitened similarity:
a CI entirely above 0 means spillover rises with key similarity, which refutes locality for this
edit (locality predicts a flat line near 0); entirely below 0, it falls; otherwise no trend is
detectable. It also reports whether the paraphrases moved (did the edit generalise?) and how much
the stay categories moved, each mean with its CI.

Cost
----
One edit (the editor's own cost), plus ``2 × (target_logprob + next_token_logits)`` batched passes
over the bank (memory ``2 × probe × d_vocab`` float32 logits), one key pass stopped after the
similarity layer, an ``eigh`` of C (O(d_mlp³)), C itself (cached on disk; the first computation for
a layer is the slow part), and ``n_boot`` slope fits per group, effect and similarity (O(n_boot ×
probe) each). Measured times: docs/guide.md, "Measured costs of the probes".

Dimension names: ``probe`` bank prompts, ``d_mlp`` keys, ``d_vocab`` vocabulary, ``boot`` bootstrap
replicates.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from factscope.arch import context_of
from factscope.bridge import Bridge
from factscope.checks import check_int
from factscope.datasets import FactGroup, builtin_facts, builtin_groups
from factscope.edit import registry
from factscope.edit.handle import Edit
from factscope.edit.registry import EditorConfig, EditorSpec, default_config
from factscope.facts import EditRequest, Fact
from factscope.predict import kl_from_logits, next_token_logits, target_logprob
from factscope.probes.stats import LEVEL, bootstrap, format_ci, mean_ci, percentile_ci, slope
from factscope.result_files import ResultContents, Saveable, fact_from_json, fact_to_json, nest, unnest
from factscope.tokens import check_request, encode, pad_left, str_tokens, subject_span

__all__ = [
    "spillover",
    "SpilloverResult",
    "SpilloverProbe",
    "SpilloverFit",
    "default_bank",
    "subject_keys",
    "inverse_sqrt",
    "key_similarity",
    "similarity_layer",
    "fit_slope",
    "EXPECTED",
    "CATEGORIES",
    "EFFECTS",
    "SIMILARITIES",
    "POOLED",
    "EIG_FLOOR",
]

CATEGORIES: tuple[str, ...] = ("paraphrase", "same_subject", "related", "same_relation", "unrelated")
EXPECTED: Mapping[str, str] = {"paraphrase": "move"}  # every other category: "stay"
"""Bank categories expected to move with the edit (``"paraphrase"``); every other one should stay."""
EFFECTS: Mapping[str, str] = {"abs_delta_logp": "|Δ log p(answer)|", "kl": "KL(p_after ‖ p_before) (nats)"}
SIMILARITIES: Mapping[str, str] = {"cos_white": "whitened key cosine  cos(C^-1/2 k, C^-1/2 k_e)",
                                   "cos_raw": "raw key cosine  cos(k, k_e)"}
POOLED = "stay (pooled)"
EIG_FLOOR = 1e-10
MIN_FIT = 3  # probes a group needs for a slope


def expected_of(category: str) -> str:
    """``"move"`` for ``"paraphrase"``, ``"stay"`` for every other category."""
    return EXPECTED.get(category, "stay")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True)
class SpilloverProbe:
    """One bank prompt, before and with the edit (a row of `SpilloverResult`).

    Cost: negligible (plain data).

    Attributes:
        category, expected: the bank category and ``"move"`` / ``"stay"``.
        prompt: the full prompt; subject, answer: the probe's subject and scored answer.
        logp_before, logp_after, delta_logp: mean per-token log p(" " + answer), and after − before.
        kl: KL(p_after ‖ p_before) of the next token (nats).
        top1_before, top1_after, flipped: the decoded argmax tokens, and whether the argmax changed.
        cos_raw, cos_white, whitened_dot_ratio: key similarity to the edited key (module docstring).
    """

    category: str
    expected: str
    prompt: str
    subject: str
    answer: str
    logp_before: float
    logp_after: float
    delta_logp: float
    kl: float
    top1_before: str
    top1_after: str
    flipped: bool
    cos_raw: float
    cos_white: float
    whitened_dot_ratio: float

    @property
    def abs_delta_logp(self) -> float:
        """``|delta_logp|``: the probe's effect size."""
        return abs(self.delta_logp)


@dataclass(frozen=True, kw_only=True, eq=False)
class SpilloverFit:
    """A least-squares line ``effect ≈ intercept + slope · x`` over one group of probes.

    Cost: negligible (plain data; `band` is one pass over the ``boot`` replicates).

    Attributes:
        group: a category, or ``POOLED`` (all "stay" categories).
        effect: ``"abs_delta_logp"`` or ``"kl"``. x: ``"cos_white"`` or ``"cos_raw"``.
        n: probes in the fit. slope, intercept: the fit (NaN when x has no spread).
        lo, hi: the percentile-bootstrap CI of the slope (probes resampled).
        level: its confidence level.
        boot_slope, boot_intercept: ``[boot]`` the replicates (pairs from the same resamples).
    """

    group: str
    effect: str
    x: str
    n: int
    slope: float
    intercept: float
    lo: float
    hi: float
    level: float
    boot_slope: np.ndarray
    boot_intercept: np.ndarray

    def band(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile band of the bootstrap lines at ``xs``: ``(lo, hi)``, each ``[x]``.

        Args:
            xs: ``[x]`` similarity values to evaluate the lines at.
        """
        xs = np.asarray(xs, dtype=float)
        ok = np.isfinite(self.boot_slope) & np.isfinite(self.boot_intercept)
        if not ok.any():
            nan = np.full(xs.shape, np.nan)
            return nan, nan
        lines = self.boot_intercept[ok, None] + self.boot_slope[ok, None] * xs[None]  # [boot, x]
        a = (1 - self.level) / 2
        lo, hi = np.quantile(lines, [a, 1 - a], axis=0)
        return lo, hi


def fit_slope(x: np.ndarray, y: np.ndarray, *, group: str = "", effect: str = "", x_name: str = "",
              n_boot: int = 2000, seed: int = 0, level: float = LEVEL) -> SpilloverFit:
    """The least-squares slope of ``y`` ``[probe]`` on ``x`` ``[probe]`` with a bootstrap CI.

    Non-finite pairs are dropped. The slope and intercept replicates come from the same resamples
    (`stats.bootstrap` draws the same indices for the same ``seed`` and size).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"expected x and y of one shape, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < 2:
        nan = np.full(n_boot, np.nan)
        return SpilloverFit(group=group, effect=effect, x=x_name, n=n, slope=float("nan"), intercept=float("nan"),
                            lo=float("nan"), hi=float("nan"), level=level, boot_slope=nan, boot_intercept=nan)
    b = slope(x, y)
    b_boot = bootstrap(lambda i: slope(x[i], y[i]), n, n_boot=n_boot, seed=seed)
    a_boot = bootstrap(lambda i: float(y[i].mean() - slope(x[i], y[i]) * x[i].mean()), n, n_boot=n_boot, seed=seed)
    lo, hi = percentile_ci(b_boot, level)
    return SpilloverFit(group=group, effect=effect, x=x_name, n=n, slope=b, intercept=float(y.mean() - b * x.mean()),
                        lo=lo, hi=hi, level=level, boot_slope=b_boot, boot_intercept=a_boot)


@dataclass(frozen=True, kw_only=True, eq=False)
class SpilloverResult(Saveable):
    """What `spillover` measured: per-probe effects, slopes on key similarity, a verdict.

    See the module docstring. Cost: negligible to use (no model passes); `summary` and `table`
    bootstrap each group's mean (``n_boot`` resamples).

    Attributes:
        request: the edited fact. editor: the edit's method (``"rome"``, ``"memit"``, ``"kn"``, ``"ft-l"``).
        layer: the similarity layer (where the keys were compared). edit: the `Edit` measured.
        probes: one `SpilloverProbe` per bank prompt, in bank order.
        fits: `SpilloverFit` s for every category with ≥ 3 probes and ``POOLED``, for each effect
            and similarity.
        verdict: the locality verdict in words.
        settings: how it was run (bank source, group, notes, n_boot, seed, C's source, ...).
    """

    request: EditRequest
    editor: str
    layer: int
    edit: Edit
    probes: tuple[SpilloverProbe, ...]
    fits: tuple[SpilloverFit, ...]
    verdict: str
    settings: dict[str, Any] = field(default_factory=dict)

    RESULT_KIND = "factscope.spillover"
    RESULT_VERSION = 1

    def to_contents(self) -> ResultContents:
        """The edit's tensors under ``edit.``, each fit's replicates as ``fits.{i}.boot_*``; the rest as meta.

        Cost: negligible (no copies).
        """
        tensors, edit_meta = self.edit.to_contents()
        tensors = nest("edit", tensors)
        fits = []
        for i, f in enumerate(self.fits):
            tensors.update(nest(f"fits.{i}", {"boot_slope": f.boot_slope, "boot_intercept": f.boot_intercept}))
            fits.append({x.name: getattr(f, x.name) for x in fields(f) if not x.name.startswith("boot_")})
        meta = {"request": fact_to_json(self.request), "editor": self.editor, "layer": self.layer, "edit": edit_meta,
                "probes": [asdict(p) for p in self.probes], "fits": fits, "verdict": self.verdict,
                "settings": self.settings}
        return ResultContents(tensors, meta)

    @classmethod
    def from_contents(cls, contents: ResultContents) -> SpilloverResult:
        """The result that `to_contents` described.

        Args:
            contents: its tensors and meta (from `factscope.result_files.load_result`).

        Cost: the edit's constructor checks (a finiteness scan of its tensors).
        """
        t, meta = contents
        fits = tuple(SpilloverFit(**f, **{k: v.numpy() for k, v in unnest(f"fits.{i}", t).items()})
                     for i, f in enumerate(meta["fits"]))
        return cls(request=fact_from_json(meta["request"]), editor=meta["editor"], layer=meta["layer"],
                   edit=Edit.from_contents(ResultContents(unnest("edit", t), meta["edit"])),
                   probes=tuple(SpilloverProbe(**p) for p in meta["probes"]), fits=fits, verdict=meta["verdict"],
                   settings=meta["settings"])

    @property
    def categories(self) -> tuple[str, ...]:
        """The bank's categories with at least one probe, in bank order."""
        return tuple(dict.fromkeys(p.category for p in self.probes))

    def fit(self, group: str = POOLED, effect: str = "abs_delta_logp", x: str = "cos_white") -> SpilloverFit | None:
        """The fit of ``effect`` on ``x`` over ``group``; ``None`` if the group had too few probes.

        Args:
            group: a category or `POOLED` (default: the pooled stay categories).
            effect: ``"abs_delta_logp"`` (default) or ``"kl"``.
            x: ``"cos_white"`` (default) or ``"cos_raw"``.
        """
        _check_effect(effect)
        if x not in SIMILARITIES:
            raise ValueError(f"expected x among {list(SIMILARITIES)}, got {x!r}")
        return next((f for f in self.fits if (f.group, f.effect, f.x) == (group, effect, x)), None)

    def values(self, name: str, category: str | None = None) -> np.ndarray:
        """``[probe]`` one column (e.g. ``"kl"``, ``"cos_white"``) over a category, ``POOLED`` or all.

        Args:
            name: a `SpilloverProbe` field or property.
            category: a category, `POOLED`, or ``None`` (default: every probe).
        """
        ps = _members(self.probes, category)
        return np.array([float(getattr(p, name)) for p in ps], dtype=float)

    def to_dataframe(self) -> Any:
        """One row per probe: category, expected, prompt, subject, answer and every measured column."""
        import pandas as pd

        cols = ["category", "expected", "prompt", "subject", "answer", "logp_before", "logp_after", "delta_logp",
                "abs_delta_logp", "kl", "top1_before", "top1_after", "flipped", "cos_raw", "cos_white",
                "whitened_dot_ratio"]
        return pd.DataFrame.from_records([{c: getattr(p, c) for c in cols} for p in self.probes], columns=cols)

    def summary(self, effect: str = "abs_delta_logp") -> Any:
        """One row per category and one for ``POOLED``: mean effect and slopes with CIs, KL, flip rate.

        Columns: n, expected, mean effect [lo, hi], mean KL, flip rate, slope of the effect on
        cos_white [lo, hi] and on cos_raw [lo, hi]. Costs ``n_boot`` resamples per group for the
        mean's CI (the slopes are stored).

        Args:
            effect: ``"abs_delta_logp"`` (default) or ``"kl"``.
        """
        import pandas as pd

        _check_effect(effect)
        n_boot, seed = self.settings.get("n_boot", 2000), self.settings.get("seed", 0)
        rows = []
        for g in (*self.categories, POOLED):
            ps = _members(self.probes, g)
            if not ps:
                continue
            m, lo, hi = mean_ci(np.array([getattr(p, effect) for p in ps]), n_boot=n_boot, seed=seed)
            row = dict(group=g, n=len(ps), expected="stay" if g == POOLED else expected_of(g), mean=m, mean_lo=lo,
                       mean_hi=hi, mean_kl=float(np.mean([p.kl for p in ps])),
                       flip_rate=float(np.mean([p.flipped for p in ps])))
            for x, tag in (("cos_white", "white"), ("cos_raw", "raw")):
                f = self.fit(g, effect, x)
                row.update({f"slope_{tag}": f.slope if f else float("nan"), f"slope_{tag}_lo": f.lo if f else float("nan"),
                            f"slope_{tag}_hi": f.hi if f else float("nan")})
            rows.append(row)
        df = pd.DataFrame(rows).set_index("group")
        df.attrs["effect"] = effect
        return df

    def table(self, effect: str = "abs_delta_logp") -> str:
        """A printable table of `summary` plus the verdict.

        Args:
            effect: ``"abs_delta_logp"`` (default) or ``"kl"``.
        """
        df = self.summary(effect)
        r = self.request
        head = (f"Spillover of {self.editor} edit {r.subject!r}: {r.target_true!r} → {r.target_new!r} "
                f"(similarity at layer {self.layer}); effect = {EFFECTS[effect]}")
        cols = ["n", "expect", f"mean {_short(effect)} [95% CI]", "mean KL", "flips",
                "slope vs cos_white [CI]", "slope vs cos_raw [CI]"]
        body = []
        for g, row in df.iterrows():
            body.append([g, str(int(row.n)), row.expected, format_ci(row["mean"], row.mean_lo, row.mean_hi),
                         f"{row.mean_kl:.3g}", f"{row.flip_rate:.2f}",
                         format_ci(row.slope_white, row.slope_white_lo, row.slope_white_hi),
                         format_ci(row.slope_raw, row.slope_raw_lo, row.slope_raw_hi)])
        widths = [max(len(x) for x in col) for col in zip(["category", *cols], *body)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        out = [head, line(["category", *cols]), line(["-" * w for w in widths]), *map(line, body), ""]
        out += textwrap.wrap("Verdict: " + self.verdict, width=110)
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _short(effect: str) -> str:
    return {"abs_delta_logp": "|Δlog p|", "kl": "KL"}[effect]


def _check_effect(effect: str) -> None:
    if effect not in EFFECTS:
        raise ValueError(f"expected effect among {list(EFFECTS)}, got {effect!r}")


def _members(probes: Sequence[SpilloverProbe], group: str | None) -> list[SpilloverProbe]:
    if group is None:
        return list(probes)
    if group == POOLED:
        return [p for p in probes if p.expected == "stay"]
    return [p for p in probes if p.category == group]


# --------------------------------------------------------------------------- the bank


def _matching_group(request: EditRequest) -> FactGroup | None:
    return next((g for g in builtin_groups()
                 if g.edit.subject == request.subject and g.edit.prompt == request.prompt), None)


def default_bank(request: EditRequest, *, n_unrelated: int = 8, seed: int = 0
                 ) -> tuple[dict[str, tuple[Fact, ...]], list[str]]:
    """The default spillover bank for a request (see the module docstring), and notes on what it lacks.

    Raises ``ValueError`` if the request has no ``target_true`` (paraphrases and same-relation facts
    are scored on it).

    Args:
        request: the edited `EditRequest`; its paraphrases, matching `factscope.builtin_groups`
            entry and relation fill the categories.
        n_unrelated: unrelated built-in facts to draw (default 8).
        seed: seeds that draw (default 0).

    Returns:
        ``(bank, notes)``: category -> `Fact` s, and notes on empty or dropped parts.

    Cost: negligible (no model; token checks happen in `spillover`).
    """
    if not isinstance(request, EditRequest):
        raise TypeError(f"expected an EditRequest, got {type(request).__name__}")
    if request.target_true is None:
        raise ValueError(f"the default bank scores paraphrases against target_true, but the request for "
                         f"{request.subject!r} has none; set target_true or pass bank=")
    notes: list[str] = []
    para = []
    for p in request.paraphrases:
        if request.subject not in p:
            notes.append(f"paraphrase {p!r} does not spell the subject verbatim: left out")
            continue
        try:
            para.append(Fact(p.replace(request.subject, "{}", 1), request.subject, request.target_true,
                             request.relation))
        except ValueError as e:
            notes.append(f"paraphrase {p!r} left out: {e}")
    group = _matching_group(request)
    if group is None:
        notes.append("no built-in group matches this request (subject and prompt), so same_subject and related "
                     "are empty")
    same_rel = []
    if request.relation:
        same_rel = [r.fact for r in builtin_facts()
                    if r.relation == request.relation and r.subject != request.subject and r.target_true]
    else:
        notes.append("the request has no relation, so same_relation is empty")
    bank: dict[str, tuple[Fact, ...]] = {
        "paraphrase": tuple(para),
        "same_subject": group.same_subject if group else (),
        "related": group.related if group else (),
        "same_relation": tuple(same_rel),
    }
    taken = {request.subject} | {f.subject for fs in bank.values() for f in fs}
    cands: dict[str, Fact] = {}
    for r in builtin_facts():
        if r.relation != request.relation and r.subject not in taken and r.target_true:
            cands.setdefault(r.subject, r.fact)  # one fact per subject
    pool = list(cands.values())
    k = min(n_unrelated, len(pool))
    if k < n_unrelated:
        notes.append(f"only {len(pool)} unrelated built-in facts are available, not {n_unrelated}")
    pick = sorted(np.random.default_rng(seed).choice(len(pool), size=k, replace=False).tolist()) if k else []
    bank["unrelated"] = tuple(pool[i] for i in pick)
    return bank, notes


def _check_bank(model: Bridge, bank: Any, *, strict: bool, notes: list[str]) -> list[tuple[str, Fact]]:
    """``[(category, fact)]`` in bank order, every fact checked against the tokenizer.

    ``strict`` (a given bank): any problem raises. Otherwise (the default bank) unusable probes and
    repeated prompts are dropped, each with a note.
    """
    if not isinstance(bank, Mapping):
        raise TypeError(f"expected bank to map category -> sequence of Fact, got {type(bank).__name__}")
    out: list[tuple[str, Fact]] = []
    seen: dict[tuple[str, str], str] = {}
    for cat, facts in bank.items():
        if not isinstance(cat, str) or not cat.strip():
            raise TypeError(f"expected bank categories to be non-empty strings, got {cat!r}")
        if isinstance(facts, (str, bytes, Fact)) or not isinstance(facts, Sequence):
            raise TypeError(f"expected bank[{cat!r}] to be a sequence of Fact, got {type(facts).__name__}")
        for i, f in enumerate(facts):
            where = f"bank[{cat!r}][{i}]"
            if not isinstance(f, Fact):
                raise TypeError(f"expected {where} to be a factscope.Fact, got {type(f).__name__}: {f!r:.80}")
            if f.target is None:
                raise ValueError(f"expected {where} to have a target (the answer whose log-probability is "
                                 f"measured), got Fact({f.prompt!r}, {f.subject!r}) without one")
            try:
                subject_span(model, f)
            except ValueError as e:
                if strict:
                    raise ValueError(f"{where}: expected the subject {f.subject!r} as a whole run of tokens in "
                                     f"{f.text!r}: {e}") from None
                notes.append(f"{cat} probe {f.text!r} left out: {e}")
                continue
            key = (f.text, f.target)
            if key in seen and not strict:
                notes.append(f"{cat} probe {f.text!r} left out: already in {seen[key]}")
                continue
            seen.setdefault(key, cat)
            out.append((cat, f))
    if not out:
        raise ValueError(f"expected at least one probe in the bank, got none (categories: {list(bank)})")
    return out


# --------------------------------------------------------------------------- stage 1: the bank


@dataclass(frozen=True, kw_only=True)
class _Bank:
    """The bank stage's output: the checked probes in bank order, and what the bank lacks.

    Attributes:
        probes: ``[probe]`` ``(category, fact)`` pairs, every subject a whole run of its prompt's tokens.
        notes: what was left out or is missing, and why (default bank only).
        given: whether the bank was passed in (checked strictly) rather than `default_bank`.
        empty: bank categories left without a probe.
        group: the matching built-in group's name (default bank), or ``None``.
    """

    probes: tuple[tuple[str, Fact], ...]
    notes: tuple[str, ...]
    given: bool
    empty: tuple[str, ...]
    group: str | None

    @property
    def facts(self) -> list[Fact]:
        """``[probe]`` the facts, in bank order."""
        return [f for _, f in self.probes]

    @property
    def categories(self) -> list[str]:
        """The categories with at least one probe, in bank order."""
        return list(dict.fromkeys(c for c, _ in self.probes))

    @property
    def counts(self) -> dict[str, int]:
        """Probes per category (those with at least one), in bank order."""
        return {c: sum(cat == c for cat, _ in self.probes) for c in self.categories}


def _bank(model: Bridge, request: EditRequest, bank: Mapping[str, Sequence[Fact]] | None, *, n_unrelated: int,
          seed: int) -> _Bank:
    """Stage 1: the given bank checked strictly, or `default_bank` with unusable or repeated probes dropped."""
    notes: list[str] = []
    given = bank is not None
    if bank is None:
        bank, notes = default_bank(request, n_unrelated=n_unrelated, seed=seed)
    probes = _check_bank(model, bank, strict=given, notes=notes)
    group = None if given else _matching_group(request)
    return _Bank(probes=tuple(probes), notes=tuple(notes), given=given,
                 empty=tuple(c for c in bank if not any(cat == c for cat, _ in probes)),
                 group=group.name if group else None)


# --------------------------------------------------------------------------- keys and similarity


@torch.no_grad()
def subject_keys(model: Bridge, facts: Sequence[Fact], layer: int, *, batch_size: int = 32
                 ) -> Float[Tensor, "probe d_mlp"]:
    """The MLP key (input to ``W_out``) at each fact's last subject token, at ``layer`` (float64, CPU).

    Left-padded batches stopped after ``layer``; each row's subject position is shifted by its padding.
    """
    ctx = context_of(model)
    hook, dev = ctx.arch.hook("mlp_key", layer), ctx.device
    out = []
    for i in range(0, len(facts), batch_size):
        chunk = facts[i:i + batch_size]
        rows = [encode(model, f.text) for f in chunk]
        last = [subject_span(model, f)[1] - 1 for f in chunk]
        ids, mask = pad_left(model, rows)
        T = ids.shape[1]
        pos = torch.tensor([T - len(r) + s for r, s in zip(rows, last)], device=dev)  # padding shifts each row
        got: list[Tensor] = []
        model.run_with_hooks(ids.to(dev), attention_mask=mask.to(dev), stop_at_layer=layer + 1,
                             fwd_hooks=[(hook, lambda act, hook: got.append(act.detach()))])
        out.append(got[0][torch.arange(len(chunk), device=dev), pos].double().cpu())  # [row, d_mlp]
    if not out:
        raise ValueError("expected at least one fact, got none")
    return torch.cat(out)


def inverse_sqrt(C: Float[Tensor, "d_mlp d_mlp"], *, floor: float = EIG_FLOOR) -> Float[Tensor, "d_mlp d_mlp"]:
    """W = C^{-1/2} (float64, symmetric) by ``eigh``, eigenvalues clamped below at ``max eigenvalue × floor``."""
    if not isinstance(C, Tensor) or C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"expected a square matrix C, got {getattr(C, 'shape', type(C).__name__)}")
    C = C.detach().double().cpu()
    if not torch.isfinite(C).all():
        raise ValueError("expected finite key statistics C, got NaN or inf")
    evals, Q = torch.linalg.eigh((C + C.T) / 2)
    top = float(evals.max())
    if not top > 0:
        raise ValueError(f"expected C with a positive eigenvalue (a second moment), got largest eigenvalue {top}")
    evals = evals.clamp_min(top * floor)
    return (Q * evals.rsqrt()) @ Q.T


def key_similarity(K: Float[Tensor, "probe d_mlp"], k_e: Float[Tensor, "d_mlp"], W: Float[Tensor, "d_mlp d_mlp"]
                   ) -> tuple[Float[Tensor, "probe"], Float[Tensor, "probe"], Float[Tensor, "probe"]]:
    """``(cos_raw, cos_white, whitened_dot_ratio)`` of each key to k_e, with W = C^{-1/2}.

    The ratio is ``(Wk)·(Wk_e) / ‖Wk_e‖²`` = kᵀC⁻¹k_e / k_eᵀC⁻¹k_e. A zero key gives NaN cosines.
    """
    K, k_e, W = K.double(), k_e.double(), W.double()

    def cos(A: Tensor, b: Tensor) -> Tensor:
        return (A @ b) / (A.norm(dim=-1) * b.norm())

    WK, wk = K @ W, W @ k_e  # W is symmetric
    return cos(K, k_e), cos(WK, wk), (WK @ wk) / (wk @ wk)


# --------------------------------------------------------------------------- editors and layers


def _kn_layer_counts(edit: Edit) -> dict[int, int]:
    neurons = edit.info.get("neurons")
    if neurons:
        counts: dict[int, int] = {}
        for l, _ in neurons:
            counts[int(l)] = counts.get(int(l), 0) + 1
        return counts
    return {l: edit.rank(l) for l in edit.layers}


def similarity_layer(edit: Edit, layer: int | None = None) -> tuple[int, str]:
    """The layer whose keys are compared, and why: ``layer`` if given (one of the edit's layers);
    else the only edited layer; for KN the layer with most edited neurons (ties: the larger ‖ΔW‖);
    else (MEMIT and other multi-layer edits) the highest edited layer."""
    if layer is not None:
        if layer not in edit.layers:
            raise ValueError(f"expected the similarity layer to be one of the edit's layers {list(edit.layers)}, "
                             f"got {layer}")
        return layer, "given"
    if len(edit.layers) == 1:
        return edit.layers[0], "the edited layer"
    if edit.method == "kn":
        counts, norms = _kn_layer_counts(edit), edit.norms()
        best = max(edit.layers, key=lambda l: (counts.get(l, 0), norms[l].frobenius))
        return best, f"the layer holding most edited neurons ({counts.get(best, 0)} of {sum(counts.values())})"
    return max(edit.layers), f"the highest of the edited layers {list(edit.layers)}"


def _edit_layers(model: Bridge, spec: EditorSpec, layer: int | None, config: EditorConfig | None,
                 progress: bool) -> list[int] | None:
    """Spillover's layer policy, by the editor's layer rule (``None``: the editor's own choice).

    ``"one"``: ``[layer]`` (default: the editor's own choice, `factscope.edit.layer_choice.edit_layer`).
    ``"many"``: the ``config.n_layers`` consecutive layers ending at ``layer``, clipped at 0 (MEMIT's
    range; default: the editor's own choice). ``"none"``: its own (KN).
    """
    if spec.layers == "none":
        return None
    if spec.layers == "many":
        n = spec.check_config(default_config(spec, model) if config is None else config).n_layers
        return None if layer is None else list(range(max(0, layer - n + 1), layer + 1))
    return None if layer is None else [layer]


def _make_edit(model: Bridge, request: EditRequest, spec: EditorSpec, layer: int | None, config: EditorConfig | None,
               C: Tensor | None, progress: bool, verbose: bool) -> Edit:
    """Run the chosen editor through the registry (its own progress bars and printed line).

    A given C is passed to one-layer editors (it is E[kkᵀ] at their layer; FT-L ignores it).
    """
    layers = _edit_layers(model, spec, layer, config, progress)
    stats = {layers[0]: C} if C is not None and layers and spec.layers == "one" else None
    return spec.run(model, [request], layers=layers, config=config, C=stats, progress=progress, verbose=verbose)


def _check_given_edit(model: Bridge, edit: object, request: EditRequest, config: object) -> None:
    import warnings

    if not isinstance(edit, Edit):
        raise TypeError(f"expected edit to be a factscope.edit.Edit, got {type(edit).__name__}")
    if config is not None:
        raise ValueError("got both edit= and config=: config only applies when spillover computes the edit")
    edit.check_applicable(model)  # spillover applies and reverts it itself
    if edit.requests and request not in edit.requests:
        done = [f"{r.text!r} → {r.target_new!r}" for r in edit.requests]
        warnings.warn(f"the given edit implements {done}, not this request ({request.text!r} → "
                      f"{request.target_new!r}, target_true {request.target_true!r}); measuring it anyway",
                      stacklevel=3)


# --------------------------------------------------------------------------- stage 0: the plan


@dataclass(frozen=True, kw_only=True)
class _Plan:
    """What `spillover` measures, every argument but the bank checked: a given edit, or an editor to run.

    Attributes:
        spec: the editor (the registry's entry; with a given edit only checked).
        edit: the given `Edit`, or ``None`` (the measure stage computes one).
        layer: the checked ``layer`` argument (the edited layer, or with ``edit`` the similarity layer).
        config: the checked editor config (``None``: its defaults).
        C: the given key statistics ``[d_mlp, d_mlp]``, or ``None`` (loaded at the similarity layer).
    """

    spec: EditorSpec
    edit: Edit | None
    layer: int | None
    config: EditorConfig | None
    C: Float[Tensor, "d_mlp d_mlp"] | None


def _plan(model: Bridge, request: object, *, editor: str, layer: int | None, edit: object, config: object,
          C: object) -> _Plan:
    """Check the request, editor, layer, edit or config and C, before any work (`spillover`'s ``Raises``)."""
    check_request(model, request)  # type; the subject is a token run; prompt + target fit the context
    a = context_of(model).arch
    spec = registry.editor(editor)
    if layer is not None:
        layer = a.check_layer(layer)
    if edit is not None:
        _check_given_edit(model, edit, request, config)
        if layer is not None:
            similarity_layer(edit, layer)
    else:
        config = None if config is None else spec.check_config(config)
        if spec.layers == "none" and layer is not None:
            raise ValueError(f"expected layer=None for the {spec.name} editor: it locates its neurons itself (the "
                             f"similarity layer is then the one holding most of them), got layer={layer}")
    if C is not None and (not isinstance(C, Tensor) or tuple(C.shape) != (a.d_mlp, a.d_mlp)):
        raise ValueError(f"expected C of shape ({a.d_mlp}, {a.d_mlp}) (d_mlp × d_mlp), got "
                         f"{tuple(C.shape) if isinstance(C, Tensor) else type(C).__name__}")
    return _Plan(spec=spec, edit=edit, layer=layer, config=config, C=C)


# --------------------------------------------------------------------------- stage 2: measure


@dataclass(frozen=True, kw_only=True)
class _Scores:
    """Every probe on the model as it is (before, or with the edit applied).

    Attributes:
        logp: ``[probe]`` mean per-token log p(" " + answer), float64.
        logits: ``[probe, d_vocab]`` next-token logits after the prompt.
    """

    logp: Float[Tensor, "probe"]
    logits: Float[Tensor, "probe d_vocab"]


@dataclass(frozen=True, kw_only=True)
class _Shift:
    """How far each probe moved: log p(answer) before and after, KL(p_after ‖ p_before), top-1 ids.

    Attributes:
        lp0, lp1: ``[probe]`` log p(answer) before and with the edit (float64).
        kl: ``[probe]`` KL(p_after ‖ p_before) of the next token (nats, float64).
        top0, top1: ``[probe]`` argmax token ids before and with the edit.
    """

    lp0: Float[Tensor, "probe"]
    lp1: Float[Tensor, "probe"]
    kl: Float[Tensor, "probe"]
    top0: Int[Tensor, "probe"]
    top1: Int[Tensor, "probe"]


@dataclass(frozen=True, kw_only=True)
class _Similarity:
    """Each probe's key against the edited key k_e at the similarity layer (`key_similarity`).

    Attributes:
        cos_raw, cos_white, ratio: ``[probe]`` cos(k, k_e), cos(Wk, Wk_e), kᵀC⁻¹k_e / k_eᵀC⁻¹k_e.
    """

    cos_raw: Float[Tensor, "probe"]
    cos_white: Float[Tensor, "probe"]
    ratio: Float[Tensor, "probe"]


@dataclass(frozen=True, kw_only=True)
class _Measured:
    """The measure stage's output: the edit, where keys were compared, and every probe's row.

    Attributes:
        edit: the `Edit` measured. layer, layer_reason: the similarity layer and why (`similarity_layer`).
        C_source: where C came from (``"given"`` or the `covariance` call).
        probes: one `SpilloverProbe` per bank probe, in bank order.
    """

    edit: Edit
    layer: int
    layer_reason: str
    C_source: str
    probes: tuple[SpilloverProbe, ...]


def _the_edit(model: Bridge, request: EditRequest, plan: _Plan, progress: bool, verbose: bool
              ) -> tuple[Edit, int, str]:
    """The edit (given, or computed by the planned editor), its similarity layer and why."""
    if plan.edit is not None:
        return (plan.edit, *similarity_layer(plan.edit, plan.layer))
    edit = _make_edit(model, request, plan.spec, plan.layer, plan.config, plan.C, progress, verbose)
    return (edit, *similarity_layer(edit))


def _whitening(model: Bridge, L: int, plan: _Plan, progress: bool) -> tuple[Float[Tensor, "d_mlp d_mlp"], str]:
    """W = C^{-1/2} at layer L (C given, or `covariance` with the config's corpus and n_tokens), and C's source."""
    if plan.C is not None:
        return inverse_sqrt(plan.C), "given"
    from factscope.edit.covariance import covariance

    kw = {k: getattr(plan.config, k) for k in ("corpus",) if hasattr(plan.config, k)}
    if getattr(plan.config, "n_tokens", None) is not None:
        kw["n_tokens"] = plan.config.n_tokens
    C = covariance(model, L, progress=progress, **kw)  # [d_mlp, d_mlp]
    source = f"factscope.edit.covariance(layer={L}" + "".join(f", {k}={v!r}" for k, v in kw.items()) + ")"
    return inverse_sqrt(C), source


def _similarity(model: Bridge, request: EditRequest, facts: Sequence[Fact], L: int, W: Float[Tensor, "d_mlp d_mlp"],
                batch_size: int) -> _Similarity:
    """Each fact's key at layer L against the request's own key k_e (row 0 of one key pass)."""
    keys = subject_keys(model, [Fact(request.prompt, request.subject), *facts], L, batch_size=batch_size)
    cos_raw, cos_white, ratio = key_similarity(keys[1:], keys[0], W)  # [probe] each
    return _Similarity(cos_raw=cos_raw, cos_white=cos_white, ratio=ratio)


@torch.no_grad()
def _scores(model: Bridge, facts: Sequence[Fact], batch_size: int) -> _Scores:
    """log p(answer) ``[probe]`` (teacher-forced) and the next-token logits ``[probe, d_vocab]``, as the model is."""
    prompts = [f.text for f in facts]
    logp = target_logprob(model, prompts, [f.target for f in facts], batch_size=batch_size)  # [probe]
    return _Scores(logp=logp.double(), logits=next_token_logits(model, prompts, batch_size=batch_size))


def _shift(before: _Scores, after: _Scores) -> _Shift:
    """Δ of each probe: log p before/after, KL(p_after ‖ p_before) (in chunks of 64 probes), top-1 before/after."""
    z0, z1 = before.logits, after.logits  # [probe, d_vocab]
    kl = torch.cat([kl_from_logits(z1[i:i + 64], z0[i:i + 64]) for i in range(0, len(z0), 64)])  # [probe]
    return _Shift(lp0=before.logp, lp1=after.logp, kl=kl, top0=z0.argmax(-1), top1=z1.argmax(-1))


def _rows(model: Bridge, bank: _Bank, sim: _Similarity, s: _Shift) -> tuple[SpilloverProbe, ...]:
    """One `SpilloverProbe` per bank probe, from its shift and key similarity."""
    tok0, tok1 = str_tokens(model, s.top0), str_tokens(model, s.top1)
    return tuple(
        SpilloverProbe(category=c, expected=expected_of(c), prompt=f.text, subject=f.subject, answer=f.target,
                       logp_before=float(s.lp0[i]), logp_after=float(s.lp1[i]), delta_logp=float(s.lp1[i] - s.lp0[i]),
                       kl=float(s.kl[i]), top1_before=tok0[i], top1_after=tok1[i], flipped=bool(s.top0[i] != s.top1[i]),
                       cos_raw=float(sim.cos_raw[i]), cos_white=float(sim.cos_white[i]),
                       whitened_dot_ratio=float(sim.ratio[i]))
        for i, (c, f) in enumerate(bank.probes))


def _measure(model: Bridge, request: EditRequest, bank: _Bank, plan: _Plan, *, batch_size: int, progress: bool,
             verbose: bool) -> _Measured:
    """Stage 2: the edit, C^{-1/2} and the keys at the similarity layer, every probe before and with the edit."""
    from tqdm.auto import tqdm

    edit, L, why = _the_edit(model, request, plan, progress, verbose)
    if verbose:
        counts = ", ".join(f"{c} {n}" for c, n in bank.counts.items())
        print(f"spillover: {edit.method} edit of {request.subject!r} ({request.target_true!r} → "
              f"{request.target_new!r}); keys compared at layer {L} ({why}); {len(bank.facts)} probes ({counts})")
    with tqdm(total=4, desc="spillover", disable=not progress) as bar:
        W, C_source = _whitening(model, L, plan, progress)
        bar.update()
        sim = _similarity(model, request, bank.facts, L, W, batch_size)
        bar.update()
        before = _scores(model, bank.facts, batch_size)
        bar.update()
        with edit.applied(model):
            after = _scores(model, bank.facts, batch_size)
        bar.update()
    return _Measured(edit=edit, layer=L, layer_reason=why, C_source=C_source,
                     probes=_rows(model, bank, sim, _shift(before, after)))


# --------------------------------------------------------------------------- stage 3: fit


@dataclass(frozen=True, kw_only=True)
class _Fitted:
    """The fit stage's output: every slope with its CI, and the verdict in words."""

    fits: tuple[SpilloverFit, ...]
    verdict: str


def _fit(probes: Sequence[SpilloverProbe], bank: _Bank, *, n_boot: int, seed: int) -> _Fitted:
    """Stage 3: the slopes of each effect on each similarity per group (bootstrap CIs), and the verdict."""
    fits = _fits(probes, bank.categories, n_boot, seed)
    return _Fitted(fits=fits, verdict=_verdict(probes, fits, bank.notes, n_boot, seed))


def _fits(probes: Sequence[SpilloverProbe], categories: Sequence[str], n_boot: int, seed: int
          ) -> tuple[SpilloverFit, ...]:
    out = []
    for g in (*categories, POOLED):
        ps = _members(probes, g)
        if len(ps) < MIN_FIT:
            continue
        for effect in EFFECTS:
            y = np.array([getattr(p, effect) for p in ps], dtype=float)
            for x in SIMILARITIES:
                xs = np.array([getattr(p, x) for p in ps], dtype=float)
                out.append(fit_slope(xs, y, group=g, effect=effect, x_name=x, n_boot=n_boot, seed=seed))
    return tuple(out)


def _verdict(probes: Sequence[SpilloverProbe], fits: Sequence[SpilloverFit], notes: Sequence[str],
             n_boot: int, seed: int) -> str:
    """The verdict in words (module docstring): generalisation, stay movement, the pooled whitened trend."""
    parts = []

    def mean_text(ps: list[SpilloverProbe]) -> str:
        m, lo, hi = mean_ci(np.array([p.abs_delta_logp for p in ps]), n_boot=n_boot, seed=seed)
        return f"{format_ci(m, lo, hi)} (n={len(ps)})"

    para = [p for p in probes if p.category == "paraphrase"]
    if para:
        parts.append(f"Paraphrases (should move): mean |Δlog p| {mean_text(para)}.")
    else:
        parts.append("No paraphrase probes, so whether the edit generalised is not measured.")
    stay = _members(probes, POOLED)
    if stay:
        cats = list(dict.fromkeys(p.category for p in stay))
        per = "; ".join(f"{c} {mean_text([p for p in stay if p.category == c])}" for c in cats)
        parts.append(f"Stay categories: mean |Δlog p| {per}; pooled {mean_text(stay)}.")
    f = next((f for f in fits if (f.group, f.effect, f.x) == (POOLED, "abs_delta_logp", "cos_white")), None)
    if f is None or not math.isfinite(f.lo):
        parts.append(f"Too few stay probes with spread in whitened similarity for a trend (need {MIN_FIT}, got "
                     f"{len(stay)}).")
    else:
        fit_text = f"slope {format_ci(f.slope, f.lo, f.hi)} over {f.n} probes"
        if f.lo > 0:
            parts.append(f"Spillover rises with whitened key similarity: {fit_text}; this refutes locality for "
                         f"this edit.")
        elif f.hi < 0:
            parts.append(f"Spillover falls with whitened key similarity: {fit_text}; the opposite of "
                         f"interference through similar keys.")
        else:
            parts.append(f"No detectable trend of spillover with whitened key similarity: {fit_text}; the CI "
                         f"includes 0.")
    group_notes = [n for n in notes if n.startswith("no built-in group")]
    if group_notes:
        parts.append(group_notes[0][0].upper() + group_notes[0][1:] + ".")
    return " ".join(parts)


def spillover(
    model: Bridge,
    request: EditRequest,
    *,
    editor: str = "rome",
    bank: Mapping[str, Sequence[Fact]] | None = None,
    layer: int | None = None,
    edit: Edit | None = None,
    config: EditorConfig | None = None,
    C: Float[Tensor, "d_mlp d_mlp"] | None = None,
    n_unrelated: int = 8,
    seed: int = 0,
    n_boot: int = 2000,
    batch_size: int = 32,
    progress: bool = True,
    verbose: bool = True,
) -> SpilloverResult:
    """Edit one fact and measure how far every bank probe moved, against key similarity.

    See the module docstring for the bank, the measurements and the verdict. It runs in named
    stages: check every argument (the plan), build and check the bank, measure (the edit, C^{-1/2},
    the keys, every probe before and with the edit), fit (slopes, CIs, the verdict).

    Args:
        model: a bridge. Left bit-identical: the edit is only applied inside ``edit.applied``.
        request: the fact to edit (`EditRequest`; the default bank needs ``target_true``).
        editor: any editor of `factscope.edit.registry` (a name or alias: ``"rome"``, ``"memit"``,
            ``"alphaedit"``, ``"ft-l"`` alias ``"finetune"``, ``"kn"``).
        bank: category -> `Fact` s with targets; ``None``: `default_bank`. A given bank replaces
            the default entirely.
        layer: one-layer editors (ROME, FT-L): the edited layer (default:
            `factscope.locate.recommended_layer`); many-layer editors (MEMIT, AlphaEdit): the top of
            ``config.n_layers`` (5) consecutive layers (clipped at 0; default: the editor's choice);
            KN (it locates its neurons): not allowed. With ``edit=``: the similarity layer (one of
            the edit's layers).
        edit: a precomputed `Edit` (``editor`` is then only checked; the label is ``edit.method``).
        config: the editor's settings, an instance of ``registry.editor(editor).config_class``
            (`ROMEConfig`, `MEMITConfig`, `AlphaEditConfig`, `FTConfig`, `KNConfig`); ``None``: its defaults.
        C: key statistics E[kkᵀ] at the similarity layer ``[d_mlp, d_mlp]``; default
            `factscope.edit.covariance` (cached on disk; with the editor config's corpus and
            ``n_tokens`` when it has them). Also passed to one-layer editors (ROME) as their statistics.
        n_unrelated: unrelated facts in the default bank (default 8). seed: seeds that sample and
            every bootstrap (default 0).
        n_boot: bootstrap resamples per CI (default 2000). batch_size: prompts per forward pass
            (default 32).
        progress: progress bars (the editor's and the measurement stages; default ``True``).
        verbose: one line (plus the editor's own; default ``True``).

    Returns:
        A `SpilloverResult` (``print(result)`` shows the table and verdict).

    Raises:
        TypeError, ValueError: a bad request, editor, layer, config, C, or bank (empty, a non-`Fact`,
            a fact without a target, a subject that is not a whole run of its prompt's tokens).
        `factscope.edit.handle.EditStateError`: a given edit already applied to this model.
        `factscope.edit.handle.FingerprintMismatchError` (a ValueError): a given edit computed on
            another model (or one that does not fit it: `Edit.check_applicable`).
        All are checked before any edit is computed; the model is left untouched in every case.

    Cost: one edit (the editor's), plus two teacher-forced and two next-token passes over the bank,
    one key pass up to the similarity layer, an ``eigh`` of C (O(d_mlp³)), C itself (cached on disk;
    slow only the first time) and ``n_boot`` slope fits per group, effect and similarity. Memory: the
    editor's, plus ``2 × probe × d_vocab`` float32 logits. Measured: docs/guide.md.
    """
    plan = _plan(model, request, editor=editor, layer=layer, edit=edit, config=config, C=C)
    check_int("n_unrelated", n_unrelated, 0)
    check_int("seed", seed, 0)
    check_int("n_boot", n_boot, 1)
    check_int("batch_size", batch_size, 1)
    b = _bank(model, request, bank, n_unrelated=n_unrelated, seed=seed)
    m = _measure(model, request, b, plan, batch_size=batch_size, progress=progress, verbose=verbose)
    f = _fit(m.probes, b, n_boot=n_boot, seed=seed)
    settings = dict(editor_arg=editor, edit_layers=list(m.edit.layers), layer_reason=m.layer_reason,
                    bank="given" if b.given else "default", group=b.group, empty_categories=list(b.empty),
                    notes=list(b.notes), n_unrelated=n_unrelated, seed=seed, n_boot=n_boot, level=LEVEL,
                    C_source=m.C_source, eig_floor=EIG_FLOOR, min_fit=MIN_FIT, counts=b.counts)
    return SpilloverResult(request=request, editor=m.edit.method, layer=m.layer, edit=m.edit, probes=m.probes,
                           fits=f.fits, verdict=f.verdict, settings=settings)
