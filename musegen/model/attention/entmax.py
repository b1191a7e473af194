"""``entmax``: relative attention (Music Transformer scores) with α-entmax in place of softmax
(Peters, Niculae & Martins 2019; Correia et al. 2019, "Adaptively sparse transformers").

``entmax_α(s)_j = [(α-1)·s_j - τ]_+^{1/(α-1)}`` with ``τ`` such that the weights sum to one:
α → 1 is softmax, α = 2 is sparsemax. Unlike softmax, keys can get an *exact* zero weight, so
each head learns how many of the earlier tokens it reads. ``entmax_alpha = 2`` uses the exact
sort-based sparsemax; any other α finds ``τ`` by bisection (the interval halves each step, 50
steps reach the float64 resolution), then renormalises. The backward pass is the closed form
``ds = g ⊙ w - w·(Σ g ⊙ w)/Σ w`` with ``w = p^{2-α}`` on the support (an autograd Function, so
no gradient flows through the bisection loop).

Causal and incremental exactly like ``relative``: the weights of a query depend on its own
scores only, so a cached step (all earlier keys kept) equals the full forward; decoding costs
what relative attention costs plus the bisection (50 passes over the step's scores).
:func:`attention_sparsity` reports the share of exact zeros among the keys a query may see.
"""

from __future__ import annotations

import torch
from torch import Tensor

from musegen.model.attention.family import (
    Block,
    Mechanism,
    ModuleSpec,
    masked,
    mechanisms,
    relative_scores,
)

BISECTION_STEPS = 50


def sparsemax(s: Tensor) -> Tensor:
    """Exact sparsemax along the last dim (sort-based; ``-inf`` entries get 0)."""
    z, _ = torch.sort(s, dim=-1, descending=True)
    k = torch.arange(1, s.shape[-1] + 1, device=s.device, dtype=s.dtype)
    cums = z.cumsum(-1)
    support = (1 + k * z > cums) & torch.isfinite(z)
    n = support.sum(-1, keepdim=True).clamp_min(1)
    tau = (cums.gather(-1, n - 1) - 1) / n.to(s.dtype)
    return (s - tau).clamp_min(0)


def entmax_bisect(s: Tensor, alpha: float) -> Tensor:
    """α-entmax along the last dim by bisection on τ (``-inf`` entries get 0)."""
    a1 = alpha - 1.0
    x = s * a1
    top = x.max(-1, keepdim=True).values
    d = torch.isfinite(x).sum(-1, keepdim=True).to(s.dtype)
    lo, hi = top - 1.0, top - d.pow(-a1)  # mass(lo) >= 1 >= mass(hi)
    for _ in range(BISECTION_STEPS):
        tau = (lo + hi) / 2
        mass = (x - tau).clamp_min(0).pow(1 / a1).sum(-1, keepdim=True)
        big = mass >= 1
        lo, hi = torch.where(big, tau, lo), torch.where(big, hi, tau)
    p = (x - (lo + hi) / 2).clamp_min(0).pow(1 / a1)
    return p / p.sum(-1, keepdim=True)


class _Entmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: Tensor, alpha: float) -> Tensor:
        p = sparsemax(s) if alpha == 2.0 else entmax_bisect(s, alpha)
        ctx.save_for_backward(p)
        ctx.alpha = alpha
        return p

    @staticmethod
    def backward(ctx, g: Tensor):
        (p,) = ctx.saved_tensors
        w = torch.where(p > 0, p.pow(2 - ctx.alpha), torch.zeros_like(p))
        gw = g * w
        return gw - w * gw.sum(-1, keepdim=True) / w.sum(-1, keepdim=True), None


def entmax(s: Tensor, alpha: float = 1.5) -> Tensor:
    """α-entmax of ``s`` along the last dim (α = 2: sparsemax), differentiable."""
    return _Entmax.apply(s, float(alpha))


class EntmaxAttention(Mechanism):
    def __init__(self, config) -> None:
        super().__init__()
        self.alpha = float(config.entmax_alpha)
        self.record = False  # count exact zeros (attention_sparsity)
        self.zeros, self.seen = 0, 0

    def weights(self, blk: Block, rel: Tensor | None) -> Tensor:
        p = entmax(masked(relative_scores(blk, rel), blk.ok), self.alpha)
        if self.record:
            ok = blk.ok.expand_as(p)
            self.zeros += int(((p == 0) & ok).sum())
            self.seen += int(ok.sum())
        return p


@torch.no_grad()
def attention_sparsity(model, ids: Tensor) -> list[float]:
    """Per layer: the share of exact zeros among the (query, visible key) weights on ``ids``."""
    mechs = mechanisms(model, EntmaxAttention)
    for m in mechs:
        m.record, m.zeros, m.seen = True, 0, 0
    try:
        model(ids)
    finally:
        for m in mechs:
            m.record = False
    return [m.zeros / max(1, m.seen) for m in mechs]


def check(config) -> None:
    if not config.entmax_alpha > 1:
        raise ValueError(
            f"attention={config.attention!r} needs entmax_alpha > 1 (1 would be softmax: use "
            f"attention='relative'), got entmax_alpha={config.entmax_alpha}"
        )


SPEC = ModuleSpec(
    name="entmax",
    module=EntmaxAttention,
    fields=("max_relative_distance", "entmax_alpha"),
    check=check,
    has_relative=True,
    summary="relative attention with α-entmax (sparsemax at α=2) in place of softmax",
)
