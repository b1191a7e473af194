"""The Feedback Transformer stack (Fan et al. 2020): every layer attends to a memory formed
from *all* layers' states of earlier positions, so the top layers' view of the past reaches
the bottom layers of later positions.

Attention kind ``feedback`` (:mod:`musegen.model.attention.feedback`).

**Memory.** Position ``t``'s memory vector is a learned softmax-weighted sum of its embedding
and every layer's output there: ``m_t = Σ_l softmax(w)_l · x_t^l`` (``l = 0 … n_layers``).
Layer ``l`` at position ``t`` attends, with relative position biases (distances clipped at
``max_relative_distance``), to keys/values projected *by that layer* from ``m_{<t}`` (its own
``ln1`` and the key/value part of its ``qkv``) plus its own current state ``x_t^{l-1}``.

**Training is sequential.** ``m_t`` needs the top layer at ``t``, and every layer at ``t+1``
needs ``m_t``: the exact model (``feedback_chunk=1``) runs ``L`` sequential steps of
``n_layers`` one-token layers each (``O(L)`` sequential steps, ``O(L²)`` attention work in
all, no parallelism across positions: on a CPU this is tens of times slower per token than the
parallel ``relative`` forward at L in the hundreds). ``feedback_chunk=C > 1`` is the chunked
approximation: a chunk of ``C`` positions runs in parallel, each position attending to the
memory of earlier *chunks* and, within its chunk, to the same layer's keys of the positions
up to itself (ordinary causal self-attention); ``L / C`` sequential steps. Chunks are counted
on cache positions (left padding included), so for ``C > 1`` a left-padded prompt is chunked
differently from the same prompt unpadded.

**Decoding** keeps, per position, what is derived from its one memory vector: the per-layer
keys/values projected from it (``2 · n_layers · d_model`` numbers, the size of a standard KV
cache; projecting once per position instead of once per step), plus, for the chunk in
progress, the per-layer keys of its positions and their memory vectors until the chunk
closes. A new token costs ``n_layers`` one-query attentions over the past and one projection
of its memory per layer: the same order as a standard decoder step.

**Training memory.** Concatenating the memory keys at every step and saving the result for
the backward pass keeps ``L²/2`` key/value vectors per layer (over 20 GiB at the benchmark's
batch 8 × 512, d_model 256, 6 layers: the kernel killed it). A full forward with gradients
keeps the memory as parts of :data:`PART` positions instead (only the open part is copied as
it grows), and its attention saves those parts and the attention weights, rebuilding the
concatenation in the backward pass: about ``L · PART / 2`` vectors per layer, plus ``L²/2``
weights per head (scalars). ``benchmarks/bench_feedback_memory.py``: at batch 8 × 128, 1.0 GiB
peak against 1.6 GiB for one concatenated tensor, at about the same time per step; at 512 the
benchmark's training now runs (7.1 GiB, `--variant parts --length 512`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musegen.config import ModelConfig
from musegen.model.attention import AttnContext, Pattern, additive_mask, init_scale
from musegen.model.attention.kernels import cached_attention, cached_attention_bias
from musegen.model.cache import KVCache
from musegen.model.linear import Linear


def _cat(a: Tensor | None, b: Tensor, dim: int) -> Tensor:
    return b if a is None else torch.cat([a, b], dim)


class FeedbackCache(KVCache):
    """Memory keys/values per layer for positions ``< visible`` (closed chunks), and for the
    chunk in progress its per-layer keys/values (``pk``/``pv``) and memory vectors (``pm``)."""

    def __init__(self, n_layers: int, batch_size: int, chunk: int, device=None, dtype=None):
        super().__init__(n_layers, batch_size, device, dtype)
        self.chunk = chunk
        self.visible = 0
        self.valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=self.device)
        self.pk: list[Tensor | None] = [None] * n_layers
        self.pv: list[Tensor | None] = [None] * n_layers
        self.pm: Tensor | None = None
        self.k_parts: list[list[Tensor]] | None = None
        self.v_parts: list[list[Tensor]] | None = None

    def begin(self, n: int, padding_mask: Tensor | None = None) -> None:
        self.valid = torch.cat([self.valid, self.set_padding(padding_mask, n)], dim=1)
        self._n = n

    def _tensors(self) -> list[Tensor]:
        pending = [t for t in self.pk + self.pv + [self.pm] if t is not None]
        return super()._tensors() + pending

    def keep_parts(self) -> None:
        """Keep the closed chunks' memory keys/values as lists of parts of :data:`PART`
        positions (a training forward: see *Training memory* in the module docstring)
        instead of one growing tensor."""
        self.k_parts = [[] for _ in self.k]
        self.v_parts = [[] for _ in self.v]


def _attend(q: Tensor, rel: Tensor, ctx: AttnContext, n: int, *kv: Tensor | None) -> Tensor:
    """Attention over keys ``kv[:n]`` and values ``kv[n:]``, each part concatenated along
    positions (None parts skipped)."""
    keys = [t for t in kv[:n] if t is not None]
    values = [t for t in kv[n:] if t is not None]
    if len(keys) == 1 or not torch.is_grad_enabled():
        return cached_attention(q, torch.cat(keys, 2), torch.cat(values, 2), rel, ctx)
    bias = cached_attention_bias(q, rel, ctx)
    return _PartsAttention.apply(q, bias, len(keys), *keys, *values)


PART = 64  # positions per memory part in a training forward (see *Training memory*)


def _append_part(parts: list[Tensor], new: Tensor) -> None:
    """Add a chunk's memory keys (or values) to the last part until it holds :data:`PART`."""
    if parts and parts[-1].shape[2] < PART:
        parts[-1] = torch.cat([parts[-1], new], 2)
    else:
        parts.append(new)


