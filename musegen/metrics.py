"""What is measured about a model and its music: likelihood, musical statistics, memorization.

:func:`token_loss` and :func:`evaluate_windows` are the one definition of next-token
likelihood: the trainer's objective and validation, and ``musegen evaluate``'s NLL, all use them,
so their numbers are comparable. The musical statistics follow the objective metrics used by the
Multitrack Music Transformer and FIGARO evaluations (after MusPy): pitch-class histograms and
entropy, groove consistency, note density.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import symusic
import torch
from torch import nn


# --- likelihood ----------------------------------------------------------------------------------
def token_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Summed next-token cross-entropy in fp32 over every target that is not PAD."""
    return nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=pad_id, reduction="sum"
    )


@torch.no_grad()
def evaluate_windows(
    model: nn.Module, windows: Any, pad_id: int, batch_size: int, autocast: Any
) -> torch.Tensor:
    """``[loss sum, correct predictions, real targets]`` (float64) over ``windows[N, L+1]``.

    ``autocast`` is a zero-argument callable returning a context manager. The model is put back
    in training mode afterwards.
    """
    device = next(model.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for start in range(0, len(windows), batch_size):
        x = torch.as_tensor(windows[start : start + batch_size], device=device)
        with autocast():  # the model keeps no-grad CUDA attention off cuDNN itself
            logits = model(x[:, :-1])
        targets = x[:, 1:]
        real = targets != pad_id
        correct = ((logits.argmax(-1) == targets) & real).sum()
        sums += torch.stack(
            [token_loss(logits, targets, pad_id).double(), correct.double(), real.sum().double()]
        )
    model.train(was_training)
    return sums


# --- musical statistics --------------------------------------------------------------------------


def pitched_notes(score: symusic.Score) -> list[tuple[int, int]]:
    """(onset tick, pitch) of every non-drum note, sorted by time then pitch."""
    notes = [(n.time, n.pitch) for t in score.tracks if not t.is_drum for n in t.notes]
    return sorted(notes)


def pitch_class_histogram(score: symusic.Score) -> np.ndarray:
    """Normalised 12-bin histogram of pitch classes (all zeros for a score without notes)."""
    hist = np.zeros(12)
    for _, pitch in pitched_notes(score):
        hist[pitch % 12] += 1
    total = hist.sum()
    return hist / total if total else hist


def pitch_class_entropy(score: symusic.Score) -> float:
    """Shannon entropy (bits) of the pitch-class histogram: ~3.58 is uniform, lower is tonal."""
    hist = pitch_class_histogram(score)
    nz = hist[hist > 0]
    return float(-(nz * np.log2(nz)).sum()) if nz.size else 0.0


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance between two normalised histograms: 0 identical, 1 disjoint."""
    return float(0.5 * np.abs(a - b).sum())


def bar_length(score: symusic.Score) -> int:
    """Ticks per bar from the first time signature (4/4 when there is none)."""
    if len(score.time_signatures):
        ts = score.time_signatures[0]
        return max(1, int(score.tpq * 4 * ts.numerator / ts.denominator))
    return score.tpq * 4


def notes_per_bar(score: symusic.Score, start: int = 0, end: int | None = None) -> float:
    """Average number of notes (drums included) per bar in [start, end)."""
    end = score.end() if end is None else end
    bars = max(1e-9, (end - start) / bar_length(score))
    count = sum(1 for t in score.tracks for n in t.notes if start <= n.time < end)
    return count / bars if end > start else 0.0


def groove_consistency(score: symusic.Score, resolution: int = 16) -> float:
    """1 − mean Hamming distance between onset patterns of consecutive bars (1.0 = same groove)."""
    length = bar_length(score)
    end = score.end()
    n_bars = max(1, math.ceil(end / length))
    grid = np.zeros((n_bars, resolution), dtype=bool)
    for track in score.tracks:
        for note in track.notes:
            bar, offset = divmod(note.time, length)
            grid[bar, min(resolution - 1, offset * resolution // length)] = True
    if n_bars < 2:
        return 1.0
    distances = (grid[1:] != grid[:-1]).sum(axis=1) / resolution
    return float(1.0 - distances.mean())


# --- memorization ------------------------------------------------------------------------------
_BASE = np.uint64(1_000_003)


_BASE_INV = np.uint64(pow(1_000_003, -1, 2**64))  # the base is odd, so invertible mod 2⁶⁴


def _powers(base: np.uint64, count: int) -> np.ndarray:
    """base⁰, base¹, … (wrapping mod 2⁶⁴)."""
    out = np.full(count, base, dtype=np.uint64)
    out[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(out, dtype=np.uint64)


def _prefix_hashes(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """S[i] = Σ_{j<i} t_j·Bʲ and B⁻ⁱ, so any window's hash is (S[i+n] − S[i])·B⁻ⁱ in O(1)."""
    t = tokens.astype(np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(t) + 1, dtype=np.uint64)
        np.cumsum(t * _powers(_BASE, len(t)), dtype=np.uint64, out=prefix[1:])
    return prefix, _powers(_BASE_INV, len(t) + 1)


def _ngram_hashes(prefix: tuple[np.ndarray, np.ndarray], n: int) -> np.ndarray:
    """Position-independent hashes of every length-``n`` window."""
    sums, inverse = prefix
    if len(sums) - 1 < n:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return (sums[n:] - sums[:-n]) * inverse[: len(sums) - n]


def _contains_any(haystack: np.ndarray, needles: np.ndarray) -> bool:
    """Whether any of the (few) ``needles`` occurs in the (large) ``haystack``: O(N log m)."""
    if not needles.size or not haystack.size:
        return False
    needles = np.sort(needles)
    pos = np.searchsorted(needles, haystack).clip(max=needles.size - 1)
    return bool((needles[pos] == haystack).any())


class SharedRunIndex:
    """Finds the longest token run a sample shares with a (large) reference token stream.

    Binary search on the run length with rolling n-gram hashes, O(|reference| log max_len) per
    sample; the reference's prefix hashes are computed once.
    """

    def __init__(self, reference: np.ndarray, max_len: int = 512) -> None:
        self.prefix = _prefix_hashes(reference)
        self.max_len = max_len

    def longest_run(self, sample: np.ndarray) -> int:
        sample_prefix = _prefix_hashes(sample)
        lo, hi = 0, min(len(sample), self.max_len)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _contains_any(_ngram_hashes(self.prefix, mid), _ngram_hashes(sample_prefix, mid)):
                lo = mid
            else:
                hi = mid - 1
        return lo
