"""MEMIT (Meng et al. 2023): write many facts at once into a range of MLP layers.

For requests r = 1..n and edited layers l₁ < … < l_L (the last one, l_L, is where the targets live):

1. **z** — per request, the residual stream leaving block l_L at the subject's last token is moved
   to ``z = h + δ``. δ is optimised with Adam on the templates (``"{}"`` plus five model-written
   10-token prefixes, MEMIT's ``[[10, 5]]``) to minimise
   ``NLL(target_new | template prompt) + kl_factor · KL(p_δ ‖ p_0)("{subject} is a") + v_weight_decay · ‖δ‖ / ‖h‖²``,
   clamping ``‖δ‖ ≤ clamp_norm_factor · ‖h‖`` (0.75) and freezing each request once its NLL is below
   ``early_stop_loss``. Requests run in chunks of ``z_chunk``; positions before the chunk's earliest
   subject-last-token column are computed once per chunk (a KV cache) and only the rest runs per step.
2. **Per layer l, in order** — re-collect, on the model with the earlier layers' updates applied,
   the keys K (``[n, d_mlp]``: the MLP key at the subject's last token, averaged over the templates)
   and, on the bare prompt, the residual h at l_L and the MLP output at l. The layer's share of the
   remaining error is ``R = (z − h) / (layers left)``. Without a post-norm the MLP's raw output must
   move by R. **With a post-norm** (Gemma: ``mlp_out = g ⊙ raw / rms(raw)``) it cannot simply move by
   R: the share is mapped back through the norm by `invert_post_norm`, which finds the raw output
   whose normalised value is closest to ``mlp_out + R`` (exact when reachable; scale-invariant, so
   the raw scale is kept as close to the current one as possible). Then
   ``ΔW = (λC + KᵀK)⁻¹ Kᵀ R_raw`` (``λ = mom2_update_weight``, C = E[kkᵀ] from
   `factscope.edit.covariance`), a float64 Cholesky solve, never an inverse. ΔW minimises
   ``‖K ΔW − R_raw‖² + λ tr(ΔWᵀ C ΔW)``: the new keys get their residuals, keys typical of C move little.
3. The residual error ``‖z − h‖`` before each layer and after the last is recorded in
   ``edit.info["residual_error"]``. MEMIT's additive-residual assumption says it should shrink layer by
   layer; on Gemma 3 270M it does not (e.g. 171 → 455 → 544 → 625 → 606 → 219 over layers 2–6): the
   later blocks respond strongly to an early update, and only the last layer closes the gap
   (``benchmarks/bench_memit.py``; docs/guide.md, "The residual error does not shrink").

Layers: ``layers=None`` takes ``config.n_layers`` (5) layers ending at the layer the causal-tracing
profile recommends (`factscope.locate.recommended_layer`), e.g. 2–6 on Gemma 3 270M.

Cost (n requests, T = 6 templates, L edited layers, Gemma 3 270M on 2 CPU threads)
----------------------------------------------------------------------------------
- z: ``v_steps`` forward+backward passes over ``n (T + 1)`` rows, from the chunk's first subject
  token on, each with a 262k-vocabulary log-softmax at the target positions. The bulk of the time;
  early stopping cuts it. See ``benchmarks/bench_memit.py`` for measured seconds per request.
- keys: L forwards of ``n T`` rows truncated at the subject, stopped after block l_L.
- solve: L Cholesky factorisations of ``d_mlp × d_mlp`` (Gemma: 2048², ~0.1 s each) plus
  ``d_mlp² n`` flops.
- Peak memory (`estimate_memory`): the C's (``L d_mlp² · 8`` B: 168 MB on Gemma), two ``d_mlp²``
  float64 work matrices, the keys and their solve (``2 n d_mlp · 8`` B: 330 MB at n = 10,000), the
  deltas (low rank ``n (d_mlp + d_model)`` or dense ``d_mlp d_model`` per layer, whichever is
  smaller), plus one z chunk's activations, which do not grow with n (about ``z_chunk × 80`` MB).

Dimension names: ``request`` edit requests, ``row`` prompts in a batch, ``d_mlp`` keys, ``d_model``
residual / values.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from factscope.arch import UnsupportedArchitectureError, arch_of
from factscope.checks import as_requests, available_bytes
from factscope.facts import EditRequest, Fact
from factscope.kv import run_after, run_cached
from factscope.tokens import check_request, encode, pad_left, subject_span, target_ids
from factscope.bridge import Bridge
from factscope.arch import context_of

__all__ = ["MEMITConfig", "memit", "ZResult", "compute_zs", "collect_keys", "invert_post_norm", "post_norm_gain",
           "memit_solve", "choose_layers", "estimate_memory", "check_requests"]


@dataclass(frozen=True, kw_only=True)
class MEMITConfig:
    """MEMIT's settings (defaults: the paper's GPT-J hyper-parameters, except λ; see below).

    The paper's values come from `hparams/MEMIT/EleutherAI_gpt-j-6B.json`. Cost: negligible (plain
    data, validated on construction); ``v_steps``, ``z_chunk`` and ``key_chunk`` shape `memit`'s cost.

    Attributes:
        n_layers: how many layers ``layers=None`` edits, ending at the traced layer (GPT-J: 3–8, six; we take 5).
        mom2_update_weight: λ, the weight of the key statistics C against the new keys. ``None``
            (default): GPT-J's 15000 scaled by ``d_mlp / 16384``, i.e. 1875 on Gemma 3 270M. λ is only
            meaningful relative to the key dimension: a typical key has ``E[kᵀC⁻¹k] = d_mlp``, and
            an update lands the fraction ``q / (1 + q)``, ``q = kᵀC⁻¹k / λ``, of a lone key's residual.
            The paper's 15000 on Gemma lands ~10% per layer and the edits fail (ES 0 on 6 facts);
            1875 gives ES 1.0 there (``benchmarks/bench_memit.py``).
        context_lengths: ``(tokens, count)`` pairs of model-written template prefixes (MEMIT: ``[[10, 5]]``).
        context_top_k: top-k sampling for those prefixes. seed: seeds them (nothing else is random).
        v_steps: Adam steps for each δ (25). v_lr: Adam's learning rate (0.5).
        v_weight_decay: weight of ``‖δ‖ / ‖h‖²`` (0.5). clamp_norm_factor: ``‖δ‖ ≤ factor · ‖h‖`` (0.75).
        kl_factor: weight of the KL term on ``essence_prompt`` (0.0625).
        early_stop_loss: a request stops once its target NLL is below this (0.05; MEMIT tests the total loss).
        z_chunk: requests optimised together (memory grows linearly with it, time barely).
        key_chunk: prompts per key-collection forward.
        corpus, n_tokens: where C comes from (`factscope.edit.covariance`); ``None``: its default.
        max_memory_gb: refuse batches whose `estimate_memory` exceeds this; ``None``: the memory the
            system reports available.
    """

    n_layers: int = 5
    mom2_update_weight: float | None = None
    context_lengths: tuple[tuple[int, int], ...] = ((10, 5),)
    context_top_k: int = 5
    seed: int = 0
    v_steps: int = 25
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    essence_prompt: str = "{} is a"
    early_stop_loss: float = 0.05
    z_chunk: int = 16
    key_chunk: int = 256
    corpus: Any = "auto"
    n_tokens: int | None = None
    max_memory_gb: float | None = None

    def __post_init__(self) -> None:
        for name in ("n_layers", "v_steps", "context_top_k", "z_chunk", "key_chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{type(self).__name__}: expected {name} to be a positive integer, got {v!r}")
        if self.mom2_update_weight is not None and not self.mom2_update_weight > 0:
            raise ValueError(f"{type(self).__name__}: expected mom2_update_weight > 0 or None, got {self.mom2_update_weight!r}")
        for name in ("v_lr", "clamp_norm_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{type(self).__name__}: expected {name} > 0, got {getattr(self, name)!r}")
        for name in ("v_weight_decay", "kl_factor", "early_stop_loss"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{type(self).__name__}: expected {name} >= 0, got {getattr(self, name)!r}")
        if self.essence_prompt.count("{}") != 1:
            raise ValueError(f"{type(self).__name__}: expected essence_prompt with one '{{}}', got {self.essence_prompt!r}")
        if any(n < 1 or c < 0 for n, c in self.context_lengths):
            raise ValueError(f"{type(self).__name__}: expected (tokens >= 1, count >= 0) pairs, got {self.context_lengths!r}")


# --------------------------------------------------------------------------- input checks


def check_requests(model: Bridge, requests: Any, what: str = "MEMIT") -> list[EditRequest]:
    """The requests as a list, validated; duplicates dropped and conflicts warned about.

    Raises ``ValueError`` / ``TypeError`` for an empty list, a non-request, or a subject missing from
    its prompt (before any work).
    """
    try:
        requests = as_requests(requests)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{what}: {e}") from None
    out: list[EditRequest] = []
    seen: dict[str, EditRequest] = {}
    dupes = 0
    for r in requests:
        key = r.text
        if key in seen:
            if seen[key].target_new == r.target_new:
                dupes += 1
                continue
            warnings.warn(
                f"{what}: {key!r} is asked to become both {seen[key].target_new!r} and {r.target_new!r}. Both "
                f"requests have the same key (the subject's last token in the same prompts), so the least-squares "
                f"update maps that key to the average of their two targets: expect neither to win.", stacklevel=3)
        else:
            seen[key] = r
        out.append(r)
    if dupes:
        warnings.warn(f"{what}: dropped {dupes} exact duplicate request(s)", stacklevel=3)
    for r in out:
        check_request(model, r, what=what)  # subject, target, context length
    return out


def choose_layers(model: Bridge, n_layers: int = 5, *, progress: bool = True) -> tuple[list[int], str]:
    """``n_layers`` consecutive layers ending at the traced layer (`recommended_layer`), and why."""
    from factscope.locate.profile import recommended_layer

    choice = recommended_layer(model, progress=progress)
    top = choice.layer
    layers = list(range(max(0, top - n_layers + 1), top + 1))
    return layers, f"{len(layers)} layers ending at the traced layer {top} ({choice.reason})"


def estimate_memory(model: Bridge, n_requests: int, n_layers: int, config: MEMITConfig = MEMITConfig()) -> int:
    """Peak bytes MEMIT needs beyond the model, for ``n_requests`` over ``n_layers`` layers (module docstring)."""
    a = arch_of(model)
    f64 = 8
    stats = n_layers * a.d_mlp ** 2 * f64 + 2 * a.d_mlp ** 2 * f64
    keys = 2 * n_requests * a.d_mlp * f64 + 4 * n_requests * a.d_model * f64
    low_rank = n_requests * (a.d_mlp + a.d_model)
    deltas = n_layers * min(low_rank, a.d_mlp * a.d_model) * f64
    # one z chunk: ~24 rows-tokens of activations per request row through every block, plus the log-softmax
    rows = config.z_chunk * (1 + sum(c for _, c in config.context_lengths) + 1)
    acts = rows * 24 * a.n_layers * (12 * a.d_model + 4 * a.d_mlp) * 4 + rows * 2 * 3 * a.d_vocab * 4
    return int(stats + keys + deltas + acts)


def _available_bytes() -> int | None:
    return available_bytes()  # factscope.checks: MemAvailable within any cgroup limit (CPU), or CUDA's free


def _check_memory(model: Bridge, n: int, n_layers: int, config: MEMITConfig, what: str) -> None:
    need = estimate_memory(model, n, n_layers, config)
    cap = config.max_memory_gb * 2 ** 30 if config.max_memory_gb is not None else _available_bytes()
    if cap is not None and need > cap:
        raise MemoryError(f"{what}: {n} requests over {n_layers} layers need about {need / 2**30:.1f} GiB "
                          f"(estimate_memory), but only {cap / 2**30:.1f} GiB is available; split the requests "
                          f"into smaller batches or lower z_chunk ({config.z_chunk})")


# --------------------------------------------------------------------------- rows


def _template_rows(model: Bridge, r: EditRequest, templates: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """Every template filled with the request's prompt and subject: token rows and the subject's last token."""
    rows, last = [], []
    for t in templates:
        text = t.format(r.prompt)
        _, s1 = subject_span(model, Fact(text, r.subject))
        rows.append(encode(model, text.format(r.subject)))
        last.append(s1 - 1)
    return rows, last


@dataclass(frozen=True)
class ZResult:
    """Targets of `compute_zs` (float64, CPU).

    Attributes:
        z: ``[request, d_model]`` the target residual leaving the last edited layer.
        h: ``[request, d_model]`` that residual before the edit (bare prompt, subject's last token).
        steps: Adam steps each request took; p_new: its final mean p(target_new) over the templates.
    """

    z: Float[Tensor, "request d_model"]
    h: Float[Tensor, "request d_model"]
    steps: tuple[int, ...]
    p_new: tuple[float, ...]


def _z_chunk(model: Bridge, reqs: Sequence[EditRequest], layer: int, templates: Sequence[str],
             config: MEMITConfig, on_step: Callable[[int, int], None] | None = None
             ) -> tuple[Tensor, Tensor, list[int], list[float]]:
    """Optimise δ for a few requests at once; returns (z, h, steps, p_new). ``on_step(step, active)`` reports progress."""
    a = arch_of(model)
    dev = context_of(model).device
    T = len(templates)
    rows, look, owner, tgts = [], [], [], []
    for j, r in enumerate(reqs):
        tgt = target_ids(model, r.target_new)
        tr, tl = _template_rows(model, r, templates)
        rows += [x + tgt[:-1] for x in tr]
        look += tl
        _, s1 = subject_span(model, Fact(config.essence_prompt, r.subject))
        rows.append(encode(model, config.essence_prompt.format(r.subject)))
        look.append(s1 - 1)
        owner += [j] * (T + 1)
        tgts.append(tgt)
    n_max = max(map(len, tgts))
    ids, mask = pad_left(model, rows)
    W = ids.shape[1]
    col = torch.tensor([W - len(x) + i for x, i in zip(rows, look)])  # [row] subject's last token
    owner_t = torch.tensor(owner)
    tpl_t = torch.tensor([i % (T + 1) for i in range(len(rows))])  # template index; T = essence row
    is_ess = tpl_t == T
    # targets right-aligned in the last n_max positions; rows with shorter targets are masked
    tgt_ids = torch.zeros(len(rows), n_max, dtype=torch.long)
    tgt_mask = torch.zeros(len(rows), n_max)
    for i in range(len(rows)):
        if not is_ess[i]:
            t = tgts[owner[i]]
            tgt_ids[i, n_max - len(t):] = torch.tensor(t)
            tgt_mask[i, n_max - len(t):] = 1
    n_req = len(reqs)
    delta = torch.zeros(n_req, a.d_model, device=dev, requires_grad=True)
    h = torch.zeros(n_req, a.d_model, dtype=torch.float64)
    hook = a.hook("resid_post", layer)
    active = list(range(n_req))
    done_steps, p_new = [0] * n_req, [0.0] * n_req
    state: dict[str, Any] = {}

    def build(active_reqs: list[int]) -> None:
        sel = torch.tensor([i for i in range(len(rows)) if owner[i] in set(active_reqs)])
        c = int(col[sel].min())
        st = dict(sel=sel, c=c, ids=ids[sel].to(dev), mask=mask[sel].to(dev), col=(col[sel] - c).to(dev),
                  own=owner_t[sel].to(dev), ess=is_ess[sel].to(dev), tpl=tpl_t[sel].to(dev), tgt=tgt_ids[sel].to(dev),
                  tmask=tgt_mask[sel].to(dev), prefix=None)
        if c > 0:
            with torch.no_grad():
                _, st["prefix"] = run_cached(model, st["ids"][:, :c], attention_mask=st["mask"][:, :c],
                                             logits_to_keep=1)
        state.update(st)

    def forward(capture_h: bool) -> Tensor:
        st = state
        rr = torch.arange(len(st["sel"]), device=dev)

        def add(act, hook):  # act: [row, pos, d_model]
            if capture_h:  # each request's first row is the bare prompt "{}"
                for i in (st["tpl"] == 0).nonzero()[:, 0].tolist():
                    h[int(st["own"][i])] = act[i, st["col"][i]].detach().double().cpu()
            act = act.clone()
            act[rr, st["col"]] = act[rr, st["col"]] + delta[st["own"]].to(act.dtype)
            return act

        out = run_after(model, st["ids"][:, st["c"]:], st["prefix"], attention_mask=st["mask"], logits_to_keep=n_max,
                        fwd_hooks=[(hook, add)])
        return out.float().log_softmax(-1)  # [row, n_max, d_vocab]

    build(active)
    with torch.no_grad():
        kl_ref = forward(capture_h=True)[state["ess"].nonzero()[:, 0], -1]  # [request, d_vocab] δ = 0
    kl_ref_all = torch.zeros(n_req, kl_ref.shape[-1], device=dev)
    kl_ref_all[state["own"][state["ess"]]] = kl_ref
    h_dev = h.float().to(dev)
    opt = torch.optim.Adam([delta], lr=config.v_lr)
    for step in range(config.v_steps):
        lp = forward(capture_h=False)
        st = state
        tok_nll = -lp.gather(2, st["tgt"][:, :, None])[:, :, 0] * st["tmask"]  # [row, n_max]
        row_nll = tok_nll.sum(1) / st["tmask"].sum(1).clamp(min=1)  # [row]
        tpl = ~st["ess"]
        nll = torch.zeros(n_req, device=dev).index_add(0, st["own"][tpl], row_nll[tpl]) / T  # [request]
        e_rows = st["ess"].nonzero()[:, 0]
        e_own = st["own"][e_rows]
        lp_e = lp[e_rows, -1]
        kl = torch.zeros(n_req, device=dev)
        kl[e_own] = (lp_e.exp() * (lp_e - kl_ref_all[e_own])).sum(-1)  # KL(p_δ ‖ p_0)
        wd = delta.norm(dim=1) / h_dev.norm(dim=1) ** 2
        loss_r = nll + config.kl_factor * kl + config.v_weight_decay * wd
        with torch.no_grad():
            p = torch.zeros(n_req, device=dev).index_add(0, st["own"][tpl], (-tok_nll[tpl].sum(1)).exp()) / T
            for j in active:
                p_new[j] = float(p[j])
        if not bool(torch.isfinite(loss_r[active]).all()):
            raise FloatingPointError(f"MEMIT z: the loss became non-finite at step {step + 1}; nothing was changed. "
                                     f"Try a smaller v_lr than {config.v_lr}.")
        converged = [j for j in active if float(nll[j].detach()) < config.early_stop_loss]
        still = [j for j in active if j not in converged]
        if on_step is not None:
            on_step(step + 1, len(still))
        if not still:
            break
        before = delta.detach().clone()
        opt.zero_grad()
        loss_r[still].sum().backward()
        opt.step()
        with torch.no_grad():
            idx = torch.tensor(still, device=dev)
            cap = config.clamp_norm_factor * h_dev[idx].norm(dim=1)
            norm = delta[idx].norm(dim=1)
            delta[idx] *= torch.where(norm > cap, cap / norm, torch.ones_like(norm))[:, None]
            keep = torch.ones(n_req, dtype=torch.bool, device=dev)
            keep[idx] = False
            delta[keep] = before[keep]  # converged requests stay put (Adam's momentum would move them)
            for j in still:
                done_steps[j] += 1
        if len(still) < len(active):
            active = still
            build(active)
    d = delta.detach().double().cpu()
    if not torch.isfinite(d).all():
        raise FloatingPointError("MEMIT z: δ is not finite; nothing was changed")
    return h + d, h, done_steps, p_new


def compute_zs(model: Bridge, requests: Sequence[EditRequest], layer: int, templates: Sequence[str],
               config: MEMITConfig = MEMITConfig(), *, progress: bool = False) -> ZResult:
    """The target residuals z at ``layer`` for every request (step 1 of the module docstring). Model untouched.

    Requests are sorted by prompt length and optimised ``config.z_chunk`` at a time; each chunk's
    Adam state is its own, and a request's result does not depend on its chunk-mates (the loss is a
    sum of per-request terms) up to float rounding from padding.
    """
    from tqdm.auto import tqdm

    n = len(requests)
    order = sorted(range(n), key=lambda i: (len(encode(model, requests[i].text)), i))
    a = arch_of(model)
    z = torch.zeros(n, a.d_model, dtype=torch.float64)
    h = torch.zeros(n, a.d_model, dtype=torch.float64)
    steps, p_new = [0] * n, [0.0] * n
    bar = tqdm(total=n, desc=f"z at layer {layer}", unit="req", disable=not progress)
    for s in range(0, n, config.z_chunk):
        idx = order[s:s + config.z_chunk]
        zc, hc, st, pn = _z_chunk(model, [requests[i] for i in idx], layer, templates, config,
                                  lambda k, m: bar.set_postfix(step=f"{k}/{config.v_steps}", active=m))
        for k, i in enumerate(idx):
            z[i], h[i], steps[i], p_new[i] = zc[k], hc[k], st[k], pn[k]
        bar.update(len(idx))
        bar.set_postfix(p_new=f"{sum(pn) / len(pn):.2f}", steps=f"{sum(st) / len(st):.1f}")
    bar.close()
    return ZResult(z=z, h=h, steps=tuple(steps), p_new=tuple(p_new))


# --------------------------------------------------------------------------- keys and current values


@dataclass(frozen=True)
class LayerActs:
    """What the update at one layer needs (float64, CPU).

    Attributes:
        K: ``[request, d_mlp]`` keys at the subject's last token, averaged over the templates.
        raw: ``[request, d_model]`` the MLP's raw output (before any post-norm), bare prompt.
        out: ``[request, d_model]`` what the MLP adds to the residual (after the post-norm), bare prompt.
        h: ``[request, d_model]`` the residual leaving the target layer, bare prompt.
    """

    K: Float[Tensor, "request d_mlp"]
    raw: Float[Tensor, "request d_model"]
    out: Float[Tensor, "request d_model"]
    h: Float[Tensor, "request d_model"]


@torch.no_grad()
def collect_keys(model: Bridge, requests: Sequence[EditRequest], layer: int, target_layer: int,
                 templates: Sequence[str], *, chunk: int = 256, progress: bool = False) -> LayerActs:
    """Keys at ``layer`` (template-averaged) and the bare prompt's activations (`LayerActs`).

    Prompts are cut after the subject's last token (later tokens cannot affect it) and run in
    batches of ``chunk`` rows, left-padded so that token is the last column; each batch stops after
    block ``max(layer, target_layer)``. The result does not depend on ``chunk`` beyond float32 rounding.
    """
    from tqdm.auto import tqdm

    a = arch_of(model)
    dev = context_of(model).device
    T = len(templates)
    n = len(requests)
    rows: list[list[int]] = []
    for r in requests:
        tr, tl = _template_rows(model, r, templates)
        rows += [x[:i + 1] for x, i in zip(tr, tl)]
    bare = templates.index("{}") if "{}" in templates else None
    if bare is None:
        raise ValueError(f"expected the templates to include the bare prompt '{{}}', got {list(templates)[:3]}...")
    K = torch.zeros(n * T, a.d_mlp, dtype=torch.float64)
    raw = torch.zeros(n * T, a.d_model, dtype=torch.float64)
    out = torch.zeros(n * T, a.d_model, dtype=torch.float64)
    h = torch.zeros(n * T, a.d_model, dtype=torch.float64)
    names = [(a.hook("mlp_key", layer), K), (a.hook("mlp_raw_out", layer), raw), (a.hook("mlp_out", layer), out),
             (a.hook("resid_post", target_layer), h)]  # raw and out share one hook without a post-norm
    stop = max(layer, target_layer) + 1
    for s in tqdm(range(0, n * T, chunk), desc=f"keys at layer {layer}", disable=not progress):
        ids, mask = pad_left(model, rows[s:s + chunk])

        def grab(dst: Tensor, start: int):
            def fn(act, hook):
                dst[start:start + act.shape[0]] = act[:, -1].double().cpu()
            return fn

        model.run_with_hooks(ids.to(dev), attention_mask=mask.to(dev), stop_at_layer=stop,
                             fwd_hooks=[(nm, grab(dst, s)) for nm, dst in names])
    K = K.view(n, T, -1).mean(1)
    return LayerActs(K=K, raw=raw.view(n, T, -1)[:, bare], out=out.view(n, T, -1)[:, bare],
                     h=h.view(n, T, -1)[:, bare])


# --------------------------------------------------------------------------- post-norm and the solve


@torch.no_grad()
def post_norm_gain(model: Bridge, layer: int) -> Float[Tensor, "d_model"] | None:
    """The gain g of the RMS post-norm after layer ``layer``'s MLP (``out = g ⊙ raw / rms(raw)``), or
    ``None`` when the model adds the MLP's output to the residual directly.

    Read off the norm itself (``g = norm(c·1)`` for a large c) and checked on a random vector, so a
    post-norm that is not an RMS norm raises `UnsupportedArchitectureError` instead of being mis-inverted.
    """
    a = arch_of(model)
    if not a.post_norm:
        return None
    norm = model.blocks[a.check_layer(layer)].ln2_post
    p = next(model.parameters())
    g = norm(torch.full((1, 1, a.d_model), 1e4, dtype=p.dtype, device=p.device))[0, 0].double().cpu()
    x = torch.randn(a.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = norm(x.to(p.dtype).to(p.device)[None, None])[0, 0].double().cpu()
    want = g * x / x.pow(2).mean().sqrt()
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(g.abs().max())):
        raise UnsupportedArchitectureError(f"layer {layer}'s MLP post-norm is not an RMS norm (g ⊙ x / rms(x)); "
                                           f"MEMIT cannot map its targets through it")
    return g


def invert_post_norm(y: Float[Tensor, "request d_model"], g: Float[Tensor, "d_model"],
                     raw: Float[Tensor, "request d_model"], *, iters: int = 200) -> Float[Tensor, "request d_model"]:
    """Raw outputs v whose RMS-normalised values ``g ⊙ v / rms(v)`` are closest to ``y`` (float64).

    ``w = v / rms(v)`` ranges over the sphere ``‖w‖² = d``; the closest point to y solves
    ``min ‖g ⊙ w − y‖²`` there: ``w = g y / (g² + μ)`` with μ > −min g² found by bisection on
    ``‖w(μ)‖² = d`` (the trust-region secular equation). In the "hard case" (y has no component on
    the smallest gains, e.g. gains of exactly 0, which Gemma 3 270M has at layers 1, 3 and 4) the
    equation has no root; then μ = −min g² and the missing norm goes onto the smallest-gain
    coordinates, which do not change the output, signed like ``raw``. When y is reachable the
    result is exact. The norm ignores scale, so ``v = rms(raw) · w`` keeps the current output's
    size: the change is a rotation, and a partial step towards v still turns the output towards y.
    """
    y, g, raw = y.double(), g.double(), raw.double()
    d = y.shape[-1]
    g2 = g * g
    gmin = float(g2.min())
    gy = g * y  # [request, d]
    lo = torch.full(y.shape[:-1], -gmin, dtype=torch.float64)
    hi = gy.norm(dim=-1) / math.sqrt(d) + float(g2.max()) + 1e-300
    for _ in range(iters):
        mid = (lo + hi) / 2
        w2 = (gy / (g2 + mid[..., None])).pow(2).sum(-1)
        lo = torch.where(w2 > d, mid, lo)
        hi = torch.where(w2 > d, hi, mid)
    w = gy / (g2 + hi[..., None])
    short = d - w.pow(2).sum(-1)  # > 0 only in the hard case
    Z = g2 <= gmin + 1e-12 * float(g2.max())  # the smallest gain's coordinates
    hard = short > 1e-9 * d
    if bool(hard.any()):
        fill = torch.where(Z, raw, torch.zeros_like(raw))
        fill = torch.where(fill.norm(dim=-1, keepdim=True) > 0, fill, Z.double().expand_as(raw))
        fill = fill / fill.norm(dim=-1, keepdim=True)
        w = torch.where(hard[..., None], torch.where(Z, 0.0, w) + short.clamp(min=0).sqrt()[..., None] * fill, w)
    w = w * math.sqrt(d) / w.norm(dim=-1, keepdim=True)
    return raw.pow(2).mean(-1, keepdim=True).sqrt() * w


def memit_solve(C: Float[Tensor, "d_mlp d_mlp"], K: Float[Tensor, "request d_mlp"], lam: float) -> Float[Tensor, "d_mlp request"]:
    """``U = (λC + KᵀK)⁻¹ Kᵀ`` by a float64 Cholesky solve; MEMIT's ``ΔW = U R``."""
    C, K = C.double(), K.double()
    if C.shape != (K.shape[1], K.shape[1]):
        raise ValueError(f"expected C of shape ({K.shape[1]}, {K.shape[1]}), got {tuple(C.shape)}")
    if not torch.isfinite(C).all():
        raise ValueError("expected finite key statistics C, got NaN or inf; recompute them (cache=False)")
    A = lam * C + K.T @ K
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise ValueError(f"expected λC + KᵀK to be positive definite, but its Cholesky factorisation failed at "
                         f"column {int(info)}: estimate C from more tokens than d_mlp = {C.shape[0]}")
    return torch.cholesky_solve(K.T.contiguous(), L)


