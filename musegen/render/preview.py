"""Previews: hear and see the new part at once, with a few bars of lead-in, not the whole piece.

A continuation of a long song adds a few bars at its end; rendering the whole song to WAV again
before anything can be heard is what made the app slow (the model needs a fraction of that
time). :func:`preview_window` picks the bars worth hearing (``LEAD_IN_BARS`` before the new part,
the new part, and optionally a bar after it, for an infilled span), :func:`excerpt` cuts them out
of the score, and :func:`write_preview` renders only those to a compressed file the browser
streams (FLAC via soundfile; ``.ogg`` Vorbis also works, smaller but several times slower
to encode). The full-length WAV is made later, when it is wanted.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import symusic

from musegen.generation.prompt import bar_starts
from musegen.render.audio import RenderedAudio, render_audio, write_audio
from musegen.render.pianoroll import render_pianoroll

LEAD_IN_BARS = 2  # bars of the prompt heard (and shown) before the new part
PREVIEW_SUFFIX = ".flac"  # streamed by every current browser; encodes ~5x faster than Vorbis
# What the app plays is rendered at 48 kHz, midirenderer's own rate, so it is never resampled
# (resampling two minutes of audio to 44.1 kHz took 5 s of a heavy request); browsers play both.
PLAYBACK_RATE = 48_000


@dataclass(frozen=True)
class Window:
    """A stretch of a score in ticks, with its bar numbers (1-based, inclusive) for titles."""

    start: int
    end: int
    first_bar: int
    last_bar: int
    new_at: int  # tick (in the score) where the new part starts

    def label(self) -> str:
        return f"bars {self.first_bar}–{self.last_bar}"


def preview_window(
    score: symusic.Score,
    new_start: int,
    new_end: int | None = None,
    lead_in: int = LEAD_IN_BARS,
    after: int = 0,
) -> Window:
    """``lead_in`` bars before ``new_start``, up to ``new_end`` (None: the score's end) and
    ``after`` more bars."""
    starts = bar_starts(score)  # bar starts + the end of the last bar
    first = max(0, bisect.bisect_right(starts, new_start) - 1 - lead_in)
    if new_end is None:
        last = len(starts) - 1
    else:
        last = min(len(starts) - 1, bisect.bisect_left(starts, new_end) + after)
    last = max(last, first + 1)
    end = starts[last] if last < len(starts) else int(score.end())
    return Window(starts[first], max(end, starts[first] + 1), first + 1, last, new_start)


def excerpt(score: symusic.Score, window: Window) -> symusic.Score:
    """The notes that start inside ``window`` (cut at its end), moved to start at tick 0; the
    tempo and time signature in force at its start come along."""
    return score.clip(window.start, window.end, clip_end=True).shift_time(-window.start)


def write_preview(
    score: symusic.Score,
    window: Window,
    path: Path,
    soundfont: str | Path | None = None,
    max_seconds: float | None = None,
) -> RenderedAudio:
    """Render ``window`` of ``score`` to ``path`` (``.ogg``, ``.flac`` or ``.wav``); at most
    its last ``max_seconds``."""
    rendered = render_audio(
        excerpt(score, window),
        soundfont=soundfont,
        sample_rate=PLAYBACK_RATE,
        max_seconds=max_seconds,
    )
    write_audio(rendered, path)
    return rendered


def write_zoomed_roll(score: symusic.Score, window: Window, path: Path, title: str) -> Path:
    """A piano roll of ``window`` only, the part before the new one faded."""
    render_pianoroll(
        excerpt(score, window),
        path=path,
        split_tick=max(0, window.new_at - window.start),
        title=f"{title} · {window.label()}",
    )
    return path


__all__ = [
    "LEAD_IN_BARS",
    "PLAYBACK_RATE",
    "PREVIEW_SUFFIX",
    "Window",
    "excerpt",
    "preview_window",
    "write_preview",
    "write_zoomed_roll",
]
