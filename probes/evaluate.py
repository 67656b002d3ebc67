"""Did the edit work, and what else did it do? CounterFact-style evaluation of an `Edit`.

``evaluate(model, edit)`` scores every request of the edit on the model as it is (*pre*), applies
the edit, scores again (*post*) and reverts it (``with edit.applied(model):``: bit-exact, also after
an error). Per request, before and after:

================  =====================================================================================
metric            definition (targets scored as ``" " + target``; p = exp(mean per-token log p))
================  =====================================================================================
efficacy          ES: ``p(new) > p(true)`` on the edit prompt (teacher-forced over all target tokens)
efficacy_dp       its magnitude: ``p(new) − p(true)``
paraphrase        PS: the fraction of paraphrases with ``p(new) > p(true)``; ``paraphrase_dp`` the mean Δp
neighbourhood     NS: the fraction of neighbour prompts with ``p(true) > p(new)``; ``neighbourhood_dp``
                  the mean ``p(true) − p(new)``
efficacy_em       exact match: every token of ``target_new`` is the argmax (MEMIT's ``*_correct``);
                  ``paraphrase_em`` likewise on paraphrases, ``neighbourhood_em`` of ``target_true``
                  on neighbours
neighbourhood_kl  mean KL(post ‖ pre) of the next-token distributions on neighbour prompts (nats;
                  0 before the edit by definition)
nplus             CounterFact+ (N+): NS on neighbour prompts prefixed by the edit prompt and its new
                  target, ``f"{prompt} {target_new}. {neighbour}"``; ``nplus_dp`` its magnitude
portability       exact match of each portability pair's answer (Yao et al.: questions whose answer
                  follows from the edit); ``portability_logp`` mean per-token log p(answer)
locality          exact match of each locality pair's answer (zsRE's ``loc``: should stay)
fluency           CounterFact's generation entropy: greedy ``n_gen_tokens``-token continuations of
                  the subject's prompt, word n-gram entropies (log₂) weighted 2/3 (bigrams) and
                  4/3 (trigrams), averaged (ROME's ``compute_n_gram_entropy``; words by a regex
                  tokenizer instead of NLTK's)
================  =====================================================================================

Metrics a request has no prompts for are NaN and left out of the means. A request without
``target_true`` (zsRE-style) gets the exact-match metrics only (and ``locality`` from its pairs). The aggregate score S is
the harmonic mean of mean ES, PS and NS. `EditReport` holds the per-request values
(``.to_dataframe()``: one row per request, ``{metric}_pre`` / ``{metric}_post`` columns) and
``.summary()``: means with percentile-bootstrap 95% CIs resampled by request (``S`` recomputed per
resample; ``Δ`` the paired post − pre change with its own CI).

``rewrite_scores(model, request)`` is the lightweight piece: ES/PS/NS and the log-probability
margins of one request on the model as it is now.

Cost: two batched teacher-forced passes (pre, post) over ``2 × (1 + n_paraphrases + 2 n_neighbours)
+ n_portability + n_locality`` rows per request, two next-token passes over the neighbours, and,
with ``fluency=True``, ``2 × n_gen_tokens`` single-token forwards per batch of equal-length prompts
(most of the time; ``fluency=False`` is far cheaper). Memory: one batch of activations
(``batch_size`` rows). Measured times: docs/guide.md, "Measured costs of the probes".

Dimension names: ``request``, ``resample``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from factscope.bridge import Bridge
from factscope.edit.handle import Edit
from factscope.facts import EditRequest
from factscope.predict import RewriteScores, check_generate, rewrite_scores
from factscope.result_files import ResultContents, Saveable, fact_from_json, fact_to_json, nest, unnest

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["RewriteScores", "rewrite_scores", "EditReport", "evaluate", "METRICS", "ngram_entropy",
           "harmonic_mean", "NPLUS_FORMAT"]

METRICS: tuple[str, ...] = (
    "efficacy", "paraphrase", "neighbourhood", "efficacy_dp", "paraphrase_dp", "neighbourhood_dp",
    "efficacy_em", "paraphrase_em", "neighbourhood_em", "neighbourhood_kl", "nplus", "nplus_dp",
    "portability", "portability_logp", "locality", "fluency",
)
"""The metrics `evaluate` reports, in order (defined in the module docstring)."""
NPLUS_FORMAT = "{prompt} {target_new}. {neighbour}"
_WORD = re.compile(r"\w+|[^\w\s]")


# --------------------------------------------------------------------------- fluency


def ngram_entropy(text: str, ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """CounterFact's generation entropy: ``mean_n(w_n · H_n)``, H_n the entropy (bits) of the word n-gram frequencies.

    Words are ``\\w+`` runs and single punctuation marks. A text with no n-grams of some order
    contributes 0 for that order (a constant text has entropy 0).
    """
    words = _WORD.findall(text)
    hs = []
    for n, w in zip(ns, weights, strict=True):
        counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        h = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        hs.append(w * h)
    return float(np.mean(hs))


def harmonic_mean(*xs: float) -> float:
    """The harmonic mean (0 if any is 0, NaN if any is NaN): CounterFact's score S of ES, PS and NS."""
    if any(math.isnan(x) for x in xs):
        return float("nan")
    if any(x <= 0 for x in xs):
        return 0.0
    return len(xs) / sum(1 / x for x in xs)


