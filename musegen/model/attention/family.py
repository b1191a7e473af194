"""What the kinds with parameters or state of their own share (``linformer``, ``adaptive_span``,
``routing``, ``synthesizer``, ``entmax``).

Such a kind is a :class:`ModuleSpec`: besides the spec fields it makes one :class:`Mechanism`
per layer (``spec.module(config)``), which :class:`~musegen.model.transformer.SelfAttention`
calls as ``mech(q, k, v, rel, ctx, cache, layer)``. The mechanism reads and writes its own slot
of a :class:`StateCache` (raw keys, trimmed keys, block summaries: whatever it needs), so the
model's loop is the same for every kind.

Most of these kinds are "softmax-like weights over an explicit set of keys": the weights of a
query are a function of the query, the keys it may see and their positions. For them
:func:`dense_attention` does the bookkeeping once: positions of the queries and keys in both
regimes (aligned training; a chunk after what the cache has seen), the causal mask, left
padding, an optional band (keys further back are never looked at), and query blocks
(checkpointed when the scores of a long training sequence would not fit), so that decoding
with the cache runs exactly the computation of the full forward. The kind only says how a
block of queries weighs its keys (:meth:`Mechanism.weights`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from musegen.model.attention.kernels import NEG_INF, AttnContext
from musegen.model.attention.spec import AttentionSpec
from musegen.model.cache import KVCache

QUERY_BLOCK = 256
CHECKPOINT_BYTES = 256 << 20  # scores of one layer above this: recompute each query block


class StateCache(KVCache):
    """Per-layer state dicts that each layer's mechanism fills as it likes, plus the key
    validity of every token seen (left padding) that the model's bookkeeping keeps."""

    def __init__(self, n_layers: int, batch_size: int, device=None, dtype=None) -> None:
        super().__init__(n_layers, batch_size, device, dtype)
        self.valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=self.device)
        self.state: list[dict[str, Tensor]] = [{} for _ in range(n_layers)]

    def begin(self, n: int, padding_mask: Tensor | None = None) -> None:
        self.valid = torch.cat([self.valid, self.set_padding(padding_mask, n)], dim=1)
        self._n = n

    def append(self, layer: int, k: Tensor, v: Tensor, keep: int | None = None):
        """Keys/values of every kept token plus the new ones (what this chunk attends to);
        keeps only the last ``keep`` of them for later steps (``None``: all)."""
        st = self.state[layer]
        if "k" in st:
            k, v = torch.cat([st["k"], k], 2), torch.cat([st["v"], v], 2)
        st["k"], st["v"] = (k, v) if keep is None else (k[:, :, -keep:], v[:, :, -keep:])
        return k, v

    def _tensors(self) -> list[Tensor]:
        return [t for st in self.state for t in st.values() if isinstance(t, Tensor)]


@dataclass
class Keys:
    """The keys a chunk of queries attends to, with positions (index: padding included)."""

    k: Tensor  # [B, H, Nk, D]
    v: Tensor
    q_idx: Tensor  # [Lq] index positions of the queries
    k_idx: Tensor  # [Nk] index positions of the keys (contiguous, ending at the last query)
    valid: Tensor | None  # [B, Nk] real (not padding) keys, None: all real
    pad: Tensor | None  # [B] left padding of each row (real position = index - pad)


def chunk_keys(q, k, v, ctx: AttnContext, cache, layer: int, keep: int | None = None) -> Keys:
    """Positions of this forward's queries and of the keys they see, in either regime."""
    Lq, dev = q.shape[2], q.device
    if cache is None:
        idx = torch.arange(Lq, device=dev)
        return Keys(k, v, idx, idx, ctx.key_valid, ctx.pad)
    start = cache.length
    k, v = cache.append(layer, k, v, keep)
    end, n = start + Lq, k.shape[2]
    valid = cache.valid[:, end - n : end] if cache.padded else None
    return Keys(
        k,
        v,
        torch.arange(start, end, device=dev),
        torch.arange(end - n, end, device=dev),
        valid,
        cache.pad,
    )


@dataclass
class Block:
    """One query block and its keys, as :meth:`Mechanism.weights` sees them."""

    q: Tensor  # [B, H, Bq, D]
    k: Tensor  # [B, H, Nk, D]
    dist: Tensor  # [Bq, Nk] query index - key index
    ok: Tensor  # [B or 1, 1, Bq, Nk] may attend (causal, band, padding; a query sees itself)
    q_idx: Tensor
    k_idx: Tensor
    pad: Tensor | None


