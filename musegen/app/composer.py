"""Generation for the app: settings from the form, and where each request runs.

:class:`Composer` is the one object the Blocks talk to for anything that touches the model. It
turns a request into a :class:`~musegen.app.runner.Job` in its own folder of the
:class:`~musegen.app.session.Workspace`, runs it in its lane (:class:`~musegen.app.limits.Lanes`:
light ones in the server's threads, heavy ones in a worker process,
:mod:`musegen.app.worker`), and keeps one stop flag per browser session so a Stop click ends
that session's generation and keeps what was produced.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import symusic

from musegen.app.limits import Lanes, RequestLimits
from musegen.app.results import Variation
from musegen.app.runner import STREAM_EVERY_TOKENS, InfillRequest, Job, Progress, Runner
from musegen.app.session import IDLE_FINISHED_S, KEEP_FINISHED_S, Workspace, safe_stem
from musegen.app.worker import WorkerPool, WorkerSpec
from musegen.errors import MusegenError
from musegen.generation.prompt import bar_range, parse_bar_range, parse_track_list, track_items
from musegen.generation.settings import BY_NAME, NAMES, GenerationSettings
from musegen.pipeline import (
    DEFAULT_CANDIDATES,
    DEFAULT_CONTINUATION_CANDIDATES,
    INFILL_FIXED_SETTINGS,
    Pipeline,
    check_candidates,
)
from musegen.tokenizer import load_score, load_tick_score

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


def candidate_count(value: float | None, default: int) -> int:
    """A page's or the API's candidates per variation (None: ``default``), checked."""
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a slider's or JSON's 4.0
    check_candidates(value)
    return value


def infill_request(
    bars: str | None,
    tracks: str | list | None = None,
    add_program: str | int | None = None,
    candidates: float | None = None,
) -> InfillRequest:
    """The page's or the API's infilling fields as a request, or a one-line MusegenError.

    ``bars``: ``"A-B"`` (or ``"A"``); ``tracks``: indices and/or ``drums`` (text or a list;
    empty: every track); ``add_program``: a GM program 0-127 or ``drums`` to add over the bars;
    ``candidates``: spans drawn per variation, the one fitting the bars around best kept
    (None: the default).
    """
    candidates = candidate_count(candidates, DEFAULT_CANDIDATES)
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
    return InfillRequest((a, b), tuple(chosen) if chosen else None, candidates)


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
        concurrency: int = 2,
        processes: bool = False,
    ) -> None:
        self.pipeline = pipeline
        # Bounded work per request (musegen.app.limits); the pipeline checks prompts with them.
        self.limits = limits or RequestLimits()
        self.runner = Runner(pipeline, soundfont, self.limits, stream_every)
        # Heavy requests run in worker processes that load the model as it was loaded here
        # (a pipeline built in memory has no source: they stay in a low-priority thread);
        # with ``processes``, light ones too, one worker per slot (musegen.app.worker).
        self.workers: WorkerPool | None = None
        self.light_workers: WorkerPool | None = None
        source = getattr(pipeline, "source", None)  # stand-ins in tests have none
        if source is not None:
            spec = WorkerSpec(
                source,
                None if soundfont is None else str(soundfont),
                self.limits,
                stream_every,
            )
            self.workers = WorkerPool(spec, self.limits.heavy_slots)
            if processes:
                self.light_workers = WorkerPool(replace(spec, background=False), concurrency)
                self.light_workers.warm()  # their models load while the server starts
        self.lanes = Lanes(
            self.limits.heavy_slots,
            concurrency,
            self.limits.heavy_queue,
            pause=self.workers.pause if self.workers is not None else None,
            max_pause_s=self.limits.request_timeout,
        )
        self.max_new_tokens = min(n for n in (max_new_tokens, self.limits.max_new_tokens) if n)
        # Request folders go after at most ten minutes, sooner when served files do.
        keep = min(IDLE_FINISHED_S, max(KEEP_FINISHED_S, 60 * self.limits.keep_files_minutes))
        self.workspace = workspace or Workspace(idle_finished_s=keep)
        self.workspace.start_janitor()
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the worker processes (the workspace is the caller's)."""
        for pool in (self.workers, self.light_workers):
            if pool is not None:
                pool.close()

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
        candidates: int = DEFAULT_CONTINUATION_CANDIDATES,
    ) -> Iterator[Progress]:
        """Generate ``settings.num_samples`` continuations, yielding previews, then the files
        (each the best of ``candidates``: :meth:`~musegen.pipeline.Pipeline.continue_midi`)."""
        checked = self.checked(settings)
        yield from self._session(key, prompt, checked, name, candidates=candidates)

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
        yield from self._session(key, score, settings, name, infill=request)

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
        self,
        key: str,
        prompt: bytes | symusic.Score | None,
        settings: GenerationSettings,
        name: str,
        infill: InfillRequest | None = None,
        streaming: bool = True,
        candidates: int = DEFAULT_CONTINUATION_CANDIDATES,
    ) -> Iterator[Progress]:
        """Run one request in its own folder, with a fresh stop flag as session ``key``'s, in
        its lane, in a worker process when that lane has workers."""
        stop = threading.Event()
        heavy = self.is_heavy(prompt)
        with self._lock:
            if streaming:
                self._stops[key] = stop
            else:  # an API call does not take a page's Stop button over
                self._stops.setdefault(key, stop)
        try:
            with self.workspace.request(key) as directory:
                job = Job(
                    prompt, settings, directory, safe_stem(name), infill, streaming, candidates
                )
                pool = self.workers if heavy else self.light_workers
                run = self.runner.run if pool is None else pool.run
                if pool is not None and isinstance(prompt, symusic.Score):
                    job = replace(job, prompt=prompt.dumps_midi())  # plain bytes cross over
                yield from self.lanes.iterate(heavy, lambda: run(job, stop))
        finally:
            with self._lock:
                if self._stops.get(key) is stop:
                    del self._stops[key]

    def continue_once(
        self,
        prompt: bytes | symusic.Score | None,
        settings: GenerationSettings,
        key: str,
        name: str = "musegen",
        candidates: int = DEFAULT_CONTINUATION_CANDIDATES,
    ) -> list[Variation]:
        """The non-streaming path (the ``continue`` API): all variations, saved as files.

        ``prompt`` is MIDI bytes or a Score; None starts from nothing.
        """
        checked = self.checked(settings)
        *_, last = self._session(key, prompt, checked, name, streaming=False, candidates=candidates)
        return last.variations or []

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


__all__ = [
    "Composer",
    "InfillRequest",
    "Progress",
    "Variation",
    "candidate_count",
    "form_settings",
    "infill_request",
]
