"""Are a fact's knowledge neurons a stable property of the fact? Split-half and across-seed overlap.

If a fact is stored in a few neurons (Dai et al. 2022), the neurons found from one set of prompts
about it should be found again from another. ``neuron_overlap(model, fact)`` splits the fact's
prompts at random into two disjoint halves, finds the knowledge neurons of each half
(`factscope.locate.knowledge_neurons`: integrated gradients, coarse threshold, refinement to 2–5 neurons) and
measures their Jaccard overlap ``|A ∩ B| / |A ∪ B|``:

- **split-half**: the two halves of one seed's split (one number per seed);
- **across seeds**: every pair of sets from different seeds' splits (four pairs per pair of seeds;
  the halves of different splits share prompts, so these overlaps are not independent of each other).

**Random baseline.** For each pair (A, B), ``n_random`` pairs of random sets drawn uniformly without
replacement within each layer, with A's and B's per-layer counts (so a pair of sets that both sit in
layer 3 is compared with random pairs that both sit in layer 3, where chance overlap is highest).
Reported: the baseline mean, its central 95% interval, and ``p_value`` = (1 + #draws with
J ≥ observed) / (1 + n_random). The summary's aggregate p-value compares the mean observed Jaccard
of a kind with the mean over its pairs of each draw.

Locality predicts split-half and across-seed Jaccards far above the baseline (near 1: the same few
neurons whatever the prompts). Jaccards near the baseline refute it: the "knowledge neurons" then
depend on which prompts were used, not on the fact.

**Prompts.** Built-in facts have their prompt and 3 paraphrases, and `neurons` needs at least 3
prompts per run, so halves need 6 prompts at least. By default the prompts are the fact's text and
its paraphrases, topped up to ``n_prompts`` with the fact's text after ROME's model-written context
prefixes (`factscope.edit.rome.context_templates` with the default `ROMEConfig`, in order:
``"<prefix>. <fact text>"``; cached per model; a prefix the model wrote twice is used once, so at
most 4 + 20 prompts for a built-in fact). The prefixes change the context but not the question,
so they are paraphrases in the weakest sense: they test whether the neurons depend on the context
around the same question. Pass ``prompts=`` to use your own (at least 6).

**How it is computed.** A neuron's IG attribution on one prompt does not depend on the other prompts
(`neurons` attributes each prompt on its own), so `neurons` runs once over all the prompts and each
half's set is then selected from that half's rows exactly as `neurons` would select it on that half
alone (`coarse_neurons` per prompt, `refine_neurons` on the half's mean attribution). The tests
check that this equals calling `neurons` on each half.

Cost: one knowledge-neuron run over ``n_prompts`` prompts (IG: ``n_prompts × layers × steps`` rows),
whatever the number of seeds (`neurons` alone on each half would be ``2 × len(seeds)`` runs over
half the prompts each). The baseline draws ``n_random`` random masks of ``[d_mlp]`` per pair and
shared layer: O(pairs · layers · n_random · d_mlp) (15 pairs for 3 seeds). Measured times:
docs/guide.md. Memory: `neurons`' (about 1 GiB of logits at its default batch size) plus the
attributions ``n_prompts × n_layers × d_mlp`` floats.

Dimension names: ``pair`` compared pairs of sets, ``draw`` random baseline draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from factscope.arch import arch_of
from factscope.bridge import Bridge
from factscope.facts import EditRequest, Fact
from factscope.locate.knowledge_neurons import NeuronResult
from factscope.probes.stats import format_ci, percentile_ci
from factscope.result_files import ResultContents, Saveable, fact_from_json, fact_to_json, nest, unnest

__all__ = ["OverlapResult", "Pair", "neuron_overlap", "jaccard", "random_jaccards", "overlap_prompts", "MIN_PROMPTS"]

MIN_PROMPTS = 6  # two halves of at least 3 prompts, `neurons`' minimum
Neuron = tuple[int, int]


def jaccard(a: Iterable[Neuron], b: Iterable[Neuron]) -> float:
    """``|A ∩ B| / |A ∪ B|`` of two neuron sets; NaN when both are empty."""
    a, b = set(a), set(b)
    union = len(a | b)
    return len(a & b) / union if union else math.nan


def _counts(s: Iterable[Neuron]) -> dict[int, int]:
    out: dict[int, int] = {}
    for l, _ in s:
        out[l] = out.get(l, 0) + 1
    return out


def _subsets(n: int, d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, d]`` boolean masks, each row a uniform ``k``-subset of ``range(d)`` (the indices of the
    ``k`` smallest of ``d`` i.i.d. uniforms)."""
    mask = np.zeros((n, d), dtype=bool)
    if k > 0:
        idx = np.argpartition(rng.random((n, d)), k - 1, axis=1)[:, :k]
        np.put_along_axis(mask, idx, True, axis=1)
    return mask