# --------------------------------------------------------------------------- the per-request metrics


@dataclass(frozen=True)
class _Rows:
    """Every prompt of every request, flattened, with owners: one teacher-forced batch."""

    prompts: list[str]
    targets: list[str]
    kind: list[str]  # es_new es_true ps_new ps_true ns_new ns_true np_new np_true port loc
    owner: list[int]


def _rows(requests: Sequence[EditRequest]) -> _Rows:
    P: list[str] = []
    T: list[str] = []
    K: list[str] = []
    O: list[int] = []

    def add(i: int, kind: str, prompts: Sequence[str], target: str) -> None:
        P.extend(prompts)
        T.extend([target] * len(prompts))
        K.extend([kind] * len(prompts))
        O.extend([i] * len(prompts))

    for i, r in enumerate(requests):
        nplus = [NPLUS_FORMAT.format(prompt=r.text, target_new=r.target_new, neighbour=nb) for nb in r.neighbours]
        for name, prompts in (("es", [r.text]), ("ps", r.paraphrases), ("ns", r.neighbours), ("np", nplus)):
            if r.target_true is None and name in ("ns", "np"):
                continue  # zsRE-style: no true object to keep on neighbours (their checks are in `locality`)
            add(i, f"{name}_new", prompts, r.target_new)
            if r.target_true is not None:
                add(i, f"{name}_true", prompts, r.target_true)
        for p, ans in r.portability:
            add(i, "port", [p], ans)
        for p, ans in r.locality:
            add(i, "loc", [p], ans)
    return _Rows(P, T, K, O)


def _per_request(model: Bridge, requests: Sequence[EditRequest], rows: _Rows, batch_size: int) -> dict[str, np.ndarray]:
    """``{metric: [request]}`` for every metric but the KL and fluency, on the model as it is."""
    from factscope.predict import target_scores

    s = target_scores(model, rows.prompts, rows.targets, batch_size=batch_size) if rows.prompts else None
    lp = s.logprob.double().numpy() if s is not None else np.zeros(0)
    em = s.exact.numpy().astype(float) if s is not None else np.zeros(0)
    at: dict[tuple[int, str], list[int]] = {}  # (request, row kind) -> row indices, built in one pass
    for j, (i, k) in enumerate(zip(rows.owner, rows.kind)):
        at.setdefault((i, k), []).append(j)
    out = {m: np.full(len(requests), np.nan) for m in METRICS if m not in ("neighbourhood_kl", "fluency")}
    for i in range(len(requests)):
        def get(k: str, x: np.ndarray = lp, i: int = i) -> np.ndarray:
            return x[at.get((i, k), [])]

        for name, m in (("es", "efficacy"), ("ps", "paraphrase"), ("ns", "neighbourhood"), ("np", "nplus")):
            new, true = get(f"{name}_new"), get(f"{name}_true")
            if not len(new):
                continue
            if len(true):
                dp = np.exp(new) - np.exp(true)  # p(new) − p(true), p the per-token geometric mean
                sign = -1.0 if name in ("ns", "np") else 1.0  # neighbours: the true target should win
                out[m][i] = float(np.mean(sign * (new - true) > 0))
                out[f"{m}_dp"][i] = float(np.mean(sign * dp))
            if name != "np":
                out[f"{m}_em"][i] = float(np.mean(get(f"{name}_true" if name == "ns" else f"{name}_new", em)))
        if len(get("port")):
            out["portability"][i] = float(get("port", em).mean())
            out["portability_logp"][i] = float(get("port").mean())
        if len(get("loc")):
            out["locality"][i] = float(get("loc", em).mean())
    return out


