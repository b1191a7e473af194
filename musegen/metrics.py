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


def _shares(values: list[int], bins: int) -> np.ndarray:
    """Normalised ``bins``-bin histogram of ``values`` (all zeros when there are none)."""
    hist = np.bincount(np.asarray(values, dtype=np.int64), minlength=bins).astype(float)
    total = hist.sum()
    return hist / total if total else hist


def pitch_class_histogram(score: symusic.Score) -> np.ndarray:
    """Normalised 12-bin histogram of pitch classes (all zeros for a score without notes)."""
    return _shares([pitch % 12 for _, pitch in pitched_notes(score)], 12)


def drum_histogram(score: symusic.Score) -> np.ndarray:
    """Normalised 128-bin histogram of the drum notes' pitches, i.e. which drums of the kit are
    hit (all zeros for a score without drum notes)."""
    return _shares([n.pitch for t in score.tracks if t.is_drum for n in t.notes], 128)


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


# --- continuation statistics per track -----------------------------------------------------------
# A track is named by (program, is_drum), as the tokenizer names it: miditok merges tracks that
# share both, so a prompt and its continuation can only be matched that way.
TrackKey = tuple[int, bool]

# Krumhansl–Kessler key profiles (probe-tone ratings, C major and C minor).
_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10, 11)  # natural minor plus the raised leading tone


def track_key(track: symusic.Track) -> TrackKey:
    """(program, is_drum); every drum track is one kit whatever its program (as in miditok)."""
    return (0, True) if track.is_drum else (int(track.program), False)


def notes_by_track(
    score: symusic.Score, start: int = 0, end: int | None = None
) -> dict[TrackKey, list[symusic.Note]]:
    """Notes with an onset in [start, end), grouped by (program, is_drum); empty tracks left out."""
    out: dict[TrackKey, list] = {}
    for track in score.tracks:
        notes = [n for n in track.notes if n.time >= start and (end is None or n.time < end)]
        if notes:
            out.setdefault(track_key(track), []).extend(notes)
    return out


def tracks_playing(prompt_tail: symusic.Score, new: symusic.Score) -> tuple[int, int]:
    """(tracks of ``prompt_tail`` with notes, how many of them have ≥ 1 note in ``new``)."""
    before = notes_by_track(prompt_tail)
    after = notes_by_track(new)
    return len(before), sum(1 for key in before if key in after)


def density_ratio(generated: symusic.Score, real: symusic.Score, length: int) -> float | None:
    """Notes per bar of ``generated`` over those of ``real``, both in [0, length) ticks (None
    when the real bars are silent)."""
    real_density = notes_per_bar(real, 0, length)
    if not real_density:
        return None
    return notes_per_bar(generated, 0, length) / real_density


def estimate_key(score: symusic.Score) -> tuple[int, str]:
    """(tonic pitch class, "major"|"minor") by Krumhansl–Schmuckler: the rotation of the
    Krumhansl–Kessler profile best correlated with the duration-weighted pitch-class histogram."""
    hist = np.zeros(12)
    for track in score.tracks:
        if not track.is_drum:
            for note in track.notes:
                hist[note.pitch % 12] += max(1, note.duration)
    if not hist.any():
        return 0, "major"
    best = (-2.0, 0, "major")
    for mode, profile in (("major", _MAJOR_PROFILE), ("minor", _MINOR_PROFILE)):
        for tonic in range(12):
            r = float(np.corrcoef(hist, np.roll(profile, tonic))[0, 1])
            if r > best[0]:
                best = (r, tonic, mode)
    return best[1], best[2]


def key_pitch_classes(tonic: int, mode: str) -> frozenset[int]:
    """The scale of a key: major, or minor with both the natural and the raised 7th."""
    scale = _MAJOR_SCALE if mode == "major" else _MINOR_SCALE
    return frozenset((tonic + step) % 12 for step in scale)


def in_key_rate(score: symusic.Score, pitch_classes: frozenset[int]) -> float | None:
    """Share of pitched notes whose pitch class is in ``pitch_classes`` (None: no pitched note)."""
    pitches = [p for _, p in pitched_notes(score)]
    if not pitches:
        return None
    return sum(p % 12 in pitch_classes for p in pitches) / len(pitches)


