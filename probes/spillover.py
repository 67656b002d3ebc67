"""Spillover: does an edit stay where it was put? The locality hypothesis, tested on one edit.

What
----
``spillover(model, request)`` edits one fact (ROME by default; MEMIT, KN or FT-L to compare
editors, or a precomputed `factscope.edit.Edit`) and measures how much every prompt of a *bank*
moved. The bank has categories of `Fact` s (prompt template, subject, answer):

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
One edit (the editor's own cost: ROME on Gemma 3 270M ~20–40 s on 2 CPU threads), plus
``2 × (target_logprob + next_token_logits)`` batched passes over the bank (memory ``2 × probe ×
d_vocab`` float32 logits: ~60 MB for 30 probes on Gemma), one key pass stopped after the similarity
layer, an ``eigh`` of C (d_mlp³: seconds for Gemma's 2048), C itself (cached on disk; the first
computation for a layer takes minutes), and ``n_boot`` slope fits per group, effect and similarity
(milliseconds each group).

Dimension names: ``probe`` bank prompts, ``d_mlp`` keys, ``d_vocab`` vocabulary, ``boot`` bootstrap
replicates.
"""

from __future__ import annotations

import importlib
import inspect
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from factscope.edit import finetune, kn, memit, rome
from factscope.edit.finetune import FTConfig
from factscope.edit import registry
from factscope.edit.handle import Edit
from factscope.edit.kn import KNConfig
from factscope.edit.memit import MEMITConfig
from factscope.edit.rome import ROMEConfig
from factscope.probes.stats import LEVEL, bootstrap, mean_ci, percentile_ci, slope
from jaxtyping import Float
from torch import Tensor

from factscope.arch import arch_of
from factscope.checks import check_int
from factscope.datasets import builtin_facts, builtin_groups
from factscope.facts import EditRequest, Fact
from factscope.predict import next_token_logits, target_logprob
from factscope.tokens import check_request, encode, pad_left, str_tokens, subject_span
from factscope.bridge import Bridge
from factscope.arch import context_of

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
    "EDITORS",
    "EFFECTS",
    "SIMILARITIES",
    "POOLED",
    "EIG_FLOOR",
]

CATEGORIES: tuple[str, ...] = ("paraphrase", "same_subject", "related", "same_relation", "unrelated")
EXPECTED: Mapping[str, str] = {"paraphrase": "move"}  # every other category: "stay"
"""Bank categories expected to move with the edit (``"paraphrase"``); every other one should stay."""
EDITORS: tuple[str, ...] = ("rome", "memit", "kn", "finetune", "ft-l")
EFFECTS: Mapping[str, str] = {"abs_delta_logp": "|Δ log p(answer)|", "kl": "KL(p_after ‖ p_before) (nats)"}
SIMILARITIES: Mapping[str, str] = {"cos_white": "whitened key cosine  cos(C^-1/2 k, C^-1/2 k_e)",
                                   "cos_raw": "raw key cosine  cos(k, k_e)"}
POOLED = "stay (pooled)"
EIG_FLOOR = 1e-10
MIN_FIT = 3  # probes a group needs for a slope

