"""``feedback``: the Feedback Transformer memory: every layer attends to one memory vector
per earlier position, a learned mix of all layers' states there (the stack and its cache are
:mod:`musegen.model.feedback`).

Its attention function is the cached relative one (queries against keys projected from the
memory plus the current state); there is no aligned, one-pass form, so training runs position
by position (``feedback_chunk=1``) or chunk by chunk (the approximation ``feedback_chunk > 1``).
Refused at construction: ``attention_backend='flex'`` (no mask form: the keys are not the
layer's own tokens) and a chunk outside ``1 … max_seq_len``; a cache that is not the memory
cache (e.g. a plain full KV cache) is refused when it is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from musegen.model.attention.kernels import cached_attention
from musegen.model.attention.spec import AttentionSpec

if TYPE_CHECKING:
    from musegen.config import ModelConfig


def check(config: ModelConfig) -> None:
    if not 1 <= config.feedback_chunk <= config.max_seq_len:
        raise ValueError(
            f"attention='feedback' needs 1 <= feedback_chunk <= max_seq_len="
            f"{config.max_seq_len}, got feedback_chunk={config.feedback_chunk}"
        )


@dataclass(frozen=True)
class FeedbackSpec(AttentionSpec):
    """The memory cache instead of a per-layer KV cache; the stack builds its own masks."""

    def prepare_step(self, ctx, keys, dtype):
        return ctx


SPEC = FeedbackSpec(
    name="feedback",
    forward=cached_attention,
    fields=("max_relative_distance", "feedback_chunk"),
    check=check,
    has_relative=True,
    stack="feedback_memory",
    summary="Feedback Transformer: every layer reads a memory of all layers' past states",
)