# --------------------------------------------------------------------------- the editor


Solver = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]]  # (layer, K, R_raw) -> (U, V) with ΔW = U V


def run_layers(model: Bridge, reqs: Sequence[EditRequest], layers: Sequence[int], templates: Sequence[str],
               zs: ZResult, solver: Solver, config: MEMITConfig, *, progress: bool, what: str
               ) -> tuple[dict[int, tuple[Tensor, Tensor]], dict[int, Tensor], list[float]]:
    """Step 2 of the module docstring for any solver: ``({layer: (U, V)}, {layer: K}, residual errors)``.

    The updates are written into the weights while later layers' activations are collected, and the
    original weights are restored bit for bit before returning (also on error).
    """
    from tqdm.auto import tqdm

    a = arch_of(model)
    L = layers[-1]
    originals: dict[int, Tensor] = {}
    deltas: dict[int, tuple[Tensor, Tensor]] = {}
    keys: dict[int, Tensor] = {}
    errors: list[float] = []
    try:
        for i, l in enumerate(tqdm(layers, desc=f"{what} layers", disable=not progress)):
            acts = collect_keys(model, reqs, l, L, templates, chunk=config.key_chunk)
            errors.append(float((zs.z - acts.h).norm(dim=1).mean()))
            R = (zs.z - acts.h) / (len(layers) - i)  # [request, d_model]: this layer's share
            g = post_norm_gain(model, l)
            R_raw = R if g is None else invert_post_norm(acts.out + R, g, acts.raw) - acts.raw
            U, V = solver(l, acts.K, R_raw)
            if not (torch.isfinite(U).all() and torch.isfinite(V).all()):
                raise FloatingPointError(f"{what}: the update at layer {l} is not finite; nothing was changed")
            deltas[l], keys[l] = (U, V), acts.K
            W = a.W_out(model, l)
            originals[l] = W.detach().clone()
            with torch.no_grad():
                W.copy_((W.double() + (U.to(W.device) @ V.to(W.device))).to(W.dtype))
        errors.append(float((zs.z - collect_keys(model, reqs, L, L, templates, chunk=config.key_chunk).h)
                            .norm(dim=1).mean()))
    finally:
        with torch.no_grad():
            for l, W0 in originals.items():
                a.W_out(model, l).copy_(W0)
    return deltas, keys, errors


