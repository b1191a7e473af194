"""Repeat guidance: where a prompt's track repeats itself, its new bars lean toward repeating too.

Much of the music people upload is sequenced: a drum pattern, a bass riff or a guitar figure
pasted bar after bar, often under a melody that changes. In the real Beatles arrangements of
the model card the drums repeat their pattern exactly (groove 1.00 against the prompt) while
the model's drums reach 0.63: trained mostly on performed music, it varies what a sequenced
part would repeat.

:class:`RepeatGuidance` reads, track by track, how much the prompt repeats: for each period P
of :data:`PERIODS` bars, the mean overlap (Jaccard) of the track's notes (onset, pitch) in each
of the prompt's last :data:`BARS` bars with its notes P bars before. The best period's overlap
``r`` sets the track's pull, ``strength * SCALE * ((r - PLAYED) / (1 - PLAYED))**2`` logits: a
part pasted bar for bar gets all of it, a played one (whose onsets and pitches match the bar
before by ear, not note for note: ``r`` at most :data:`PLAYED`) none. One period serves the
whole prompt, the one under which its tracks repeat most.

While the model writes a new bar, the bar one period before is the reference, onset by onset:

* at an onset the reference also has, while it holds fewer notes of an instrument than the
  reference there, that instrument is pulled toward and moving on (the next onset or the bar
  line) is held back by as much: the model's own order of instruments at an onset need not be
  the prompt's (trained on files whose drums come last, it moves on after the drums of a
  prompt whose drums come first);
* within a note, the reference note of the same instrument (and pitch, once written) gives
  the next token, its pitch, velocity and duration (velocities and durations may differ);
* once the onset holds as many notes of each instrument as the reference, the reference's
  next onset (or the bar line, after its last) is pulled toward, by the strongest pull among
  the tracks that play there.

On a prompt of 8 pasted bars of drums, bass and guitar (made in code, not a test piece), 42 %
of the shipped model's new notes repeat the pattern unguided and 82 % at strength 1, with as
many notes as unguided (``benchmarks/bench_repeat.py``).

Each pull is added to one token's logit, so nothing is forbidden: the model may still vary, as
real next bars often do. It needs one token per id (no BPE merges); with merged ids, or a
prompt without bars, it leaves the logits alone. In infilling, the bars before the span are
the past it reads (the bars after it come first in the prompt's layout, so they are skipped).

Off by default, by three validation runs (``benchmarks/results/guidance/README.md``, "Repeat
guidance"): each design cost two targets or more. This third pulls only the parts that repeat
more exactly than a player would; on songs with sequenced drums it raises the drums' groove
(0.91 → 0.96 of the prompt's) but costs the pitched tracks some of theirs (0.67 → 0.63), and a
long piece can copy a bar in which a track rested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from musegen.generation.grammar import Grammar

BARS = 8  # the prompt bars whose repetition is measured
PERIODS = (1, 2, 4)  # the repetition periods tried, in bars (ties go to the shorter)
SCALE = 4.0  # logits on the reference's next token at strength 1, for an exact repetition
MIN_PAIRS = 2  # bar pairs a period needs inside the measured bars to be considered
# The overlap up to which a track counts as played, not pasted, and gets no pull: played parts
# repeat by ear, not note for note, so a bar shares at most about half its (onset, pitch) notes
# with the bar before (the reasoning and what was seen: benchmarks/results/guidance/README.md).
PLAYED = 0.5

# A bar's notes per onset (its Position id), each as [Program, Pitch, Velocity, Duration] ids.
Notes = dict[int, list[list[int]]]
_NOTE_PARTS = ("Pitch", "PitchDrum", "Velocity", "Duration")  # after a note's Program


@dataclass
class _Bar:
    """A bar's onsets in order and its notes per onset, built token by token as it is written
    (so a step reads the bar under way without parsing it again)."""

    notes: Notes = field(default_factory=dict)
    order: list[int] = field(default_factory=list)

    def add(self, kind: str | None, token: int) -> None:
        if kind == "Position":
            self.order.append(token)
            self.notes.setdefault(token, [])
        elif self.order and kind == "Program":
            self.notes[self.order[-1]].append([token])
        elif self.order and self.notes[self.order[-1]] and kind in _NOTE_PARTS:
            self.notes[self.order[-1]][-1].append(token)

    def finished(self) -> _Bar:
        """The bar with whole notes only (an unconstrained sample may leave one unfinished)."""
        whole = {onset: [n for n in found if len(n) == 4] for onset, found in self.notes.items()}
        return _Bar(whole, self.order)


@dataclass
class _Row:
    """One row's bars so far and what its prompt sets."""

    bars: list[_Bar] = field(default_factory=list)  # finished bars
    current: _Bar = field(default_factory=_Bar)
    started: bool = False  # False until the row's first bar line (a window may start mid-bar)
    new_bars: bool = False  # True once the row writes its first bar line after the prompt
    period: int = 0
    pulls: dict[int, float] = field(default_factory=dict)  # Program id → logits


