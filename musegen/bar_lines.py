"""Find the beats and bar lines of an upload whose own bar lines do not follow its notes.

The model reads a piece bar by bar, on a grid of the bar's beats, so a file whose bar lines
are wrong is continued badly even when its notes are good (the POP909 files as distributed meet
3 of 6 targets where the same songs barred on their annotated downbeats meet 6 of 6:
``benchmarks/results/performed_input/``). Three faults are found from the notes alone:

* **the beats are not on the file's grid**: the music was played against a click that started
  somewhere after tick 0, so every onset sits the same few ticks off the file's 16th-note grid
  (or a whole 16th or 8th off its beats);
* **the meter says one-beat bars** (1/4), the default of some recording software: every beat is
  a "bar", and no bar line says where the music's bars start;
* **no click at all**: a performance recorded at the recorder's tempo, whose notes fit no grid
  of the file's; its beats are tracked (:mod:`musegen.beat_tracking`) and used only when the
  notes fit them far better than any grid of the file's.

:func:`find` looks for these and, when it finds one, where the beats and the downbeats (4/4 or
3/4) lie. :func:`rebar` moves the notes so that those downbeats land on bar lines, the way
``musegen corpus pop909`` bars its songs on their annotations (a played file's notes are also
spread so that each beat is one quarter note), and :func:`to_file` puts what the model wrote on
those bars back on the file's own ticks, where it is spliced onto the file as it was given.

A file whose grid fits is left alone, whatever its meter says (2/4, 6/8 and 5/4 are real
meters), so a clean score is not re-barred: ``benchmarks/bench_bar_lines.py`` counts how often
each corpus would be, how often the beats and downbeats found agree with POP909's annotations,
and with the true beats of performances made from held-out pieces (``benchmarks/perform.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import symusic

from musegen import beat_tracking

SIXTEENTHS = 4  # grid cells per beat
GRID_SIGMA = 1 / 24  # of a beat: how far off a cell an onset may be and still count as on it
OFF_GRID = 0.2  # the file's grid fits this much worse than the best one: its beats are off
CLEAN_FIT = 0.9  # … and the best one fits at least this well (music played to a click)
FREE_FIT = 0.55  # no grid of the file fits better than this: maybe played without a click
PLAYED_FIT = 0.75  # … and the beats found place the onsets at least this well on a grid
PLAYED_GAIN = 0.25  # … and this much better than the file's own grid does
DOTTED = 0.1  # … unless their triplet grid fits this much better: a dotted beat was found
MIN_ONSETS = 32  # fewer distinct onsets say too little about a grid to move anything
METERS = (4, 3)  # beats per bar tried, the first preferred on a tie
METER_MARGIN = 1.15  # a later meter must read this much more clearly as one to be chosen
WINDOW_BEATS = 64  # the downbeats are looked for in this many last beats


@dataclass(frozen=True)
class BarLines:
    """Where a file's beats and bars were found: the notes move ``shift`` ticks later so that
    its downbeats land on the bar lines of ``beats_per_bar``/4 from tick 0. When the file was
    played without a click, ``beats`` holds the file's ticks of each beat found, and the
    notes between two beats are spread over one quarter note (a piecewise-linear map)."""

    shift: int
    beats_per_bar: int
    beat_offset: int  # ticks the found beats lie after the file's own (0 … one beat)
    declared: str  # the file's own first meter, e.g. "1/4"
    reason: str  # what was wrong, in words
    tpq: int  # the file's ticks per quarter
    beats: tuple[int, ...] = ()  # a played file's beats, in its ticks (empty: its own grid)

    def describe(self) -> str:
        """One line for the user."""
        return (
            f"the prompt's bar lines do not follow its notes ({self.reason}), so the new bars "
            f"follow {self.beats_per_bar}/4 bars found from the notes (find_bar_lines)"
        )

    def to_bars(self, ticks: np.ndarray) -> np.ndarray:
        """File ticks → ticks of the re-barred score (before rounding)."""
        ticks = np.asarray(ticks, dtype=float)
        if not self.beats:
            return ticks + self.shift
        beats, first, last = self._beat_map()
        index = np.arange(len(beats))
        position = np.interp(ticks, beats, index)
        position = np.where(ticks < beats[0], (ticks - beats[0]) / first, position)
        position = np.where(ticks > beats[-1], index[-1] + (ticks - beats[-1]) / last, position)
        return position * self.tpq + self.shift

    def to_file(self, ticks: np.ndarray) -> np.ndarray:
        """Ticks of the re-barred score → file ticks (before rounding): the inverse of
        :meth:`to_bars`, carried on past the last beat found at the last beats' pace."""
        ticks = np.asarray(ticks, dtype=float)
        if not self.beats:
            return ticks - self.shift
        beats, first, last = self._beat_map()
        index = np.arange(len(beats))
        position = (ticks - self.shift) / self.tpq
        out = np.interp(position, index, beats)
        out = np.where(position < 0, beats[0] + position * first, out)
        return np.where(position > index[-1], beats[-1] + (position - index[-1]) * last, out)

    def _beat_map(self) -> tuple[np.ndarray, float, float]:
        """The beats, and the gaps that carry them on before the first and after the last."""
        beats = np.asarray(self.beats, dtype=float)
        gaps = np.diff(beats)
        return beats, float(gaps[0]), float(np.median(gaps[-4:]))


