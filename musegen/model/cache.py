"""Key/value caches for incremental decoding: explicit objects, testable alone.

A decoding step has three phases, driven by :class:`musegen.model.transformer.MusicTransformer`:
``begin(n)`` says ``n`` tokens arrive and returns :class:`StepKeys` (which keys the step's
queries will see, their positions and validity: the model turns that into one mask per step),
``update(layer, k, v)`` stores a layer's new keys/values and returns the keys/values to attend
to, and ``end()`` advances :attr:`length`.

Which one a model gets is its attention kind's choice
(:meth:`musegen.model.attention.AttentionSpec.make_cache`):

* :class:`FullCache` keeps every key (kinds that see the whole past: ``absolute``,
  ``relative``); storage grows by doubling, so appending never re-concatenates the past.
* :class:`RingCache` keeps only the last ``window`` keys in a ring buffer (``local``), plus, with
  a ``stride`` (``sparse``), a second ring with the summary keys (real position ≡ stride-1 mod
  stride) that are still within ``horizon``. Memory and time per token stay constant however
  long the piece is. A model with pinned tokens (``ModelConfig.pin_tokens``) adds one PINNED
  slot per pinned token it has seen (the right side of an infilling prompt): the ring stays
  constant, the pinned part is as long as what the prompt pins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# What rule a key slot follows (see musegen.model.attention.kernels.cached_context).
LOCAL, SUMMARY, ANY, PINNED = 0, 1, 2, 3


@dataclass
class StepKeys:
    """The keys one step's queries see, in the order ``update`` returns them."""

    q_index: Tensor  # [Lq] index positions of the new tokens
    k_index: Tensor  # [B, Nk] index positions of the keys (-1: empty slot)
    k_valid: Tensor  # [B, Nk] real, filled keys
    k_type: Tensor  # [Nk] LOCAL / SUMMARY / ANY
    pad: Tensor  # [B] left-padding length of each row
    k_pinned: Tensor | None = None  # [B, Nk] pinned keys (PINNED slots, fresh pinned tokens)


