"""The files of one result, in the order a listener needs them.

:func:`save_preview` writes what the page shows first: the MIDI (cheap), a zoomed piano roll of
the new part with its lead-in, and a short compressed audio preview of the same bars
(:mod:`musegen.render.preview`). :func:`save_full` adds the full-length WAV and the whole
piece's piano roll afterwards, while the listener already hears the preview. Every name is
unique to the request's own folder (see :class:`~musegen.app.session.Workspace`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import symusic

from musegen.pipeline import GenerationResult
from musegen.render.audio import render_audio, write_audio
from musegen.render.pianoroll import render_pianoroll
from musegen.render.preview import (
    PLAYBACK_RATE,
    PREVIEW_SUFFIX,
    Window,
    preview_window,
    write_preview,
    write_zoomed_roll,
)


@dataclass
class Variation:
    """One finished result, as files the page can show and offer for download."""

    index: int
    midi_path: Path
    wav_path: Path | None  # the full-length WAV, once :func:`save_full` has run
    png_path: Path  # the zoomed piano roll (the new part and its lead-in)
    seed: int
    midi_bytes: bytes
    summary: str  # one plain line: seed, tokens, bars, time, how the audio was made
    preview_path: Path | None = None  # lead-in + new bars, compressed
    full_png_path: Path | None = None  # the whole piece, once :func:`save_full` has run
    window: Window | None = None
    warnings: list[str] = field(default_factory=list)  # the result's, one line each

    @property
    def files(self) -> list[str]:
        """What the page offers for download now."""
        return [str(p) for p in (self.midi_path, self.wav_path) if p is not None]


def with_warnings(status: str, results: Sequence) -> str:
    """``status`` followed by each distinct warning of ``results`` (generation results or
    variations), so no front end presents a result without its honest limits."""
    warnings = dict.fromkeys(w for r in results for w in r.warnings)
    return " ".join([status, *(f"Warning: {w}." for w in warnings)])


def renderer_phrase(renderer: str) -> str:
    """Page text saying how the audio was made."""
    if "built-in" in renderer.lower():
        return "played by the built-in synth (no SoundFont renderer available)"
    return f"rendered with {renderer}"


def summary_line(result: GenerationResult, renderer: str, what: str = "bar") -> str:
    bars = f"{result.bars} {what}{'s' if result.bars != 1 else ''}"
    return (
        f"seed {result.seed} · {result.new_tokens} new tokens, {bars} in {result.seconds:.1f} s"
        f"{'' if result.finished else ' (stopped early)'} · audio {renderer_phrase(renderer)}"
    )


def save_preview(
    result: GenerationResult,
    directory: Path,
    index: int,
    stem: str,
    soundfont: str | Path | None = None,
    new_end: int | None = None,
    audio: bool = True,
    max_seconds: float | None = None,
) -> Variation:
    """MIDI, zoomed piano roll and (``audio``) the compressed preview of one result.

    ``new_end``: where the new part ends (an infilled span; one bar after it is heard too);
    None: the new part runs to the end of the piece.
    """
    base = directory / f"{stem}_v{index + 1}_seed{result.seed}"
    midi_bytes = result.midi_bytes()
    midi_path = base.with_suffix(".mid")
    midi_path.write_bytes(midi_bytes)
    window = preview_window(
        result.score, result.prompt_end_tick, new_end, after=0 if new_end is None else 1
    )
    png_path = write_zoomed_roll(
        result.score, window, base.with_suffix(".png"), f"Variation {index + 1}"
    )
    preview_path, renderer = None, ""
    if audio:
        preview_path = base.parent / f"{base.name}_preview{PREVIEW_SUFFIX}"
        rendered = write_preview(result.score, window, preview_path, soundfont, max_seconds)
        renderer = rendered.renderer
    return Variation(
        index,
        midi_path,
        None,
        png_path,
        result.seed,
        midi_bytes,
        summary_line(result, renderer or "pending"),
        preview_path,
        None,
        window,
        list(result.warnings),
    )


def save_full(
    variation: Variation,
    score: symusic.Score,
    soundfont: str | Path | None = None,
    max_seconds: float | None = None,
    full_roll: bool = True,
) -> Variation:
    """Add the full-length WAV (at most the last ``max_seconds``: the server's cap) and, with
    ``full_roll``, the whole piece's piano roll to ``variation``."""
    rendered = render_audio(
        score, soundfont=soundfont, sample_rate=PLAYBACK_RATE, max_seconds=max_seconds
    )
    wav_path = variation.midi_path.with_suffix(".wav")
    write_audio(rendered, wav_path)
    variation.wav_path = wav_path
    if full_roll:
        full_png = variation.midi_path.parent / f"{variation.midi_path.stem}_full.png"
        split = variation.window.new_at if variation.window is not None else None
        render_pianoroll(score, path=full_png, split_tick=split, title="The whole piece")
        variation.full_png_path = full_png
    if variation.preview_path is None:  # no preview was made: the summary names this renderer
        head, _, _ = variation.summary.rpartition(" · audio ")
        variation.summary = f"{head} · audio {renderer_phrase(rendered.renderer)}"
    return variation


def save_original(
    score: symusic.Score, window: Window, directory: Path, soundfont: str | Path | None = None
) -> Path:
    """The same bars of the piece before regeneration (the "A" of an A/B comparison)."""
    path = directory / f"original_{window.first_bar}-{window.last_bar}{PREVIEW_SUFFIX}"
    write_preview(score, window, path, soundfont)
    return path


__all__ = [
    "Variation",
    "renderer_phrase",
    "save_full",
    "save_original",
    "save_preview",
    "summary_line",
    "with_warnings",
]
