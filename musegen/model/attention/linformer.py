"""``linformer``: low-rank attention (Wang et al. 2020, "Linformer"), made causal.

Linformer projects the keys and values of the whole sequence along the length axis to ``k``
rows (``K̃ = E·K`` with ``E`` of shape ``[k, L]``), so every query reads the future. The causal
variant built here cuts the sequence into blocks of ``c = linformer_block`` tokens and shares
one learned projection ``E ∈ R^{k×c}`` (and ``F`` for values, per head) across blocks, with
``k = linformer_rank``:

* the summary of block ``b`` is ``E·K_b`` (``k`` rows); the summary of *the past* of block
  ``b`` is the mean of the summaries of the complete blocks ``0 … b-1`` (Linformer's projection
  of the prefix, with ``E`` tied across blocks and normalised by the number of blocks);
* a query in block ``b`` attends, in one softmax, to those ``k`` past summaries and, at full
  resolution with the relative bias, to the keys of its own block up to itself.

Nothing sees the future: a block is summarised only once it is complete, and a query's own
block is causally masked. Each query reads ``k + c`` keys, so time and memory are linear in
``L`` (all blocks at once, no ``L × L`` tensor). The summaries carry no position (Linformer's
do not either); positions enter through the relative bias inside a block.

Left padding: each row's blocks start at its first real token (rows are rotated so their
padding comes last), so a padded row computes what it computes alone; a padded batch decodes by
recomputing the summaries over the kept keys at each step (linear time per token).

Decoding is incremental with a constant-size cache per layer: the running sum of the complete
blocks' projections, their count, and the raw keys/values of the current block; when a block
completes it is projected and added to the sum. (Its reach is the whole past, so the sampler
still slides at ``max_seq_len``, but the cache does not grow.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musegen.model.attention.family import Mechanism, ModuleSpec
from musegen.model.attention.kernels import NEG_INF


class LinformerAttention(Mechanism):
    def __init__(self, config) -> None:
        super().__init__()
        H, c, r = config.n_heads, config.linformer_block, config.linformer_rank
        self.block = c
        # start near mean pooling of the block, with some spread between the k rows
        self.e_k = nn.Parameter(torch.full((H, r, c), 1.0 / c) + torch.randn(H, r, c) / c)
        self.e_v = nn.Parameter(torch.full((H, r, c), 1.0 / c) + torch.randn(H, r, c) / c)

    def forward(self, q, k, v, rel, ctx, cache, layer: int) -> Tensor:
        if cache is None:
            return self.padded(q, k, v, rel, ctx.key_valid, ctx.pad)
        if cache.padded:  # rows start at different offsets: keep raw keys, recompute
            k, v = cache.append(layer, k, v)
            return self.padded(q, k, v, rel, cache.valid, cache.pad)
        st = cache.state[layer]
        start, Lq = cache.length, q.shape[2]
        m = start % self.block  # tokens of the current, incomplete block already cached
        if m:
            k, v = torch.cat([st["k"], k], 2), torch.cat([st["v"], v], 2)
        valid = cache.valid[:, start - m : start + Lq] if cache.padded else None
        past = (st["sk"], st["sv"], st["n"]) if "n" in st else None
        out, state = self.segment(q, k, v, rel, valid, past)
        done = (m + Lq) // self.block * self.block
        st.update(k=k[:, :, done:], v=v[:, :, done:])
        if state is not None:
            st.update(sk=state[0], sv=state[1], n=state[2])
        return out

    def padded(self, q, k, v, rel, valid, pad) -> Tensor:
        """The whole sequence, blocks counted from each row's first real token: each row is
        rotated so its padding comes last (after every real token, so causally invisible)."""
        if valid is None or pad is None or not bool(pad.any()):
            return self.segment(q, k, v, rel, valid, None)[0]
        (B, H, T, D), Lq = k.shape, q.shape[2]
        q = F.pad(q, (0, 0, T - Lq, 0))
        idx = (torch.arange(T, device=k.device)[None, :] + pad[:, None]) % T  # [B, T]
        fwd = idx[:, None, :, None].expand(B, H, T, D)
        q, k, v = q.gather(2, fwd), k.gather(2, fwd), v.gather(2, fwd)
        out = self.segment(q, k, v, rel, valid.gather(1, idx), None)[0]
        back = (torch.arange(T, device=k.device)[None, :] - pad[:, None]) % T
        out = out.gather(2, back[:, None, :, None].expand(B, H, T, D))
        return out[:, :, T - Lq :]

    def segment(self, q, k, v, rel, valid, past):
        """Queries = the last ``q.shape[2]`` of the ``k.shape[2]`` positions, which start on a
        block boundary; ``past`` = (sum of summaries, values' sum, blocks) before them.
        Returns the output and the state after the segment's complete blocks."""
        B, H, T, D = k.shape
        c, Lq = self.block, q.shape[2]
        nb = math.ceil(T / c)
        if valid is not None:  # padding keys neither count in summaries nor get attended
            keep = valid[:, None, :, None].to(k.dtype)
            k, v = k * keep, v * keep
        extra = nb * c - T
        kb = F.pad(k, (0, 0, 0, extra)).view(B, H, nb, c, D)
        vb = F.pad(v, (0, 0, 0, extra)).view(B, H, nb, c, D)
        qb = F.pad(q, (0, 0, T - Lq, extra)).view(B, H, nb, c, D)
        pk = torch.einsum("hrc,bhncd->bhnrd", self.e_k.to(k.dtype), kb)  # block summaries
        pv = torch.einsum("hrc,bhncd->bhnrd", self.e_v.to(v.dtype), vb)
        sk0, sv0, n0 = past if past is not None else (0.0, 0.0, 0)
        before_k = _exclusive_cumsum(pk, sk0 if past else None)  # summaries of earlier blocks
        before_v = _exclusive_cumsum(pv, sv0 if past else None)
        count = (n0 + torch.arange(nb, device=k.device)).to(k.dtype)  # blocks before block n
        mean_k = before_k / count.clamp_min(1)[:, None, None]
        mean_v = before_v / count.clamp_min(1)[:, None, None]
        scale = D**-0.5
        s_sum = torch.matmul(qb, mean_k.transpose(-1, -2)) * scale  # [B, H, nb, c, r]
        s_sum = s_sum.masked_fill((count == 0)[:, None, None], NEG_INF)
        s_loc = self._local_scores(qb, kb, rel, valid, T, B) * scale  # [B, H, nb, c, c]
        p = torch.cat([s_sum, s_loc], -1).softmax(-1)
        r = s_sum.shape[-1]
        out = torch.matmul(p[..., :r], mean_v) + torch.matmul(p[..., r:], vb)
        out = out.reshape(B, H, nb * c, D)[:, :, T - Lq : T]
        full = T // c  # complete blocks in the segment
        if not full:
            return out, past
        last = full - 1
        state = (before_k[:, :, last] + pk[:, :, last], before_v[:, :, last] + pv[:, :, last])
        return out, (*state, n0 + full)

    def _local_scores(self, qb, kb, rel, valid, T, B):
        """``q·k + q·E[i-j]`` inside each block, ``-inf`` for later (or padding) keys."""
        c = self.block
        s = torch.matmul(qb, kb.transpose(-1, -2))
        i = torch.arange(c, device=qb.device)
        dist = i[:, None] - i[None, :]
        if rel is not None:
            n_dist = min(c, rel.shape[1])
            qe = torch.matmul(qb, rel[:, None, :n_dist].transpose(-1, -2))  # [B,H,nb,c,n_dist]
            s = s + qe.gather(-1, dist.clamp(0, n_dist - 1).expand(*qe.shape[:-1], -1))
        ok = (dist >= 0)[None, None, None]
        if valid is not None:
            nb = kb.shape[2]
            vk = F.pad(valid, (0, nb * c - T)).view(B, 1, nb, 1, c)
            ok = (ok & vk) | (dist == 0)
        return s.masked_fill(~ok, NEG_INF)


def _exclusive_cumsum(x: Tensor, start: Tensor | None) -> Tensor:
    """``start + Σ_{m<n} x[:, :, m]`` for every block ``n`` (shifted, never ``cumsum - x``:
    that would let a block's rounding leak into its own prefix)."""
    first = torch.zeros_like(x[:, :, :1]) if start is None else start[:, :, None]
    return torch.cat([first, x[:, :, :-1]], 2).cumsum(2)


def check(config) -> None:
    for name in ("linformer_block", "linformer_rank"):
        if getattr(config, name) <= 0:
            raise ValueError(f"attention={config.attention!r} needs {name} > 0")
    if config.linformer_block > config.max_seq_len:
        raise ValueError(
            f"linformer_block={config.linformer_block} exceeds max_seq_len={config.max_seq_len}: "
            "no block would ever be summarised"
        )


SPEC = ModuleSpec(
    name="linformer",
    module=LinformerAttention,
    fields=("max_relative_distance", "linformer_block", "linformer_rank"),
    check=check,
    has_relative=True,
    summary="causal low-rank attention: own block in full + mean low-rank summary of the past",
)