class KVCache:
    """Common bookkeeping: batch size, tokens seen, left padding per row."""

    # The per-row (batch-first) tensors and lists of tensors that select_rows re-indexes;
    # None for a kind that does not support it (every row of a batch is then prefilled, and
    # finished rows stay in the batch).
    ROW_FIELDS: tuple[str, ...] | None = None

    def __init__(self, n_layers: int, batch_size: int, device=None, dtype=None) -> None:
        self.n_layers = n_layers
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.length = 0  # tokens seen so far (padding included)
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.padded = False  # some row starts with padding
        # rows inside a pinned stretch at the end of what was seen (ModelConfig.pin_tokens)
        self.pin_open = torch.zeros(batch_size, dtype=torch.bool, device=self.device)
        self._n = 0
        self.k: list[Tensor | None] = [None] * n_layers  # per layer [B, H, slots, D]
        self.v: list[Tensor | None] = [None] * n_layers

    def set_padding(self, padding_mask: Tensor | None, n: int) -> Tensor:
        """Remember left padding (first chunk only); return this chunk's key validity [B, n]."""
        if padding_mask is None:
            return torch.ones(self.batch_size, n, dtype=torch.bool, device=self.device)
        padding_mask = padding_mask.to(self.device, torch.bool)
        if self.length > 0 and not bool(padding_mask.all()):
            raise ValueError("padding_mask may mark padding only in the first chunk given a cache")
        if self.length == 0:
            self.pad = (~padding_mask).sum(1)
            self.padded = bool(self.pad.any())
        return padding_mask

    def end(self) -> None:
        self.length += self._n
        self._n = 0

    def select_rows(self, index: Tensor) -> None:
        """Row i becomes the old row ``index[i]`` (repeats allowed), between forwards: one
        prefill of a prompt shared by its samples and candidates, copied to each of them."""
        if self.ROW_FIELDS is None:
            raise NotImplementedError(f"{type(self).__name__} cannot select rows")
        for name in self.ROW_FIELDS:
            value = getattr(self, name)
            if isinstance(value, list):  # per layer
                setattr(
                    self, name, [None if t is None else t.index_select(0, index) for t in value]
                )
            else:
                setattr(self, name, value.index_select(0, index))
        self.batch_size = int(index.numel())

    def memory_bytes(self) -> int:
        """Bytes held by key/value storage (for tests and benchmarks)."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def _tensors(self) -> list[Tensor]:
        return [t for t in self.k + self.v if t is not None]

    def _alloc(self, like: Tensor, slots: int) -> Tensor:
        B, H, _, D = like.shape
        return torch.zeros(B, H, slots, D, dtype=self.dtype or like.dtype, device=like.device)


class FullCache(KVCache):
    """Every key and value of the sequence, in preallocated storage that doubles when full."""

    ROW_FIELDS = ("pad", "pin_open", "k", "v", "valid")

    def __init__(self, n_layers: int, batch_size: int, device=None, dtype=None, capacity=256):
        super().__init__(n_layers, batch_size, device, dtype)
        self.capacity = capacity
        self.valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=self.device)

    def begin_token(self) -> Tensor | None:
        """``begin(1)`` for the decode hot path: which keys are real ``[B, N]``, or ``None``
        when no row was padded (then every key is visible)."""
        self.valid = F.pad(self.valid, (0, 1), value=True)
        self._n = 1
        return self.valid if self.padded else None

    def begin(self, n: int, padding_mask: Tensor | None = None) -> StepKeys:
        new_valid = self.set_padding(padding_mask, n)
        self.valid = torch.cat([self.valid, new_valid], dim=1)
        self._n = n
        end = self.length + n
        idx = torch.arange(end, device=self.device)
        return StepKeys(
            q_index=idx[self.length :],
            k_index=idx.expand(self.batch_size, end),
            k_valid=self.valid,
            k_type=torch.full((end,), ANY, dtype=torch.long, device=self.device),
            pad=self.pad,
        )

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        t0, n = self.length, k.shape[2]
        if self.k[layer] is None or t0 + n > self.k[layer].shape[2]:
            self._grow(layer, k, t0 + n)
        self.k[layer][:, :, t0 : t0 + n] = k
        self.v[layer][:, :, t0 : t0 + n] = v
        return self.k[layer][:, :, : t0 + n], self.v[layer][:, :, : t0 + n]

    def _grow(self, layer: int, like: Tensor, needed: int) -> None:
        size = max(self.capacity, 1 << math.ceil(math.log2(needed)))
        for store in (self.k, self.v):
            new = self._alloc(like, size)
            if store[layer] is not None:
                new[:, :, : self.length] = store[layer][:, :, : self.length]
            store[layer] = new


class RingCache(KVCache):
    """The last ``window`` keys (ring buffer), plus ``summaries`` summary slots for ``sparse``."""

    ROW_FIELDS = ("pad", "pin_open", "k", "v", "index", "valid", "n_pinned")

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        window: int,
        stride: int = 0,
        horizon: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(n_layers, batch_size, device, dtype)
        self.window, self.stride = window, stride
        self.summaries = math.ceil(horizon / stride) + 1 if stride else 0
        slots = window + self.summaries
        self.index = torch.full((batch_size, slots), -1, dtype=torch.long, device=self.device)
        self.valid = torch.zeros(batch_size, slots, dtype=torch.bool, device=self.device)
        types = [LOCAL] * window + [SUMMARY] * self.summaries
        self.types = torch.tensor(types, dtype=torch.long, device=self.device)
        self.pinned_base, self.pinned_slots = slots, 0  # PINNED slots follow the rings
        self.n_pinned = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self._slots_before = slots
        self._writes: list[tuple[Tensor, Tensor, Tensor]] = []  # (rows, chunk offsets, slots)

    def begin(
        self, n: int, padding_mask: Tensor | None = None, pinned: Tensor | None = None
    ) -> StepKeys:
        """``pinned`` ``[B, n]``: which new tokens are also kept in PINNED slots."""
        new_valid = self.set_padding(padding_mask, n)
        self._n, t0 = n, self.length
        self._slots_before = self.index.shape[1]
        q_index = torch.arange(t0, t0 + n, device=self.device)
        keys = None
        if n > 1:  # the chunk attends to the ring as it was, then to itself (copies, before
            # the commit below overwrites slots); one token writes first and attends the ring
            fresh_pinned = None
            if self.pinned_slots or pinned is not None:
                fresh = pinned if pinned is not None else torch.zeros_like(new_valid)
                fresh_pinned = torch.cat([self._pinned_flags(), fresh & new_valid], dim=1)
            keys = StepKeys(
                q_index=q_index,
                k_index=torch.cat([self.index, q_index.expand(self.batch_size, n)], dim=1),
                k_valid=torch.cat([self.valid, new_valid], dim=1),
                k_type=torch.cat([self.types, torch.full_like(q_index, ANY)]),
                pad=self.pad,
                k_pinned=fresh_pinned,
            )
        self._plan_writes(q_index, new_valid, pinned)
        self._commit_meta(q_index, new_valid)
        if keys is None:
            flags = self._pinned_flags() if self.pinned_slots else None
            keys = StepKeys(q_index, self.index, self.valid, self.types, self.pad, flags)
        return keys

    def _pinned_flags(self) -> Tensor:
        return (self.types == PINNED).expand(self.batch_size, -1)

    def _pin(self, q_index: Tensor, new_valid: Tensor, pinned: Tensor) -> tuple:
        """Write plan of this chunk's pinned tokens: each row's next free PINNED slots, added
        as needed (rows that pin fewer leave theirs empty)."""
        keep = pinned & new_valid
        r, o = keep.nonzero(as_tuple=True)
        rank = keep.long().cumsum(1)[r, o] - 1
        slot_in = self.n_pinned[r] + rank
        self.n_pinned += keep.sum(1)
        grow = int(self.n_pinned.max()) - self.pinned_slots
        if grow > 0:
            B = self.batch_size
            self.index = torch.cat([self.index, self.index.new_full((B, grow), -1)], 1)
            self.valid = torch.cat([self.valid, self.valid.new_zeros(B, grow)], 1)
            self.types = torch.cat([self.types, self.types.new_full((grow,), PINNED)])
            self.pinned_slots += grow
        return r, o, self.pinned_base + slot_in

    def _plan_writes(self, q_index: Tensor, new_valid: Tensor, pinned: Tensor | None) -> None:
        """Which (row, chunk offset, slot) triples the layers must write this step."""
        n, B, W = q_index.numel(), self.batch_size, self.window
        keep = torch.arange(max(0, n - W), n, device=self.device)  # last W tokens of the chunk
        rows = torch.arange(B, device=self.device).repeat_interleave(keep.numel())
        offs = keep.repeat(B)
        writes = [(rows, offs, q_index[offs] % W)]
        if self.summaries:
            real = q_index[None, :] - self.pad[:, None]  # [B, n]
            is_sum = new_valid & (real % self.stride == self.stride - 1)
            r, o = is_sum.nonzero(as_tuple=True)
            if r.numel():
                slot = W + (real[r, o] // self.stride) % self.summaries
                writes.append((r, o, slot))
        if pinned is not None and bool(pinned.any()):
            writes.append(self._pin(q_index, new_valid, pinned.to(self.device, torch.bool)))
        self._writes = writes

    def _commit_meta(self, q_index: Tensor, new_valid: Tensor) -> None:
        if q_index.numel() == 1 and len(self._writes) == 1:  # one token, no summary: a column
            slot = self.length % self.window
            self.index[:, slot] = self.length
            self.valid[:, slot] = new_valid[:, 0]
            return
        for rows, offs, slots in self._writes:
            self.index[rows, slots] = q_index[offs]
            self.valid[rows, slots] = new_valid[rows, offs]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        slots = self.index.shape[1]
        if self.k[layer] is None:
            self.k[layer] = self._alloc(k, slots)
            self.v[layer] = self._alloc(v, slots)
        elif self.k[layer].shape[2] < slots:  # PINNED slots were added this step
            grow = slots - self.k[layer].shape[2]
            self.k[layer] = torch.cat([self.k[layer], self._alloc(k, grow)], 2)
            self.v[layer] = torch.cat([self.v[layer], self._alloc(v, grow)], 2)
        K, V = self.k[layer], self.v[layer]
        if k.shape[2] == 1 and len(self._writes) == 1:  # the lean per-token path
            slot = self.length % self.window
            K[:, :, slot] = k[:, :, 0]
            V[:, :, slot] = v[:, :, 0]
            return K, V
        if k.shape[2] == 1:
            out = (K, V)
        else:  # the keys as they were before this chunk (begin's StepKeys), then the chunk
            before = self._slots_before
            out = (torch.cat([K[:, :, :before], k], 2), torch.cat([V[:, :, :before], v], 2))
        for rows, offs, slots in self._writes:
            K[rows, :, slots] = k[rows, :, offs]
            V[rows, :, slots] = v[rows, :, offs]
        return out


__all__ = ["ANY", "LOCAL", "PINNED", "SUMMARY", "FullCache", "KVCache", "RingCache", "StepKeys"]
