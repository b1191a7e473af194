"""The one check a score passes where it enters musegen, with a one-line reason when it fails.

:func:`check_score` is used by every load path (the app, ``generate``, ``infill``, ``render``,
the pipeline and ``prepare``), so the same file gives the same reason everywhere. A reason is
``"<kind>: <detail>"`` (``"no notes: the file holds no note events"``); front ends prefix the
file name, ``prepare`` records the reason as it is in its manifest.

What :class:`ScoreLimits` decides, in this order:

1. timing: zero ticks per beat is refused; with ``normalise``, tempi are clamped into
   ``[min_qpm, max_qpm]`` and impossible meters (0/4, 3/5, 99/4) are dropped;
2. notes: none (or only zero-length ones) is refused, as are fewer than ``min_notes`` and more
   than ``max_notes``; more than ``max_tracks`` tracks with notes is refused;
3. silence, with ``trim``: leading silence is cut back to the first note's bar, everything
   after the last note ends is dropped, and a silence longer than ``max_gap_bars`` whole bars
   between notes is shortened to that many bars (without ``trim``, such a gap is refused);
4. length: more than ``max_beats`` beats (after trimming) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import symusic

from musegen.errors import MidiError
from musegen.tokenizer import load_score

POWERS_OF_TWO = (1, 2, 4, 8, 16, 32, 64)
MAX_NUMERATOR = 64


class ScoreError(MidiError):
    """A score musegen will not use; ``reason`` is the one line without the file name."""

    def __init__(self, reason: str, name: str | None = None) -> None:
        self.reason = reason
        super().__init__(f"{name}: {reason}" if name else reason)


@dataclass(frozen=True)
class ScoreLimits:
    """What a score must satisfy, and what may be changed to make it usable (see the module).

    ``flags`` names, per limit field, the option that sets it (``{"max_notes":
    "--max-prompt-notes"}``), so a reason says what to change.
    """

    min_notes: int = 1
    max_notes: int | None = None
    max_tracks: int | None = None
    max_beats: float | None = None
    max_gap_bars: int | None = None
    max_tokens: int | None = None  # checked by the pipeline after encoding
    trim: bool = False
    normalise: bool = False
    min_qpm: float = 20.0
    max_qpm: float = 400.0
    flags: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def flag(self, name: str) -> str:
        found = dict(self.flags).get(name)
        return f" ({found})" if found else ""

    def without_trim(self) -> ScoreLimits:
        """The same limits with no change to timing (bar numbers a user chose stay valid)."""
        return replace(self, trim=False, max_gap_bars=None)

    def before_selection(self) -> ScoreLimits:
        """What a whole file must satisfy before a user's choice of bars or tracks: timing
        unchanged (their bar numbers stay valid), and no limit on size, which the chosen part
        is held to instead (bars 1-8 of a long piece are a short prompt)."""
        return replace(self.without_trim(), max_notes=None, max_tracks=None, max_beats=None)


# Prompts for generation (the app, ``generate``, the pipeline): bounded work per request.
PROMPT_LIMITS = ScoreLimits(
    max_notes=20_000,
    max_tracks=64,
    max_beats=20_000,
    max_gap_bars=8,
    max_tokens=200_000,
    trim=True,
    normalise=True,
)
# A whole piece a user asks to hear (``render``): only what cannot be timed is refused or fixed;
# an empty piece is rendered as silence.
PIECE_LIMITS = ScoreLimits(min_notes=0, normalise=True, min_qpm=4.0, max_qpm=2000.0)


def load_checked(
    source: str | Path | bytes | symusic.Score,
    limits: ScoreLimits = PROMPT_LIMITS,
    name: str | None = None,
    notes: list[str] | None = None,
) -> symusic.Score:
    """:func:`~musegen.tokenizer.load_score` then :func:`check_score`; every failure is a
    :class:`ScoreError` named after ``name`` (default: the path, or ``prompt``). A damaged
    file read after repair says so in ``notes``."""
    if name is None:
        name = str(source) if isinstance(source, (str, Path)) else "prompt"
    try:
        score = load_score(source, notes)
    except ScoreError:
        raise
    except MidiError as exc:
        raise ScoreError(reason_for(str(exc)), name) from None
    return check_score(score, limits, name)


def reason_for(message: str) -> str:
    """A load error's message (``"<name>: empty file"``) as a reason whose first words name
    the kind of problem (``"empty: empty file"``)."""
    kinds = (("empty file", "empty"), ("not a MIDI", "not MIDI"), ("corrupt", "corrupt"))
    detail = message.split(": ", 1)[-1]
    for needle, kind in kinds:
        if needle in message:
            return f"{kind}: {detail}"
    return f"unreadable: {detail}"


def check_score(
    score: symusic.Score, limits: ScoreLimits = PROMPT_LIMITS, name: str | None = None
) -> symusic.Score:
    """``score`` (in ticks) made usable under ``limits``, or a :class:`ScoreError`."""
    if "Tick" not in str(score.ttype):
        score = score.to("tick")
    if score.ticks_per_quarter < 1:
        raise ScoreError(
            f"bad timing: the file says {score.ticks_per_quarter} ticks per beat", name
        )
    if limits.normalise:
        score = _normalise(score, limits)
    _check_notes(score, limits, name)
    if limits.trim:
        score = _trim(score, limits)
    elif limits.max_gap_bars is not None:
        longest = _longest_gap_bars(score)
        if longest > limits.max_gap_bars:
            raise ScoreError(
                f"too long: {longest} bars of silence between notes > {limits.max_gap_bars}"
                f"{limits.flag('max_gap_bars')}",
                name,
            )
    beats = _note_end(score) / score.ticks_per_quarter
    if limits.max_beats is not None and beats > limits.max_beats:
        raise ScoreError(
            f"too long: {beats:.0f} beats > {limits.max_beats:g}{limits.flag('max_beats')}", name
        )
    return score


def check_tokens(count: int, limits: ScoreLimits, name: str | None = None) -> None:
    """Refuse a prompt whose encoding has more than ``limits.max_tokens`` ids."""
    if limits.max_tokens is not None and count > limits.max_tokens:
        raise ScoreError(
            f"too long: {count} tokens > {limits.max_tokens}{limits.flag('max_tokens')}", name
        )


def _check_notes(score: symusic.Score, limits: ScoreLimits, name: str | None) -> None:
    notes = score.note_num()
    if notes == 0 and limits.min_notes < 1:  # the caller says what an empty score means
        return
    if notes == 0:
        raise ScoreError("no notes: the file holds no note events", name)
    if not any(t.notes.numpy()["duration"].any() for t in score.tracks if len(t.notes)):
        raise ScoreError("no notes: every note has zero length (unterminated notes?)", name)
    if notes < limits.min_notes:
        raise ScoreError(
            f"too few notes: {notes} < {limits.min_notes}{limits.flag('min_notes')}", name
        )
    if limits.max_notes is not None and notes > limits.max_notes:
        raise ScoreError(
            f"too many notes: {notes} > {limits.max_notes}{limits.flag('max_notes')}", name
        )
    tracks = sum(1 for t in score.tracks if len(t.notes))
    if limits.max_tracks is not None and tracks > limits.max_tracks:
        raise ScoreError(
            f"too many tracks: {tracks} > {limits.max_tracks}{limits.flag('max_tracks')}", name
        )


def _normalise(score: symusic.Score, limits: ScoreLimits) -> symusic.Score:
    """Tempi clamped into range; meters no renderer or tokenizer can count dropped."""
    tempos = [
        (t.time, min(max(t.qpm, limits.min_qpm), limits.max_qpm))
        for t in score.tempos
        if not limits.min_qpm <= t.qpm <= limits.max_qpm
    ]
    meters = [
        ts
        for ts in score.time_signatures
        if 1 <= ts.numerator <= MAX_NUMERATOR and ts.denominator in POWERS_OF_TWO
    ]
    if not tempos and len(meters) == len(score.time_signatures):
        return score
    score = score.copy()
    if tempos:
        clamped = {time: qpm for time, qpm in tempos}
        kept = [t for t in score.tempos if t.time not in clamped]
        fixed = [symusic.Tempo(time, qpm) for time, qpm in clamped.items()]
        score.tempos = sorted([*kept, *fixed], key=lambda t: t.time)
    score.time_signatures = [
        symusic.TimeSignature(m.time, m.numerator, m.denominator) for m in meters
    ]
    return score


def _note_spans(score: symusic.Score) -> tuple[np.ndarray, np.ndarray]:
    """Onsets and ends of every note, sorted by onset."""
    starts, ends = [], []
    for track in score.tracks:
        if len(track.notes):
            arrays = track.notes.numpy()
            starts.append(arrays["time"])
            ends.append(arrays["time"] + arrays["duration"])
    onset, end = np.concatenate(starts), np.concatenate(ends)
    order = np.argsort(onset, kind="stable")
    return onset[order].astype(np.int64), end[order].astype(np.int64)


def _note_end(score: symusic.Score) -> int:
    """When the last note ends (controls, pedals and meta events after it do not count)."""
    ends = [
        int((a["time"] + a["duration"]).max())
        for a in (t.notes.numpy() for t in score.tracks if len(t.notes))
    ]
    return max(ends, default=0)


def _gaps(score: symusic.Score) -> list[tuple[int, int]]:
    """Silences between notes as (from, to) ticks: nothing sounds in between."""
    onset, end = _note_spans(score)
    sounding = np.maximum.accumulate(end)
    after = np.nonzero(onset[1:] > sounding[:-1])[0]
    return [(int(sounding[i]), int(onset[i + 1])) for i in after]


def _downbeats(score: symusic.Score) -> np.ndarray:
    return np.asarray(score.get_downbeats(), dtype=np.int64)


def _whole_bars(downbeats: np.ndarray, start: int, stop: int) -> tuple[int, int]:
    """Index of the first downbeat at or after ``start`` and how many whole bars fit before
    ``stop``."""
    first = int(np.searchsorted(downbeats, start, side="left"))
    last = int(np.searchsorted(downbeats, stop, side="right")) - 1
    return first, max(0, last - first)


def _longest_gap_bars(score: symusic.Score) -> int:
    downbeats = _downbeats(score)
    return max((_whole_bars(downbeats, a, b)[1] for a, b in _gaps(score)), default=0)


def _trim(score: symusic.Score, limits: ScoreLimits) -> symusic.Score:
    """Leading silence back to the first note's bar, nothing after the last note, and long
    gaps shortened to ``max_gap_bars`` whole bars (bar lines stay where they were)."""
    end = _note_end(score)
    if score.end() > end:
        score = score.clip(0, end + 1, clip_end=False)
    downbeats = _downbeats(score)
    first = int(_note_spans(score)[0][0])
    bar = downbeats[max(0, int(np.searchsorted(downbeats, first, side="right")) - 1)]
    old, new, removed = [0], [0], int(bar)
    if bar > 0:
        old.append(int(bar))
        new.append(0)
    if limits.max_gap_bars is not None:
        for a, b in _gaps(score):
            index, bars = _whole_bars(downbeats, a, b)
            if bars > limits.max_gap_bars:
                cut_from = int(downbeats[index + limits.max_gap_bars])
                cut_to = int(downbeats[index + bars])
                old += [cut_from, cut_to]
                new += [cut_from - removed, cut_from - removed]
                removed += cut_to - cut_from
    if len(old) == 1:
        return score
    old.append(end + 1)
    new.append(end + 1 - removed)
    return score.adjust_time(old, new)


__all__ = [
    "PIECE_LIMITS",
    "PROMPT_LIMITS",
    "ScoreError",
    "ScoreLimits",
    "check_score",
    "check_tokens",
    "load_checked",
    "reason_for",
]
