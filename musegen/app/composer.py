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

from musegen.app.limits import Deadline, Lanes, RequestLimits
from musegen.app.results import (
    Variation,
    save_full,
    save_original,
    save_preview,
)
from musegen.app.session import IDLE_FINISHED_S, KEEP_FINISHED_S, Workspace, safe_stem
from musegen.errors import MusegenError
from musegen.generation.prompt import (
    bar_range,
    bar_starts,
    parse_bar_range,
    parse_track_list,
    track_items,
)
from musegen.generation.settings import BY_NAME, NAMES, GenerationSettings
from musegen.pipeline import INFILL_FIXED_SETTINGS, GenerationResult, Pipeline
from musegen.render.preview import preview_window, write_zoomed_roll
from musegen.tokenizer import load_score, load_tick_score

PREVIEW_INTERVAL_S = 0.8  # piano-roll redraws while streaming; more often only costs CPU
STREAM_EVERY_TOKENS = 32
# Infilling fixes these itself; the page's and the API's values for them are not used.
INFILL_FIXED = {name: BY_NAME[name].default for name in INFILL_FIXED_SETTINGS}
MAX_VARIATIONS = 4  # result slots on the page


def form_settings(form: dict[str, Any]) -> GenerationSettings:
    """Settings from the page's form: one value per setting (by field name) plus the page's
    ``random_seed`` box, which draws a fresh seed per click when ticked."""
    values = {name: form[name] for name in NAMES if name in form}
    if form.get("random_seed"):
        values["seed"] = None
    return GenerationSettings.from_values(values)


@dataclass
class Progress:
    """One streaming step: preview images (one per variation) and a status line.

    Once the tokens are done, a step with ``variations`` and ``complete=False`` brings the
    audio previews (the new part with its lead-in); the last step (``complete=True``) adds the
    full-length WAVs and whole-piece piano rolls.
    """

    previews: list[Path]
    status: str
    fraction: float
    variations: list[Variation] | None = None  # set once the tokens are done
    complete: bool = True
    original: Path | None = None  # infilling: the span as it was (the "A" of A/B)


@dataclass(frozen=True)
class InfillRequest:
    """What the page or ``/infill`` asks to regenerate: bars (1-based, inclusive) and tracks
    (None: all; indices, ``"drums"``, ``"program:P"`` to add an instrument)."""

    bars: tuple[int, int]
    tracks: tuple[int | str, ...] | None = None


def infill_request(
    bars: str | None, tracks: str | list | None = None, add_program: str | int | None = None
) -> InfillRequest:
    """The page's or the API's infilling fields as a request, or a one-line MusegenError.

    ``bars``: ``"A-B"`` (or ``"A"``); ``tracks``: indices and/or ``drums`` (text or a list;
    empty: every track); ``add_program``: a GM program 0-127 or ``drums`` to add over the bars.
    """
    text = parse_bar_range(bars, "bars")
    if not text:
        raise MusegenError("bars: choose the bars to regenerate, as A-B (e.g. 5-8)")
    a, b = bar_range(text)
    if b is None:
        raise MusegenError(f"bars {a}-: give the last bar too, as A-B (e.g. {a}-{a + 3})")
    chosen: list[int | str] = list(track_items(parse_track_list(tracks, "tracks")) or [])
    if add_program not in (None, ""):
        program = str(add_program).strip().lower()
        if isinstance(add_program, float) and add_program.is_integer():
            program = str(int(add_program))
        if program != "drums" and not (program.isdigit() and 0 <= int(program) <= 127):
            raise MusegenError(
                f"add_program must be a GM program 0-127 or drums, got {add_program!r}: "
                "choose the instrument to add"
            )
        chosen.append("drums" if program == "drums" else f"program:{int(program)}")
    return InfillRequest((a, b), tuple(chosen) if chosen else None)


