"""``universal``: the Universal Transformer: one relative-attention block shared across depth,
with adaptive computation time per token (the stack is :mod:`musegen.model.universal`).

The attention itself is ``relative`` (same functions, same full cache: one cache slot per
depth step); what differs is the stack, which the spec names so the model never compares
kind names. ``attention_backend='flex'`` is refused: the shared-block path has no tested flex
form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from musegen.model.attention.kernels import decode_attention
from musegen.model.attention.relative import relative_attention
from musegen.model.attention.spec import AttentionSpec

if TYPE_CHECKING:
    from musegen.config import ModelConfig


def check(config: ModelConfig) -> None:
    if not 0.0 < config.act_threshold <= 1.0:
        raise ValueError(
            f"attention='universal' needs 0 < act_threshold <= 1, got {config.act_threshold}"
        )
    if config.ponder_cost < 0:
        raise ValueError(f"attention='universal' needs ponder_cost >= 0, got {config.ponder_cost}")


SPEC = AttentionSpec(
    name="universal",
    forward=relative_attention,
    decode=decode_attention,
    fields=("max_relative_distance", "act_threshold", "ponder_cost"),
    check=check,
    has_relative=True,
    recompute_long=True,
    stack="shared_block",
    summary="one relative block shared across depth, adaptive depth per token (ACT)",
)
