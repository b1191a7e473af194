"""``routing``: content-based sparse attention by online k-means (Roy et al. 2021, "Efficient
content-based sparse attention with Routing Transformers").

Each layer keeps ``routing_clusters`` centroids per head (buffers, saved with the weights).
Queries and keys, normalised to the unit sphere, are assigned to their nearest centroid; a query
attends (relative scores, softmax) to the earlier keys of its own cluster and, as in the
original, to a local window of the last ``window`` tokens. During training the centroids follow
the assigned queries and keys by an exponential moving average (decay ``ROUTING_DECAY``) after
the forward pass, so this pass's outputs never depend on its own (future) tokens; in eval mode
they are fixed.

Causal by the mask ``j <= i``. The original sorts tokens by cluster into equal-size chunks to
save compute; here the cluster rule is applied as a mask on query blocks (memory linear in
``L`` per block, compute quadratic): the measurement shows what the pattern buys in quality,
not its speed. Decoding keeps every key and re-assigns the cached keys to clusters at each step
(``N·C`` dot products per layer and head, on top of the ``N`` scores of full attention): no
saving over ``relative`` at decode time, since a future query may pick any cluster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from musegen.model.attention.family import Block, Mechanism, ModuleSpec, masked, relative_scores

ROUTING_DECAY = 0.999


class RoutingAttention(Mechanism):
    def __init__(self, config) -> None:
        super().__init__()
        self.window = config.window
        shape = (config.n_heads, config.routing_clusters, config.head_dim)
        self.register_buffer("centroids", F.normalize(torch.randn(shape), dim=-1))

    def clusters(self, x: Tensor) -> Tensor:
        """Nearest centroid of each vector ``[B, H, L, D] -> [B, H, L]``."""
        sims = torch.einsum("bhld,hcd->bhlc", F.normalize(x, dim=-1), self.centroids.to(x.dtype))
        return sims.argmax(-1)

    def weights(self, blk: Block, rel: Tensor | None) -> Tensor:
        same = self.clusters(blk.q)[..., :, None] == self.clusters(blk.k)[..., None, :]
        ok = blk.ok & (same | (blk.dist < self.window))
        return masked(relative_scores(blk, rel), ok).softmax(-1)

    def forward(self, q, k, v, rel, ctx, cache, layer: int) -> Tensor:
        out = super().forward(q, k, v, rel, ctx, cache, layer)
        if self.training:
            self._update(torch.cat([q, k], 2).detach(), ctx.key_valid)
        return out

    @torch.no_grad()
    def _update(self, x: Tensor, valid: Tensor | None) -> None:
        """EMA step of the centroids toward the mean of their assigned (real) vectors."""
        xn = F.normalize(x.float(), dim=-1)
        onehot = F.one_hot(self.clusters(xn), self.centroids.shape[1]).float()  # [B,H,L2,C]
        if valid is not None:
            onehot = onehot * valid.repeat(1, 2)[:, None, :, None].float()
        sums = torch.einsum("bhlc,bhld->hcd", onehot, xn)
        counts = onehot.sum((0, 2))[..., None]  # [H, C, 1]
        means = sums / counts.clamp_min(1)
        new = torch.where(
            counts > 0, ROUTING_DECAY * self.centroids + (1 - ROUTING_DECAY) * means, self.centroids
        )
        self.centroids.copy_(F.normalize(new, dim=-1))


def check(config) -> None:
    if config.routing_clusters <= 0:
        raise ValueError(
            f"attention={config.attention!r} needs routing_clusters > 0, "
            f"got routing_clusters={config.routing_clusters}"
        )
    if config.window <= 0:
        raise ValueError(f"attention={config.attention!r} needs window > 0 (its local window)")


SPEC = ModuleSpec(
    name="routing",
    module=RoutingAttention,
    fields=("max_relative_distance", "window", "routing_clusters"),
    check=check,
    has_relative=True,
    summary="relative attention within online k-means clusters plus a local window",
)
