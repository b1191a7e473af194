"""Kernels shared by the attention kinds: the skew, masks, the cached and decode regimes, flex.

Every attention function has the signature ``fn(q, k, v, rel, ctx) -> out`` with ``q`` of shape
``[B, H, Lq, D]``, ``k``/``v`` of shape ``[B, H, Lk, D]``, ``rel`` the layer's relative embeddings
``[H, R, D]`` (row ``d`` is distance ``d``; ``None`` for kinds without them) and ``ctx`` an
:class:`AttnContext` built once per forward pass and shared by all layers. Nothing here knows a
kind's name: a kind is described to the kernels by its :class:`Pattern` (which keys a query may
see).

Three regimes:

* **aligned** (no cache: training, scoring): queries and keys are the same ``L`` positions. The
  relative bias ``q_i·E[i-j]`` comes from one matmul ``Q·Eᵀ`` per query block and the
  memory-efficient *skew* (a pad and a strided view, never an ``L×L×D`` tensor); it reaches the
  fused ``scaled_dot_product_attention`` as an additive float mask whose ``-inf`` entries carry the
  causal/window masks for free. Banded patterns work block by block on a band of keys, so
  time and memory grow linearly with ``L``; long full-past training recomputes each block's
  bias in the backward pass (``ctx.recompute``).
* **cached** (prompt chunks, ring-buffer steps): a few queries against the keys kept by a
  :mod:`musegen.model.cache` object. The bias is gathered from ``q·Eᵀ`` by a distance index and the
  mask is built from key positions; both are computed once per step in the context.
* **decode** (one new token per row over a full cache, the generation hot path): key ``j`` is
  at distance ``N-1-j``, so the bias is a slice of ``q·Eᵀ`` against the reversed table and the
  only mask is padding; see :func:`decode_relative_bias`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

NEG_INF = float("-inf")

# Query block of the aligned full-past path: big enough to keep the fused kernel busy, small
# enough to skip most of the causal upper triangle (compare values with
# `python benchmarks/bench_model.py --skip gen,scaling`). Banded patterns use their band.
RELATIVE_BLOCK = 256


@dataclass(frozen=True)
class Pattern:
    """Which keys a query may see, counted in tokens back from the query (itself at 0).

    ``band == 0``: the whole past; otherwise the last ``band`` tokens. ``stride > 0`` adds the
    *summary* keys (real position ≡ ``stride-1`` mod ``stride``) at distances in
    ``[band, horizon)`` (the Sparse Transformer's "fixed" pattern). ``horizon`` is also where
    relative distances are clipped (``max_relative_distance``).
    """

    band: int = 0
    stride: int = 0
    horizon: int = 0

    @property
    def reach(self) -> int | None:
        """How far back any query sees (``None``: the whole past)."""
        if not self.band:
            return None
        return self.horizon if self.stride else self.band

    @property
    def span(self) -> int:
        """Rows of the relative table a query can use."""
        return self.band if self.band and not self.stride else self.horizon

    def allowed(self, dist: Tensor, k_real: Tensor) -> Tensor:
        """Which (query, key) pairs may attend, from distances and key real positions."""
        ok = dist >= 0
        if not self.band:
            return ok
        near = ok & (dist < self.band)
        if not self.stride:
            return near
        return near | self.summary(dist, k_real)

    def summary(self, dist: Tensor, k_real: Tensor) -> Tensor:
        s = self.stride
        return (k_real % s == s - 1) & (dist >= self.band) & (dist < self.horizon)

    def mask_mod(self) -> Callable:
        """The pattern as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx)``."""
        band, stride, horizon = self.band, self.stride, self.horizon

        def mask_mod(b, h, qi, ki):
            d = qi - ki
            if not band:
                return d >= 0
            near = (d >= 0) & (d < band)
            if not stride:
                return near
            return near | ((ki % stride == stride - 1) & (d >= band) & (d < horizon))

        return mask_mod


@dataclass
class AttnContext:
    """What every layer needs to know about positions in this forward pass.

    ``pad`` holds each row's number of left-padding tokens (``None`` when there is none):
    a token's *real* position is its index minus ``pad``; relative distances do not change,
    sparse summary positions and absolute positions are counted on real positions.
    """

    pattern: Pattern
    block: int  # query block size of the aligned paths
    pad: Tensor | None = None  # [B] long
    key_valid: Tensor | None = None  # [B, L] bool, aligned regime only
    # cached regime (None in the aligned regime):
    dist_index: Tensor | None = None  # [B or 1, 1, Lq, Lk] long, clipped distances
    mask: Tensor | None = None  # [B or 1, 1, Lq, Lk] float, 0 or -inf
    n_dist: int = 0  # rows of ``rel`` the gather reaches
    use_flex: bool = False
    # decode regime: one new token per row against a full cache (mask: padded keys or None);
    # ``rel`` then arrives reversed along distance (see decode_relative_bias)
    decode: bool = False
    recompute: bool = False  # aligned regime: checkpoint each query block (long sequences)
    # aligned regime: indices [B, P] of pinned keys (ModelConfig.pin_tokens; -1: none), seen by
    # every later query beyond the band
    pinned: Tensor | None = None

    @property
    def cached(self) -> bool:
        return self.mask is not None or self.decode


# --- the skew: Q·Eᵀ (per distance) → bias per (query, key) ------------------------------------
def rel_table(rel: Tensor, n_dist: int) -> Tensor:
    """Rows of ``rel`` for distances ``n_dist-1 … 0`` (reversed), clipped at the last row."""
    R = rel.shape[1]
    if n_dist <= R:
        return rel[:, :n_dist].flip(1)
    idx = torch.arange(n_dist - 1, -1, -1, device=rel.device).clamp_(max=R - 1)
    return rel.index_select(1, idx)


def skewed_band_bias(q: Tensor, rel: Tensor, n_keys: int, n_dist: int) -> Tensor:
    """Bias ``[B, H, Bq, n_keys]`` for a query block whose last query is the last key.

    Query ``r`` is at distance ``d = n_keys - Bq + r - c`` from key ``c``. Entries with
    ``0 <= d < n_dist`` hold ``q_r·E[min(d, R-1)]/√D`` (the paper's ``(QKᵀ + S_rel)/√D``);
    every other entry (future keys, keys beyond the window) is ``-inf``.
    Cost: one ``Bq×n_dist`` matmul, one pad, and views (the skew).
    """
    Bq = q.shape[-2]
    table = rel_table(rel, n_dist) * q.shape[-1] ** -0.5
    qe = torch.matmul(q, table.transpose(-1, -2))  # [B,H,Bq,n_dist]
    # Columns k = 0..n_keys-1 stand for distance n_keys-1-k; row r needs column c - r + Bq - 1.
    right = max(Bq - 1, 1)
    padded = F.pad(qe, (n_keys - n_dist, right), value=NEG_INF)  # [B,H,Bq,M]
    M = padded.shape[-1]
    flat = padded.flatten(-2)[..., Bq - 1 : Bq - 1 + Bq * (M - 1)]
    return flat.unflatten(-1, (Bq, M - 1))[..., :n_keys]


def additive_mask(ok: Tensor, dtype: torch.dtype) -> Tensor:
    """``0`` where ``ok``, ``-inf`` elsewhere: a boolean mask as an attention bias."""
    return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill_(~ok, NEG_INF)


def pad_key_mask(ctx: AttnContext, q_idx: Tensor, k_idx: Tensor, dtype) -> Tensor:
    """Additive mask ``[B, 1, Lq, Lk]`` hiding padded keys (a pad query still sees itself)."""
    valid = ctx.key_valid[:, k_idx]  # [B, Lk]
    ok = valid[:, None, None, :] | (q_idx[:, None] == k_idx[None, :])[None, None]
    return additive_mask(ok, dtype)


def _summary_keys(ctx: AttnContext, i0: int, i1: int, B: int, device) -> Tensor | None:
    """Indices ``[B, S]`` of the summary keys some query in ``[i0, i1)`` may reach.

    Summary keys have real position ``p ≡ stride-1 (mod stride)`` and distance in
    ``[band, horizon)`` from the query (nearer keys are in the band already).
    Out-of-range entries are returned as ``-1``.
    """
    p = ctx.pattern
    lo_pos, hi_pos = i0 - p.horizon + 1, i1 - 1 - p.band  # index range that can qualify
    if hi_pos < 0:
        return None
    pad = ctx.pad if ctx.pad is not None else torch.zeros(B, dtype=torch.long, device=device)
    first = (lo_pos - int(pad.max())) // p.stride - 1
    last = (hi_pos - int(pad.min())) // p.stride + 1
    s = torch.arange(max(first, 0), last + 1, device=device)
    idx = pad[:, None] + s[None, :] * p.stride + p.stride - 1  # [B, S] indices
    bad = (idx < max(lo_pos, 0)) | (idx > hi_pos)
    if bool(bad.all()):
        return None
    return idx.masked_fill(bad, -1)


def block_attention(q: Tensor, k: Tensor, v: Tensor, rel: Tensor, ctx: AttnContext) -> Tensor:
    """Aligned relative attention under ``ctx.pattern``, one query block at a time.

    With ``ctx.recompute`` each block is checkpointed: its bias (``Bq × keys`` per head) is
    rebuilt in the backward pass instead of kept, so full relative attention over long
    sequences trains in memory linear in ``L`` (kept, the biases take ``2·H·L²`` bytes a layer:
    26 GB for the six-layer, 8-head benchmark model at 16k tokens).
    """
    outs = []
    for i0 in range(0, q.shape[2], ctx.block):
        i1 = min(i0 + ctx.block, q.shape[2])
        if ctx.recompute:
            out = checkpoint(_attend_block, q, k, v, rel, ctx, i0, i1, use_reentrant=False)
        else:
            out = _attend_block(q, k, v, rel, ctx, i0, i1)
        outs.append(out)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _attend_block(q, k, v, rel, ctx: AttnContext, i0: int, i1: int) -> Tensor:
    """Queries ``i0 … i1-1`` against the keys they may see (band, padding, summaries)."""
    band = ctx.pattern.band
    lo = max(0, i0 - band + 1) if band else 0
    n_keys = i1 - lo
    n_dist = min(n_keys, band) if band else n_keys
    qb = q[:, :, i0:i1]
    bias = skewed_band_bias(qb, rel, n_keys, n_dist)
    kb, vb = k[:, :, lo:i1], v[:, :, lo:i1]
    if ctx.key_valid is not None:
        q_idx = torch.arange(i0, i1, device=q.device)
        bias = bias + pad_key_mask(ctx, q_idx, torch.arange(lo, i1, device=q.device), q.dtype)
    p = ctx.pattern
    if p.stride:
        summ = _summary_keys(ctx, i0, i1, q.shape[0], q.device)
        if summ is not None:
            rule = lambda dist, _: (dist >= p.band) & (dist < p.horizon)  # noqa: E731
            kb, vb, bias = _add_keys(qb, k, v, rel, ctx, summ, rule, i0, (kb, vb, bias))
    if ctx.pinned is not None:
        kb, vb, bias = _add_keys(
            qb, k, v, rel, ctx, ctx.pinned, pinned_rule(ctx), i0, (kb, vb, bias)
        )
    return F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bias)


def pinned_rule(ctx: AttnContext) -> Callable[[Tensor, Tensor], Tensor]:
    """Which (query, pinned key) pairs attend beyond the band: all of them, except keys the
    summary rule reaches already (counted once, as summaries)."""
    p = ctx.pattern

    def rule(dist: Tensor, k_index: Tensor) -> Tensor:
        far = dist >= p.band
        if not p.stride:
            return far
        pad = ctx.pad if ctx.pad is not None else torch.zeros_like(k_index[:, 0])
        k_real = (k_index - pad[:, None])[:, None, :]
        return far & ~p.summary(dist, k_real)

    return rule


def _add_keys(qb, k, v, rel, ctx, idx, rule, i0, band):
    """Append keys gathered per row (``idx`` ``[B, S]``, ``-1``: none) to a block's keys,
    values and bias; ``rule(dist, k_index)`` says which (query, key) pairs attend. Distances
    clip at the pattern's last table row, as in the cached regime."""
    kb, vb, bias = band
    B, H, Bq, D = qb.shape
    safe = idx.clamp_min(0)  # [B, S]
    gather_idx = safe[:, None, :, None].expand(B, H, -1, D)
    ks, vs = k.gather(2, gather_idx), v.gather(2, gather_idx)
    q_idx = torch.arange(i0, i0 + Bq, device=qb.device)
    dist = q_idx[None, :, None] - safe[:, None, :]  # [B, Bq, S]
    ok = (idx[:, None, :] >= 0) & rule(dist, safe)
    n_dist = int(dist.max().clamp(min=0, max=ctx.pattern.span - 1)) + 1
    qe = torch.matmul(qb, (rel[:, :n_dist] * D**-0.5).transpose(-1, -2))  # [B,H,Bq,n_dist]
    idx = dist.clamp(0, n_dist - 1)[:, None].expand(B, H, Bq, -1)
    sb = qe.gather(-1, idx).masked_fill(~ok[:, None], NEG_INF)
    bias = torch.cat([bias.expand(B, H, Bq, -1), sb], dim=-1)
    return torch.cat([kb, ks], dim=2), torch.cat([vb, vs], dim=2), bias


# --- the cached (incremental) regime --------------------------------------------------------
def cached_attention(q: Tensor, k: Tensor, v: Tensor, rel: Tensor | None, ctx: AttnContext):
    """Queries against cached keys: bias gathered by distance, mask from key positions."""
    mask = ctx.mask if rel is None else cached_attention_bias(q, rel, ctx)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def cached_attention_bias(q: Tensor, rel: Tensor, ctx: AttnContext) -> Tensor:
    """The additive mask plus each query's relative bias, gathered by distance."""
    B, H, Lq, D = q.shape
    # one matmul per head over every (row, query): no copy of the table per row
    q_heads = (q * D**-0.5).transpose(0, 1).reshape(H, B * Lq, D)
    qe = torch.bmm(q_heads, rel[:, : ctx.n_dist].transpose(1, 2))  # [H, B*Lq, n_dist]
    qe = qe.view(H, B, Lq, ctx.n_dist).transpose(0, 1)
    return qe.gather(-1, ctx.dist_index.expand(B, H, Lq, -1)) + ctx.mask


def cached_context(ctx: AttnContext, keys, dtype: torch.dtype, relative: bool) -> AttnContext:
    """Fill ``ctx`` with one step's distance index and additive mask (shared by all layers).

    ``keys`` is a :class:`musegen.model.cache.StepKeys`. Ring slots of type LOCAL follow the band
    rule only and SUMMARY slots the summary rule only, so a key kept in both is never counted
    twice; ANY (fresh or full-cache keys) follows the pattern's whole rule, PINNED slots the
    pinned rule only (beyond the band), and a fresh pinned key both. A padding query
    still sees itself, so no row is empty. ``relative``: also build the distance index.
    """
    from musegen.model.cache import ANY, LOCAL, PINNED, SUMMARY

    p = ctx.pattern
    dist = keys.q_index[None, :, None] - keys.k_index[:, None, :]  # [B, Lq, Nk]
    k_real = (keys.k_index - keys.pad[:, None])[:, None, :]
    rule = p.allowed(dist, k_real)
    t = keys.k_type[None, None, :]
    if p.stride:
        near = (dist >= 0) & (dist < p.band)
        summary = rule & ~near
        rule = torch.where(t == LOCAL, near, torch.where(t == SUMMARY, summary, rule))
    if keys.k_pinned is not None:  # PINNED slots: beyond the band only (the ring has the rest)
        far = keys.k_pinned[:, None, :] & (dist >= p.band)
        if p.stride:
            far &= ~p.summary(dist, k_real)
        rule = torch.where(t == PINNED, far, rule | far)
    ok = (rule & keys.k_valid[:, None, :]) | ((dist == 0) & ((t == LOCAL) | (t == ANY)))
    ok &= keys.k_index[:, None, :] >= 0
    ctx.mask = additive_mask(ok, dtype)[:, None]
    if relative:
        reach = int(dist.max().clamp(min=0)) + 1
        ctx.n_dist = max(1, min(reach, p.span))
        ctx.dist_index = dist.clamp(0, ctx.n_dist - 1)[:, None]
    return ctx


# --- the decode regime: one token per row against a full cache (the generation hot path) ----
def decode_relative_bias(q: Tensor, rel_reversed: Tensor, n_keys: int) -> Tensor:
    """Bias ``[B, H, 1, n_keys]`` of a query that comes right after ``n_keys - 1`` cached keys.

    Key ``j`` is at distance ``n_keys - 1 - j``. With the table reversed (row ``i`` is distance
    ``R - 1 - i``, made once per weight by the model) the rows for keys ``0 … n_keys - 1`` are
    its last ``n_keys`` rows in order: one matmul, no distance index, no flip. Distances past
    the last row of ``rel`` reuse it.
    """
    B, H, _, D = q.shape
    R = rel_reversed.shape[1]
    n = min(n_keys, R)
    table = rel_reversed[:, R - n :].transpose(1, 2)  # [H, D, n]
    bias = torch.bmm(q.view(B, H, D).transpose(0, 1), table).transpose(0, 1)  # [B, H, n]
    if n < n_keys:
        bias = torch.cat([bias[..., :1].expand(B, H, n_keys - n), bias], dim=-1)
    return bias.unsqueeze(2)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, rel: Tensor | None, ctx: AttnContext):
    """Softmax attention for ``Lq = 1``: three batched matmuls over views of the cache.

    For one query the fused kernel has nothing to fuse, and these views read the cache no
    slower (``bench_decode.py`` section step, figures in ``benchmarks/README.md``); this also
    skips building a distance index and a mask every step. ``rel`` (if any) arrives reversed
    along distance.
    """
    B, H, _, D = q.shape
    N = k.shape[2]
    q = q * D**-0.5
    bias = ctx.mask
    if rel is not None:
        rb = decode_relative_bias(q, rel, N)
        bias = rb if bias is None else rb + bias
    qf, kt = q.view(B * H, 1, D), k.reshape(B * H, N, D).transpose(1, 2)
    if bias is None:
        scores = torch.bmm(qf, kt)
    else:
        scores = torch.baddbmm(bias.expand(B, H, 1, N).reshape(B * H, 1, N), qf, kt)
    out = torch.bmm(scores.softmax(-1), v.reshape(B * H, N, D))
    return out.view(B, H, 1, D)


