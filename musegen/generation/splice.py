"""Put a continuation after the prompt as the user gave it, not as the tokenizer rewrote it.

The model reads and writes tokens, so a decoded prompt comes back changed: timing snapped to the
tokenizer's grid, velocities and tempi binned (the shipped tokenizer has 32 tempi between 40 and
250 bpm: 138 comes back as 134.84), tracks of one program merged (a piano's two hands, two
guitars), track names, controls, pedals and pitch bends gone. Someone who uploads their song and
downloads "the song + 4 bars" wants their own song back. :func:`splice` copies the new notes,
and any tempo or meter the model changed, onto the prompt score as it was checked, on that
score's own tick grid:

* each new note goes to a prompt track of its instrument: of several (a piano's two hands), the
  one whose latest notes lie nearest in pitch; for drums, the kit track that played that drum
  most; an instrument the prompt lacks gets a new track named after it;
* a prompt note still sounding when a new note of the same track and pitch starts is cut there,
  so no two notes of one pitch overlap;
* a sustain pedal still down or a pitch bend still on where the prompt stops is let go there;
* the continuation alone starts with each track's controllers (volume, pan, …) as they stood;
* tempo and time-signature changes the model wrote in the new bars are kept (with the prompt's
  tempo and meter kept, the default, it writes none).

When the decoded prompt does not line up with the score it came from (its first or last onset
further than a 16th note from every onset of the score, or a note of the score starting after
the split), nothing is spliced: the caller keeps the decoded piece and says so, so a
continuation is never put in the wrong place.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import symusic

from musegen.tokenizer import instrument_name, track_program

RECENT_BARS = 4  # the bars before the split whose notes say where a track's register lies
SUSTAIN = 64  # the sustain pedal's controller number


@dataclass
class Spliced:
    """The prompt with its continuation, the continuation alone (from tick 0) and where the new
    bars start, all in the prompt's ticks."""

    score: symusic.Score
    continuation: symusic.Score
    split: int


def splice(source: symusic.Score, decoded: symusic.Score, split: int) -> Spliced | None:
    """``decoded``'s notes from tick ``split`` on (the new bars) added to ``source`` (the prompt
    it was encoded from); None when the two do not line up (see the module)."""
    ratio = source.tpq / decoded.tpq
    if not _aligned(source, decoded, split, ratio):
        return None
    at = round(split * ratio)
    out = source.copy()
    placer = _Placer(out, at)
    for track in decoded.tracks:
        program = track_program(track)
        for note in track.notes:
            if note.time >= split:
                onset = round(note.time * ratio)
                duration = max(1, round(note.duration * ratio))
                placer.add(program, symusic.Note(onset, duration, note.pitch, note.velocity))
    placer.write()
    out.tempos = _with_changes(
        out.tempos, decoded.tempos, split, ratio,
        lambda t: t.qpm, lambda time, t: symusic.Tempo(time, t.qpm),
    )  # fmt: skip
    out.time_signatures = _with_changes(
        out.time_signatures, decoded.time_signatures, split, ratio,
        lambda t: (t.numerator, t.denominator),
        lambda time, t: symusic.TimeSignature(time, t.numerator, t.denominator),
    )  # fmt: skip
    continuation = out.clip(at, max(out.end(), at) + 1, clip_end=False).shift_time(-at)
    _carry_controls(out, continuation, at)
    return Spliced(out, continuation, at)


def _carry_controls(whole: symusic.Score, part: symusic.Score, at: int) -> None:
    """Each controller's last value before ``at`` (a track's volume, pan, …) set again at the
    start of ``part``, so the new bars alone sound as they do in the whole piece."""
    if len(part.tracks) != len(whole.tracks):
        return
    for source, track in zip(whole.tracks, part.tracks, strict=True):
        last: dict[int, int] = {}
        for control in sorted(source.controls, key=lambda c: c.time):
            if control.time < at:
                last[control.number] = control.value
        if last:
            ahead = [symusic.ControlChange(0, number, value) for number, value in last.items()]
            track.controls = ahead + list(track.controls)


def _onsets(score: symusic.Score, before: int | None = None) -> np.ndarray:
    times = [t.notes.numpy()["time"] for t in score.tracks if len(t.notes)]
    onsets = np.sort(np.concatenate(times)) if times else np.zeros(0, dtype=np.int64)
    return onsets if before is None else onsets[onsets < before]