def random_jaccards(a: Iterable[Neuron], b: Iterable[Neuron], d_mlp: int, *, n_random: int,
                    rng: np.random.Generator) -> Float[np.ndarray, "draw"]:
    """Jaccards of ``n_random`` random pairs of sets matched to ``a`` and ``b`` by layer and count.

    In each layer, A' gets as many neurons as ``a`` has there and B' as many as ``b`` has, each drawn
    uniformly without replacement from the layer's ``d_mlp`` neurons, A' and B' independently.
    NaN draws only when both sets are empty.
    """
    ca, cb = _counts(a), _counts(b)
    if any(c > d_mlp for c in (*ca.values(), *cb.values())):
        raise ValueError(f"expected at most d_mlp={d_mlp} neurons per layer, got per-layer counts {ca} and {cb}")
    na, nb = sum(ca.values()), sum(cb.values())
    inter = np.zeros(n_random, dtype=np.int64)
    for l in sorted(set(ca) & set(cb)):  # layers where only one set has neurons cannot overlap
        inter += (_subsets(n_random, d_mlp, ca[l], rng) & _subsets(n_random, d_mlp, cb[l], rng)).sum(1)
    union = na + nb - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def overlap_prompts(model: Bridge, fact: Fact | EditRequest, n_prompts: int = 12) -> tuple[str, ...]:
    """The default prompts: the fact's text and paraphrases, topped up to ``n_prompts`` with the text
    after ROME's context prefixes (see the module docstring)."""
    from factscope.edit.rome import ROMEConfig
    from factscope.edit.templates import context_templates

    own = tuple(dict.fromkeys((fact.text, *getattr(fact, "paraphrases", ()))))  # distinct, in order
    if len(own) >= n_prompts:
        return own[:n_prompts]
    prefixed = [p for p in dict.fromkeys(t.format(fact.text) for t in context_templates(model, ROMEConfig()))
                if p not in own]  # a model can write the same prefix twice: each prompt once
    need = n_prompts - len(own)
    if need > len(prefixed):
        raise ValueError(f"expected n_prompts <= {len(own) + len(prefixed)} (the fact's {len(own)} prompts plus "
                         f"{len(prefixed)} distinct context-prefixed ones), got {n_prompts}; pass prompts= instead")
    return own + tuple(prefixed[:need])


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, kw_only=True)
class Pair:
    """One compared pair of neuron sets and its random baseline.

    Attributes:
        kind: ``"split-half"`` or ``"across-seed"``.
        a, b: ``(seed, half)`` of each set (half 0 or 1).
        jaccard: the observed overlap.
        baseline_mean, baseline_lo, baseline_hi: mean and central 95% interval of the random draws.
        p_value: (1 + #draws ≥ observed) / (1 + n_random); NaN when the observed Jaccard is NaN.
    """

    kind: str
    a: tuple[int, int]
    b: tuple[int, int]
    jaccard: float
    baseline_mean: float
    baseline_lo: float
    baseline_hi: float
    p_value: float


