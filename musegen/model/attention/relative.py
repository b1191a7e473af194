"""``relative``: Music Transformer relative attention (Huang et al. 2018), causal over the
whole past; distances beyond ``max_relative_distance`` share the table's last row.

:func:`relative_attention` also computes ``local`` and ``sparse``: they differ only in the
:class:`~musegen.model.attention.kernels.Pattern` of keys a query sees.
"""

from __future__ import annotations

from torch import Tensor

from musegen.model.attention.kernels import (
    AttnContext,
    block_attention,
    cached_attention,
    decode_attention,
    flex_attention,
)
from musegen.model.attention.spec import AttentionSpec


def relative_attention(q: Tensor, k: Tensor, v: Tensor, rel: Tensor, ctx: AttnContext):
    """Relative attention under ``ctx.pattern``, in the aligned or the cached regime."""
    if ctx.cached:
        return cached_attention(q, k, v, rel, ctx)
    if ctx.use_flex:
        return flex_attention(q, k, v, rel, ctx)
    return block_attention(q, k, v, rel, ctx)


SPEC = AttentionSpec(
    name="relative",
    forward=relative_attention,
    decode=decode_attention,
    fields=("max_relative_distance",),
    has_relative=True,
    recompute_long=True,
    flex=True,
    summary="relative attention over the whole past (the Music Transformer; the default)",
)