def _aligned(source: symusic.Score, decoded: symusic.Score, split: int, ratio: float) -> bool:
    """Whether ``decoded`` before ``split`` is ``source`` on a coarser grid: its first and last
    onsets lie within a 16th note of an onset of ``source``, and ``source`` has no note starting
    after the split (its notes out of the tokenizer's range are left out of ``decoded``, so
    the check asks for *an* onset nearby, not the same first and last one)."""
    theirs, ours = _onsets(source), _onsets(decoded, before=split) * ratio
    if not len(theirs) or not len(ours):
        return False
    tolerance = source.tpq / 4
    for tick in (ours[0], ours[-1]):
        nearest = np.abs(theirs - tick).min()
        if nearest > tolerance:
            return False
    return theirs[-1] < split * ratio + tolerance


class _Placer:
    """Chooses each new note's track in ``out`` and writes the notes in, cutting held notes."""

    def __init__(self, out: symusic.Score, at: int) -> None:
        self.out, self.at = out, at
        self.tracks: dict[int, list[int]] = defaultdict(list)  # program → track indices
        for index, track in enumerate(out.tracks):
            self.tracks[track_program(track)].append(index)
        self.new: dict[int, list[symusic.Note]] = defaultdict(list)
        self._centre: dict[int, float | None] = {}
        self._drums: dict[int, Counter] = {}

    def add(self, program: int, note: symusic.Note) -> None:
        self.new[self._track_for(program, note.pitch)].append(note)

    def write(self) -> None:
        for index, notes in self.new.items():
            track = self.out.tracks[index]
            notes.sort(key=lambda n: (n.time, n.pitch))
            starts: dict[int, list[int]] = defaultdict(list)  # pitch → new onsets
            for n in notes:
                starts[n.pitch].append(n.time)
            kept = []
            for n in track.notes:
                end = n.time + n.duration
                cut = [s for s in starts.get(n.pitch, ()) if n.time < s < end]
                kept.append(
                    symusic.Note(n.time, min(cut) - n.time, n.pitch, n.velocity) if cut else n
                )
            track.notes = kept + notes
            self._release(track)

    def _release(self, track: symusic.Track) -> None:
        """A sustain pedal held down or a pitch bend left on where the prompt stops would hold
        or bend every new note of the track (the model wrote them without either): both are
        let go at the split."""
        pedal = [c for c in track.controls if c.number == SUSTAIN and c.time <= self.at]
        if pedal and max(pedal, key=lambda c: c.time).value >= 64:
            track.controls.append(symusic.ControlChange(self.at, SUSTAIN, 0))
        bends = [b for b in track.pitch_bends if b.time <= self.at]
        if bends and max(bends, key=lambda b: b.time).value != 0:
            track.pitch_bends.append(symusic.PitchBend(self.at, 0))

    def _track_for(self, program: int, pitch: int) -> int:
        candidates = self.tracks.get(program)
        if not candidates:
            track = symusic.Track(
                name=instrument_name(program), program=max(0, program), is_drum=program == -1
            )
            self.out.tracks.append(track)
            candidates = self.tracks[program] = [len(self.out.tracks) - 1]
        if len(candidates) == 1:
            return candidates[0]
        if program == -1:  # the kit track that played this drum most (the first on a tie)
            return max(candidates, key=lambda i: self._drum_counts(i)[pitch])
        centres = {i: self._register(i) for i in candidates}
        placed = {i: c for i, c in centres.items() if c is not None}
        if not placed:
            return candidates[0]
        return min(placed, key=lambda i: abs(placed[i] - pitch))

    def _register(self, index: int) -> float | None:
        """The median pitch of the track's notes in the last bars before the split (of all its
        notes when it is silent there); None for a track with no notes."""
        if index not in self._centre:
            notes = self.out.tracks[index].notes
            recent = [n.pitch for n in notes if self._recent_start <= n.time < self.at]
            pitches = recent or [n.pitch for n in notes]
            self._centre[index] = float(np.median(pitches)) if pitches else None
        return self._centre[index]

    @functools.cached_property
    def _recent_start(self) -> int:
        """Where the last :data:`RECENT_BARS` bars before the split begin (0: the start)."""
        downbeats = np.asarray(self.out.get_downbeats(), dtype=np.int64)
        before = downbeats[downbeats < self.at]
        return int(before[-RECENT_BARS]) if len(before) >= RECENT_BARS else 0

    def _drum_counts(self, index: int) -> Counter:
        if index not in self._drums:
            self._drums[index] = Counter(n.pitch for n in self.out.tracks[index].notes)
        return self._drums[index]


def _with_changes(ours, decoded, split: int, ratio: float, value, make) -> list:
    """``ours`` (tempos or meters, sorted) plus the changes ``decoded`` makes from ``split`` on:
    an event whose ``value`` differs from the one in effect before it, remade by ``make`` at
    the mapped tick."""
    previous = None
    changes = []
    for event in decoded:
        if event.time >= split and value(event) != previous:
            changes.append(make(round(event.time * ratio), event))
        previous = value(event)
    if not changes:
        return list(ours)
    return [e for e in ours if e.time < changes[0].time] + changes