def _layer_delta(U: Tensor, V: Tensor) -> tuple[Tensor, Tensor] | Tensor:
    """Low-rank factors, or the dense ΔW when that is smaller."""
    if U.shape[1] * (U.shape[0] + V.shape[1]) > U.shape[0] * V.shape[1]:
        return U @ V
    return U, V


def prepare(model: Bridge, requests: Any, layers: Sequence[int] | None, config: MEMITConfig, *, progress: bool,
            verbose: bool, what: str) -> tuple[list[EditRequest], list[int], str]:
    """Shared front half of MEMIT-style editors: checked requests, layers and why, memory check."""
    a = arch_of(model)
    reqs = check_requests(model, requests, what)
    if layers is None:
        layers, why = choose_layers(model, config.n_layers, progress=progress)
    else:
        layers = sorted(a.check_layers(layers))  # negatives count from the end; duplicates raise
        why = "given"
    _check_memory(model, len(reqs), len(layers), config, what)
    if verbose:
        print(f"{what}: editing the MLPs at layers {layers} ({why}); targets at layer {layers[-1]}; "
              f"{len(reqs)} request(s)")
    return reqs, list(layers), why


def memit(
    model: Bridge,
    requests: EditRequest | Sequence[EditRequest],
    *,
    layers: Sequence[int] | None = None,
    config: MEMITConfig = MEMITConfig(),
    C: dict[int, Float[Tensor, "d_mlp d_mlp"]] | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> Any:
    """Compute a MEMIT edit of many requests at once, spread over several layers. Model unchanged.

    See the module docstring for the algorithm.

    Args:
        model: a bridge.
        requests: one `EditRequest` or a sequence (10,000 is fine; see the cost notes).
        layers: the MLPs to rewrite: distinct ints in any order (negative values count from the end;
            used normalised and sorted, targets live at the last).
            ``None``: ``config.n_layers`` layers ending at the traced layer. Printed when ``verbose``.
        config: `MEMITConfig` (default: the paper's settings, λ scaled to ``d_mlp``).
        C: ``{layer: E[kkᵀ]}`` ``[d_mlp, d_mlp]`` each; default ``None``: `factscope.edit.covariances`
            of this model (cached on disk). Pass the unedited model's statistics when editing
            sequentially (`EditSession` does).
        progress: progress bars (default ``True``). verbose: print the layers used and why (default ``True``).

    Returns:
        An `Edit` with one delta per layer (low-rank ``U V`` or dense, whichever is smaller); its
        ``info`` holds the layers and why, the mean residual error ``‖z − h‖`` before each layer and
        after the last, the z steps and final p(target_new) per request.

    Raises:
        ValueError / TypeError: no requests, a non-request, a subject missing from its prompt, a bad
            layer, bad statistics. MemoryError: a batch `estimate_memory` says will not fit.
        FloatingPointError: non-finite targets or updates. In every case the model is left untouched.

    Cost: z dominates: up to ``v_steps`` (25) forward+backward passes per request over its 6
    templates and the essence prompt, ~0.5 s per request per step on Gemma 3 270M with 2 CPU
    threads: ~10 s per request with early stopping (10 requests: ~2 min alone, 14 min on a shared
    machine; 1,000: hours). Then per layer one key-collection forward and a ``d_mlp³`` Cholesky
    solve (~0.1 s); C the first time (`covariances`: 2-3.5 min of sampling once per model, then
    seconds per layer). Memory: see `estimate_memory` (10 requests on Gemma: peak RSS 3.3 GiB);
    batches that will not fit are refused up front.
    """
    from factscope.edit.handle import Edit
    from factscope.edit.rome import context_templates

    from factscope.models import fingerprint

    reqs, layers, why = prepare(model, requests, layers, config, progress=progress, verbose=verbose, what="MEMIT")
    fp = fingerprint(model)
    C = _stats(model, layers, config, C, progress)
    templates = context_templates(model, config)
    zs = compute_zs(model, reqs, layers[-1], templates, config, progress=progress)
    lam = update_weight(model, config)
    deltas, _, errors = run_layers(model, reqs, layers, templates, zs,
                                   lambda l, K, R: (memit_solve(C[l], K, lam), R), config,
                                   progress=progress, what="MEMIT")
    info = dict(layers=layers, layer_reason=why, residual_error=errors, z_steps=list(zs.steps),
                p_new=list(zs.p_new), templates=list(templates))
    return Edit(deltas={l: _layer_delta(*d) for l, d in deltas.items()}, method="memit", requests=tuple(reqs),
                config=dataclasses.asdict(config), fingerprint=fp, info=info)


def update_weight(model: Bridge, config: MEMITConfig) -> float:
    """λ: ``config.mom2_update_weight``, or GPT-J's 15000 scaled by ``d_mlp / 16384`` when it is ``None``."""
    if config.mom2_update_weight is not None:
        return float(config.mom2_update_weight)
    return 15000.0 * arch_of(model).d_mlp / 16384


def _stats(model: Bridge, layers: Sequence[int], config: MEMITConfig, C: Any, progress: bool) -> dict[int, Tensor]:
    """``{layer: C}``: the given ones, the rest from `covariances` (cached on disk)."""
    from factscope.edit.covariance import covariances

    C = dict(C or {})
    missing = [l for l in layers if l not in C]
    if missing:
        kw = {} if config.n_tokens is None else {"n_tokens": config.n_tokens}
        C.update(covariances(model, missing, corpus=config.corpus, progress=progress, **kw))
    return C

