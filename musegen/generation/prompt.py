"""Choosing the prompt: which bars and which tracks of a piece the model continues from.

Two settings of :mod:`musegen.generation.settings` say it, as text so that a flag, a form field
and an API parameter all spell it the same way:

* ``prompt_bars``: ``""`` (the whole piece), ``"A-B"`` (bars A to B, 1-based, both included),
  ``"A-"`` (bar A to the end), ``"-B"`` (the start to bar B) or ``"A"`` (bar A alone);
* ``prompt_tracks``: ``""`` (every track) or track indices (0-based, in the file's order) and
  ``drums`` (every drum track), comma-separated: ``"0,2"``, ``"1,drums"``.

:func:`select_prompt` cuts a score to that choice: the chosen bars are moved to the start (the
tempo and time signature in force at bar A come along), the other tracks are dropped. Bars are
counted as the tokenizer counts them (:func:`musegen.tokenizer.bar_ticks`), so a bar
number means the same here, in infilling and in the app's overview. Every mistake is a
one-line :class:`~musegen.errors.MusegenError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import symusic

from musegen.errors import MusegenError
from musegen.tokenizer import bars_until, instrument_name, track_program

_RANGE = re.compile(r"^\s*(\d*)\s*(-?)\s*(\d*)\s*$")


def parse_bar_range(value: object, name: str = "prompt_bars") -> str:
    """``value`` as the canonical bar-range text (``""``, ``"A-B"``, ``"A-"``), or an error."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MusegenError(f"{name} must be bars as A-B, A- or A (1-based), got {value!r}")
    if isinstance(value, (int, float)):
        if not float(value).is_integer():
            raise MusegenError(f"{name} must be bars as A-B, A- or A (1-based), got {value!r}")
        value = str(int(value))
    match = _RANGE.match(value)
    if match is None:
        raise MusegenError(f"{name} must be bars as A-B, A- or A (1-based), got {value!r}")
    first, dash, last = match.groups()
    if not first and not last:
        if dash:
            raise MusegenError(f"{name} must be bars as A-B, A- or A (1-based), got {value!r}")
        return ""
    a = int(first) if first else 1
    b = int(last) if last else (None if dash else a)
    if a < 1:
        raise MusegenError(f"{name} {value!r}: bars are numbered from 1")
    if b is not None and b < a:
        raise MusegenError(f"{name} {value!r}: empty range; give A-B with A ≤ B")
    return f"{a}-{b}" if b is not None else f"{a}-"


def bar_range(text: str) -> tuple[int, int | None] | None:
    """Canonical bar-range text → ``(A, B)`` (B None: to the end); None for the whole piece."""
    if not text:
        return None
    first, _, last = text.partition("-")
    return int(first), int(last) if last else None


def parse_track_list(value: object, name: str = "prompt_tracks") -> str:
    """``value`` as canonical track text (``""`` or ``"0,2,drums"``), or an error."""
    if value is None:
        return ""
    if isinstance(value, bool):
        raise MusegenError(f"{name} must be track indices and/or 'drums', got {value!r}")
    if isinstance(value, (int, float)) and float(value).is_integer():
        value = str(int(value))
    elif isinstance(value, (list, tuple)):
        value = ",".join(str(int(v)) if isinstance(v, float) else str(v) for v in value)
    if not isinstance(value, str):
        raise MusegenError(f"{name} must be track indices and/or 'drums', got {value!r}")
    items: list[str] = []
    for item in (x.strip().lower() for x in value.split(",")):
        if not item:
            continue
        if item != "drums" and not item.isdigit():
            raise MusegenError(
                f"{name} must be track indices (0, 1, …) and/or 'drums', got {value!r}"
            )
        canonical = item if item == "drums" else str(int(item))
        if canonical not in items:
            items.append(canonical)
    return ",".join(items)