def relative_scores(blk: Block, rel: Tensor | None) -> Tensor:
    """``(q·k + q·E[min(i-j, R-1)]) / √D`` for every (query, key) of the block (no mask)."""
    D = blk.q.shape[-1]
    s = torch.matmul(blk.q, blk.k.transpose(-1, -2))
    if rel is not None:
        n_dist = max(1, min(int(blk.dist.max()) + 1, rel.shape[1]))
        qe = torch.matmul(blk.q, rel[:, :n_dist].transpose(-1, -2))  # [B, H, Bq, n_dist]
        idx = blk.dist.clamp(0, n_dist - 1).expand(*qe.shape[:-1], -1)
        s = s + qe.gather(-1, idx)
    return s * D**-0.5


def masked(scores: Tensor, ok: Tensor) -> Tensor:
    return scores.masked_fill(~ok, NEG_INF)


class Mechanism(nn.Module):
    """A layer's attention when the kind owns parameters or state. Subclasses implement
    :meth:`weights` (the default :meth:`forward` runs :func:`dense_attention`) or override
    :meth:`forward` entirely."""

    band: int | None = None  # keys at distance >= band are never seen

    def keep(self) -> int | None:
        """How many past keys the cache must keep (``None``: all)."""
        return self.band

    def weights(self, blk: Block, rel: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, q, k, v, rel, ctx: AttnContext, cache, layer: int) -> Tensor:
        keys = chunk_keys(q, k, v, ctx, cache, layer, self.keep() if cache is not None else None)
        return dense_attention(q, keys, lambda blk: self.weights(blk, rel), self.band)


def dense_attention(q: Tensor, keys: Keys, weights: Callable, band: int | None) -> Tensor:
    """``weights(block) @ v`` per query block, over the keys each block may see."""
    B, H, Lq, _ = q.shape
    n_keys = keys.k.shape[2] if band is None else min(keys.k.shape[2], band + QUERY_BLOCK)
    big = 4 * B * H * Lq * n_keys > CHECKPOINT_BYTES and torch.is_grad_enabled()
    outs = []
    for i0 in range(0, Lq, QUERY_BLOCK):
        i1 = min(i0 + QUERY_BLOCK, Lq)
        if big:
            outs.append(checkpoint(_block, q, keys, weights, band, i0, i1, use_reentrant=False))
        else:
            outs.append(_block(q, keys, weights, band, i0, i1))
    return outs[0] if len(outs) == 1 else torch.cat(outs, 2)


def _block(q: Tensor, keys: Keys, weights: Callable, band: int | None, i0: int, i1: int):
    q_idx = keys.q_idx[i0:i1]
    first = int(keys.k_idx[0])
    lo = 0 if band is None else max(0, int(q_idx[0]) - band + 1 - first)
    hi = int(q_idx[-1]) + 1 - first
    k_idx = keys.k_idx[lo:hi]
    dist = q_idx[:, None] - k_idx[None, :]
    ok = dist >= 0
    if band is not None:
        ok = ok & (dist < band)
    ok = ok[None, None]
    if keys.valid is not None:
        ok = (ok & keys.valid[:, None, None, lo:hi]) | (dist == 0)
    blk = Block(q[:, :, i0:i1], keys.k[:, :, lo:hi], dist, ok, q_idx, k_idx, keys.pad)
    p = weights(blk)
    return torch.matmul(p.to(keys.v.dtype), keys.v[:, :, lo:hi])


def _not_a_function(*args, **kwargs):
    raise RuntimeError("this attention kind runs as a module (spec.module), not a function")


@dataclass(frozen=True)
class ModuleSpec(AttentionSpec):
    """A kind whose layers are :class:`Mechanism` modules with a :class:`StateCache`."""

    forward: Callable = _not_a_function
    reach: Callable | None = None  # config -> tokens back a query sees (None: whole past)

    def bounded_reach(self, config) -> int | None:
        return None if self.reach is None else self.reach(config)

    def make_cache(self, config, batch_size: int, device=None, dtype=None) -> StateCache:
        return StateCache(config.n_layers, batch_size, device, dtype)

    def prepare_step(self, ctx: AttnContext, keys, dtype) -> AttnContext:
        return ctx  # the mechanism reads positions from its cache


def mechanisms(model: nn.Module, kind: type = Mechanism) -> list[Mechanism]:
    """The attention mechanisms of a model, layer by layer."""
    return [m for m in model.modules() if isinstance(m, kind)]


__all__ = [
    "Block",
    "Keys",
    "Mechanism",
    "ModuleSpec",
    "StateCache",
    "chunk_keys",
    "dense_attention",
    "masked",
    "mechanisms",
    "relative_scores",
]
