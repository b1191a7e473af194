"""Weight copies laid out for decoding one token at a time on CPU.

A decode step multiplies a handful of rows by every weight matrix: matrix-vector products
that MKL runs on one thread and that dominate the step. :class:`Linear` is ``nn.Linear`` (same
parameters, same checkpoints) that, for small no-grad CPU batches, multiplies by a copy of its
weight split into column blocks, which MKL spreads over every core. :class:`WeightMemo` keeps
such derived copies and rebuilds them whenever the weight changes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Rows up to which a no-grad CPU product uses a split weight copy (see DecodeWeight).
DECODE_ROWS = 32


def decode_split(out_features: int, rows: int) -> int:
    """Column blocks for a decode product: 32 for one row, 8 for more (the fastest choices in
    ``benchmarks/bench_decode.py``, section products; see ``benchmarks/README.md``)."""
    n = 32 if rows == 1 else 8
    while n > 1 and out_features % n:
        n //= 2
    return n


def _version(t: Tensor) -> int:
    """In-place change counter; tensors made under ``torch.inference_mode`` have none (they
    cannot be modified outside it), so for them only storage and dtype are compared."""
    return -1 if t.is_inference() else t._version


class WeightMemo:
    """Tensors derived from a weight (and bias) for decoding, split or reversed copies, kept
    until it changes: the key is the weight's storage, version counters and dtype, so
    training, loading or moving the model never reads a stale copy."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.items: dict = {}

    def get(
        self, name: Hashable, build: Callable[[], Any], weight: Tensor, bias: Tensor | None = None
    ):
        key = (weight.data_ptr(), _version(weight), weight.dtype, bias is None or _version(bias))
        if key != self.key:
            self.key, self.items = key, {}
        if name not in self.items:
            self.items[name] = build()
        return self.items[name]


class DecodeWeight(WeightMemo):
    """Copies of a ``[out, in]`` weight split into column blocks ``[n, in, out/n]``.

    Decoding one token multiplies a few rows by every weight: a matrix-vector product that
    MKL runs on one thread, and that takes most of a decode step. As a batched product over
    column blocks it runs on every core, for one row and for a batch alike (figures:
    ``benchmarks/README.md``, ``bench_decode.py`` section products).
    """

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        out_f, in_f = weight.shape
        rows = x.numel() // in_f
        n = decode_split(out_f, rows)
        if n == 1 or rows > DECODE_ROWS or x.device.type != "cpu" or torch.is_grad_enabled():
            return F.linear(x, weight, bias)

        def build() -> tuple[Tensor, Tensor | None]:
            w = weight.detach().t().reshape(in_f, n, out_f // n).transpose(0, 1).contiguous()
            return w, None if bias is None else bias.detach().view(n, 1, out_f // n).clone()

        w, b = self.get(n, build, weight, bias)
        flat = x.reshape(1, rows, in_f).expand(n, rows, in_f)
        out = torch.bmm(flat, w) if b is None else torch.baddbmm(b, flat, w)  # [n, rows, out/n]
        return out.transpose(0, 1).reshape(*x.shape[:-1], out_f)


class Linear(nn.Linear):
    """``nn.Linear`` whose small no-grad CPU products use a :class:`DecodeWeight`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.decode = DecodeWeight()

    def forward(self, x: Tensor) -> Tensor:
        return self.decode.linear(x, self.weight, self.bias)


__all__ = ["DECODE_ROWS", "DecodeWeight", "Linear", "WeightMemo", "decode_split"]