def _fluency(model: Bridge, requests: Sequence[EditRequest], n_tokens: int, batch_size: int,
             progress: bool) -> tuple[np.ndarray, list[str]]:
    from factscope.predict import generate

    texts = generate(model, [r.text for r in requests], max_new_tokens=n_tokens, batch_size=batch_size,
                     progress=progress)
    return np.array([ngram_entropy(t) for t in texts]), texts


def _neighbour_logprobs(model: Bridge, requests: Sequence[EditRequest], batch_size: int) -> Float[Tensor, "prompt d_vocab"]:
    from factscope.predict import next_token_logits

    prompts = [p for r in requests for p in r.neighbours]
    if not prompts:
        return torch.zeros(0, 0)
    return next_token_logits(model, prompts, batch_size=batch_size).double().log_softmax(-1)


def _kl_per_request(requests: Sequence[EditRequest], pre: Float[Tensor, "prompt d_vocab"],
                    post: Float[Tensor, "prompt d_vocab"]) -> Float[np.ndarray, "request"]:
    """Mean over each request's neighbours of KL(post ‖ pre), in nats, from log-probabilities."""
    from factscope.predict import kl_from_logprobs

    out = np.full(len(requests), np.nan)
    if pre.numel() == 0:
        return out
    kl = kl_from_logprobs(post, pre).numpy()  # [prompt]
    j = 0
    for i, r in enumerate(requests):
        n = len(r.neighbours)
        if n:
            out[i] = float(kl[j:j + n].mean())
        j += n
    return out


@dataclass(frozen=True, kw_only=True)
class _Scored:
    """Every request scored on the model as it is: one side (pre, or post with the edit applied).

    Attributes:
        metrics: ``{metric: [request]}`` every metric but ``neighbourhood_kl`` (which needs both sides).
        neighbour_lp: ``[prompt, d_vocab]`` next-token log-probabilities on every request's neighbours.
        generations: the greedy texts behind ``fluency`` (empty without it).
    """

    metrics: dict[str, np.ndarray]
    neighbour_lp: Float[Tensor, "prompt d_vocab"]
    generations: list[str]