class Composer:
    """Everything the app does with the model, shared by all sessions."""

    def __init__(
        self,
        pipeline: Pipeline,
        soundfont: str | Path | None = None,
        workspace: Workspace | None = None,
        max_new_tokens: int | None = None,
        stream_every: int = STREAM_EVERY_TOKENS,
        limits: RequestLimits | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.stream_every = stream_every
        self.soundfont = soundfont
        # Bounded work per request (musegen.app.limits); the pipeline checks prompts with them.
        self.limits = limits or RequestLimits()
        self.lanes = Lanes(self.limits.heavy_slots)
        pipeline.score_limits = self.limits.score_limits()
        self.max_new_tokens = min(n for n in (max_new_tokens, self.limits.max_new_tokens) if n)
        # Request folders go after at most ten minutes, sooner when served files do.
        keep = min(IDLE_FINISHED_S, max(KEEP_FINISHED_S, 60 * self.limits.keep_files_minutes))
        self.workspace = workspace or Workspace(idle_finished_s=keep)
        self.workspace.start_janitor()
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
        stop = threading.Event()

        def steps():
            return self.pipeline.stream(
                prompt, settings=settings, every=self.stream_every, stop_event=stop
            )

        heavy = self.is_heavy(prompt)
        yield from self._session(key, stop, steps, settings, safe_stem(name), heavy=heavy)

    def stream_infill(
        self,
        piece: bytes | symusic.Score,
        request: InfillRequest,
        settings: GenerationSettings,
        key: str,
        name: str = "musegen",
    ) -> Iterator[Progress]:
        """Regenerate ``request.bars`` of ``piece`` ``settings.num_samples`` times, streaming
        previews as :meth:`stream` does; the settings infilling fixes are ignored (the form's
        instruments are for continuing), and ``bars`` becomes the span's length."""
        score = load_tick_score(piece)
        a, b = request.bars
        settings = self.checked(settings.with_overrides(**INFILL_FIXED, bars=max(1, b - a + 1)))
        stop = threading.Event()
        tracks = list(request.tracks) if request.tracks is not None else None
        # Checked now, so a bad range or an old checkpoint fails before any file is written.
        steps_iter = self.pipeline.stream_infill(
            score, (a, b), tracks, settings, every=self.stream_every, stop_event=stop
        )
        starts = bar_starts(score)
        span_end = starts[b] if b < len(starts) else int(score.end())
        yield from self._session(
            key,
            stop,
            lambda: steps_iter,
            settings,
            safe_stem(name),
            (score, span_end),
            heavy=self.is_heavy(score),
        )

    def is_heavy(self, prompt: bytes | symusic.Score | None) -> bool:
        """Whether a request goes through the heavy lane (see :class:`~.limits.Lanes`)."""
        if prompt is None:
            return False
        try:
            notes = load_score(prompt).note_num()
        except MusegenError:
            return False
        return notes > self.limits.heavy_notes

    def _session(
        self, key, stop, steps, settings, stem, infill=None, heavy=False
    ) -> Iterator[Progress]:
        """Run one request in its own folder, with ``stop`` as session ``key``'s stop flag,
        within the server's time budget, in the heavy lane when ``heavy``."""
        with self._lock:
            self._stops[key] = stop
        try:
            with (
                self.workspace.request(key) as directory,
                Deadline(self.limits.request_timeout, stop) as deadline,
            ):
                yield from self.lanes.iterate(
                    heavy,
                    lambda: self._stream(
                        steps(), settings, directory, stop, stem, infill, deadline
                    ),
                )
        finally:
            with self._lock:
                if self._stops.get(key) is stop:
                    del self._stops[key]

    def _stream(
        self,
        steps: Iterator[list[GenerationResult]],
        settings: GenerationSettings,
        directory: Path,
        stop: threading.Event,
        stem: str,
        infill: tuple[symusic.Score, int] | None = None,
        deadline: Deadline | None = None,
    ) -> Iterator[Progress]:
        started = time.monotonic()
        last_preview = 0.0
        results: list[GenerationResult] = []
        for step, results in enumerate(steps):
            now = time.monotonic()
            if stop.is_set() or now - last_preview < PREVIEW_INTERVAL_S:
                continue
            last_preview = now
            previews = [
                self._pianoroll(r, directory / f"preview{step}_v{i + 1}.png", i, infill)
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
        yield Progress([], "Preparing the preview…", 0.99)
        new_end = infill[1] if infill else None
        variations = [
            save_preview(r, directory, i, stem, self.soundfont, new_end, max_seconds=self.audio_cap)
            for i, r in enumerate(results)
        ]
        original = None
        if infill and variations:
            original = save_original(infill[0], variations[0].window, directory, self.soundfont)
        count = f"{len(variations)} variation{'s' if len(variations) > 1 else ''}"
        pngs = [v.png_path for v in variations]
        status = "Preview ready; rendering the full-length WAV for download…"
        yield Progress(pngs, status, 0.995, variations, complete=False, original=original)
        for v, r in zip(variations, results, strict=True):
            save_full(v, r.score, self.soundfont, self.audio_cap)
        took = f"in {time.monotonic() - started:.1f} s"
        if deadline is not None and deadline.expired:
            status = f"Stopped early: {deadline.note()} ({count} {took})."
        elif stop.is_set():
            status = f"Stopped early: kept {count} {took}."
        elif not all(r.finished for r in results):
            status = f"Done: {count} {took} (the token limit came before the last bar)."
        else:
            status = f"Done: {count} {took}."
        if all(r.empty for r in results):  # never presented as a success
            status = f"No new notes: {count} {took} came out empty."
        warnings = dict.fromkeys(w for r in results for w in r.warnings)
        status = " ".join([status, *(f"Warning: {w}." for w in warnings)])
        yield Progress(pngs, status, 1.0, variations, original=original)

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
        stop = threading.Event()
        with self._lock:
            self._stops.setdefault(key, stop)
        try:
            with (
                self.workspace.request(key) as directory,
                Deadline(self.limits.request_timeout, stop) as deadline,
            ):

                def run() -> list[Variation]:
                    steps = self.pipeline.stream(
                        prompt, settings=settings, every=0, stop_event=stop
                    )
                    return self._save_all(list(steps)[-1], directory, safe_stem(name))

                found = self.lanes.call(self.is_heavy(prompt), run)
        finally:
            with self._lock:
                if self._stops.get(key) is stop:
                    del self._stops[key]
        for v in found if deadline.expired else ():
            v.summary += f" · {deadline.note()}"
        return found

    @property
    def audio_cap(self) -> float:
        return self.limits.max_audio_seconds

    def infill_once(
        self,
        piece: bytes | symusic.Score,
        request: InfillRequest,
        settings: GenerationSettings,
        key: str,
        name: str = "musegen",
    ) -> list[Variation]:
        """The non-streaming infilling path (the ``infill`` API): all variations, as files."""
        *_, last = self.stream_infill(piece, request, settings, key, name)
        return last.variations or []

    def _save_all(self, results: list[GenerationResult], directory: Path, stem: str):
        if not results:
            raise MusegenError("the model produced nothing; try again with another seed")
        out = []
        for i, r in enumerate(results):
            v = save_preview(r, directory, i, stem, self.soundfont, audio=False)
            # The API returns the zoomed roll only; drawing the whole piece too was a quarter
            # of a light request's time.
            out.append(save_full(v, r.score, self.soundfont, self.audio_cap, full_roll=False))
        return out

    def _pianoroll(self, result: GenerationResult, path: Path, index: int, infill=None) -> Path:
        """A streaming preview: the new part so far with its lead-in (never the whole song)."""
        window = preview_window(
            result.score, result.prompt_end_tick, infill[1] if infill else None, after=1
        )
        return write_zoomed_roll(result.score, window, path, f"Variation {index + 1}")
