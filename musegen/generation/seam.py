"""Pick, among drawn candidates, the one that fits the bars around it: an infilling span (the
bars on both sides, :class:`SeamJudge`) or a continuation (the prompt's last bars,
:func:`continuation_distance`).

The model reads the right side (the span's NLL is lower with it), but weakly at this size: a
sampled span is on average no closer to the real bars in key or density than a continuation
that never saw the right side. The bars on *both* sides say much about the missing ones,
though: the real middle of a piece is mostly in the key of the bars around it and about as
busy as they are. So infilling can draw several spans and keep the one whose pitch classes and
note density are closest to the neighbouring bars on both sides (:class:`SeamJudge`); the
candidates are all the model's own samples, so the choice only decides *which* plausible span
the user gets. The shipped model card's infilling section gives the measurements.

The neighbourhood is the target tracks' notes in up to :data:`NEIGHBOUR_BARS` bars before and
after the span. A track being added has no notes there, so its density is not judged and the
key comes from every track around it; drums have no key, so a drums target is judged by
density alone.

A continuation has only the bars before it, and what a listener misses first in a weak one is
a track that falls silent, a figure that dissolves, a key that drifts. So a continuation is
judged per track of the prompt's last bars: key (pitch-class distance), each track's notes per
bar, and each track's 16th-note onset patterns against the prompt's (the groove).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import symusic

from musegen import metrics
from musegen.errors import MusegenError
from musegen.metrics import histogram_distance
from musegen.tokenizer import bar_ticks, bars_until, track_program

NEIGHBOUR_BARS = 4  # bars on each side of the span that judge a candidate
DENSITY_FLOOR = 0.5  # notes per bar added to both sides of the density ratio (empty bars)
MAX_CANDIDATES = 16
# A continuation's (key, density, groove) weights. Key counts double: on the validation split
# an equal sum gave away part of the pitch-class gain that choosing by key alone had, while
# density and groove judge drums and tracks falling silent, which the key cannot
# (benchmarks/bench_continuation_candidates.py; the model card has the figures).
CONTINUATION_WEIGHTS = (2.0, 1.0, 1.0)


def check_candidates(candidates: int) -> None:
    """A one-line error for a candidate count that is not 1–:data:`MAX_CANDIDATES`."""
    if isinstance(candidates, bool) or not isinstance(candidates, int):
        raise MusegenError(f"candidates must be a whole number, got {candidates!r}")
    if not 1 <= candidates <= MAX_CANDIDATES:
        raise MusegenError(
            f"candidates={candidates}: give 1 to {MAX_CANDIDATES} candidates drawn per sample"
        )


def _key_distance(hist: np.ndarray, reference: np.ndarray) -> float:
    """A candidate's normalised pitch-class histogram against the reference's: half the L1
    distance, or 1 for a candidate without pitched notes (all zeros: as far as can be)."""
    return histogram_distance(hist, reference) if hist.any() else 1.0


def _density_error(rate: float, reference: float) -> float:
    """``|log ratio|`` of two note rates per bar, each with :data:`DENSITY_FLOOR` added."""
    return float(abs(np.log((rate + DENSITY_FLOOR) / (reference + DENSITY_FLOOR))))


def _notes(
    score: symusic.Score, targets: frozenset[int] | None, start: int, end: int
) -> tuple[np.ndarray, int]:
    """The pitch-class histogram (unnormalised, drums left out) and the note count (drums
    included) of ``targets``' notes (None: every track) starting in ``[start, end)``."""
    hist, count = np.zeros(12), 0
    for track in score.tracks:
        if targets is not None and track_program(track) not in targets:
            continue
        notes = track.notes.numpy()  # symusic's arrays: no Python object per note
        inside = (notes["time"] >= start) & (notes["time"] < end)
        count += int(inside.sum())
        if not track.is_drum:
            hist += np.bincount(notes["pitch"][inside].astype(np.int64) % 12, minlength=12)
    return hist, count