@dataclass
class _Onsets:
    """Each distinct onset of a score (ticks) and how strongly it marks a beat, plus the notes
    themselves, which say where the harmony changes."""

    times: np.ndarray
    weight: np.ndarray  # notes starting there, longer notes counting more
    notes: dict[str, np.ndarray]  # every pitched note: time, duration, pitch

    @classmethod
    def of(cls, score: symusic.Score) -> _Onsets:
        tpq = score.ticks_per_quarter
        rows = [(t.notes.numpy(), t.is_drum) for t in score.tracks if len(t.notes)]
        if not rows:
            empty = np.zeros(0, dtype=np.int64)
            return cls(
                empty, empty.astype(float), {k: empty for k in ("time", "duration", "pitch")}
            )
        time = np.concatenate([r["time"] for r, _ in rows]).astype(np.int64)
        dur = np.concatenate([r["duration"] for r, _ in rows]).astype(float)
        drum = np.concatenate([np.full(len(r["time"]), d) for r, d in rows])
        # A long note marks a beat more than a passing one; a drum counts as a short note.
        note_weight = np.log2(1.0 + np.clip(dur, 0, 4 * tpq) / (tpq / SIXTEENTHS))
        note_weight[drum] = 1.0
        times, inverse = np.unique(time, return_inverse=True)
        pitched = {
            k: np.concatenate([r[k] for r, d in rows if not d] or [np.zeros(0)]).astype(np.int64)
            for k in ("time", "duration", "pitch")
        }
        return cls(times, np.bincount(inverse, weights=note_weight), pitched)


def grid_fit(times: np.ndarray, tpq: int, offset: float, cells: int = SIXTEENTHS) -> float:
    """How well onsets ``times`` sit on a grid of ``cells`` per beat (16ths; 3: triplet 8ths)
    starting at ``offset`` ticks (1: all exactly on it; half a cell off counts almost 0)."""
    if not len(times):
        return 0.0
    cell = tpq / cells
    off = (times - offset) / cell
    distance = np.abs(off - np.round(off)) * cell / tpq  # in beats
    return float(np.mean(np.exp(-0.5 * (distance / GRID_SIGMA) ** 2)))