def pitch_ranges(score: symusic.Score) -> dict[TrackKey, tuple[int, int]]:
    """(lowest, highest) pitch of every pitched track with notes."""
    return {
        key: (min(n.pitch for n in notes), max(n.pitch for n in notes))
        for key, notes in notes_by_track(score).items()
        if not key[1]
    }


def range_difference(a: symusic.Score, b: symusic.Score) -> float | None:
    """Mean over pitched tracks in both scores of |low_a − low_b| + |high_a − high_b| / 2, in
    semitones: how far one's register is from the other's (None when no track is shared)."""
    ra, rb = pitch_ranges(a), pitch_ranges(b)
    shared = [k for k in ra if k in rb]
    if not shared:
        return None
    diffs = [(abs(ra[k][0] - rb[k][0]) + abs(ra[k][1] - rb[k][1])) / 2 for k in shared]
    return float(np.mean(diffs))


def onset_grids(
    score: symusic.Score, bar: int, bars: int, resolution: int = 16
) -> dict[TrackKey, np.ndarray]:
    """Per track, a ``[bars, resolution]`` boolean grid of note onsets (16ths in 4/4), each onset
    rounded to the nearest step (a slightly early note of a played performance counts on the
    beat, in the next bar when it falls just before a bar line)."""
    grids: dict[TrackKey, np.ndarray] = {}
    for key, notes in notes_by_track(score, 0, bars * bar).items():
        grid = grids.setdefault(key, np.zeros((bars, resolution), dtype=bool))
        for note in notes:
            index, step = divmod(round(note.time * resolution / bar), resolution)
            if index < bars:
                grid[index, step] = True
    return grids


def _pattern_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two onset patterns (two empty bars are the same pattern)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if not union else float(np.logical_and(a, b).sum() / union)


def onset_similarity_by_track(
    reference: symusic.Score, new: symusic.Score, bar: int, bars: int, resolution: int = 16
) -> dict[TrackKey, list[float]]:
    """Per track of ``reference``, per new bar: the Jaccard similarity of ``new``'s onset
    pattern to the best-matching ``reference`` bar of that track (see :func:`onset_similarity`)."""
    ref = onset_grids(reference, bar, bars, resolution)
    out = onset_grids(new, bar, bars, resolution)
    values: dict[TrackKey, list[float]] = {}
    for key, grid in ref.items():
        played = grid[grid.any(axis=1)]
        other = out.get(key, np.zeros_like(grid))
        values[key] = [
            max(_pattern_similarity(row, ref_row) for ref_row in played) for row in other
        ]
    return values


def onset_similarity(
    reference: symusic.Score, new: symusic.Score, bar: int, bars: int, resolution: int = 16
) -> float | None:
    """How much the onset patterns of ``new``'s bars resemble ``reference``'s (both ``bars``
    long from tick 0): per track of ``reference`` and per new bar, the Jaccard similarity to the
    best-matching reference bar of that track, averaged. A silent new track scores 0 against a
    playing one. None when ``reference`` has no notes. 1.0 for an exact copy."""
    by_track = onset_similarity_by_track(reference, new, bar, bars, resolution)
    if not by_track:
        return None
    return float(np.mean([v for values in by_track.values() for v in values]))


def bar_contents(score: symusic.Score, bar: int, bars: int) -> list[tuple]:
    """Each bar's notes relative to the bar start, as a sortable tuple (empty bars: ())."""
    content: list[list] = [[] for _ in range(bars)]
    for key, notes in notes_by_track(score, 0, bars * bar).items():
        for n in notes:
            index, offset = divmod(n.time, bar)
            content[index].append((*key, offset, n.pitch, n.duration))
    return [tuple(sorted(c)) for c in content]


def longest_bar_repetition(score: symusic.Score, bar: int, bars: int) -> int:
    """The longest run of consecutive identical non-empty bars (1: no bar repeats at once;
    0: every bar is empty); identical means the same notes relative to the bar start."""
    longest = run = 0
    previous: tuple | None = None
    for content in bar_contents(score, bar, bars):
        if not content:
            run, previous = 0, None
            continue
        run = run + 1 if content == previous else 1
        previous = content
        longest = max(longest, run)
    return longest