class RepeatGuidance:
    """Pulls each row toward repeating, track by track, the bar one period back (see the
    module)."""

    def __init__(self, grammar: Grammar, strength: float):
        self.strength = float(strength)
        self.usable = all(len(bases) == 1 for bases in grammar.expand if bases)
        self._kind = [grammar.types[b[0]] if len(b) == 1 else None for b in grammar.expand]
        bar_ids = [i for i, kind in enumerate(self._kind) if kind == "Bar"]
        self._bar = bar_ids[0] if bar_ids else None
        self._moving_on = [i for i, kind in enumerate(self._kind) if kind in ("Position", "Bar")]
        self._rows: list[_Row] | None = None
        self._counted: list[int] = []

    def __call__(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        if not self.usable or self.strength == 0 or self._bar is None:
            return logits
        if self._rows is None:
            self._rows = [self._read_prompt(seq) for seq in ctx.tokens]
            self._counted = [len(seq) for seq in ctx.tokens]
        bias = torch.zeros_like(logits)
        for index, seq in enumerate(ctx.tokens):
            row = self._rows[index]
            for token in seq[self._counted[index] :]:
                self._add(row, token, new=True)
            self._counted[index] = len(seq)
            if row.period and row.new_bars:
                for token, pull in self._next(row):
                    bias[index, token] += pull
        return logits + bias

    def _add(self, row: _Row, token: int, new: bool = False) -> None:
        kind = self._kind[token] if 0 <= token < len(self._kind) else None
        if kind == "Bar":
            if row.started:
                row.bars.append(row.current.finished())
            row.current, row.started = _Bar(), True
            row.new_bars = row.new_bars or new
        elif row.started:
            row.current.add(kind, token)

    def _read_prompt(self, seq: Sequence[int]) -> _Row:
        row = _Row()
        for token in seq:
            if 0 <= token < len(self._kind) and self._kind[token] == "Infill":  # infilling:
                break  # the bars before the span are the past
            self._add(row, token)
        if not row.started:
            return row
        bars = [bar.notes for bar in [*row.bars, row.current.finished()]]
        programs = {note[0] for bar in bars for onset in bar.values() for note in onset}
        pulls: dict[int, dict[int, float]] = {}  # period → program → pull
        for period in PERIODS:
            pairs = range(max(len(bars) - BARS, period), len(bars))
            if len(pairs) >= MIN_PAIRS:
                pulls[period] = {
                    p: self.strength * SCALE * _pasted(_overlap(bars, p, period, pairs)) ** 2
                    for p in programs
                }
        if any(any(found.values()) for found in pulls.values()):  # the period under which the
            row.period = max(pulls, key=lambda p: (sum(pulls[p].values()), -p))  # tracks repeat
            row.pulls = pulls[row.period]  # most (ties: the shorter); none: no pull at all
        return row

    def _next(self, row: _Row) -> list[tuple[int, float]]:
        """The pulls (token, logits) toward the reference after what the new bar holds."""
        ref_index = len(row.bars) - row.period
        if ref_index < 0:
            return []
        reference, onsets = row.bars[ref_index].notes, row.bars[ref_index].order
        written, order = row.current.notes, row.current.order
        if not order:  # the bar has no onset yet: its first
            return self._onset(row, reference, onsets, 0)
        onset = order[-1]
        if onset not in reference:
            return []
        ours, theirs = written[onset], list(reference[onset])
        for note in (n for n in ours if len(n) == 4):  # the reference's notes written here:
            match = next((n for n in theirs if n[:2] == note[:2]), None)  # the same pitch,
            match = match or next((n for n in theirs if n[0] == note[0]), None)  # or instrument
            if match is not None:
                theirs.remove(match)
        if ours and len(ours[-1]) < 4:  # a note under way: its reference's next token
            partial = ours[-1]
            match = next((n for n in theirs if n[: min(2, len(partial))] == partial[:2]), None)
            if match is None:
                return []
            return [(match[len(partial)], row.pulls.get(match[0], 0.0))]
        if theirs:  # notes to come at this onset: their instruments, and not moving on yet
            pulls: dict[int, float] = {}
            for note in theirs:
                pulls[note[0]] = row.pulls.get(note[0], 0.0)
            hold = max(pulls.values())
            return [*pulls.items(), *((t, -hold) for t in self._moving_on)]
        return self._onset(row, reference, onsets, onsets.index(onset) + 1)

    def _onset(
        self, row: _Row, reference: Notes, onsets: list[int], at: int
    ) -> list[tuple[int, float]]:
        """The pull toward the reference's onset number ``at`` (the bar line past its last)."""
        if at < len(onsets):
            token = onsets[at]
            return [(token, max((row.pulls.get(n[0], 0.0) for n in reference[token]), default=0))]
        return [(self._bar, max(row.pulls.values(), default=0.0))]


def _of(bar: Notes, program: int) -> set[tuple[int, int]]:
    """One track's notes in a bar as (onset, pitch) ids."""
    return {(onset, n[1]) for onset, notes in bar.items() for n in notes if n[:1] == [program]}


def _pasted(overlap: float) -> float:
    """How far beyond a played part's overlap (:data:`PLAYED`) a track repeats, 0 to 1."""
    return max(0.0, overlap - PLAYED) / (1.0 - PLAYED)


def _overlap(bars: list[Notes], program: int, period: int, pairs: range) -> float:
    """The mean Jaccard overlap of ``program``'s notes in bar i and bar i - ``period``, over
    the bars i of ``pairs`` where it plays in either (0 when it plays in none)."""
    found = []
    for i in pairs:
        now, then = _of(bars[i], program), _of(bars[i - period], program)
        if now or then:
            found.append(len(now & then) / len(now | then))
    return sum(found) / len(found) if found else 0.0
