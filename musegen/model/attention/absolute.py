"""``absolute``: plain causal attention; positions come from a learned absolute table, so a
sequence cannot be longer than ``max_seq_len``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from musegen.model.attention.kernels import (
    AttnContext,
    additive_mask,
    cached_attention,
    decode_attention,
    pad_key_mask,
)
from musegen.model.attention.spec import AttentionSpec


def absolute_attention(q: Tensor, k: Tensor, v: Tensor, rel: Tensor | None, ctx: AttnContext):
    """Causal softmax attention without a relative bias (fused SDPA when nothing is padded)."""
    if ctx.cached:
        return cached_attention(q, k, v, None, ctx)
    if ctx.key_valid is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    L = q.shape[-2]
    idx = torch.arange(L, device=q.device)
    causal = additive_mask(idx[None] <= idx[:, None], q.dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=causal + pad_key_mask(ctx, idx, idx, q.dtype)
    )


SPEC = AttentionSpec(
    name="absolute",
    forward=absolute_attention,
    decode=decode_attention,
    fields=("max_seq_len",),
    absolute_positions=True,
    summary="causal attention with learned absolute positions (at most max_seq_len tokens)",
)