@dataclass(frozen=True, kw_only=True)
class OverlapResult(Saveable):
    """Knowledge-neuron sets per seed and half, their overlaps, and the matched random baseline.

    What `neuron_overlap` returns. Cost: negligible (plain data; the draws are stored).

    Attributes:
        fact: the fact.
        prompts: all prompts (halves index into them).
        seeds: the split seeds.
        halves: seed -> ``(half 0, half 1)`` prompt indices (sorted).
        sets: seed -> ``(set of half 0, set of half 1)``, each a sorted tuple of ``(layer, index)``.
        pairs: every compared pair (split-half first, then across-seed), with its baseline.
        draws: ``[pair, draw]`` random-baseline Jaccards, rows in ``pairs`` order.
        attribution: the `NeuronResult` of the one run over all prompts (per-prompt attributions).
        settings: n_prompts, n_random, steps, threshold, refine, layers, baseline_seed, d_mlp.
    """

    fact: Fact | EditRequest
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    halves: dict[int, tuple[tuple[int, ...], tuple[int, ...]]]
    sets: dict[int, tuple[tuple[Neuron, ...], tuple[Neuron, ...]]]
    pairs: tuple[Pair, ...]
    draws: Float[np.ndarray, "pair draw"]
    attribution: Any
    settings: dict[str, Any] = field(default_factory=dict)

    RESULT_KIND = "factscope.overlap"
    RESULT_VERSION = 1

    def to_contents(self) -> ResultContents:
        """``draws`` and the attribution's tensors (under ``attribution.``) as tensors; the rest as JSON meta.

        Cost: negligible (no copies).
        """
        tensors: dict[str, Any] = {"draws": self.draws}
        att = None
        if self.attribution is not None:
            att_tensors, att = self.attribution.to_contents()
            tensors.update(nest("attribution", att_tensors))
        meta = {"fact": fact_to_json(self.fact), "prompts": self.prompts, "seeds": self.seeds,
                "halves": [[s, *h] for s, h in self.halves.items()], "sets": [[s, *h] for s, h in self.sets.items()],
                "pairs": [asdict(p) for p in self.pairs], "attribution": att, "settings": self.settings}
        return ResultContents(tensors, meta)

    @classmethod
    def from_contents(cls, contents: ResultContents) -> OverlapResult:
        """The result that `to_contents` described.

        Args:
            contents: its tensors and meta (from `factscope.result_files.load_result`).

        Cost: negligible.
        """
        t, meta = contents
        att = meta["attribution"]
        if att is not None:
            att = NeuronResult.from_contents(ResultContents(unnest("attribution", t), att))
        return cls(fact=fact_from_json(meta["fact"]), prompts=tuple(meta["prompts"]), seeds=tuple(meta["seeds"]),
                   halves={s: (tuple(h0), tuple(h1)) for s, h0, h1 in meta["halves"]},
                   sets={s: tuple(tuple(tuple(n) for n in h) for h in (h0, h1)) for s, h0, h1 in meta["sets"]},
                   pairs=tuple(Pair(**{**p, "a": tuple(p["a"]), "b": tuple(p["b"])}) for p in meta["pairs"]),
                   draws=t["draws"].numpy(), attribution=att, settings=meta["settings"])

    @property
    def split_half(self) -> dict[int, float]:
        """seed -> Jaccard of its two halves' sets."""
        return {p.a[0]: p.jaccard for p in self.pairs if p.kind == "split-half"}

    @property
    def across_seed(self) -> tuple[float, ...]:
        """Jaccards of every pair of sets from different seeds."""
        return tuple(p.jaccard for p in self.pairs if p.kind == "across-seed")

    def _aggregate(self, kind: str) -> dict[str, Any]:
        idx = [i for i, p in enumerate(self.pairs) if p.kind == kind]
        obs = np.array([self.pairs[i].jaccard for i in idx], dtype=float)
        if not idx or not np.isfinite(obs).any():
            return {"kind": kind, "pairs": len(idx), "jaccard": math.nan, "baseline_mean": math.nan,
                    "baseline_lo": math.nan, "baseline_hi": math.nan, "p_value": math.nan}
        keep = [i for i, o in zip(idx, obs) if np.isfinite(o)]
        mean_obs = float(np.nanmean(obs))
        rand = np.nanmean(self.draws[keep], axis=0)  # [draw]: each draw's mean over the pairs
        lo, hi = percentile_ci(rand)
        p = (1 + int((rand >= mean_obs - 1e-12).sum())) / (1 + rand.size)
        return {"kind": kind, "pairs": len(idx), "jaccard": mean_obs, "baseline_mean": float(np.nanmean(rand)),
                "baseline_lo": float(lo), "baseline_hi": float(hi), "p_value": p}

    def to_dataframe(self) -> Any:
        """One row per compared pair: kind, seeds and halves, set sizes, Jaccard, baseline, p-value."""
        import pandas as pd

        rows = []
        for p in self.pairs:
            sa, sb = self.sets[p.a[0]][p.a[1]], self.sets[p.b[0]][p.b[1]]
            rows.append({"kind": p.kind, "seed_a": p.a[0], "half_a": p.a[1], "seed_b": p.b[0], "half_b": p.b[1],
                         "n_a": len(sa), "n_b": len(sb), "n_common": len(set(sa) & set(sb)), "jaccard": p.jaccard,
                         "baseline_mean": p.baseline_mean, "baseline_lo": p.baseline_lo,
                         "baseline_hi": p.baseline_hi, "p_value": p.p_value})
        return pd.DataFrame(rows)

    def summary(self) -> Any:
        """One row per kind (split-half, across-seed): mean Jaccard, baseline mean and 95% interval, p.

        The baseline's mean and interval are for the mean over the kind's pairs, and so is the p-value.
        """
        import pandas as pd

        return pd.DataFrame([self._aggregate(k) for k in ("split-half", "across-seed")])

    def __str__(self) -> str:
        s = self.settings
        h0, h1 = self.halves[self.seeds[0]]
        head = (f"Knowledge-neuron overlap for {self.fact.text!r}: {len(self.prompts)} prompts split in halves of "
                f"{len(h0)}/{len(h1)}, seeds {list(self.seeds)}, {s['n_random']} random draws")
        lines = [head]
        for seed in self.seeds:
            a, b = self.sets[seed]
            lines.append(f"  seed {seed}: {_fmt(a)} vs {_fmt(b)}  J = {self.split_half[seed]:.3f}")
        for agg in (self._aggregate(k) for k in ("split-half", "across-seed")):
            if agg["pairs"]:
                lines.append(f"  {agg['kind']:<11} mean J = {agg['jaccard']:.3f} over {agg['pairs']} pair(s); random "
                             f"{format_ci(agg['baseline_mean'], agg['baseline_lo'], agg['baseline_hi'], fmt='.3f')}, "
                             f"p = {agg['p_value']:.3g}")
        return "\n".join(lines)