class SeamJudge:
    """How far a candidate span is from the bars around it: pitch-class histogram distance
    (half the L1 distance, 0–1) plus the density error ``|log ratio|`` of notes per bar."""

    def __init__(
        self,
        score: symusic.Score,
        bars: tuple[int, int],
        targets: frozenset[int] | None,
        neighbours: int = NEIGHBOUR_BARS,
        right: bool = True,
    ) -> None:
        """``right=False`` judges by the bars before the span alone: the control that shows
        how much of the choice's gain comes from the right side (``bench_infill.py``)."""
        a, b = bars
        self.span_bars, self.targets = b - a + 1, targets
        ticks = [t for t, _, _ in bar_ticks(score, b + neighbours + 1)]
        end = score.end()
        first = max(0, a - 1 - neighbours)
        # Bars after the span that the piece has (a span near the end has fewer on its right).
        after = sum(1 for t in ticks[b : b + neighbours] if t < end) if right else 0
        bars_around = (a - 1 - first) + after
        ranges = [(ticks[first], ticks[a - 1]), (ticks[b], ticks[b + after])]
        hist, count = np.zeros(12), 0
        for start, stop in ranges:
            h, c = _notes(score, targets, start, stop)
            hist, count = hist + h, count + c
        known = count > 0  # a track being added has nothing around to compare its density to
        if not known:  # … but the key is the other tracks'
            for start, stop in ranges:
                hist = hist + _notes(score, None, start, stop)[0]
        self.pitch_classes = hist / hist.sum() if hist.sum() else None
        self.notes_per_bar = count / bars_around if known and bars_around else None

    def distance(self, span: symusic.Score) -> float:
        """The candidate ``span`` (the span alone, from tick 0) against the neighbourhood;
        0 for every candidate when the span has no bars around it (nothing to judge by)."""
        hist, count = _notes(span, self.targets, 0, span.end() + 1)
        out = 0.0
        if self.pitch_classes is not None:
            out += _key_distance(hist / max(hist.sum(), 1), self.pitch_classes)
        if self.notes_per_bar is not None:
            out += _density_error(count / self.span_bars, self.notes_per_bar)
        return out


def best_of(distances: Sequence[float], group: int) -> list[int]:
    """The index of the smallest distance in each consecutive group of ``group`` (ties: the
    first)."""
    return [
        start + int(np.argmin(distances[start : start + group]))
        for start in range(0, len(distances), group)
    ]


def continuation_terms(
    score: symusic.Score,
    split: int,
    new: symusic.Score,
    bars: int,
    neighbours: int = NEIGHBOUR_BARS,
) -> tuple[float, float, float]:
    """(key, density, groove): how far the continuation ``new`` (``bars`` bars from tick 0) is
    from the last ``neighbours`` bars of ``score`` before tick ``split``. Key: the pitch-class
    distance; density: the mean over the prompt's tracks of the error ``|log ratio|`` of notes
    per bar; groove: one minus the onset similarity (:func:`musegen.metrics.onset_similarity`).
    All 0 when the prompt has no notes there (nothing to judge by)."""
    bars_before = bars_until(score, split)[:-1]
    tail_bars = min(neighbours, len(bars_before))
    if not tail_bars:
        return 0.0, 0.0, 0.0
    start = bars_before[-tail_bars][0]
    _, num, den = bars_before[-1]
    bar = max(1, score.tpq * 4 * num // den)  # the prompt's last meter: the new bars'
    tail = score.clip(start, split, clip_end=False).shift_time(-start)
    before, after = metrics.notes_by_track(tail), metrics.notes_by_track(new)
    if not before:
        return 0.0, 0.0, 0.0
    hist_tail = metrics.pitch_class_histogram(tail)
    key = _key_distance(metrics.pitch_class_histogram(new), hist_tail) if hist_tail.any() else 0.0
    bars = max(1, bars)
    density = np.mean(
        [
            _density_error(len(after.get(track, ())) / bars, len(notes) / tail_bars)
            for track, notes in before.items()
        ]
    )
    similarity = metrics.onset_similarity(tail, new, bar, max(tail_bars, bars))
    return key, float(density), 1.0 - similarity if similarity is not None else 0.0


def continuation_distance(score: symusic.Score, split: int, new: symusic.Score, bars: int) -> float:
    """:func:`continuation_terms` weighted by :data:`CONTINUATION_WEIGHTS`: what a
    continuation's candidates are ranked by."""
    terms = continuation_terms(score, split, new, bars)
    return float(sum(w * t for w, t in zip(CONTINUATION_WEIGHTS, terms, strict=True)))
