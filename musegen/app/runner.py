"""What one request computes: a :class:`Job` in, :class:`Progress` steps and result files out.

The :class:`~musegen.app.composer.Composer` decides where a request runs (its session folder, its
lane, its stop flag); :class:`Runner` is the work itself, with nothing shared between requests
but the model. A job is plain data (bytes, settings, a folder), so the same runner serves light
requests in the server's threads and heavy ones in a worker process
(:mod:`musegen.app.worker`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import symusic

from musegen.app.limits import Deadline, RequestLimits
from musegen.app.results import (
    Variation,
    save_full,
    save_original,
    save_preview,
    with_warnings,
)
from musegen.errors import MusegenError
from musegen.generation.prompt import bar_starts
from musegen.generation.settings import GenerationSettings
from musegen.pipeline import (
    DEFAULT_CANDIDATES,
    DEFAULT_CONTINUATION_CANDIDATES,
    GenerationResult,
    Pipeline,
)
from musegen.render.preview import preview_window, write_zoomed_roll
from musegen.tokenizer import load_tick_score

PREVIEW_INTERVAL_S = 0.8  # piano-roll redraws while streaming; more often only costs CPU
STREAM_EVERY_TOKENS = 32


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
    candidates: int = DEFAULT_CANDIDATES  # spans drawn per variation, the best fit kept


@dataclass(frozen=True)
class Job:
    """One request, complete: the prompt (MIDI bytes, a Score, or None to start from nothing),
    checked settings, the request's own folder and file stem, and for infilling the span."""

    prompt: bytes | symusic.Score | None
    settings: GenerationSettings
    directory: Path
    stem: str
    infill: InfillRequest | None = None
    streaming: bool = True  # previews while generating (the page); False: the files only (API)
    # A continuation's candidates per variation, the best fit to the prompt's last bars kept.
    candidates: int = DEFAULT_CONTINUATION_CANDIDATES


class Runner:
    """Runs jobs on one pipeline: generation, previews, files, within the time budget."""

    def __init__(
        self,
        pipeline: Pipeline,
        soundfont: str | Path | None = None,
        limits: RequestLimits | None = None,
        stream_every: int = STREAM_EVERY_TOKENS,
    ) -> None:
        self.pipeline = pipeline
        self.soundfont = soundfont
        self.limits = limits or RequestLimits()
        self.stream_every = stream_every
        pipeline.score_limits = self.limits.score_limits()

    @property
    def audio_cap(self) -> float:
        return self.limits.max_audio_seconds

    def run(self, job: Job, stop: threading.Event) -> Iterator[Progress]:
        """The job's progress; the last step holds its variations. ``stop`` ends generation
        early (kept, not lost); so does the server's time budget, which starts here."""
        with Deadline(self.limits.request_timeout, stop) as deadline:
            settings = job.settings
            if job.infill is not None:
                score = load_tick_score(job.prompt)
                a, b = job.infill.bars
                tracks = list(job.infill.tracks) if job.infill.tracks is not None else None
                steps = self.pipeline.stream_infill(
                    score,
                    (a, b),
                    tracks,
                    settings,
                    every=self.stream_every,
                    stop_event=stop,
                    candidates=job.infill.candidates,
                )
                starts = bar_starts(score)
                span_end = starts[b] if b < len(starts) else int(score.end())
                yield from self._stream(steps, job, stop, (score, span_end), deadline)
                return
            every = self.stream_every if job.streaming else 0
            steps = self.pipeline.stream(
                job.prompt,
                settings=settings,
                every=every,
                stop_event=stop,
                candidates=job.candidates,
            )
            if job.streaming:
                yield from self._stream(steps, job, stop, None, deadline)
            else:
                found = self._save_all(list(steps)[-1], job.directory, job.stem)
                for v in found if deadline.expired else ():
                    v.summary += f" · {deadline.note()}"
                yield Progress([v.png_path for v in found], "Done.", 1.0, found)

    def _stream(
        self,
        steps: Iterator[list[GenerationResult]],
        job: Job,
        stop: threading.Event,
        infill: tuple[symusic.Score, int] | None,
        deadline: Deadline,
    ) -> Iterator[Progress]:
        settings, directory = job.settings, job.directory
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
            save_preview(
                r, directory, i, job.stem, self.soundfont, new_end, max_seconds=self.audio_cap
            )
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
        if deadline.expired:
            status = f"Stopped early: {deadline.note()} ({count} {took})."
        elif stop.is_set():
            status = f"Stopped early: kept {count} {took}."
        elif not all(r.finished for r in results):
            status = f"Done: {count} {took} (the token limit came before the last bar)."
        else:
            status = f"Done: {count} {took}."
        if all(r.empty for r in results):  # never presented as a success
            status = f"No new notes: {count} {took} came out empty."
        status = with_warnings(status, results)
        yield Progress(pngs, status, 1.0, variations, original=original)

    def _save_all(
        self, results: list[GenerationResult], directory: Path, stem: str
    ) -> list[Variation]:
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


__all__ = ["InfillRequest", "Job", "Progress", "Runner"]