def _best_cell_offset(
    times: np.ndarray, tpq: int, cells: int = SIXTEENTHS
) -> tuple[int, float, float]:
    """(the offset within one cell that fits the onsets best, its fit, the fit at 0)."""
    cell = tpq // cells
    step = max(1, cell // 30)
    candidates = list(range(0, max(cell, 1), step))
    fits = [grid_fit(times, tpq, o, cells) for o in candidates]
    best = int(np.argmax(fits))
    return candidates[best], fits[best], fits[0]


def _phase_strength(onsets: _Onsets, period: int, phase: int, tolerance: int) -> float:
    """How much weight lands within ``tolerance`` ticks of ``phase`` + k × ``period``."""
    off = (onsets.times - phase) % period
    near = np.minimum(off, period - off) <= tolerance
    return float(onsets.weight[near].sum())


def _beat_phase(onsets: _Onsets, tpq: int, cell_offset: int) -> int:
    """Which 16th of the beat, on a grid ``cell_offset`` ticks late, is the beat: the one on
    which the most and the longest notes start."""
    cell = tpq // SIXTEENTHS
    tolerance = max(1, cell // 3)
    phases = [cell_offset + j * cell for j in range(SIXTEENTHS)]
    return phases[int(np.argmax([_phase_strength(onsets, tpq, p, tolerance) for p in phases]))]


def _beat_marks(onsets: _Onsets, tpq: int, beat: int, first: int, count: int) -> np.ndarray:
    """Per beat ``first`` … ``first + count - 1`` (beat k at ``beat + k·tpq``), how strongly
    it reads as a downbeat: the long notes starting on it plus how much the harmony changes
    there (the pitch classes sounding in the 2 beats after it against the 2 before), each
    scaled by its mean so that neither dominates."""
    index = np.round((onsets.times - beat) / tpq).astype(np.int64) - first
    on = (np.abs(onsets.times - beat - (index + first) * tpq) <= tpq // 8) & (index >= 0)
    on &= index < count
    starts = np.bincount(index[on], weights=onsets.weight[on], minlength=count)[:count]
    chroma = np.zeros((count + 4, 12))
    notes = onsets.notes
    begin = np.floor((notes["time"] - beat) / tpq).astype(np.int64) - first + 2
    end = np.ceil((notes["time"] + notes["duration"] - beat) / tpq).astype(np.int64) - first + 2
    for b, e, pitch in zip(begin, end, notes["pitch"] % 12, strict=True):
        if e > 0 and b < count + 4:
            chroma[max(b, 0) : min(max(e, b + 1), count + 4), pitch] += 1
    before = chroma[0:count] + chroma[1 : count + 1]
    after = chroma[2 : count + 2] + chroma[3 : count + 3]
    norms = np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1)
    change = np.where(norms > 0, 1 - (before * after).sum(1) / np.maximum(norms, 1e-9), 0.0)
    return starts / max(starts.mean(), 1e-9) + change / max(change.mean(), 1e-9)


def _downbeat(onsets: _Onsets, tpq: int, beat: int) -> tuple[int, int]:
    """(beats per bar, the tick of a downbeat): of the meters tried, the bar phase whose beats
    read most as downbeats (:func:`_beat_marks`) over the last :data:`WINDOW_BEATS` beats,
    against the meter's other beats. The last beats, because the bars that matter are the ones
    a continuation follows on from (a song may drop or add a beat between sections)."""
    last = int(np.round((onsets.times.max() - beat) / tpq))
    first = max(0, last + 1 - WINDOW_BEATS)
    marks = _beat_marks(onsets, tpq, beat, first, last + 1 - first)
    best: tuple[float, int, int] | None = None
    for beats in METERS:
        sums = np.array([marks[k::beats].sum() for k in range(beats)])
        k = int(np.argmax(sums))
        contrast = sums[k] / max(float(sums.mean()), 1e-9)
        if best is None or contrast > best[0] * METER_MARGIN:
            best = (contrast, beats, beat + (first + k) * tpq)
    assert best is not None
    return best[1], best[2]


def declared_meter(score: symusic.Score) -> tuple[int, int]:
    """The file's first meter (4/4 when it declares none)."""
    sigs = sorted(score.time_signatures, key=lambda s: s.time)
    return (sigs[0].numerator, sigs[0].denominator) if sigs else (4, 4)


def find(score: symusic.Score) -> BarLines | None:
    """Where the beats and bars of ``score`` lie when its own bar lines do not follow its notes
    (see the module); None when they do, or when there are too few onsets to say."""
    return examine(score)[0]


def examine(score: symusic.Score) -> tuple[BarLines | None, bool]:
    """(:func:`find`'s answer, whether ``score`` was :func:`played_without_click` and is left
    on its own bars all the same): what a front end tells the user, read in one pass."""
    tpq = score.ticks_per_quarter
    onsets = _Onsets.of(score)
    if len(onsets.times) < MIN_ONSETS or tpq < SIXTEENTHS:
        return None, False
    numerator, denominator = declared_meter(score)
    cell_offset, best_fit, own_fit = _best_cell_offset(onsets.times, tpq)
    # Onsets that fit a shifted grid cleanly and the file's own badly: played to a click that
    # was not at tick 0. (A drummer playing a little ahead of the beat fits neither cleanly.)
    # Drums alone are left on their bars: a drummer steadily behind the click is a feel, and
    # drums say too little about harmony to find downbeats by (36 % right on Groove).
    off_grid = best_fit >= CLEAN_FIT and best_fit - own_fit >= OFF_GRID and not _drums_only(score)
    # Every meter one beat long (a first 1/8 bar alone is a pickup, not this fault).
    one_beat_bars = bool(len(score.time_signatures)) and all(
        sig.numerator == 1 for sig in score.time_signatures
    )
    if not off_grid and _unclicked(score, onsets):
        found = _played(score, onsets)  # its own beats mean nothing: the tracker's, or none
        return found, found is None
    if not (off_grid or one_beat_bars):
        return None, False
    beat = _beat_phase(onsets, tpq, cell_offset if off_grid else 0)
    reasons = []
    if beat:
        reasons.append(f"its notes' beats lie {beat} ticks after its own")
    if one_beat_bars:
        reasons.append(f"its meter is {numerator}/{denominator}, one beat a bar")
    beats_per_bar, shift = _bars_from(onsets, tpq, beat)
    found = BarLines(
        shift=shift,
        beats_per_bar=beats_per_bar,
        beat_offset=int(beat),
        declared=f"{numerator}/{denominator}",
        reason="; ".join(reasons),
        tpq=tpq,
    )
    return found, False


def _bars_from(onsets: _Onsets, tpq: int, beat: int) -> tuple[int, int]:
    """(beats per bar, the shift that puts the downbeat at or before the first onset on a bar
    line from tick 0), for beats at ``beat`` + k·tpq."""
    beats_per_bar, downbeat = _downbeat(onsets, tpq, beat)
    bar = beats_per_bar * tpq
    first = int(onsets.times.min())
    start = downbeat + (first - downbeat) // bar * bar
    return beats_per_bar, int(-start % bar)


def _played(score: symusic.Score, onsets: _Onsets) -> BarLines | None:
    """The beats of a file :func:`played_without_click` (:mod:`musegen.beat_tracking`), when
    its notes fit them far better than any grid of the file's; None when they do not, or when
    the beat found is a dotted quarter (written as a quarter, the music's 8ths would become
    triplets)."""
    tpq = score.ticks_per_quarter
    own = _own_fit(onsets, tpq)
    found = beat_tracking.beats_of(score)
    if found is None:
        return None
    numerator, denominator = declared_meter(score)
    bpm = 60 / (float(np.median(np.diff(found))) * beat_tracking.seconds_per_tick(score))
    bars = BarLines(
        shift=0,
        beats_per_bar=4,
        beat_offset=0,
        declared=f"{numerator}/{denominator}",
        reason=f"played without a click: no beat grid of the file fits its notes; beats found "
        f"at about {bpm:.0f} bpm",
        tpq=tpq,
        beats=tuple(int(b) for b in found),
    )
    placed = bars.to_bars(onsets.times)
    straight, triplets = grid_fit(placed, tpq, 0), grid_fit(placed, tpq, 0, 3)
    fit = max(straight, triplets)
    if fit < PLAYED_FIT or fit - own < PLAYED_GAIN or triplets >= straight + DOTTED:
        return None
    warped = _Onsets(np.round(placed).astype(np.int64), onsets.weight, _mapped(onsets.notes, bars))
    beats_per_bar, shift = _bars_from(warped, tpq, 0)
    return replace(bars, beats_per_bar=beats_per_bar, shift=shift)


def _mapped(notes: dict[str, np.ndarray], bars: BarLines) -> dict[str, np.ndarray]:
    """Pitched notes (time, duration, pitch) on the re-barred ticks."""
    start = bars.to_bars(notes["time"])
    end = bars.to_bars(notes["time"] + notes["duration"])
    time = np.round(start).astype(np.int64)
    return {"time": time, "duration": np.maximum(1, np.round(end) - time), "pitch": notes["pitch"]}


PLAYED = (
    "its notes follow no beat grid of the file, as if it was played without a click, so it "
    "is continued on the file's own beats and bars, which may not be the music's: quantize it "
    "to its beat in a DAW or score editor for a better continuation"
)


def played_without_click(score: symusic.Score) -> bool:
    """Whether the notes of ``score`` fit no grid of its own, 16ths or triplet 8ths at any
    offset, better than chance does: a performance recorded without a click, whose beats and
    bar lines say nothing about its music. :func:`find` re-times such a file on the beats it
    finds when they fit its notes; when they do not, the user is only told (:data:`PLAYED`).
    A file with a tempo map was written, not played; drums alone are not judged (drummers
    record to a click, and a fill's flams fit no grid)."""
    return _unclicked(score, _Onsets.of(score))


def _unclicked(score: symusic.Score, onsets: _Onsets) -> bool:
    """:func:`played_without_click` on the score's onsets, already read."""
    if len({round(t.qpm, 3) for t in score.tempos}) > 1 or _drums_only(score):
        return False
    tpq = score.ticks_per_quarter
    if len(onsets.times) < MIN_ONSETS or tpq < SIXTEENTHS:
        return False
    return _own_fit(onsets, tpq) < FREE_FIT


def _drums_only(score: symusic.Score) -> bool:
    return all(t.is_drum for t in score.tracks if len(t.notes))


def _own_fit(onsets: _Onsets, tpq: int) -> float:
    """How well the onsets fit the file's 16th or triplet-8th grid, at the best offset."""
    return max(_best_cell_offset(onsets.times, tpq, cells)[1] for cells in (SIXTEENTHS, 3))


def rebar(score: symusic.Score, bars: BarLines) -> symusic.Score:
    """``score`` on the bars found: its notes ``bars.shift`` ticks later (a played file's also
    spread so that each beat found is one quarter note) and one meter, ``beats_per_bar``/4,
    from tick 0. The tempo stays the file's, or a played file's takes its beats' median pace."""
    if bars.beats:
        moved = map_times(score, bars.to_bars, score.ticks_per_quarter)
        gap = float(np.median(np.diff(bars.beats)))
        seconds = beat_tracking.seconds_per_tick(score)  # one tempo: a played file has no map
        moved.tempos = [symusic.Tempo(0, 60 / (gap * seconds))]
    else:
        moved = score.shift_time(bars.shift) if bars.shift else score.copy()
        tempos = sorted(moved.tempos, key=lambda t: t.time)
        if tempos:  # the first tempo holds from the new tick 0, as it did from the old one
            tempos[0] = symusic.Tempo(0, tempos[0].qpm)
            moved.tempos = tempos
    moved.time_signatures = [symusic.TimeSignature(0, bars.beats_per_bar, 4)]
    return moved


def to_file(decoded: symusic.Score, bars: BarLines) -> symusic.Score:
    """A score written on the bars found (at any ticks per quarter: the model's decoding) put
    on the file's own ticks, so that it can be spliced onto the file as the user gave it."""
    scale = bars.tpq / decoded.ticks_per_quarter
    return map_times(decoded, lambda t: bars.to_file(np.asarray(t, dtype=float) * scale), bars.tpq)


def map_times(score: symusic.Score, to: Callable[[np.ndarray], np.ndarray], tpq: int):
    """``score`` at ``tpq`` ticks per quarter with every event's time put through ``to`` (a
    note's end too, so its length follows); a time mapped before 0 becomes 0."""

    def ticks(values) -> list[int]:
        return [max(0, round(x)) for x in to(np.asarray(values, dtype=float))]

    out = symusic.Score(tpq)
    for tempo, at in zip(score.tempos, ticks([t.time for t in score.tempos]), strict=True):
        out.tempos.append(symusic.Tempo(at, tempo.qpm))
    sigs = score.time_signatures
    for sig, at in zip(sigs, ticks([t.time for t in sigs]), strict=True):
        out.time_signatures.append(symusic.TimeSignature(at, sig.numerator, sig.denominator))
    for track in score.tracks:
        copy = symusic.Track(name=track.name, program=track.program, is_drum=track.is_drum)
        starts = ticks([n.time for n in track.notes])
        ends = ticks([n.time + n.duration for n in track.notes])
        for n, start, end in zip(track.notes, starts, ends, strict=True):
            copy.notes.append(symusic.Note(start, max(1, end - start), n.pitch, n.velocity))
        for c, at in zip(track.controls, ticks([c.time for c in track.controls]), strict=True):
            copy.controls.append(symusic.ControlChange(at, c.number, c.value))
        bends = track.pitch_bends
        for b, at in zip(bends, ticks([b.time for b in bends]), strict=True):
            copy.pitch_bends.append(symusic.PitchBend(at, b.value))
        out.tracks.append(copy)
    return out
