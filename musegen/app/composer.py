"""Generation for the app: settings from the form, streaming previews, files for each result.

:class:`Composer` is the one object the Blocks talk to for anything that touches the model. It
holds the shared pipeline (loaded once; the pipeline's own lock serialises the model), the
per-request :class:`~musegen.app.session.Workspace`, and one stop flag per browser session so a
Stop click ends that session's generation and keeps what was produced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import symusic

from musegen.app.session import Workspace, safe_stem
from musegen.errors import MusegenError
from musegen.generation.settings import NAMES, GenerationSettings
from musegen.pipeline import GenerationResult, Pipeline
from musegen.render.audio import render_audio, write_audio
from musegen.render.pianoroll import render_pianoroll

PREVIEW_INTERVAL_S = 0.8  # piano-roll redraws while streaming; more often only costs CPU
STREAM_EVERY_TOKENS = 32
MAX_VARIATIONS = 4  # result slots on the page


def form_settings(form: dict[str, Any]) -> GenerationSettings:
    """Settings from the page's form: one value per setting (by field name) plus the page's
    ``random_seed`` box, which draws a fresh seed per click when ticked."""
    values = {name: form[name] for name in NAMES if name in form}
    if form.get("random_seed"):
        values["seed"] = None
    return GenerationSettings.from_values(values)


@dataclass
class Variation:
    """One finished result, as files the page can show and offer for download."""

    index: int
    midi_path: Path
    wav_path: Path
    png_path: Path
    seed: int
    midi_bytes: bytes
    summary: str  # one plain line: seed, tokens, bars, time, how the audio was made


@dataclass
class Progress:
    """One streaming step: preview images (one per variation) and a status line."""

    previews: list[Path]
    status: str
    fraction: float
    variations: list[Variation] | None = None  # set on the last step only


def renderer_phrase(renderer: str) -> str:
    """Page text saying how the audio was made."""
    if "built-in" in renderer.lower():
        return "played by the built-in synth (no SoundFont renderer available)"
    return f"rendered with {renderer}"


class Composer:
    """Everything the app does with the model, shared by all sessions."""

    def __init__(
        self,
        pipeline: Pipeline,
        soundfont: str | Path | None = None,
        workspace: Workspace | None = None,
        max_new_tokens: int | None = None,
        stream_every: int = STREAM_EVERY_TOKENS,
    ) -> None:
        self.pipeline = pipeline
        self.stream_every = stream_every
        self.soundfont = soundfont
        self.max_new_tokens = max_new_tokens
        self.workspace = workspace or Workspace()
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def checked(self, settings: GenerationSettings) -> GenerationSettings:
        """``settings`` within what this server offers: at most :data:`MAX_VARIATIONS` (the
        result slots on the page) and the server's token cap, if any, per request."""
        if not 1 <= settings.num_samples <= MAX_VARIATIONS:
            raise MusegenError(
                f"variations (num_samples) must be between 1 and {MAX_VARIATIONS}, "
                f"got {settings.num_samples}"
            )
        caps = [n for n in (settings.max_new_tokens, self.max_new_tokens) if n]
        return replace(settings, max_new_tokens=min(caps) if caps else 0)

    def stop(self, key: str) -> bool:
        """Ask session ``key``'s running generation to finish now; False if none is running."""
        with self._lock:
            event = self._stops.get(key)
        if event is None:
            return False
        event.set()
        return True

    def stream(
        self,
        prompt: symusic.Score | None,
        settings: GenerationSettings,
        key: str,
        name: str = "musegen",
    ) -> Iterator[Progress]:
        """Generate ``settings.num_samples`` continuations, yielding previews, then the files."""
        settings = self.checked(settings)
        directory = self.workspace.new_request_dir(key)
        stop = threading.Event()
        with self._lock:
            self._stops[key] = stop
        try:
            yield from self._stream(prompt, settings, directory, stop, safe_stem(name))
        finally:
            with self._lock:
                if self._stops.get(key) is stop:
                    del self._stops[key]

    def _stream(
        self,
        prompt: symusic.Score | None,
        settings: GenerationSettings,
        directory: Path,
        stop: threading.Event,
        stem: str,
    ) -> Iterator[Progress]:
        started = time.monotonic()
        last_preview = 0.0
        results: list[GenerationResult] = []
        steps = self.pipeline.stream(
            prompt, settings=settings, every=self.stream_every, stop_event=stop
        )
        for step, results in enumerate(steps):
            now = time.monotonic()
            if stop.is_set() or now - last_preview < PREVIEW_INTERVAL_S:
                continue
            last_preview = now
            previews = [
                self._pianoroll(r, directory / f"preview{step}_v{i + 1}.png", i)
                for i, r in enumerate(results)
            ]
            done = min((r.bars for r in results), default=0)
            tokens = max((r.new_tokens for r in results), default=0)
            fraction = done / settings.bars if settings.bars else 0.0
            if settings.max_new_tokens:
                fraction = max(fraction, tokens / settings.max_new_tokens)
            bars = f"bar {min(done, settings.bars)} of {settings.bars}, " if settings.bars else ""
            yield Progress(
                previews,
                f"Generating… {bars}{tokens} tokens, {now - started:.1f} s",
                min(fraction, 0.99),
            )
        if not results:
            raise MusegenError("the model produced nothing; try again with another seed")
        yield Progress([], "Rendering audio…", 0.99)
        variations = [self.save(r, directory, i, stem) for i, r in enumerate(results)]
        count = f"{len(variations)} variation{'s' if len(variations) > 1 else ''}"
        took = f"in {time.monotonic() - started:.1f} s"
        if stop.is_set():
            status = f"Stopped early: kept {count} {took}."
        elif not all(r.finished for r in results):
            status = f"Done: {count} {took} (the token limit came before the last bar)."
        else:
            status = f"Done: {count} {took}."
        yield Progress([v.png_path for v in variations], status, 1.0, variations)

    def continue_once(
        self,
        prompt: bytes | symusic.Score | None,
        settings: GenerationSettings,
        key: str,
        name: str = "musegen",
    ) -> list[Variation]:
        """The non-streaming path (the ``continue`` API): all variations, saved as files.

        ``prompt`` is MIDI bytes or a Score; None starts from nothing.
        """
        settings = self.checked(settings)
        directory = self.workspace.new_request_dir(key)
        results = self.pipeline.continue_midi(prompt, settings=settings)
        if not results:
            raise MusegenError("the model produced nothing; try again with another seed")
        return [self.save(r, directory, i, safe_stem(name)) for i, r in enumerate(results)]

    def _pianoroll(self, result: GenerationResult, path: Path, index: int) -> Path:
        render_pianoroll(
            result.score,
            path=path,
            split_tick=result.prompt_end_tick,
            title=f"Variation {index + 1}",
        )
        return path

    def save(self, result: GenerationResult, directory: Path, index: int, stem: str) -> Variation:
        """Write one result's MIDI, WAV and piano roll with names unique to this request."""
        base = directory / f"{stem}_v{index + 1}_seed{result.seed}"
        midi_bytes = result.midi_bytes()
        midi_path = base.with_suffix(".mid")
        midi_path.write_bytes(midi_bytes)
        rendered = render_audio(result.score, soundfont=self.soundfont)
        wav_path = base.with_suffix(".wav")
        write_audio(rendered, wav_path)
        png_path = self._pianoroll(result, base.with_suffix(".png"), index)
        summary = (
            f"seed {result.seed} · {result.new_tokens} new tokens, "
            f"{result.bars} bar{'s' if result.bars != 1 else ''} in {result.seconds:.1f} s"
            f"{'' if result.finished else ' (stopped early)'} · audio "
            f"{renderer_phrase(rendered.renderer)}"
        )
        return Variation(
            index,
            midi_path,
            wav_path,
            png_path,
            result.seed,
            midi_bytes,
            summary,
        )
