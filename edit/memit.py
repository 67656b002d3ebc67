"""MEMIT (Meng et al. 2023): write many facts at once into a range of MLP layers.

For requests r = 1..n and edited layers l₁ < … < l_L (the last one, l_L, is where the targets live):

1. **z** (`compute_zs`) — per request, the residual stream h leaving block l_L at the subject's last
   token is moved to ``z = h + δ``. δ is optimised with Adam on the context templates
   (`factscope.edit.templates`: ``"{}"`` plus five model-written 10-token prefixes, MEMIT's
   ``[[10, 5]]``) to minimise the loss `factscope.edit.target` describes, per request:
   ``NLL(target_new | template prompt) + kl_factor · KL(p_δ ‖ p_0)("{subject} is a") + v_weight_decay · ‖δ‖ / ‖h‖²``,
   clamping ``‖δ‖ ≤ clamp_norm_factor · ‖h‖`` (0.75) and freezing each request once its NLL is below
   ``early_stop_loss``. Requests run in chunks of ``z_chunk``. Each chunk is planned once (`ZBatch`:
   every request's template rows and essence row, left-padded); the rows of the requests still
   optimising (`ZRows`) share a key/value cache of the positions before their earliest
   subject-last-token column, so each Adam step runs only the rest.
2. **Per layer l, in order** (`factscope.edit.layer_update.run_layers`) — re-collect, on the model
   with the earlier layers' updates applied, the keys K (``[n, d_mlp]``: the MLP key at the
   subject's last token, averaged over the templates) and, on the bare prompt, the residual h at
   l_L and the MLP output at l. The layer's share of the remaining error is
   ``R = (z − h) / (layers left)``. Without a post-norm the MLP's raw output must move by R; with
   one (Gemma) R is mapped back through it first (`factscope.edit.post_norm.invert_post_norm`). Then
   ``ΔW = (λC + KᵀK)⁻¹ Kᵀ R_raw`` (`memit_solve`; ``λ = mom2_update_weight``, C = E[kkᵀ] from
   `factscope.edit.key_stats`), a float64 Cholesky solve, never an inverse. ΔW minimises
   ``‖K ΔW − R_raw‖² + λ tr(ΔWᵀ C ΔW)``: the new keys get their residuals, keys typical of C move little.
3. The residual error ``‖z − h‖`` before each layer and after the last is recorded in
   ``edit.info["residual_error"]``. MEMIT's additive-residual assumption says it should shrink layer
   by layer; on Gemma 3 270M it does not (docs/guide.md, "The residual error does not shrink").

Layers: ``layers=None`` takes the window of ``config.n_layers`` (5) consecutive layers that
`factscope.edit.layer_choice.edit_layer` chooses for this editor and config (key specificity, the
tracing profile and a trial batch edit on calibration facts; cached on disk). Config: ``None`` is
``MEMITConfig.for_model(model)``, the δ budget tuned for the model's family; ``MEMITConfig.paper()``
the published constants.

Cost (n requests, T templates, L edited layers)
-----------------------------------------------
- z: at most ``v_steps`` forward+backward passes over ``n (T + 1)`` rows, from each chunk's first
  subject token on, each with a full-vocabulary log-softmax at the target positions. The bulk of
  the time; early stopping cuts it. Measured times: docs/guide.md, "Measured costs of the editors".
- keys: ``L + 1`` forwards of ``n T`` rows truncated at the subject, stopped after block l_L.
- solve: L Cholesky factorisations of ``d_mlp × d_mlp`` plus O(d_mlp² n) flops.
- Peak memory (`estimate_memory`): the C's (``L d_mlp² · 8`` B), two ``d_mlp²`` float64 work
  matrices, the keys and their solve (``2 n d_mlp · 8`` B), the deltas (low rank
  ``n (d_mlp + d_model)`` or dense ``d_mlp d_model`` per layer, whichever is smaller), plus one z
  chunk's activations, which grow with ``z_chunk`` but not with n.

Dimension names: ``request`` edit requests, ``row`` prompts in a batch, ``pos`` tokens, ``n`` target
positions kept, ``d_mlp`` keys, ``d_model`` residual / values, ``d_vocab`` the vocabulary.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from factscope.arch import arch_of, context_of
from factscope.bridge import Bridge
from factscope.checks import as_requests, available_bytes
from factscope.edit.handle import Edit
from factscope.edit.key_stats import key_stats
from factscope.edit.layer_choice import default_layers
from factscope.edit.layer_update import collect_keys, layer_delta, run_layers
from factscope.edit.post_norm import invert_post_norm, post_norm_gain
from factscope.edit.target import TargetConfig, config_source
from factscope.edit.templates import context_templates, prompt_rows, template_rows, template_weights
from factscope.facts import EditRequest
from factscope.kv import Cache, run_after, run_cached
from factscope.models import fingerprint
from factscope.predict import kl_from_logprobs
from factscope.tokens import check_request, encode, pad_left, target_ids

__all__ = ["MEMITConfig", "memit", "ZResult", "compute_zs", "collect_keys", "invert_post_norm", "post_norm_gain",
           "memit_solve", "estimate_memory", "check_requests", "prepare", "update_weight"]


@dataclass(frozen=True, kw_only=True)
class MEMITConfig(TargetConfig):
    """MEMIT's settings (defaults: the paper's GPT-J hyper-parameters, except λ; see below).

    The paper's values come from `hparams/MEMIT/EleutherAI_gpt-j-6B.json`. The fields shared with
    ROME (the z optimisation, the templates, the statistics' corpus) are `TargetConfig`'s; MEMIT
    changes three of their defaults. Cost: negligible (plain data, validated on construction);
    ``v_steps``, ``z_chunk`` and ``key_chunk`` shape `memit`'s cost.

    Attributes:
        n_layers: how many layers ``layers=None`` edits, ending at the traced layer (GPT-J: 3–8, six; we take 5).
        mom2_update_weight: λ, the weight of the key statistics C against the new keys. ``None``
            (default): GPT-J's 15000 scaled by ``d_mlp / 16384`` (`update_weight`). λ is only
            meaningful relative to the key dimension: a typical key has ``E[kᵀC⁻¹k] = d_mlp``, and
            an update lands the fraction ``q / (1 + q)``, ``q = kᵀC⁻¹k / λ``, of a lone key's
            residual. The unscaled 15000 lands too little per layer on a small model for its edits
            to take (docs/guide.md, "Measured costs of the editors").
        context_lengths: as `TargetConfig`, default MEMIT's ``((10, 5),)``.
        v_steps: Adam steps for each δ, default 25. clamp_norm_factor: ``‖δ‖ ≤ factor · ‖h‖``, default 0.75.
        early_stop_loss: a request stops once its target NLL is below this (MEMIT tests the total loss).
        z_chunk: requests optimised together (memory grows linearly with it, time barely).
        key_chunk: prompts per key-collection forward.
        max_memory_gb: refuse batches whose `estimate_memory` exceeds this; ``None``: the memory the
            system reports available.

    ``MEMITConfig()`` / ``MEMITConfig.paper()`` hold those values; ``MEMITConfig.for_model(model)``
    (what `memit` and `alphaedit` use when no config is given) changes ``TUNED[family]``: each
    request's z stops once its target NLL is below 0.5 (it wins with p ≈ 0.6) instead of 0.05, so
    no request is pushed further than it needs. docs/guide.md, "Choosing the edit layer and the δ
    budget", has the held-out numbers.
    """

    TUNED: ClassVar[dict[str, dict[str, object]]] = {
        "post_norm": dict(early_stop_loss=0.5),
        "pre_norm": dict(early_stop_loss=0.5),
    }

    context_lengths: tuple[tuple[int, int], ...] = ((10, 5),)
    v_steps: int = 25
    clamp_norm_factor: float = 0.75
    n_layers: int = 5
    mom2_update_weight: float | None = None
    z_chunk: int = 16
    key_chunk: int = 256
    max_memory_gb: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_positive_ints("n_layers", "z_chunk", "key_chunk")
        if self.mom2_update_weight is not None and not self.mom2_update_weight > 0:
            raise ValueError(f"{type(self).__name__}: expected mom2_update_weight > 0 or None, "
                             f"got {self.mom2_update_weight!r}")


# --------------------------------------------------------------------------- input checks


def check_requests(model: Bridge, requests: EditRequest | Sequence[EditRequest], what: str = "MEMIT"
                   ) -> list[EditRequest]:
    """The requests as a list, validated; duplicates dropped and conflicts warned about.

    Args:
        model: a bridge (its tokenizer finds each subject).
        requests: one `EditRequest` or a non-empty sequence of them.
        what: the editor's name, for messages.

    Raises:
        ValueError / TypeError: an empty list, a non-request, or a subject missing from its prompt
            (before any work).

    Cost: tokenising each prompt.
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


def estimate_memory(model: Bridge, n_requests: int, n_layers: int, config: MEMITConfig = MEMITConfig()) -> int:
    """Peak bytes MEMIT needs beyond the model, for ``n_requests`` over ``n_layers`` layers (module docstring).

    Args:
        model: a bridge (its sizes).
        n_requests: requests in the batch.
        n_layers: edited layers.
        config: `MEMITConfig` (its ``z_chunk`` and templates size one z chunk).

    Cost: negligible (arithmetic on the sizes).
    """
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


# --------------------------------------------------------------------------- z: the plan


@dataclass(frozen=True)
class ZResult:
    """Targets of `compute_zs` (float64, CPU).

    Attributes:
        z: ``[request, d_model]`` the target residual leaving the last edited layer.
        h: ``[request, d_model]`` that residual before the edit (bare prompt, subject's last token).
        steps: Adam steps each request took; p_new: its final mean p(target_new) over the templates.

    Cost: plain data.
    """

    z: Float[Tensor, "request d_model"]
    h: Float[Tensor, "request d_model"]
    steps: tuple[int, ...]
    p_new: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class ZBatch:
    """One z chunk's prompts, planned once (CPU): per request, its T template rows, then its essence row.

    A template row is ``template.format(prompt)`` with the subject filled in, followed by
    ``target_new[:-1]`` (teacher forcing); the essence row is ``essence_prompt`` with the subject.
    Rows are left-padded, so each row's target tokens are predicted at its last positions; ``targets``
    holds them right-aligned in the last ``n`` columns (``n`` the longest target), ``tmask`` marks them.

    Attributes:
        ids: ``[row, pos]`` token ids. mask: ``[row, pos]`` attention mask (0 on padding).
        col: ``[row]`` the subject's last token (where δ is added and h is read).
        owner: ``[row]`` the request (0 .. n_requests − 1) each row belongs to.
        template: ``[row]`` the template index; ``n_templates`` marks an essence row.
        targets: ``[row, n]`` target_new ids (0 where ``tmask`` is 0, and on essence rows).
        tmask: ``[row, n]`` 1 where ``targets`` holds a token.
        n_templates: T. n_requests: the requests in the chunk.
        template_weight: ``[T]`` each template's weight in a request's NLL (`template_weights`: the
            same weights as the keys; uniform unless ``bare_weight`` is set).

    Cost: plain data; `z_batch` builds it by tokenising.
    """

    ids: Int[Tensor, "row pos"]
    mask: Int[Tensor, "row pos"]
    col: Int[Tensor, "row"]
    owner: Int[Tensor, "row"]
    template: Int[Tensor, "row"]
    targets: Int[Tensor, "row n"]
    tmask: Float[Tensor, "row n"]
    n_templates: int
    n_requests: int
    template_weight: Float[Tensor, "template"]

    @property
    def essence(self) -> Bool[Tensor, "row"]:
        """``[row]`` True on the essence rows. Cost: one comparison per row."""
        return self.template == self.n_templates


def z_batch(model: Bridge, requests: Sequence[EditRequest], templates: Sequence[str], essence_prompt: str, *,
            bare_weight: float | None = None) -> ZBatch:
    """The `ZBatch` of ``requests``: every template row (+ target[:-1]) and the essence row, left-padded.

    Args:
        model: a bridge (its tokenizer).
        requests: the chunk's requests.
        templates: context templates; the first must be the bare prompt ``"{}"`` (where h is read).
        essence_prompt: the KL prompt, with ``{}`` for the subject.
        bare_weight: the bare prompt's weight in each request's NLL (`template_weights`); ``None``: uniform.

    Cost: tokenisation of ``request × (T + 1)`` prompts.
    """
    T = len(templates)
    rows, last, tgts = [], [], []
    for r in requests:
        tgt = target_ids(model, r.target_new)
        tr, tl = template_rows(model, r, templates)
        er, el = prompt_rows(model, [essence_prompt], r.subject)
        rows += [x + tgt[:-1] for x in tr] + er
        last += tl + el
        tgts.append(tgt)
    ids, mask = pad_left(model, rows)
    n = max(map(len, tgts))
    template = torch.arange(len(rows)) % (T + 1)  # [row]; T = the essence row
    targets = torch.zeros(len(rows), n, dtype=torch.long)
    tmask = torch.zeros(len(rows), n)
    for i in (template < T).nonzero()[:, 0].tolist():
        t = tgts[i // (T + 1)]
        targets[i, n - len(t):] = torch.tensor(t)
        tmask[i, n - len(t):] = 1
    return ZBatch(ids=ids, mask=mask, col=torch.tensor([ids.shape[1] - len(x) + i for x, i in zip(rows, last)]),
                  owner=torch.arange(len(rows)) // (T + 1), template=template, targets=targets, tmask=tmask,
                  n_templates=T, n_requests=len(requests), template_weight=template_weights(templates, bare_weight).float())


@dataclass(frozen=True, kw_only=True)
class ZRows(ZBatch):
    """The rows of the requests still optimising (a `ZBatch` on the model's device), ready for a step.

    Positions before ``start`` (the earliest subject-last-token column among these rows) do not see
    δ; their keys and values are computed once (``prefix``) and each step runs ``ids[:, start:]``.
    ``col`` counts from ``start``. Every row's target positions lie in that suffix (they follow its
    subject), so when the suffix is shorter than the chunk's longest target, ``targets`` and
    ``tmask`` keep only its last columns.

    Attributes:
        start: the first column that runs per step.
        prefix: the key/value cache of the columns before ``start`` (``None`` when it is 0).

    Cost: plain data; `z_rows` builds it with one forward over the prefix.
    """

    start: int
    prefix: Cache | None


def z_rows(model: Bridge, batch: ZBatch, active: Sequence[int]) -> ZRows:
    """The `ZRows` of the ``active`` requests of ``batch``, with their shared prefix cached.

    Args:
        model: a bridge.
        batch: the chunk's `ZBatch`.
        active: the requests (indices into the chunk) still optimising.

    Cost: one forward over the rows' columns before ``start`` (none when ``start`` is 0).
    """
    dev = context_of(model).device
    keep = set(active)
    sel = torch.tensor([i for i, o in enumerate(batch.owner.tolist()) if o in keep])  # [row]
    c = int(batch.col[sel].min())
    ids, mask = batch.ids[sel].to(dev), batch.mask[sel].to(dev)
    prefix = None
    if c > 0:
        with torch.no_grad():
            _, prefix = run_cached(model, ids[:, :c], attention_mask=mask[:, :c], logits_to_keep=1)  # KV only
    n = min(batch.targets.shape[1], ids.shape[1] - c)  # target columns inside the suffix
    return ZRows(start=c, prefix=prefix, ids=ids, mask=mask, col=(batch.col[sel] - c).to(dev),
                 owner=batch.owner[sel].to(dev), template=batch.template[sel].to(dev),
                 targets=batch.targets[sel, -n:].to(dev), tmask=batch.tmask[sel, -n:].to(dev),
                 n_templates=batch.n_templates, n_requests=batch.n_requests,
                 template_weight=batch.template_weight.to(dev))


# --------------------------------------------------------------------------- z: the loss and a step


def z_logprobs(model: Bridge, rows: ZRows, hook_name: str, delta: Float[Tensor, "request d_model"],
               h: Float[Tensor, "request d_model"] | None = None) -> Float[Tensor, "row n d_vocab"]:
    """Log-probabilities at the last ``n`` positions with ``z = h + δ`` at every row's subject token.

    Args:
        model: a bridge.
        rows: the `ZRows` to run (their suffix after ``start``).
        hook_name: the residual hook where δ is added (``resid_post`` of the last edited layer).
        delta: ``[request, d_model]`` δ; row i gets ``delta[rows.owner[i]]``.
        h: when given (``[request, d_model]`` float64, CPU), filled with each request's residual at
            its bare-prompt row (template 0) before δ is added.

    Cost: one forward (and, with grad enabled, its graph) of the rows' suffix.
    """
    rr = torch.arange(len(rows.ids), device=rows.ids.device)

    def add(act: Tensor, hook: object) -> Tensor:  # act: [row, pos, d_model]
        if h is not None:  # each request's first row is the bare prompt "{}"
            for i in (rows.template == 0).nonzero()[:, 0].tolist():
                h[int(rows.owner[i])] = act[i, rows.col[i]].detach().double().cpu()
        act = act.clone()
        act[rr, rows.col] = act[rr, rows.col] + delta[rows.owner].to(act.dtype)
        return act

    out = run_after(model, rows.ids[:, rows.start:], rows.prefix, attention_mask=rows.mask,
                    logits_to_keep=rows.targets.shape[1], fwd_hooks=[(hook_name, add)])
    return out.float().log_softmax(-1)  # [row, n, d_vocab]


@dataclass(frozen=True, kw_only=True)
class ZLoss:
    """One step's loss terms per request (on the device; ``total`` keeps its graph).

    Attributes:
        nll: ``[request]`` the target's per-token NLL averaged over the templates with ``template_weight``.
        worst_nll: ``[request]`` (no graph) the largest template's per-token NLL.
        kl: ``[request]`` KL(p_δ ‖ p_0) after the essence prompt.
        decay: ``[request]`` ‖δ‖ / ‖h‖².
        total: ``[request]`` ``nll + kl_factor · kl + v_weight_decay · decay``.
        p_new: ``[request]`` (no graph) mean over the templates of p(all target tokens).

    Cost: plain data.
    """

    nll: Float[Tensor, "request"]
    worst_nll: Float[Tensor, "request"]
    kl: Float[Tensor, "request"]
    decay: Float[Tensor, "request"]
    total: Float[Tensor, "request"]
    p_new: Float[Tensor, "request"]


def z_loss(lp: Float[Tensor, "row n d_vocab"], rows: ZRows, log_p0: Float[Tensor, "request d_vocab"],
           delta: Float[Tensor, "request d_model"], h: Float[Tensor, "request d_model"], config: TargetConfig
           ) -> ZLoss:
    """The `ZLoss` of one forward (`z_logprobs`), for every request of the chunk (inactive ones included).

    Args:
        lp: ``[row, n, d_vocab]`` log-probabilities of ``rows``.
        rows: the `ZRows` that produced them.
        log_p0: ``[request, d_vocab]`` the essence prompt's next-token log-probabilities at δ = 0.
        delta: ``[request, d_model]`` δ. h: ``[request, d_model]`` the unedited residuals (device, float32).
        config: the `TargetConfig` (``kl_factor``, ``v_weight_decay``).

    Cost: O(row · n · d_vocab) for the gathers and the KL.
    """
    n_req, T = len(delta), rows.n_templates
    tok_nll = -lp.gather(2, rows.targets[:, :, None])[:, :, 0] * rows.tmask  # [row, n]
    row_nll = tok_nll.sum(1) / rows.tmask.sum(1).clamp(min=1)  # [row]
    tpl = ~rows.essence
    zeros = torch.zeros(n_req, device=lp.device)
    w = rows.template_weight[rows.template[tpl]]  # [template row]
    nll = zeros.index_add(0, rows.owner[tpl], w * row_nll[tpl])  # [request]
    e_rows = rows.essence.nonzero()[:, 0]
    e_own = rows.owner[e_rows]
    kl = torch.zeros(n_req, device=lp.device)
    kl[e_own] = kl_from_logprobs(lp[e_rows, -1], log_p0[e_own])  # KL(p_δ ‖ p_0)
    decay = delta.norm(dim=1) / h.norm(dim=1) ** 2
    with torch.no_grad():
        p_new = zeros.index_add(0, rows.owner[tpl], (-tok_nll[tpl].sum(1)).exp()) / T
        worst = zeros.index_reduce(0, rows.owner[tpl], row_nll[tpl].detach(), "amax", include_self=False)
    return ZLoss(nll=nll, worst_nll=worst, kl=kl, decay=decay,
                 total=nll + config.kl_factor * kl + config.v_weight_decay * decay,
                 p_new=p_new)


def z_step(opt: torch.optim.Optimizer, delta: Float[Tensor, "request d_model"], loss: ZLoss, still: list[int],
           h: Float[Tensor, "request d_model"], config: TargetConfig) -> None:
    """One Adam step on the ``still`` requests' δ, then the clamp ``‖δ‖ ≤ clamp_norm_factor · ‖h‖``.

    The other requests' δ is put back as it was: Adam's momentum would otherwise keep moving them.

    Args:
        opt: Adam over ``[delta]``.
        delta: ``[request, d_model]`` δ (a leaf).
        loss: this step's `ZLoss`.
        still: the requests that step.
        h: ``[request, d_model]`` the unedited residuals (device, float32).
        config: the `TargetConfig` (``clamp_norm_factor``).

    Cost: one backward through the step's forward.
    """
    before = delta.detach().clone()
    opt.zero_grad()
    loss.total[still].sum().backward()
    opt.step()
    with torch.no_grad():
        idx = torch.tensor(still, device=delta.device)
        cap = config.clamp_norm_factor * h[idx].norm(dim=1)
        norm = delta[idx].norm(dim=1)
        delta[idx] *= torch.where(norm > cap, cap / norm, torch.ones_like(norm))[:, None]
        keep = torch.ones(len(delta), dtype=torch.bool, device=delta.device)
        keep[idx] = False
        delta[keep] = before[keep]  # converged requests stay put


# --------------------------------------------------------------------------- z: the optimisation


def _z_chunk(model: Bridge, reqs: Sequence[EditRequest], layer: int, templates: Sequence[str],
             config: MEMITConfig, on_step: Callable[[int, int], None] | None = None) -> ZResult:
    """Optimise δ for a few requests at once. ``on_step(step, active)`` reports progress."""
    batch = z_batch(model, reqs, templates, config.essence_prompt, bare_weight=config.bare_weight)
    hook = arch_of(model).hook("resid_post", layer)
    n, d_model = len(reqs), arch_of(model).d_model
    delta = torch.zeros(n, d_model, device=context_of(model).device, requires_grad=True)  # δ [request, d_model]
    h = torch.zeros(n, d_model, dtype=torch.float64)
    active = list(range(n))
    rows = z_rows(model, batch, active)
    log_p0 = _essence_reference(model, rows, hook, delta, h)  # also fills h
    h_dev = h.float().to(delta.device)
    opt = torch.optim.Adam([delta], lr=config.v_lr)
    steps, p_new = [0] * n, [0.0] * n
    for step in range(config.v_steps):
        loss = z_loss(z_logprobs(model, rows, hook, delta), rows, log_p0, delta, h_dev, config)
        for j in active:
            p_new[j] = float(loss.p_new[j])
        if not bool(torch.isfinite(loss.total[active]).all()):
            raise FloatingPointError(f"MEMIT z: the loss became non-finite at step {step + 1}; nothing was changed. "
                                     f"Try a smaller v_lr than {config.v_lr}.")
        stop_nll = loss.nll.detach() if config.early_stop_on == "mean" else loss.worst_nll
        still = [j for j in active if not float(stop_nll[j]) < config.early_stop_loss]
        if on_step is not None:
            on_step(step + 1, len(still))
        if not still:
            break
        z_step(opt, delta, loss, still, h_dev, config)
        for j in still:
            steps[j] += 1
        if len(still) < len(active):
            active, rows = still, z_rows(model, batch, still)
    d = delta.detach().double().cpu()
    if not torch.isfinite(d).all():
        raise FloatingPointError("MEMIT z: δ is not finite; nothing was changed")
    return ZResult(z=h + d, h=h, steps=tuple(steps), p_new=tuple(p_new))


@torch.no_grad()
def _essence_reference(model: Bridge, rows: ZRows, hook: str, delta: Tensor,
                       h: Float[Tensor, "request d_model"]) -> Float[Tensor, "request d_vocab"]:
    """log p_0: each request's next-token log-probabilities after the essence prompt at δ = 0; fills ``h``."""
    lp = z_logprobs(model, rows, hook, delta, h)
    ref = lp[rows.essence.nonzero()[:, 0], -1]  # [request, d_vocab], in the rows' request order
    out = torch.zeros(len(delta), ref.shape[-1], device=lp.device)
    out[rows.owner[rows.essence]] = ref
    return out


def compute_zs(model: Bridge, requests: Sequence[EditRequest], layer: int, templates: Sequence[str],
               config: MEMITConfig = MEMITConfig(), *, progress: bool = False) -> ZResult:
    """The target residuals z at ``layer`` for every request (step 1 of the module docstring). Model untouched.

    Requests are sorted by prompt length and optimised ``config.z_chunk`` at a time; each chunk's
    Adam state is its own, and a request's result does not depend on its chunk-mates (the loss is a
    sum of per-request terms) up to float rounding from padding.

    Args:
        model: a bridge.
        requests: the edit requests.
        layer: the last edited layer (z is the residual leaving it).
        templates: the context templates, ``"{}"`` first (`factscope.edit.templates.context_templates`).
        config: `MEMITConfig` (the z settings and ``z_chunk``).
        progress: a progress bar over the requests.

    Cost: per chunk at most ``v_steps`` forward+backward passes over its ``request × (T + 1)`` rows
    from the chunk's first subject column on (the module docstring's "z").
    """
    n = len(requests)
    order = sorted(range(n), key=lambda i: (len(encode(model, requests[i].text)), i))
    d_model = arch_of(model).d_model
    z = torch.zeros(n, d_model, dtype=torch.float64)
    h = torch.zeros(n, d_model, dtype=torch.float64)
    steps, p_new = [0] * n, [0.0] * n
    bar = tqdm(total=n, desc=f"z at layer {layer}", unit="req", disable=not progress)
    for s in range(0, n, config.z_chunk):
        idx = order[s:s + config.z_chunk]
        got = _z_chunk(model, [requests[i] for i in idx], layer, templates, config,
                       lambda k, m: bar.set_postfix(step=f"{k}/{config.v_steps}", active=m))
        for k, i in enumerate(idx):
            z[i], h[i], steps[i], p_new[i] = got.z[k], got.h[k], got.steps[k], got.p_new[k]
        bar.update(len(idx))
        bar.set_postfix(p_new=f"{sum(got.p_new) / len(idx):.2f}", steps=f"{sum(got.steps) / len(idx):.1f}")
    bar.close()
    return ZResult(z=z, h=h, steps=tuple(steps), p_new=tuple(p_new))


# --------------------------------------------------------------------------- the solve and the editor


def memit_solve(C: Float[Tensor, "d_mlp d_mlp"], K: Float[Tensor, "request d_mlp"], lam: float) -> Float[Tensor, "d_mlp request"]:
    """``U = (λC + KᵀK)⁻¹ Kᵀ`` by a float64 Cholesky solve; MEMIT's ``ΔW = U R``.

    Args:
        C: ``[d_mlp, d_mlp]`` the key statistics E[kkᵀ].
        K: ``[request, d_mlp]`` the new keys.
        lam: λ, the weight of C (`update_weight`).

    Raises:
        ValueError: C of the wrong shape, not finite, or λC + KᵀK not positive definite.

    Cost: one ``d_mlp × d_mlp`` Cholesky factorisation, O(d_mlp³), plus O(d_mlp² · request).
    """
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



def update_weight(model: Bridge, config: MEMITConfig) -> float:
    """λ: ``config.mom2_update_weight``, or GPT-J's 15000 scaled by ``d_mlp / 16384`` when it is ``None``.

    Args:
        model: a bridge (its ``d_mlp``).
        config: `MEMITConfig`.

    Cost: negligible.
    """
    if config.mom2_update_weight is not None:
        return float(config.mom2_update_weight)
    return 15000.0 * arch_of(model).d_mlp / 16384


def prepare(model: Bridge, requests: EditRequest | Sequence[EditRequest], layers: int | Sequence[int] | None,
            config: MEMITConfig, *, progress: bool, verbose: bool, what: str) -> tuple[list[EditRequest], list[int], str]:
    """Shared front half of MEMIT-style editors: checked requests, the layers (sorted) and why, a memory check.

    Args:
        model: a bridge.
        requests: one `EditRequest` or a sequence (`check_requests`).
        layers: the layers to edit, or ``None`` for the window `factscope.edit.layer_choice.edit_layer`
            chooses for this editor and config (cached on disk).
        config: `MEMITConfig` (``n_layers``, the memory cap).
        progress: progress bars while choosing layers. verbose: print the layers and why.
        what: the editor's name, for messages.

    Raises:
        ValueError / TypeError: bad requests or layers. MemoryError: a batch `estimate_memory` says will not fit.

    Cost: tokenising the requests; `edit_layer`'s when ``layers`` is ``None`` (a file read once cached).
    """
    a = arch_of(model)
    reqs = check_requests(model, requests, what)
    if layers is None:
        layers, why = default_layers(model, what.lower(), config, progress=progress)
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
    layers: int | Sequence[int] | None = None,
    config: MEMITConfig | None = None,
    C: dict[int, Float[Tensor, "d_mlp d_mlp"]] | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> Edit:
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

    Cost: z dominates: up to ``v_steps`` forward+backward passes per request over its templates and
    the essence prompt (early stopping cuts it), linear in the number of requests. Then per layer
    one key-collection forward and an O(d_mlp³) Cholesky solve; C the first time per model and layer
    (`covariances`, then cached on disk). Memory: see `estimate_memory`; batches that will not fit
    are refused up front. Measured times: docs/guide.md, "Measured costs of the editors".
    """
    config = MEMITConfig.for_model(model) if config is None else config
    reqs, layers, why = prepare(model, requests, layers, config, progress=progress, verbose=verbose, what="MEMIT")
    fp = fingerprint(model)
    C = key_stats(model, layers, config, C, progress=progress)
    templates = context_templates(model, config)
    zs = compute_zs(model, reqs, layers[-1], templates, config, progress=progress)
    lam = update_weight(model, config)
    up = run_layers(model, reqs, layers, templates, zs.z, lambda l, K, R: (memit_solve(C[l], K, lam), R),
                    key_chunk=config.key_chunk, progress=progress, what="MEMIT", bare_weight=config.bare_weight)
    info = dict(layers=layers, layer_reason=why, config_source=config_source(config, model), residual_error=up.errors, z_steps=list(zs.steps),
                p_new=list(zs.p_new), templates=list(templates))
    return Edit(deltas={l: layer_delta(*d) for l, d in up.deltas.items()}, method="memit", requests=tuple(reqs),
                config=dataclasses.asdict(config), fingerprint=fp, info=info)