def track_items(text: str) -> list[int | str] | None:
    """Canonical track text → ``[0, 2, "drums"]``; None for every track."""
    if not text:
        return None
    return [item if item == "drums" else int(item) for item in text.split(",")]


def bar_starts(score: symusic.Score) -> list[int]:
    """The start tick of every bar of ``score`` that has music, plus the end of the last one."""
    return [tick for tick, _, _ in bars_until(score, max(1, int(score.end())))]


@dataclass
class TrackRow:
    """One line of a piece's overview: what the app shows so a choice is easy."""

    index: int
    name: str
    instrument: str
    notes: int
    first_bar: int  # 0 when the track has no notes
    last_bar: int


def overview(score: symusic.Score) -> tuple[int, list[TrackRow]]:
    """The number of bars and one row per track (index, name, instrument, notes, bars used)."""
    import bisect

    score = score if "Tick" in str(score.ttype) else score.to("tick")
    starts = bar_starts(score)
    rows = []
    for i, track in enumerate(score.tracks):
        program = track_program(track)
        onsets = [n.time for n in track.notes]
        first = bisect.bisect_right(starts, min(onsets)) if onsets else 0
        last = bisect.bisect_right(starts, max(onsets)) if onsets else 0
        instrument = instrument_name(program)
        rows.append(TrackRow(i, track.name or instrument, instrument, len(onsets), first, last))
    return len(starts) - 1, rows


def select_prompt(
    score: symusic.Score, bars: str = "", tracks: str = "", name: str = "the prompt"
) -> symusic.Score:
    """``score`` cut to the bars and tracks chosen (canonical texts, see the module doc)."""
    chosen_bars, chosen_tracks = bar_range(bars), track_items(tracks)
    if chosen_bars is None and chosen_tracks is None:
        return score
    score = score if "Tick" in str(score.ttype) else score.to("tick")
    if chosen_tracks is not None:
        score = _keep_tracks(score, chosen_tracks, name)
    if chosen_bars is not None:
        score = _keep_bars(score, chosen_bars, name)
    if score.note_num() == 0:
        what = " and ".join(
            part
            for part in (f"bars {bars}" if bars else "", f"tracks {tracks}" if tracks else "")
            if part
        )
        raise MusegenError(f"{name}: {what} have no notes; choose bars or tracks with music")
    return score


def _keep_tracks(score: symusic.Score, items: list[int | str], name: str) -> symusic.Score:
    count = len(score.tracks)
    keep: set[int] = set()
    for item in items:
        if item == "drums":
            drums = {i for i, t in enumerate(score.tracks) if t.is_drum}
            if not drums:
                raise MusegenError(f"prompt_tracks: {name} has no drum track")
            keep |= drums
        elif not 0 <= int(item) < count:
            raise MusegenError(
                f"prompt_tracks: track {item} does not exist; {name} has tracks 0-{count - 1}"
            )
        else:
            keep.add(int(item))
    out = score.copy()
    out.tracks = [t for i, t in enumerate(score.tracks) if i in keep]
    return out


def _keep_bars(score: symusic.Score, bars: tuple[int, int | None], name: str) -> symusic.Score:
    starts = bar_starts(score)
    total = len(starts) - 1
    a, b = bars
    b = total if b is None else b
    if a > total or b > total:
        raise MusegenError(
            f"prompt_bars {a}-{b}: {name} has {total} bar(s); choose bars within 1-{total}"
        )
    start, end = starts[a - 1], starts[b]
    return score.clip(start, end, clip_end=True).shift_time(-start)


# Parsers of the text settings, by name (the settings model checks each value with its own).
TEXT_SETTINGS = {"prompt_bars": parse_bar_range, "prompt_tracks": parse_track_list}

__all__ = [
    "TEXT_SETTINGS",
    "TrackRow",
    "bar_range",
    "bar_starts",
    "overview",
    "parse_bar_range",
    "parse_track_list",
    "select_prompt",
    "track_items",
]
