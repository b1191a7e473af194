"""What an attention kind is: one :class:`AttentionSpec` that the model, the config and the
sampler ask, instead of comparing the kind's name.

A spec declares the :class:`musegen.config.ModelConfig` fields the kind reads and their
validation, the attention function for training/prefill (the aligned and cached regimes), the
one-token decode step over a full cache, the cache it needs, how far back a query reaches
(bounded kinds generate for ever at constant memory), its FlexAttention mask where it has one,
which position parameters the model must learn for it, and (for model-structure kinds)
the stack that applies blocks across depth in place of the standard one.

Most kinds are declared with the fields below; a kind whose cache or reach does not follow
from a :class:`Pattern` subclasses :class:`AttentionSpec` and overrides the methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from musegen.model.attention.kernels import (
    RELATIVE_BLOCK,
    AttnContext,
    Pattern,
    cached_context,
)
from musegen.model.cache import FullCache, KVCache, RingCache

if TYPE_CHECKING:
    from torch.nn import Module

    from musegen.config import ModelConfig

AttentionFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None", AttnContext], Tensor]


def whole_past(config: ModelConfig) -> Pattern:
    """Every earlier token (causal attention), relative distances clipped at the table."""
    return Pattern(horizon=config.max_relative_distance)


@dataclass(frozen=True)
class AttentionSpec:
    """One attention kind, as the rest of musegen sees it.

    ``forward(q, k, v, rel, ctx)`` serves training, scoring and prefill (``ctx.cached`` False:
    aligned queries and keys; True: queries against a cache, ``ctx.mask`` filled by
    :meth:`prepare_step`). ``decode`` is the lean one-token step over a :class:`FullCache`
    (``rel`` then arrives reversed along distance, ``ctx.mask`` marks padded keys or is
    ``None``); without one, steps go through ``forward``'s cached regime.
    """

    name: str
    forward: AttentionFn
    decode: AttentionFn | None = None
    fields: tuple[str, ...] = ()  # the ModelConfig fields this kind reads
    check: Callable[[ModelConfig], None] | None = None  # the kind's own validation
    pattern: Callable[[ModelConfig], Pattern] = whole_past  # which keys a query may see
    has_relative: bool = False  # learns per-layer relative embeddings [H, R, D]
    absolute_positions: bool = False  # learns a position table of max_seq_len rows
    recompute_long: bool = False  # checkpoint query blocks of long training sequences
    flex: bool = False  # has a FlexAttention form (the pattern's mask_mod + relative bias)
    summary: str = ""  # one line for help texts
    # How blocks are applied across depth: ``None`` is the standard stack of ``n_layers``
    # blocks; otherwise the name of a stack in ``musegen.model.transformer.STACKS``, the module
    # the model runs instead as ``stack(x, ctx, cache) -> x`` (a block shared across depth, a
    # feedback memory, ...). A name, not the class: the stacks build on the model's Block, so
    # the model module owns the table and the attention package never imports the model.
    stack: str | None = None
    # A kind with parameters or state of its own (projections, spans, centroids): ``None`` for
    # kinds that are a plain function; otherwise ``module(config)`` makes, per layer, the module
    # that SelfAttention calls as ``module(q, k, v, rel, ctx, cache, layer)`` in place of
    # ``forward``/``decode`` (it reads and writes its own cache; see ``family.py``).
    module: Callable[[ModelConfig], Module] | None = None

    def validate(self, config: ModelConfig) -> None:
        """Raise ``ValueError`` naming the options when ``config`` cannot work with this kind."""
        if self.has_relative and config.max_relative_distance <= 0:
            raise ValueError(
                f"attention={self.name!r} needs max_relative_distance > 0, "
                f"got {config.max_relative_distance}"
            )
        if self.check is not None:
            self.check(config)
        if config.pin_tokens is not None and not self.can_pin(config):
            raise ValueError(
                f"pin_tokens needs a banded attention kind (local or sparse) on "
                f"attention_backend='torch'; attention={self.name!r} with "
                f"attention_backend={config.attention_backend!r} has no window to pin beyond"
            )
        if config.attention_backend == "flex" and self.flex_mask(config) is None:
            raise ValueError(
                f"attention_backend='flex' needs an attention kind with a FlexAttention mask; "
                f"attention={self.name!r} has none (use attention_backend='torch')"
            )

    def can_pin(self, config: ModelConfig) -> bool:
        """Whether ``pin_tokens`` works with this kind: the kernels' banded patterns only (a
        whole-past kind sees every key already; modules and stacks have their own caches)."""
        plain = self.module is None and self.stack is None and config.attention_backend == "torch"
        return plain and self.pattern(config).band > 0

    def query_block(self, config: ModelConfig) -> int:
        """Query block of the aligned paths: the band for banded patterns."""
        return self.pattern(config).band or RELATIVE_BLOCK

    def prepare_step(self, ctx: AttnContext, keys, dtype) -> AttnContext:
        """Fill ``ctx`` for a cached step from the cache's :class:`StepKeys` (once per step)."""
        return cached_context(ctx, keys, dtype, self.has_relative)

    def bounded_reach(self, config: ModelConfig) -> int | None:
        """How many tokens back a query sees; ``None`` when it sees the whole past (then
        generation must stay within ``max_seq_len``); bounded kinds keep a constant cache."""
        return self.pattern(config).reach

    def make_cache(self, config: ModelConfig, batch_size: int, device=None, dtype=None) -> KVCache:
        """An empty cache: full storage for unbounded kinds, a ring of the reach otherwise."""
        p = self.pattern(config)
        if p.reach is None:
            return FullCache(config.n_layers, batch_size, device, dtype)
        return RingCache(config.n_layers, batch_size, p.band, p.stride, p.horizon, device, dtype)

    def flex_mask(self, config: ModelConfig) -> Callable | None:
        """The FlexAttention ``mask_mod``, or ``None`` when the kind has no flex path."""
        return self.pattern(config).mask_mod() if self.flex else None