def _side(model: Bridge, requests: Sequence[EditRequest], rows: _Rows, which: str, *, fluency: bool,
          n_gen_tokens: int, batch_size: int, bar: tqdm) -> _Scored:
    """Score one side: the teacher-forced metrics, the neighbours' next-token distributions, fluency."""
    bar.set_postfix_str(which)
    metrics = _per_request(model, requests, rows, batch_size)
    bar.update()
    neighbour_lp = _neighbour_logprobs(model, requests, batch_size)
    bar.update()
    metrics["fluency"], texts = np.full(len(requests), np.nan), []
    if fluency:
        metrics["fluency"], texts = _fluency(model, requests, n_gen_tokens, batch_size, False)
        bar.update()
    return _Scored(metrics=metrics, neighbour_lp=neighbour_lp, generations=texts)


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class EditReport(Saveable):
    """Every metric of every request, before (``pre``) and after (``post``) an edit.

    What `evaluate` returns. Cost: negligible, except `summary` (and `table`, `score`):
    ``n_boot`` bootstrap resamples per metric, each O(requests) (measured times: docs/guide.md,
    "Measured costs of the probes"). No model passes.

    Attributes:
        method: the editor's name (``edit.method``), or a label given to `evaluate`.
        requests: the requests scored, one per row.
        pre, post: ``{metric: [request]}`` float64 arrays (NaN where a request has no such prompts).
        generations: ``{"pre": [...], "post": [...]}`` the greedy texts behind ``fluency`` (empty without it).
        settings: n_gen_tokens, fluency, n_boot, seed, level, the edit's layers and fingerprint.
    """

    method: str
    requests: tuple[EditRequest, ...]
    pre: dict[str, np.ndarray]
    post: dict[str, np.ndarray]
    generations: dict[str, list[str]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    RESULT_KIND = "factscope.edit_report"
    RESULT_VERSION = 1

    def to_contents(self) -> ResultContents:
        """Arrays as tensors ``pre.{metric}`` / ``post.{metric}``; the rest as JSON meta (`save` writes it).

        Cost: negligible (no copies).
        """
        meta = {"method": self.method, "requests": [fact_to_json(r) for r in self.requests],
                "metrics": {"pre": list(self.pre), "post": list(self.post)}, "generations": self.generations,
                "settings": self.settings}
        return ResultContents({**nest("pre", self.pre), **nest("post", self.post)}, meta)

    @classmethod
    def from_contents(cls, contents: ResultContents) -> EditReport:
        """The report that `to_contents` described.

        Args:
            contents: its tensors and meta (from `factscope.result_files.load_result`).

        Cost: negligible.
        """
        t, meta = contents
        arrays = {w: {m: unnest(w, t)[m].numpy() for m in meta["metrics"][w]} for w in ("pre", "post")}
        return cls(method=meta["method"], requests=tuple(fact_from_json(r) for r in meta["requests"]), **arrays,
                   generations=meta["generations"], settings=meta["settings"])

    @staticmethod
    def concat(reports: Sequence[EditReport], *, method: str | None = None) -> EditReport:
        """One report from several: their requests' rows, in order.

        For single-fact ROME or KN edits each evaluated alone (CounterFact's protocol), pooled so that
        the CIs and `plot_report` cover all of them.

        Args:
            reports: `EditReport` s of the same model, scored with the same settings (fluency, generation
                length, bootstrap, N+ format); their edit layers may differ.
            method: the pooled report's label; default: the first report's.

        Returns:
            An `EditReport` whose ``pre``/``post`` arrays are the reports' concatenated, ``settings["layers"]``
            the union of their layers.

        Raises:
            ValueError: no reports, or reports from different models or scored with different settings.

        Cost: negligible (concatenates arrays; no model passes).
        """
        if not reports:
            raise ValueError("expected at least one EditReport to concatenate, got none")
        first = reports[0]
        keep = {k: v for k, v in first.settings.items() if k != "layers"}
        for i, r in enumerate(reports[1:], 1):
            other = {k: v for k, v in r.settings.items() if k != "layers"}
            if other != keep:
                diff = sorted(k for k in keep.keys() | other.keys() if keep.get(k) != other.get(k))
                raise ValueError(f"expected reports scored alike on one model, but report {i} differs from report 0 "
                                 f"in {diff}: {[other.get(k) for k in diff]} vs {[keep.get(k) for k in diff]}")
        return EditReport(
            method=method or first.method, requests=tuple(q for r in reports for q in r.requests),
            pre={m: np.concatenate([r.pre[m] for r in reports]) for m in first.pre},
            post={m: np.concatenate([r.post[m] for r in reports]) for m in first.post},
            generations={k: [g for r in reports for g in r.generations.get(k, [])] for k in first.generations},
            settings={**first.settings, "layers": sorted({l for r in reports for l in r.settings.get("layers", [])})})

    def to_dataframe(self) -> Any:
        """One row per request: subject, prompt, targets, then ``{metric}_pre`` and ``{metric}_post``."""
        import pandas as pd

        df = pd.DataFrame({
            "subject": [r.subject for r in self.requests], "prompt": [r.text for r in self.requests],
            "target_true": [r.target_true for r in self.requests], "target_new": [r.target_new for r in self.requests],
        })
        for m in METRICS:
            df[f"{m}_pre"] = self.pre[m]
            df[f"{m}_post"] = self.post[m]
        df.insert(0, "method", self.method)
        return df

    def score(self, which: str = "post") -> float:
        """S: the harmonic mean of mean efficacy, paraphrase and neighbourhood (NaNs left out).

        Args:
            which: ``"post"`` (default) or ``"pre"``.
        """
        d = self.pre if which == "pre" else self.post
        return harmonic_mean(*(float(np.nanmean(d[m])) if np.isfinite(d[m]).any() else float("nan")
                               for m in ("efficacy", "paraphrase", "neighbourhood")))

    def summary(self, *, n_boot: int | None = None, level: float | None = None, seed: int | None = None) -> Any:
        """One row per metric (and S): pre, post and post − pre, each with its bootstrap CI over requests.

        Columns: ``n`` (requests with the metric), ``pre``, ``pre_lo``, ``pre_hi``, ``post``,
        ``post_lo``, ``post_hi``, ``delta``, ``delta_lo``, ``delta_hi``. All requests are resampled
        together, so the pre and post values of a request stay paired.

        Args:
            n_boot: bootstrap resamples; ``None`` (default): ``settings["n_boot"]`` (2000).
            level: CI level; ``None``: ``settings["level"]`` (0.95).
            seed: resampling seed; ``None``: ``settings["seed"]`` (0).
        """
        import pandas as pd

        from factscope.probes.stats import bootstrap, percentile_ci

        n_boot = self.settings.get("n_boot", 2000) if n_boot is None else n_boot
        level = self.settings.get("level", 0.95) if level is None else level
        seed = self.settings.get("seed", 0) if seed is None else seed
        N = len(self.requests)
        recs = []
        for m in (*METRICS, "S"):
            def stat(idx: np.ndarray, d: dict[str, np.ndarray], m: str = m) -> float:
                if m == "S":
                    return harmonic_mean(*(_nanmean(d[k][idx]) for k in ("efficacy", "paraphrase", "neighbourhood")))
                return _nanmean(d[m][idx])

            row: dict[str, Any] = {"metric": m}
            row["n"] = N if m == "S" else int(np.isfinite(self.post[m]).sum())
            for which, d in (("pre", self.pre), ("post", self.post)):
                row[which] = stat(np.arange(N), d)
                row[f"{which}_lo"], row[f"{which}_hi"] = percentile_ci(
                    bootstrap(lambda i, d=d: stat(i, d), N, n_boot=n_boot, seed=seed), level)
            row["delta"] = row["post"] - row["pre"]
            row["delta_lo"], row["delta_hi"] = percentile_ci(
                bootstrap(lambda i: stat(i, self.post) - stat(i, self.pre), N, n_boot=n_boot, seed=seed), level)
            recs.append(row)
        return pd.DataFrame.from_records(recs).set_index("metric")

    def table(self) -> str:
        """The summary as a printable table (metrics with data only)."""
        from factscope.probes.stats import format_ci

        s = self.summary()
        s = s[(s["n"] > 0) & s[["pre", "post"]].notna().any(axis=1)]
        lines = [f"{self.method}: {len(self.requests)} request(s); {int(self.settings.get('level', 0.95) * 100)}% "
                 f"bootstrap CIs over requests",
                 f"{'metric':<18} {'n':>3}  {'pre':>24}  {'post':>24}  {'post − pre':>24}"]
        ci = partial(format_ci, fmt="6.3f", width=24)  # "  0.500 [ 0.400,  0.600]"
        for m, r in s.iterrows():
            lines.append(f"{m:<18} {int(r['n']):>3}  {ci(r['pre'], r['pre_lo'], r['pre_hi'])}  "
                         f"{ci(r['post'], r['post_lo'], r['post_hi'])}  {ci(r['delta'], r['delta_lo'], r['delta_hi'])}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def evaluate(
    model: Bridge,
    edit: Edit,
    requests: Sequence[EditRequest] | EditRequest | None = None,
    *,
    fluency: bool = True,
    n_gen_tokens: int = 100,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    batch_size: int = 32,
    method: str | None = None,
    progress: bool = True,
) -> EditReport:
    """CounterFact's metrics before and after an edit, with bootstrap CIs; the model is left as it was.

    See the module docstring for the metrics.

    Args:
        model: a bridge, as ``edit`` was computed on (its fingerprint must match) and without the
            edit applied.
        edit: an `factscope.edit.Edit`.
        requests: what to score; default ``edit.requests``. Others may be given (e.g. held-out facts,
            to see what a batch edit did to them).
        fluency: run the generation-entropy check (default ``True``; the slow part).
        n_gen_tokens: greedy tokens generated per request for fluency (default 100).
        n_boot, level, seed: the bootstrap behind `EditReport.summary`, resampled by request
            (defaults 2000, 0.95, 0).
        batch_size: rows per forward pass (default 32).
        method: a label for the report; default ``None``: ``edit.method``.
        progress: progress bars (default ``True``).

    Returns:
        `EditReport`. The model is left as it was found, bit for bit, also when scoring fails.

    Raises:
        TypeError / ValueError: not an Edit, no requests, a request that is not an `EditRequest`.
        `factscope.edit.handle.EditStateError`: the edit is already applied to this model.
        `factscope.edit.handle.FingerprintMismatchError`: the model is not the one the edit was
        computed on. ValueError: a ΔW whose layer or shape does not fit the model, or a non-finite
        value (`Edit.check_applicable`). All raised before the model is touched.

    Cost: two batched teacher-forced passes (pre, post) over ``2 × (1 + n_paraphrases +
    2 n_neighbours) + n_portability + n_locality`` rows per request, two next-token passes over
    the neighbours, and with ``fluency`` ``2 × n_gen_tokens`` single-token forwards per batch
    (most of the time). Memory: one batch of activations (``batch_size`` rows). Measured: docs/guide.md.
    """
    from tqdm.auto import tqdm

    from factscope.checks import as_requests

    if not isinstance(edit, Edit):
        raise TypeError(f"expected an Edit (what every factscope editor returns), got {type(edit).__name__}")
    reqs = as_requests(edit.requests if requests is None else requests)
    edit.check_applicable(model)  # evaluate applies and reverts it itself
    rows = _rows(reqs)
    if fluency:  # generation comes last; check that it fits the context before any pass
        check_generate(model, [r.text for r in reqs], n_gen_tokens)
    steps = 3 if fluency else 2  # targets, neighbours (, fluency) per side
    with tqdm(total=2 * steps, desc="evaluate", disable=not progress) as bar:
        pre = _side(model, reqs, rows, "pre", fluency=fluency, n_gen_tokens=n_gen_tokens, batch_size=batch_size,
                    bar=bar)
        with edit.applied(model):
            post = _side(model, reqs, rows, "post", fluency=fluency, n_gen_tokens=n_gen_tokens,
                         batch_size=batch_size, bar=bar)
    kl_pre = np.array([0.0 if r.neighbours else np.nan for r in reqs])  # KL(pre ‖ pre)
    kl_post = _kl_per_request(reqs, pre.neighbour_lp, post.neighbour_lp)
    settings = dict(fluency=fluency, n_gen_tokens=n_gen_tokens, n_boot=n_boot, level=level, seed=seed,
                    layers=sorted(edit.deltas), fingerprint=edit.fingerprint, nplus_format=NPLUS_FORMAT)
    gens = {} if not fluency else {"pre": pre.generations, "post": post.generations}
    return EditReport(method=method or edit.method, requests=reqs, pre={**pre.metrics, "neighbourhood_kl": kl_pre},
                      post={**post.metrics, "neighbourhood_kl": kl_post}, generations=gens, settings=settings)