_CONFIGS = {"rome": ROMEConfig, "memit": MEMITConfig, "finetune": FTConfig}


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
class SpilloverResult:
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
            body.append([g, str(int(row.n)), row.expected, _ci(row["mean"], row.mean_lo, row.mean_hi),
                         f"{row.mean_kl:.3g}", f"{row.flip_rate:.2f}",
                         _ci(row.slope_white, row.slope_white_lo, row.slope_white_hi),
                         _ci(row.slope_raw, row.slope_raw_lo, row.slope_raw_hi)])
        widths = [max(len(x) for x in col) for col in zip(["category", *cols], *body)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        out = [head, line(["category", *cols]), line(["-" * w for w in widths]), *map(line, body), ""]
        out += textwrap.wrap("Verdict: " + self.verdict, width=110)
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _short(effect: str) -> str:
    return {"abs_delta_logp": "|Δlog p|", "kl": "KL"}[effect]


def _ci(m: float, lo: float, hi: float) -> str:
    if not math.isfinite(m):
        return "–"
    return f"{m:.3g} [{lo:.3g}, {hi:.3g}]"


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


def _matching_group(request: EditRequest) -> Any:
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


# --------------------------------------------------------------------------- keys and similarity


@torch.no_grad()
def subject_keys(model: Bridge, facts: Sequence[Fact], layer: int, *, batch_size: int = 32
                 ) -> Float[Tensor, "probe d_mlp"]:
    """The MLP key (input to ``W_out``) at each fact's last subject token, at ``layer`` (float64, CPU).

    Left-padded batches stopped after ``layer``; each row's subject position is shifted by its padding.
    """
    a = arch_of(model)
    hook = a.hook("mlp_key", layer)
    dev = context_of(model).device
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


def key_similarity(K: Float[Tensor, "probe d_mlp"], k_e: Float[Tensor, d_mlp], W: Float[Tensor, "d_mlp d_mlp"]
                   ) -> tuple[Float[Tensor, probe], Float[Tensor, probe], Float[Tensor, probe]]:
    """``(cos_raw, cos_white, whitened_dot_ratio)`` of each key to k_e, with W = C^{-1/2}.

    The ratio is ``(Wk)·(Wk_e) / ‖Wk_e‖²`` = kᵀC⁻¹k_e / k_eᵀC⁻¹k_e. A zero key gives NaN cosines.
    """
    K, k_e, W = K.double(), k_e.double(), W.double()

    def cos(A: Tensor, b: Tensor) -> Tensor:
        return (A @ b) / (A.norm(dim=-1) * b.norm())

    WK, wk = K @ W, W @ k_e  # W is symmetric
    return cos(K, k_e), cos(WK, wk), (WK @ wk) / (wk @ wk)


# --------------------------------------------------------------------------- editors and layers


def _check_editor(editor: Any) -> str:
    name = registry.editor(editor).name
    if name not in EDITORS:
        raise ValueError(f"expected editor to be one of {list(EDITORS)}, got {editor!r}")
    return "finetune" if name == "ft-l" else name


def _check_config(name: str, config: Any) -> Any:
    return None if config is None else registry.editor(name).check_config(config)


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


def _make_edit(model: Bridge, request: EditRequest, name: str, layer: int | None, config: Any, C: Tensor | None,
               progress: bool, verbose: bool) -> Edit:
    """Run the chosen editor (its own progress bars and printed line)."""
    if name == "rome":
        kw = {} if config is None else {"config": config}
        return rome(model, request, layer=layer, C=C, progress=progress, verbose=verbose, **kw)
    if name == "memit":
        cfg = config or MEMITConfig()
        layers = None if layer is None else list(range(max(0, layer - cfg.n_layers + 1), layer + 1))
        return memit(model, [request], layers=layers, config=cfg, progress=progress, verbose=verbose)
    if name == "kn":
        return kn(model, request, config=config or KNConfig(), progress=progress, verbose=verbose)
    if layer is None:
        from factscope.locate.profile import recommended_layer

        layer = recommended_layer(model, progress=progress).layer
    kw = {} if config is None else {"config": config}
    return finetune(model, [request], layer=layer, progress=progress, verbose=verbose, **kw)


def _check_given_edit(model: Bridge, edit: Any, request: EditRequest, config: Any) -> None:
    import warnings

    from factscope.models import fingerprint

    if not isinstance(edit, Edit):
        raise TypeError(f"expected edit to be a factscope.edit.Edit, got {type(edit).__name__}")
    if config is not None:
        raise ValueError("got both edit= and config=: config only applies when spillover computes the edit")
    if edit.is_applied(model):
        raise ValueError("expected the edit not to be applied yet (spillover applies and reverts it itself); "
                         "revert it first")
    fp = fingerprint(model)
    if fp != edit.fingerprint:
        raise ValueError(f"expected the model the edit was computed on (fingerprint {edit.fingerprint}), got a "
                         f"model with fingerprint {fp}")
    if edit.requests and request not in edit.requests:
        done = [f"{r.text!r} → {r.target_new!r}" for r in edit.requests]
        warnings.warn(f"the given edit implements {done}, not this request ({request.text!r} → "
                      f"{request.target_new!r}, target_true {request.target_true!r}); measuring it anyway",
                      stacklevel=3)


# --------------------------------------------------------------------------- measurement


@torch.no_grad()
def _shift(model: Bridge, edit: Edit, prompts: list[str], answers: list[str], batch_size: int, bar: Any) -> dict[str, Any]:
    """log p(answer) before/after ``[probe]``, KL(p_after ‖ p_before) ``[probe]``, top-1 ids before/after."""
    lp0 = target_logprob(model, prompts, answers, batch_size=batch_size)  # [probe]
    z0 = next_token_logits(model, prompts, batch_size=batch_size)  # [probe, d_vocab]
    bar.update()
    with edit.applied(model):
        lp1 = target_logprob(model, prompts, answers, batch_size=batch_size)
        z1 = next_token_logits(model, prompts, batch_size=batch_size)
    bar.update()
    kl = torch.cat([_kl(z1[i:i + 64], z0[i:i + 64]) for i in range(0, len(prompts), 64)])  # [probe]
    return dict(lp0=lp0.double(), lp1=lp1.double(), kl=kl, top0=z0.argmax(-1), top1=z1.argmax(-1))


def _kl(z_p: Float[Tensor, "probe d_vocab"], z_q: Float[Tensor, "probe d_vocab"]) -> Float[Tensor, "probe"]:
    """KL(p ‖ q) in nats from logits, in float64 (clamped at 0 against rounding)."""
    lp, lq = z_p.double().log_softmax(-1), z_q.double().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


def _fits(probes: Sequence[SpilloverProbe], categories: Sequence[str], n_boot: int, seed: int) -> tuple[SpilloverFit, ...]:
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
        return f"{_ci(m, lo, hi)} (n={len(ps)})"

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
        fit_text = f"slope {f.slope:.3g} [{f.lo:.3g}, {f.hi:.3g}] over {f.n} probes"
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
    config: Any = None,
    C: Float[Tensor, "d_mlp d_mlp"] | None = None,
    n_unrelated: int = 8,
    seed: int = 0,
    n_boot: int = 2000,
    batch_size: int = 32,
    progress: bool = True,
    verbose: bool = True,
) -> SpilloverResult:
    """Edit one fact and measure how far every bank probe moved, against key similarity.

    See the module docstring for the bank, the measurements and the verdict.

    Args:
        model: a bridge. Left bit-identical: the edit is only applied inside ``edit.applied``.
        request: the fact to edit (`EditRequest`; the default bank needs ``target_true``).
        editor: ``"rome"`` | ``"memit"`` | ``"kn"`` | ``"finetune"`` (alias ``"ft-l"``).
        bank: category -> `Fact` s with targets; ``None``: `default_bank`. A given bank replaces
            the default entirely.
        layer: negative values count from the end (``result.layer`` records the similarity layer
            normalised). ROME/FT-L: the edited layer (default: `factscope.locate.recommended_layer`); MEMIT:
            the top of ``config.n_layers`` (5) consecutive layers (clipped at 0; default: MEMIT's
            choice); KN: not allowed (it locates its neurons). With ``edit=``: the similarity layer
            (one of the edit's layers).
        edit: a precomputed `Edit` (``editor`` is then only checked; the label is ``edit.method``).
        config: the editor's settings: `ROMEConfig`, `MEMITConfig`, `FTConfig`, or for KN a mapping
            of `factscope.edit.kn` keyword arguments.
        C: key statistics E[kkᵀ] at the similarity layer ``[d_mlp, d_mlp]``; default
            `factscope.edit.covariance` (cached on disk; with the editor config's corpus and
            ``n_tokens`` when it has them). Also passed to ROME as its statistics.
        n_unrelated: unrelated facts in the default bank (default 8). seed: seeds that sample and
            every bootstrap (default 0).
        n_boot: bootstrap resamples per CI (default 2000). batch_size: prompts per forward pass
            (default 32).
        progress: progress bars (the editor's and the measurement stages; default ``True``).
        verbose: one line (plus the editor's own; default ``True``).

    Returns:
        A `SpilloverResult` (``print(result)`` shows the table and verdict).

    Raises:
        TypeError, ValueError: a bad request, editor, layer, config, C, bank (empty, a non-`Fact`,
            a fact without a target, a subject that is not a whole run of its prompt's tokens), or a
            given edit that does not belong to this model. All are checked before any edit is computed;
            the model is left untouched in every case.

    Cost: one edit (the editor's: ROME on Gemma 3 270M ~20-40 s on 2 CPU threads), plus two
    teacher-forced and two next-token passes over the bank, one key pass up to the similarity
    layer, an ``eigh`` of C (seconds), C itself (cached on disk; minutes the first time) and
    ``n_boot`` slope fits per group, effect and similarity. The default bank with ROME: ~2 min.
    Memory: the editor's, plus ``2 × probe × d_vocab`` float32 logits (~60 MB for 30 probes on Gemma).
    """
    from tqdm.auto import tqdm

    # ---- validate everything before any work
    if not isinstance(request, EditRequest):
        raise TypeError(f"expected request to be an EditRequest, got {type(request).__name__}")
    a = arch_of(model)
    name = _check_editor(editor)
    check_int("n_unrelated", n_unrelated, 0)
    check_int("seed", seed, 0)
    check_int("n_boot", n_boot, 1)
    check_int("batch_size", batch_size, 1)
    check_request(model, request)  # the subject is a token run; prompt + target fit the context
    if layer is not None:
        layer = a.check_layer(layer)
    if edit is not None:
        _check_given_edit(model, edit, request, config)
        if layer is not None:
            similarity_layer(edit, layer)
    else:
        config = _check_config(name, config)
        if name == "kn" and layer is not None:
            raise ValueError("expected layer=None for the kn editor: it locates its neurons itself (the similarity "
                             f"layer is then the one holding most of them), got layer={layer}")
    if C is not None and (not isinstance(C, Tensor) or tuple(C.shape) != (a.d_mlp, a.d_mlp)):
        raise ValueError(f"expected C of shape ({a.d_mlp}, {a.d_mlp}) (d_mlp × d_mlp), got "
                         f"{tuple(C.shape) if isinstance(C, Tensor) else type(C).__name__}")
    notes: list[str] = []
    given_bank = bank is not None
    if bank is None:
        bank, notes = default_bank(request, n_unrelated=n_unrelated, seed=seed)
    items = _check_bank(model, bank, strict=given_bank, notes=notes)
    empty = [c for c in bank if not any(cat == c for cat, _ in items)]

    # ---- the edit and the similarity layer
    if edit is None:
        edit = _make_edit(model, request, name, layer, config, C if name == "rome" else None, progress, verbose)
        L, why = similarity_layer(edit)
    else:
        L, why = similarity_layer(edit, layer)
    facts = [f for _, f in items]
    cats = list(dict.fromkeys(c for c, _ in items))
    if verbose:
        counts = ", ".join(f"{c} {sum(cat == c for cat, _ in items)}" for c in cats)
        print(f"spillover: {edit.method} edit of {request.subject!r} ({request.target_true!r} → "
              f"{request.target_new!r}); keys compared at layer {L} ({why}); {len(facts)} probes ({counts})")

    bar = tqdm(total=5, desc="spillover", disable=not progress)
    C_source = "given"
    if C is None:
        from factscope.edit.covariance import covariance

        kw = {k: getattr(config, k) for k in ("corpus",) if hasattr(config, k)}
        if getattr(config, "n_tokens", None) is not None:
            kw["n_tokens"] = config.n_tokens
        C = covariance(model, L, progress=progress, **kw)
        C_source = f"factscope.edit.covariance(layer={L}" + "".join(f", {k}={v!r}" for k, v in kw.items()) + ")"
    W = inverse_sqrt(C)  # [d_mlp, d_mlp]
    bar.update()
    keys = subject_keys(model, [Fact(request.prompt, request.subject), *facts], L, batch_size=batch_size)
    cos_raw, cos_white, ratio = key_similarity(keys[1:], keys[0], W)  # [probe] each
    bar.update()
    s = _shift(model, edit, [f.text for f in facts], [f.target for f in facts], batch_size, bar)
    tok0, tok1 = str_tokens(model, s["top0"]), str_tokens(model, s["top1"])
    probes = tuple(
        SpilloverProbe(category=c, expected=expected_of(c), prompt=f.text, subject=f.subject, answer=f.target,
                       logp_before=float(s["lp0"][i]), logp_after=float(s["lp1"][i]),
                       delta_logp=float(s["lp1"][i] - s["lp0"][i]), kl=float(s["kl"][i]),
                       top1_before=tok0[i], top1_after=tok1[i], flipped=bool(s["top0"][i] != s["top1"][i]),
                       cos_raw=float(cos_raw[i]), cos_white=float(cos_white[i]), whitened_dot_ratio=float(ratio[i]))
        for i, (c, f) in enumerate(items))
    fits = _fits(probes, cats, n_boot, seed)
    bar.update()
    bar.close()
    group = _matching_group(request) if not given_bank else None
    settings = dict(editor_arg=editor, edit_layers=list(edit.layers), layer_reason=why,
                    bank="given" if given_bank else "default", group=group.name if group else None,
                    empty_categories=empty, notes=notes, n_unrelated=n_unrelated, seed=seed, n_boot=n_boot,
                    level=LEVEL, C_source=C_source, eig_floor=EIG_FLOOR, min_fit=MIN_FIT,
                    counts={c: sum(cat == c for cat, _ in items) for c in cats})
    return SpilloverResult(request=request, editor=edit.method, layer=L, edit=edit, probes=probes, fits=fits,
                           verdict=_verdict(probes, fits, notes, n_boot, seed), settings=settings)
