"""The Universal Transformer stack (Dehghani et al. 2019): one block shared across depth,
with adaptive computation time (ACT, Graves 2016) deciding per token how many steps it takes.

Attention kind ``universal`` (:mod:`musegen.model.attention.universal`). The block is the
standard relative-attention :class:`~musegen.model.transformer.Block`, stored once and applied
up to ``n_layers`` times; a learned step embedding is added to the state before each step.

**ACT, per token.** Before step ``n`` a halting unit gives ``p_n = σ(w·s_n + b)``. A token keeps
pondering while its running sum of ``p`` stays at or below ``act_threshold``; on the step that
would cross it (or on the last step) it halts and takes the *remainder* ``R = 1 - Σ p`` as
that step's weight. The output is the weighted sum ``Σ_n w_n · block_n(s_n)`` (weights sum to
one per token), and the ponder cost ``ρ = N(t) + R(t)`` (steps taken plus remainder) is
averaged over the tokens and weighed by ``ponder_cost`` in the loss
(:meth:`MusicTransformer.auxiliary_loss`, called by the training loop after each forward).
Its gradient flows through ``R``: raising the halting probabilities lowers the depth.

**Halted tokens still give keys.** A token that halted at step ``n`` keeps its state frozen
(copy-through): at later steps its keys and values come from that frozen state (plus the
step embedding), so tokens still pondering can attend to it at every depth. In a full forward
the block still runs over halted tokens (dense batches) and their result is discarded; once
*every* token of the pass has halted, the remaining steps are skipped (without a cache) or
only project the frozen states to keys and values for the cache (with one), so a model that
learned to halt early decodes with fewer block evaluations.

**Decoding** uses the shared block's cache: a :class:`~musegen.model.cache.FullCache` with one
layer slot per depth step, exactly what a ``n_layers``-deep relative model uses; a new token
runs until it halts, then fills its remaining slots with the frozen state's keys/values.

:func:`average_depth` reports the mean number of steps per token (``1 … n_layers``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musegen.config import ModelConfig
from musegen.model.attention import AttnContext
from musegen.model.cache import KVCache


class UniversalStack(nn.Module):
    """One block applied up to ``n_layers`` times, each token halting on its own (ACT)."""

    def __init__(self, config: ModelConfig, Block: type[nn.Module]) -> None:
        super().__init__()

        self.n_steps, self.threshold = config.n_layers, config.act_threshold
        self.ponder_cost = config.ponder_cost
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.block = Block(config)
        self.step_emb = nn.Parameter(torch.zeros(config.n_layers, config.d_model))
        self.halt = nn.Linear(config.d_model, 1, bias=False)
        # p ≈ 1/(N+1) at init: no token crosses the threshold early, so training starts from
        # the full-depth model and the ponder cost learns to cut steps (not named "bias": the
        # model's init zeroes those)
        self.halt_offset = nn.Parameter(torch.tensor(-math.log(config.n_layers)))
        self._ponder: Tensor | None = None
        self.last_depth: Tensor | None = None  # steps taken per token [B, L] in the last pass
        self.depth_sum, self.depth_tokens = 0.0, 0  # running totals (see average_depth)

    def forward(self, x: Tensor, ctx: AttnContext, cache: KVCache | None) -> Tensor:
        B, L, _ = x.shape
        h = x.new_zeros(B, L)  # running sum of halting probabilities
        rem = x.new_zeros(B, L)  # remainder R, set on the halting step
        steps = x.new_zeros(B, L)  # N(t): steps taken
        running = torch.ones(B, L, dtype=torch.bool, device=x.device)
        acc, state = torch.zeros_like(x), x
        for n in range(self.n_steps):
            inp = state + self.step_emb[n]
            if not bool(running.any()):  # every token has halted: only keys are left to make
                if cache is None:
                    break
                self._fill_keys(inp, cache, n)
                continue
            p = torch.sigmoid(self.halt(inp).squeeze(-1) + self.halt_offset)
            run = running.to(x.dtype)
            last = n == self.n_steps - 1  # the last step halts every token left
            stop = running if last else running & (h + p * run > self.threshold)
            go = running & ~stop
            go_f, stop_f = go.to(x.dtype), stop.to(x.dtype)
            h = h + p * go_f
            rem = rem + stop_f * (1.0 - h)
            h = h + stop_f * rem
            steps = steps + run
            weight = p * go_f + stop_f * rem
            out = self.block(inp, ctx, cache, n)
            acc = acc + weight.unsqueeze(-1) * out
            state = torch.where(running.unsqueeze(-1), out, state)  # halted: copy-through
            running = go
        self._record(steps, rem)
        return acc

    def _fill_keys(self, inp: Tensor, cache: KVCache, n: int) -> None:
        """Keys/values of step ``n`` from the frozen states, for the cache only."""
        B, L, _ = inp.shape
        attn, W = self.block.attn, self.n_heads * self.head_dim
        kv = F.linear(self.block.ln1(inp), attn.qkv.weight[W:], attn.qkv.bias[W:])
        k, v = kv.view(B, L, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cache.update(n, k, v)

    def _record(self, steps: Tensor, rem: Tensor) -> None:
        self._ponder = (steps + rem).mean() if torch.is_grad_enabled() else None
        self.last_depth = steps.detach()
        self.depth_sum += float(steps.sum())
        self.depth_tokens += steps.numel()

    def auxiliary_loss(self) -> Tensor | None:
        """``ponder_cost × mean(N + R)`` of the last forward with gradients, else ``None``."""
        if self._ponder is None or self.ponder_cost == 0:
            return None
        return self.ponder_cost * self._ponder

    def reset_depth(self) -> None:
        self.depth_sum, self.depth_tokens = 0.0, 0


def average_depth(model: nn.Module, input_ids: Tensor | None = None) -> float:
    """Mean steps per token (``1 … n_layers``) of a ``universal`` model.

    With ``input_ids``: over one no-grad forward of them. Without: over every token the model
    has processed since :meth:`UniversalStack.reset_depth` (e.g. a whole generation).
    """
    stack = getattr(model, "stack", None)
    if not isinstance(stack, UniversalStack):
        raise ValueError("average_depth needs a model whose attention kind is 'universal'")
    if input_ids is not None:
        with torch.no_grad():
            model(input_ids)
        return float(stack.last_depth.mean())
    if stack.depth_tokens == 0:
        raise ValueError("the model has processed no tokens since reset_depth()")
    return stack.depth_sum / stack.depth_tokens


__all__ = ["UniversalStack", "average_depth"]
