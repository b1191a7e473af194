"""``adaptive_span``: relative attention where each head learns how far back it reads
(Sukhbaatar et al. 2019, "Adaptive attention span in transformers").

Head ``h`` has a span ``z_h = adaptive_span_max · sigmoid(θ_h)``; the softmax weight of a key
at distance ``d`` is multiplied by the ramp ``m(d) = clamp((R + z_h - d)/R, 0, 1)`` (``R`` =
``adaptive_span_ramp``) and the weights are renormalised, so the span is differentiable. The
span penalty ``adaptive_span_loss · mean_h z_h`` per layer comes out of
:meth:`AdaptiveSpanAttention.span_penalty`, which the model's ``auxiliary_loss()`` sums and the
training loop adds to the loss. (The paper clamps a raw ``z`` into ``[0, 1]`` after each step;
the sigmoid keeps it there without a hook in the loop.)

It is causal by construction (a ramp over distances ``d >= 0``) and never looks further than
``adaptive_span_max`` tokens back: training works on a band of keys, so memory is linear in
``L``. Decoding keeps only what the heads use: a layer's cache holds the last
``ceil(max_h z_h + R)`` keys (at most ``adaptive_span_max``), so the cache shrinks as the spans
shrink, and the reach is bounded, so generation never has to slide.
:func:`learned_spans` reports the spans per layer and head.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from musegen.model.attention.family import (
    Block,
    Mechanism,
    ModuleSpec,
    masked,
    mechanisms,
    relative_scores,
)


class AdaptiveSpanAttention(Mechanism):
    def __init__(self, config) -> None:
        super().__init__()
        self.max_span, self.ramp = config.adaptive_span_max, config.adaptive_span_ramp
        self.coef = config.adaptive_span_loss
        self.band = self.max_span
        self.span_logit = nn.Parameter(torch.zeros(config.n_heads))  # spans start at max/2

    def spans(self) -> Tensor:
        """The current span of each head, in tokens ``[H]``."""
        return self.max_span * torch.sigmoid(self.span_logit)

    def keep(self) -> int:
        used = math.ceil(float(self.spans().max()) + self.ramp)
        return max(1, min(self.max_span, used))

    def span_penalty(self) -> Tensor:
        return self.coef * self.spans().mean()

    def weights(self, blk: Block, rel: Tensor | None) -> Tensor:
        p = masked(relative_scores(blk, rel), blk.ok).softmax(-1)
        z = self.spans().to(p.dtype)[:, None, None]  # [H, 1, 1]
        ramp = ((self.ramp + z - blk.dist.to(p.dtype)) / self.ramp).clamp(0, 1)  # [H, Bq, Nk]
        p = p * ramp
        return p / (p.sum(-1, keepdim=True) + 1e-8)


def learned_spans(model) -> list[list[float]]:
    """Per layer, the span of each head in tokens."""
    return [m.spans().tolist() for m in mechanisms(model, AdaptiveSpanAttention)]


def check(config) -> None:
    if not 0 < config.adaptive_span_max <= config.max_seq_len:
        raise ValueError(
            f"attention={config.attention!r} needs 0 < adaptive_span_max <= max_seq_len (a span "
            f"larger than the context), got adaptive_span_max={config.adaptive_span_max}, "
            f"max_seq_len={config.max_seq_len}"
        )
    if not 0 < config.adaptive_span_ramp <= config.adaptive_span_max:
        raise ValueError(
            f"attention={config.attention!r} needs 0 < adaptive_span_ramp <= adaptive_span_max, "
            f"got adaptive_span_ramp={config.adaptive_span_ramp}"
        )
    if config.adaptive_span_loss < 0:
        raise ValueError(f"adaptive_span_loss must be >= 0, got {config.adaptive_span_loss}")


SPEC = ModuleSpec(
    name="adaptive_span",
    module=AdaptiveSpanAttention,
    fields=(
        "max_relative_distance",
        "adaptive_span_max",
        "adaptive_span_ramp",
        "adaptive_span_loss",
    ),
    check=check,
    has_relative=True,
    reach=lambda c: c.adaptive_span_max,
    summary="relative attention with a learned soft span per head (the cache keeps the span)",
)