def _fmt(s: Sequence[Neuron]) -> str:
    return "{" + ", ".join(f"L{l}.{i}" for l, i in s) + "}"


# --------------------------------------------------------------------------- the probe


def _check_prompts(model: Bridge, fact: Any, prompts: Any, n_prompts: Any) -> tuple[str, ...]:
    if prompts is None:
        if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < MIN_PROMPTS:
            raise ValueError(f"expected n_prompts to be an integer >= {MIN_PROMPTS} (two halves of at least 3 "
                             f"prompts), got {n_prompts!r}")
        return overlap_prompts(model, fact, n_prompts)
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"expected prompts as a sequence of strings, got {type(prompts).__name__}")
    out = tuple(prompts)
    for i, p in enumerate(out):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"expected non-empty prompt strings, got prompts[{i}] = {p!r}")
    if len(out) < MIN_PROMPTS:
        raise ValueError(f"expected at least {MIN_PROMPTS} prompts (two disjoint halves of at least 3, the minimum "
                         f"`neurons` refines over), got {len(out)}")
    if len(set(out)) != len(out):
        raise ValueError("expected distinct prompts (a repeated prompt would sit in both halves), got duplicates")
    return out


def _split(n: int, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A seeded random split of ``range(n)`` into halves of ``n // 2`` and ``n − n // 2`` (sorted)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return tuple(sorted(perm[:n // 2])), tuple(sorted(perm[n // 2:]))


def _select(attributions: Any, idx: Sequence[int], threshold: float, refine: float) -> tuple[Neuron, ...]:
    """The neurons `neurons` selects on the prompts ``idx`` alone (its coarse + refine steps)."""
    from factscope.locate.knowledge_neurons import coarse_neurons, refine_neurons

    att = attributions[list(idx)]  # [prompt, layer, d_mlp]
    scores = torch.nan_to_num(att.mean(0), nan=-math.inf)
    ref = refine_neurons([coarse_neurons(x, threshold) for x in att], scores, refine=refine)
    return tuple(sorted((int(l), int(i)) for l, i in ref.neurons))


def neuron_overlap(
    model: Bridge,
    fact: Fact | EditRequest,
    *,
    prompts: Sequence[str] | None = None,
    n_prompts: int = 12,
    seeds: Sequence[int] = (0, 1, 2),
    n_random: int = 1000,
    steps: int = 20,
    threshold: float = 0.2,
    refine: float = 0.7,
    layers: Sequence[int] | None = None,
    baseline_seed: int = 0,
    progress: bool = True,
) -> OverlapResult:
    """Split-half and across-seed Jaccard overlap of a fact's knowledge neurons, against chance.

    Args:
        model: a bridge (not changed).
        fact: a `Fact` (its ``target``) or `EditRequest` (its ``target_true``).
        prompts: at least 6 distinct prompts about the fact; default `overlap_prompts` (``n_prompts``).
        n_prompts: how many default prompts (default 12, at least 6; ignored with ``prompts=``).
        seeds: one random split of the prompts per seed (default ``(0, 1, 2)``).
        n_random: random-baseline draws per compared pair (default 1000).
        steps, threshold, refine: `factscope.locate.knowledge_neurons`' IG steps, coarse threshold and starting
            refinement fraction (defaults 20, 0.2, 0.7). layers: the layers attributed (default all).
        baseline_seed: seeds the baseline draws (default 0; the splits use ``seeds``; nothing else is
            random).
        progress: `neurons`' progress bar (default ``True``).

    Returns:
        `OverlapResult` (``.summary()``, ``.to_dataframe()``, ``print(result)``).

    Raises:
        TypeError / ValueError: a bad fact, fewer than 6 prompts, no or repeated seeds, bad counts,
            all before any attribution. The model is not changed.

    Cost: one knowledge-neuron run over all the prompts, whatever the number of seeds (IG:
    ``n_prompts × layers × steps`` rows), plus ``n_random`` baseline draws per pair (15 pairs for 3
    seeds); measured times: docs/guide.md. Memory: `neurons`' (~1 GiB of logits at its default
    batch size).
    """
    from factscope.locate.knowledge_neurons import neurons

    if not isinstance(fact, (Fact, EditRequest)):
        raise TypeError(f"expected a Fact or an EditRequest, got {type(fact).__name__}")
    seeds = (seeds,) if isinstance(seeds, int) and not isinstance(seeds, bool) else tuple(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"expected seeds as a non-empty sequence of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"expected distinct seeds, got {list(seeds)}")
    for name, v in (("n_random", n_random), ("baseline_seed", baseline_seed)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "n_random" else 0):
            raise ValueError(f"expected {name} to be an integer >= {1 if name == 'n_random' else 0}, got {v!r}")
    texts = _check_prompts(model, fact, prompts, n_prompts)  # the default ones need the model's templates
    d_mlp = arch_of(model).d_mlp

    res = neurons(model, fact, prompts=texts, steps=steps, threshold=threshold, refine=refine, layers=layers,
                  progress=progress)
    halves = {s: _split(len(texts), s) for s in seeds}
    sets = {s: tuple(_select(res.attributions, h, threshold, refine) for h in halves[s]) for s in seeds}

    keys: list[tuple[str, tuple[int, int], tuple[int, int]]] = [("split-half", (s, 0), (s, 1)) for s in seeds]
    keys += [("across-seed", (s, h), (t, k)) for i, s in enumerate(seeds) for t in seeds[i + 1:]
             for h in (0, 1) for k in (0, 1)]
    rng = np.random.default_rng(baseline_seed)
    pairs, draws = [], []
    for kind, a, b in keys:
        A, B = sets[a[0]][a[1]], sets[b[0]][b[1]]
        j = jaccard(A, B)
        r = random_jaccards(A, B, d_mlp, n_random=n_random, rng=rng)
        draws.append(r)
        finite = r[np.isfinite(r)]
        lo, hi = percentile_ci(finite)
        p = (1 + int((finite >= j - 1e-12).sum())) / (1 + finite.size) if math.isfinite(j) else math.nan
        mean = float(finite.mean()) if finite.size else math.nan
        pairs.append(Pair(kind=kind, a=a, b=b, jaccard=j, baseline_mean=mean, baseline_lo=float(lo),
                          baseline_hi=float(hi), p_value=p))
    settings = dict(n_prompts=len(texts), n_random=n_random, steps=steps, threshold=threshold, refine=refine,
                    layers=list(res.layers), baseline_seed=baseline_seed, d_mlp=d_mlp,
                    default_prompts=prompts is None)
    return OverlapResult(fact=fact, prompts=texts, seeds=seeds, halves=halves, sets=sets, pairs=tuple(pairs),
                         draws=np.stack(draws), attribution=res, settings=settings)