class _PartsAttention(torch.autograd.Function):
    """Softmax attention whose keys/values come in parts and are saved as those parts, not
    as their concatenation (see *Training memory* above); backward rebuilds them."""

    @staticmethod
    def forward(fctx, q: Tensor, bias: Tensor, n: int, *kv: Tensor) -> Tensor:
        scale = q.shape[-1] ** -0.5
        keys, values = torch.cat(kv[:n], 2), torch.cat(kv[n:], 2)
        probs = (q @ keys.transpose(-1, -2) * scale + bias).softmax(-1)
        fctx.save_for_backward(q, probs, *kv)
        fctx.n = n
        return probs @ values

    @staticmethod
    def backward(fctx, grad: Tensor):
        q, probs, *kv = fctx.saved_tensors
        n, scale = fctx.n, q.shape[-1] ** -0.5
        keys, values = torch.cat(kv[:n], 2), torch.cat(kv[n:], 2)
        d_probs = grad @ values.transpose(-1, -2)
        d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdim=True))
        d_q = d_scores @ keys * scale
        d_keys = d_scores.transpose(-1, -2) @ q * scale
        d_values = probs.transpose(-1, -2) @ grad
        sizes = [t.shape[2] for t in kv[:n]]
        parts = [*d_keys.split(sizes, 2), *d_values.split(sizes, 2)]
        return d_q, d_scores, None, *parts


class FeedbackLayer(nn.Module):
    """A pre-norm block whose attention reads the memory of earlier positions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.width = config.n_heads * config.head_dim  # all heads (d_model unless pruned)
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = nn.Module()
        self.attn.qkv = Linear(config.d_model, 3 * self.width)
        self.attn.proj = Linear(self.width, config.d_model)
        shape = (config.n_heads, config.max_relative_distance, config.head_dim)
        self.attn.rel = nn.Parameter(torch.randn(shape) * init_scale(config.head_dim))
        self.ln2 = nn.LayerNorm(config.d_model)
        self.fc = Linear(config.d_model, config.d_ff)
        self.out = Linear(config.d_ff, config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, ctx: AttnContext, past: list[Tensor | None]):
        """``x`` ``[B, S, C]`` after the keys in ``past`` (memory k, v; chunk k, v). The memory
        is one tensor each, or lists of parts (a training forward)."""
        B, S, _ = x.shape
        qkv = self.attn.qkv(self.ln1(x)).view(B, S, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        mem_k, mem_v, chunk_k, chunk_v = past
        if not isinstance(mem_k, list):
            mem_k, mem_v = [mem_k], [mem_v]
        n = len(mem_k) + 2
        y = _attend(q, self.attn.rel, ctx, n, *mem_k, chunk_k, k, *mem_v, chunk_v, v)
        x = x + self.drop(self.attn.proj(y.transpose(1, 2).reshape(B, S, self.width)))
        x = x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh")))
        return x, k, v

    def memory_kv(self, m: Tensor) -> tuple[Tensor, Tensor]:
        """This layer's keys/values ``[B, H, P, D]`` of memory vectors ``m`` ``[B, P, C]``."""
        B, P, _ = m.shape
        w, b = self.attn.qkv.weight[self.width :], self.attn.qkv.bias[self.width :]
        kv = F.linear(self.ln1(m), w, b).view(B, P, 2, self.n_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4)
        return k, v


