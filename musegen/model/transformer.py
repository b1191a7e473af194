"""The music transformer: token embedding → pre-norm blocks → final norm → tied head.

A readable nanoGPT-style decoder. ``config.attention`` names an
:class:`~musegen.model.attention.AttentionSpec` (:func:`musegen.model.attention.get_kind`), looked
up once here: it gives the attention functions, says whether the model learns absolute position
embeddings or per-layer relative embeddings ``[heads, max_relative_distance, head_dim]``, and
makes the cache.

``forward(ids, cache=None, padding_mask=None)``: with a cache, ``ids`` are the next tokens after
those the cache has seen (prefill a prompt, then one token at a time); ``padding_mask`` marks
real tokens (True) and LEFT padding (False) so prompts of different lengths share a batch.
One-token steps over a full cache take the attention's decode regime, and the linear layers
multiply small no-grad CPU batches by split weight copies (:mod:`musegen.model.linear`).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musegen.config import ModelConfig
from musegen.model.attention import (
    AttnContext,
    additive_mask,
    get_kind,
    inference_kernels,
    init_scale,
)
from musegen.model.cache import FullCache, KVCache
from musegen.model.feedback import FeedbackStack
from musegen.model.linear import DecodeWeight, Linear, WeightMemo
from musegen.model.universal import UniversalStack

# Above this many bytes of relative biases per layer, training checkpoints each query block
# (see musegen.model.attention.kernels.block_attention): for 8 heads, from L ≈ 5.8k at batch 1
# and L ≈ 2k at batch 8. Recomputing costs a second pass over each block, so shorter sequences
# keep them.
RECOMPUTE_BYTES = 512 << 20


class SelfAttention(nn.Module):
    """Multi-head self-attention; the mechanism itself comes from the kind's spec."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.width = config.attn_dim  # d_model unless heads were pruned
        self.qkv = Linear(config.d_model, 3 * self.width)
        self.proj = Linear(self.width, config.d_model)
        spec = get_kind(config.attention)
        self.fn, self.step = spec.forward, spec.decode  # bound once: no lookup per token
        self.rel = None
        if spec.has_relative:
            shape = (config.n_heads, config.max_relative_distance, config.head_dim)
            self.rel = nn.Parameter(torch.randn(shape) * init_scale(config.head_dim))
        # a kind with parameters/state of its own runs as a module that owns its cache slot
        self.mech = spec.module(config) if spec.module is not None else None
        self.memo = WeightMemo()

    def forward(self, x: Tensor, ctx: AttnContext, cache: KVCache | None, layer: int) -> Tensor:
        B, L, _ = x.shape
        qkv = self.qkv.forward(x).view(B, L, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if self.mech is not None:
            y = self.mech(q, k, v, self.rel, ctx, cache, layer)
            return self.proj.forward(y.transpose(1, 2).reshape(B, L, self.width))
        if cache is not None:
            k_all, v_all = cache.update(layer, k, v)
            if ctx.cached:
                k, v = k_all, v_all
        rel = self.rel
        if ctx.decode:
            if rel is not None:  # decode reads distances far to near: see decode_relative_bias
                rel = self.memo.get("reversed", lambda: self.rel.detach().flip(1), self.rel)
            y = self.step(q, k, v, rel, ctx)
        else:
            y = self.fn(q, k, v, rel, ctx)
        return self.proj.forward(y.transpose(1, 2).reshape(B, L, self.width))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.fc = Linear(config.d_model, config.d_ff)
        self.out = Linear(config.d_ff, config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, ctx: AttnContext, cache: KVCache | None, layer: int) -> Tensor:
        # Sub-modules are run through ``.forward``: a one-token decode step makes ~60 such
        # calls, and this skips ``nn.Module.__call__``'s hook handling on each.
        h = self.attn.forward(self.ln1.forward(x), ctx, cache, layer)
        x = x + self._dropout(h)
        h = self.out.forward(F.gelu(self.fc.forward(self.ln2.forward(x)), approximate="tanh"))
        return x + self._dropout(h)

    def _dropout(self, x: Tensor) -> Tensor:
        return self.drop.forward(x) if self.training and self.drop.p > 0 else x


# Model-structure kinds name their stack (AttentionSpec.stack); the stacks build on Block.
STACKS: dict[str, type[nn.Module]] = {
    "shared_block": UniversalStack,
    "feedback_memory": FeedbackStack,
}


class MusicTransformer(nn.Module):
    """Decoder-only transformer over token ids; see the module docstring for the API."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.spec = spec = get_kind(config.attention)  # ValueError naming unknown kinds
        spec.validate(config)  # the kind's own fields, and whether it has a flex form
        self.config = config
        self._pattern, self._block = spec.pattern(config), spec.query_block(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = None
        if spec.absolute_positions:
            self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        # A model-structure kind (a shared block, a feedback memory) brings its own stack.
        self.stack = STACKS[spec.stack](config, Block) if spec.stack is not None else None
        self.blocks = None
        if self.stack is None:
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = None
        if not config.tie_embeddings:
            self.head = Linear(config.d_model, config.vocab_size, bias=False)
        self.tied_head = DecodeWeight()
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled down by depth."""
        for name, p in self.named_parameters():
            if name.endswith(".rel") or ".mech." in name:  # kind modules initialise their own
                continue
            if p.dim() >= 2:
                std = 0.02
                if name.endswith(("attn.proj.weight", "out.weight")):
                    std /= math.sqrt(2 * self.config.n_layers)
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def auxiliary_loss(self) -> Tensor | None:
        """A term the training loop adds to the loss after each forward (the ponder cost of a
        shared block with adaptive depth, the span penalty of adaptive spans), or ``None``
        when the structure and the attention kind have none."""
        terms = [] if self.stack is None else [self.stack.auxiliary_loss()]
        for m in self.modules():  # attention modules with a penalty (e.g. adaptive span)
            if m is not self and hasattr(m, "span_penalty"):
                terms.append(m.span_penalty())
        terms = [t for t in terms if t is not None]
        return sum(terms) if terms else None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, device=None, dtype=None) -> KVCache:
        """An empty cache of the kind's choice: a ring buffer when its reach is bounded."""
        if device is None:
            device = self.tok_emb.weight.device
        if self.stack is not None and hasattr(self.stack, "new_cache"):
            return self.stack.new_cache(self.config, batch_size, device, dtype)
        return self.spec.make_cache(self.config, batch_size, device, dtype)

    def forward(
        self,
        input_ids: Tensor,
        cache: KVCache | None = None,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Logits ``[B, L, vocab]`` for ``input_ids`` ``[B, L]`` (after what ``cache`` has seen)."""
        L = input_ids.shape[1]
        ctx, start, pad = self._context(input_ids, cache, padding_mask)
        x = self.tok_emb(input_ids)
        if self.pos_emb is not None:
            pos = torch.arange(start, start + L, device=x.device)[None, :] - pad[:, None]
            x = x + self.pos_emb(pos.clamp_min(0))
        x = self.drop(x)
        kernels = (
            inference_kernels() if x.is_cuda and not torch.is_grad_enabled() else nullcontext()
        )
        with kernels:
            if self.stack is None:
                for i, block in enumerate(self.blocks):
                    x = block(x, ctx, cache, i)
            else:
                x = self.stack(x, ctx, cache)
        if cache is not None:
            cache.end()
        x = self.ln_f(x)
        if self.head is None:
            return self.tied_head.linear(x, self.tok_emb.weight, None)
        return self.head(x)

    def _context(self, input_ids: Tensor, cache: KVCache | None, padding_mask: Tensor | None):
        """Positions, padding and (with a cache) the step's mask, shared by every layer."""
        c = self.config
        B, L = input_ids.shape
        device = input_ids.device
        ctx = AttnContext(self._pattern, self._block)
        if padding_mask is not None:
            padding_mask = self._check_padding(padding_mask, B, L, device)
        start = cache.length if cache is not None else 0
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"cache was made for batch size {cache.batch_size}, got {B}")
        if cache is not None and start > 0:
            pad = cache.pad
        else:
            pad = torch.zeros(B, dtype=torch.long, device=device)
            if padding_mask is not None:
                pad = (~padding_mask).sum(1)
        if self.spec.absolute_positions and start + L - int(pad.min()) > c.max_seq_len:
            raise ValueError(
                f"attention={c.attention!r} cannot go past max_seq_len={c.max_seq_len} tokens "
                f"(asked for {start + L - int(pad.min())}); use a kind with relative "
                "positions (e.g. relative, local or sparse) to generate longer pieces"
            )
        if cache is not None and L == 1 and start > 0 and self._decodes(cache, padding_mask):
            valid = cache.begin_token()
            ctx.decode = True
            if valid is not None:
                ctx.mask = additive_mask(valid, self.tok_emb.weight.dtype)[:, None, None]
            return ctx, start, pad
        pinned = self._pinned(input_ids, cache, padding_mask) if c.pin_tokens else None
        if cache is not None and pinned is not None:  # only ring caches pin (spec.can_pin)
            keys = cache.begin(L, padding_mask, pinned)
        elif cache is not None:
            keys = cache.begin(L, padding_mask)
        if start > 0:
            self.spec.prepare_step(ctx, keys, self.tok_emb.weight.dtype)
        elif padding_mask is not None and not bool(padding_mask.all()):
            ctx.pad, ctx.key_valid = pad, padding_mask
        if pinned is not None and not ctx.cached:
            ctx.pinned = pinned_indices(pinned)
        bias_bytes = 2 * B * c.n_heads * L * L  # the kept biases of causal blocks, fp32
        ctx.recompute = (
            self.spec.recompute_long and torch.is_grad_enabled() and bias_bytes > RECOMPUTE_BYTES
        )
        ctx.use_flex = (
            c.attention_backend == "flex"
            and input_ids.is_cuda
            and not ctx.cached
            and ctx.key_valid is None
        )
        return ctx, start, pad

    def _pinned(self, ids: Tensor, cache: KVCache | None, padding_mask: Tensor | None) -> Tensor:
        """Which tokens of ``ids`` are pinned ``[B, L]``: from an open token through the next
        close token (``ModelConfig.pin_tokens``), carried across chunks by the cache."""
        open_id, close_id = self.config.pin_tokens
        B, L = ids.shape
        pos = torch.arange(L, device=ids.device).expand(B, L)
        first = torch.full((B, 1), -3, dtype=torch.long, device=ids.device)
        if cache is not None:  # a stretch still open: as if opened just before this chunk
            first = torch.where(cache.pin_open[:, None], -1, first)
        none = torch.full_like(pos, -3)
        last_open = torch.cat([first, torch.where(ids == open_id, pos, none)], 1).cummax(1)[0]
        closes = torch.cat([first.new_full((B, 1), -2), torch.where(ids == close_id, pos, none)], 1)
        last_close = closes.cummax(1)[0]  # [B, L+1]: column t+1 counts closes up to t
        pinned = last_open[:, 1:] > last_close[:, :-1]  # opened, not closed before t
        if cache is not None:
            cache.pin_open = last_open[:, -1] > last_close[:, -1]
        if padding_mask is not None:
            pinned &= padding_mask.to(pinned.device, torch.bool)
        return pinned

    def _decodes(self, cache: KVCache, padding_mask: Tensor | None) -> bool:
        """Whether a one-token step can take the decode hot path (full cache, no new padding)."""
        if self.spec.decode is None:  # the kind steps through its cached regime
            return False
        return isinstance(cache, FullCache) and (padding_mask is None or bool(padding_mask.all()))

    @staticmethod
    def _check_padding(mask: Tensor, B: int, L: int, device) -> Tensor:
        if mask.shape != (B, L):
            raise ValueError(f"padding_mask must have shape {(B, L)}, got {tuple(mask.shape)}")
        mask = mask.to(device=device, dtype=torch.bool)
        if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
            raise ValueError("padding_mask must mark LEFT padding: False entries come first")
        return mask


def pinned_indices(pinned: Tensor) -> Tensor | None:
    """Each row's pinned positions ``[B, P]`` (``-1`` after a row's last), ``None`` if none."""
    counts = pinned.sum(1)
    P = int(counts.max()) if pinned.numel() else 0
    if P == 0:
        return None
    order = torch.sort((~pinned).to(torch.int8), dim=1, stable=True)[1][:, :P]
    return order.masked_fill(torch.arange(P, device=pinned.device)[None] >= counts[:, None], -1)


__all__ = ["Block", "MusicTransformer", "SelfAttention", "pinned_indices"]
