"""``synthesizer``: attention weights that are synthesized, not computed from query-key dot
products (Tay et al. 2021, "Synthesizer: rethinking self-attention in transformer models").

* ``synthesizer_mode="dense"``: a per-token two-layer MLP maps each token to logits over the
  ``max_seq_len`` positions. It reads the token's query projection (a linear function of the
  token, so the MLP is the paper's ``F(x)`` with its first layer factored), per head.
* ``synthesizer_mode="random"``: the logits are a learned ``[max_seq_len, max_seq_len]`` matrix
  per head, independent of content; it is factorised as ``R₁R₂ᵀ`` of rank ``head_dim`` (the
  paper's factorised random synthesizer) so a 1k context does not cost a million parameters per
  head.

Made causal the way the paper's language-modelling runs are: the logits of query ``i`` are
truncated to the keys ``j <= i`` and renormalised by the softmax over them. Positions are real
positions (left padding excluded), so a piece cannot be longer than ``max_seq_len`` (generation
slides, like ``absolute``). Incremental decoding is exact: a query's weights depend on itself
and the positions only, so the cache keeps the values of earlier tokens (keys are unused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musegen.model.attention.family import Block, Mechanism, ModuleSpec, masked

MODES = ("dense", "random")


class SynthesizerAttention(Mechanism):
    def __init__(self, config) -> None:
        super().__init__()
        H, D, L = config.n_heads, config.head_dim, config.max_seq_len
        self.mode, self.max_len = config.synthesizer_mode, L
        if self.mode == "dense":
            self.w1 = nn.Parameter(torch.randn(H, D, D) * D**-0.5)
            self.b1 = nn.Parameter(torch.zeros(H, D))
            self.w2 = nn.Parameter(torch.randn(H, D, L) * D**-0.5)
        else:
            self.r1 = nn.Parameter(torch.randn(H, L, D) * D**-0.5)
            self.r2 = nn.Parameter(torch.randn(H, L, D) * D**-0.5)

    def weights(self, blk: Block, rel: Tensor | None) -> Tensor:
        B = blk.q.shape[0]
        pad = blk.pad if blk.pad is not None else torch.zeros(B, dtype=torch.long)
        pad = pad.to(blk.q.device)
        q_pos = (blk.q_idx[None, :] - pad[:, None]).clamp_min(0)  # [B, Bq] real positions
        k_pos = (blk.k_idx[None, :] - pad[:, None]).clamp_min(0)  # [B, Nk]
        if int(q_pos.max()) >= self.max_len:
            raise ValueError(
                f"the synthesizer's weights cover max_seq_len={self.max_len} positions; got a "
                f"token at position {int(q_pos.max())}"
            )
        H = blk.q.shape[1]
        if self.mode == "dense":
            h = F.relu(torch.einsum("bhqd,hde->bhqe", blk.q, self.w1) + self.b1[None, :, None])
            logits = torch.einsum("bhqe,hel->bhql", h, self.w2)  # [B, H, Bq, max_len]
            idx = k_pos[:, None, None, :].expand(B, H, logits.shape[2], -1)
            scores = logits.gather(-1, idx)
        else:
            rq = self.r1[:, q_pos].transpose(0, 1)  # [B, H, Bq, D]
            rk = self.r2[:, k_pos].transpose(0, 1)  # [B, H, Nk, D]
            scores = torch.matmul(rq, rk.transpose(-1, -2))
        return masked(scores, blk.ok).softmax(-1)


def check(config) -> None:
    if config.synthesizer_mode not in MODES:
        raise ValueError(
            f"attention={config.attention!r} needs synthesizer_mode in {MODES}, "
            f"got synthesizer_mode={config.synthesizer_mode!r}"
        )


SPEC = ModuleSpec(
    name="synthesizer",
    module=SynthesizerAttention,
    fields=("max_seq_len", "synthesizer_mode"),
    check=check,
    summary="synthesized (dense MLP or random) causal attention weights over positions",
)