class FeedbackStack(nn.Module):
    """``n_layers`` feedback layers run chunk by chunk (one position per chunk: exact)."""

    def new_cache(self, config: ModelConfig, batch_size: int, device=None, dtype=None):
        """The memory cache: one memory vector's keys/values per position and layer."""
        return FeedbackCache(config.n_layers, batch_size, config.feedback_chunk, device, dtype)

    def __init__(self, config: ModelConfig, Block: type[nn.Module] | None = None) -> None:
        super().__init__()
        self.chunk, self.n_layers = config.feedback_chunk, config.n_layers
        self.n_dist = config.max_relative_distance
        self.layers = nn.ModuleList(FeedbackLayer(config) for _ in range(config.n_layers))
        self.mem_logits = nn.Parameter(torch.zeros(config.n_layers + 1))  # embedding + layers

    def forward(self, x: Tensor, ctx: AttnContext, cache: KVCache | None) -> Tensor:
        B, L, _ = x.shape
        if cache is None:  # a full forward: a cache that lives for this pass only
            cache = FeedbackCache(self.n_layers, B, self.chunk, x.device)
            cache.begin(L, ctx.key_valid)
            if torch.is_grad_enabled():
                cache.keep_parts()
        elif not isinstance(cache, FeedbackCache):
            raise ValueError(
                f"attention='feedback' decodes with its memory cache (model.new_cache()), "
                f"not a {type(cache).__name__}: keys of a feedback layer come from the memory"
            )
        t0 = cache.length
        outs, t = [], t0
        while t < t0 + L:
            end = min((t // self.chunk + 1) * self.chunk, t0 + L)
            outs.append(self._segment(x[:, t - t0 : end - t0], t, cache))
            t = end
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def auxiliary_loss(self) -> None:
        return None

    def memory_weights(self) -> Tensor:
        """How much the embedding and each layer's output weigh in the memory."""
        return self.mem_logits.softmax(0)

    def _segment(self, x: Tensor, t: int, cache: FeedbackCache) -> Tensor:
        """Positions ``t … t+S-1`` of one chunk: every layer, then their memory."""
        end = t + x.shape[1]
        closes = end % self.chunk == 0
        ctx = self._context(cache, t, end, x.dtype)
        states = [x]
        parts = cache.k_parts is not None
        for i, layer in enumerate(self.layers):
            mem = [cache.k_parts[i], cache.v_parts[i]] if parts else [cache.k[i], cache.v[i]]
            x, k, v = layer(x, ctx, [*mem, cache.pk[i], cache.pv[i]])
            if not closes:
                cache.pk[i], cache.pv[i] = _cat(cache.pk[i], k, 2), _cat(cache.pv[i], v, 2)
            states.append(x)
        w = self.memory_weights().to(x.dtype)
        cache.pm = _cat(cache.pm, torch.einsum("l,lbsc->bsc", w, torch.stack(states)), 1)
        if closes:  # the chunk's memory becomes visible to every later position
            for i, layer in enumerate(self.layers):
                k, v = layer.memory_kv(cache.pm)
                if parts:
                    _append_part(cache.k_parts[i], k)
                    _append_part(cache.v_parts[i], v)
                else:
                    cache.k[i], cache.v[i] = _cat(cache.k[i], k, 2), _cat(cache.v[i], v, 2)
                cache.pk[i] = cache.pv[i] = None
            cache.pm, cache.visible = None, end
        return x

    def _context(self, cache: FeedbackCache, t: int, end: int, dtype) -> AttnContext:
        """Mask and distance index of queries ``t … end-1`` over keys at positions ``0 … end-1``
        (closed-chunk memory, then the chunk's keys): causal, padded keys hidden."""
        device = cache.valid.device
        dist = torch.arange(t, end, device=device)[:, None] - torch.arange(end, device=device)
        ok = ((dist >= 0)[None] & cache.valid[:, None, :end]) | (dist == 0)[None]
        ctx = AttnContext(Pattern(), 1, mask=additive_mask(ok, dtype)[:, None])
        ctx.n_dist = min(end, self.n_dist)
        ctx.dist_index = dist.clamp(0, ctx.n_dist - 1)[None, None]
        return ctx


__all__ = ["FeedbackCache", "FeedbackLayer", "FeedbackStack"]