# --- optional fused GPU path ----------------------------------------------------------------
_FLEX: dict = {}


def flex_attention(q: Tensor, k: Tensor, v: Tensor, rel: Tensor, ctx: AttnContext) -> Tensor:
    """FlexAttention (CUDA): relative bias as a ``score_mod``, the pattern as a block mask.

    ``Q·Eᵀ`` is computed once (``[B, H, L, n_dist]``) and looked up inside the fused kernel by
    distance; the mask is a block-sparse pattern, so banded patterns skip the blocks they never
    see.
    """
    from torch.nn.attention.flex_attention import create_block_mask
    from torch.nn.attention.flex_attention import flex_attention as flex

    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex, dynamic=False)
    L = q.shape[2]
    n_dist = min(L, ctx.pattern.span)
    qe = torch.matmul(q, (rel[:, :n_dist] * q.shape[-1] ** -0.5).transpose(-1, -2))

    def score_mod(score, b, h, qi, ki):
        return score + qe[b, h, qi, (qi - ki).clamp(0, n_dist - 1)]

    key = (ctx.pattern, L, q.device)
    if key not in _FLEX:
        _FLEX[key] = create_block_mask(ctx.pattern.mask_mod(), None, None, L, L, device=q.device)
    return _FLEX["fn"](q, k, v, score_mod=score_mod, block_mask=_FLEX[key])


def init_scale(head_dim: int) -> float:
    """Std of the relative embeddings at init (same as a key's scale)."""
    return 1.0 / math.sqrt(head_dim)


def inference_kernels() -> AbstractContextManager:
    """Keeps scaled-dot-product attention off cuDNN's fused kernel for no-grad CUDA forwards.

    cuDNN's fused attention has crashed on no-grad forwards with the relative bias while
    training forwards ran (the GPU and torch version are in ``benchmarks/README.md``,
    environment observations); the flash / memory-efficient / math kernels give the same result.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )
