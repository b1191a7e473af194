"""Bounded work per request, and fairness between requests, for a shared app server.

:class:`RequestLimits` is what a server operator sets with ``python app.py --max-...``: every
request's prompt, new tokens, audio and time are capped, so no upload can hold a worker for
minutes. :class:`Lanes` keeps a heavy request from stalling light ones:

- light requests compute ``light_slots`` at a time (``--concurrency``), heavy ones (a prompt
  over ``heavy_notes`` notes) ``heavy_slots`` at a time, each kind in its own lane: a heavy
  request never takes a light request's slot. Gradio's queue admits enough requests for both
  lanes (:func:`queue_slots`), and at most ``heavy_queue`` heavy requests wait for their lane;
  one more is refused at once with a one-line reason, so heavy uploads can never fill the
  queue that light requests go through;
- a heavy request runs at the lowest CPU priority (:func:`to_background`: ``nice`` 19 and, on
  Linux, the idle scheduling class): in a worker process of its own
  (:mod:`musegen.app.worker`; the app's light requests get worker processes too, so no request
  waits for another's Python interpreter lock), or, for a pipeline built in memory, in a thread
  of its own; the kernel serves light requests first;
- while any light request computes, heavy worker processes are paused outright (``pause``:
  SIGSTOP, then SIGCONT when the last light request ends, or after ``max_pause_s`` at the
  latest, so a steady stream of light requests slows heavy ones without starving them). The
  idle class alone keeps a heavy worker off a core a light request wants, but not out of the
  caches and memory bandwidth they share: beside it, light requests were 1.33× slower at p95
  before this pause (``benchmarks/README.md``). A heavy request pays with time; its own budget
  (``--request-timeout``) still ends it with what it has;
- torch runs ``cpu_count // concurrency`` threads per request (at least 1), so parallel
  requests share the cores instead of oversubscribing them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from musegen.errors import MusegenError
from musegen.score_check import PROMPT_LIMITS, ScoreLimits

T = TypeVar("T")
HEAVY_NICE = 19  # as low as a priority goes: light requests first


def to_background(tid: int = 0) -> None:
    """Give thread ``tid`` (0: the calling process) the lowest CPU priority: nice
    :data:`HEAVY_NICE` and, where there is one, the kernel's idle class (Linux ``SCHED_IDLE``). A
    niced task still takes a share of a busy core; an idle-class task runs only when no other
    task wants it. Elsewhere: unchanged, still its own lane."""
    tid = tid or os.getpid()
    with contextlib.suppress(AttributeError, OSError):
        nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + HEAVY_NICE)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


@dataclass(frozen=True)
class RequestLimits:
    """The most one request may ask of the server (each a ``--flag`` of ``python app.py``)."""

    max_prompt_notes: int = 20_000
    max_prompt_tokens: int = 200_000
    max_new_tokens: int = 1024
    max_audio_seconds: float = 120.0
    request_timeout: float = 60.0
    heavy_notes: int = 2_000
    heavy_slots: int = 1
    heavy_queue: int = 4
    keep_files_minutes: float = 60.0

    def validate(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise MusegenError(f"--{f.name.replace('_', '-')} must be positive")

    def score_limits(self) -> ScoreLimits:
        """The prompt check (:mod:`musegen.score_check`) under these limits."""
        return replace(
            PROMPT_LIMITS,
            max_notes=self.max_prompt_notes,
            max_tokens=self.max_prompt_tokens,
            flags=(
                ("max_notes", "the server's --max-prompt-notes"),
                ("max_tokens", "the server's --max-prompt-tokens"),
            ),
        )


HELP = {
    "max_prompt_notes": "prompts with more notes are refused with a one-line reason",
    "max_prompt_tokens": "prompts longer than this many tokens (after trimming) are refused",
    "max_new_tokens": "cap on new tokens per request (the form's own limit applies below it)",
    "max_audio_seconds": "audio rendered per result; longer pieces are heard from this many "
    "seconds before their end",
    "request_timeout": "seconds of generation per request; then it stops with what it has and "
    "says so",
    "heavy_notes": "prompts with more notes count as heavy: they run in a lane of their own, at "
    "the lowest CPU priority, so light requests are not stalled",
    "heavy_slots": "heavy requests processed at once",
    "heavy_queue": "heavy requests that may wait for the heavy lane; more are refused at once "
    "with a one-line reason (light requests never wait behind them)",
    "keep_files_minutes": "uploads and results stay on the server this long, then they are "
    "deleted (a browser's players stop working after it; downloads are the client's)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per :class:`RequestLimits` field, defaulting to the field's default."""
    group = parser.add_argument_group("limits per request (for a shared server)")
    for f in fields(RequestLimits):
        flag = "--" + f.name.replace("_", "-")
        kind = int if isinstance(f.default, int) else float
        group.add_argument(flag, type=kind, default=f.default, help=HELP[f.name])


def from_args(args: argparse.Namespace) -> RequestLimits:
    limits = RequestLimits(**{f.name: getattr(args, f.name) for f in fields(RequestLimits)})
    limits.validate()
    return limits


def delete_cache(limits: RequestLimits) -> tuple[int, int]:
    """Gradio's ``delete_cache`` (how often to look, how old a file may get) for the limits."""
    age = max(1, round(limits.keep_files_minutes * 60))
    return max(5, min(600, age // 4)), age


def torch_threads(concurrency: int, cpus: int | None = None) -> int:
    """Torch threads per request so ``concurrency`` requests share the cores."""
    return max(1, (cpus or os.cpu_count() or 1) // max(1, concurrency))


class Deadline:
    """Sets ``stop`` when a request has run ``seconds``; ``expired`` says whether it did."""

    def __init__(self, seconds: float, stop: threading.Event) -> None:
        self.seconds = seconds
        self._timer = threading.Timer(seconds, self._expire, args=(stop,))
        self._timer.daemon = True
        self.expired = False

    def _expire(self, stop: threading.Event) -> None:
        self.expired = True
        stop.set()

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def note(self) -> str:
        """The status words for a request that ran out of time ("" if it did not)."""
        if not self.expired:
            return ""
        return (
            f"stopped at the server's time limit of {self.seconds:g} s per request "
            "(--request-timeout): kept what was generated"
        )


def queue_slots(concurrency: int, limits: RequestLimits) -> int:
    """Requests gradio lets run at once per event: every light slot, every heavy slot and the
    heavy requests that may wait, so waiting heavy requests never hold a light request's place."""
    return concurrency + limits.heavy_slots + limits.heavy_queue


class Lanes:
    """Where a request runs: light ones ``light_slots`` at a time in the caller's thread, heavy
    ones ``heavy_slots`` at a time in a lowest-priority thread of their own, with at most
    ``heavy_queue`` heavy requests waiting (see the module docstring). ``pause(True)`` is called
    when light requests start computing and ``pause(False)`` when the last one ends, or once
    they have computed for ``max_pause_s`` without a break."""

    def __init__(
        self,
        heavy_slots: int = 1,
        light_slots: int = 2,
        heavy_queue: int = 4,
        pause: Callable[[bool], None] | None = None,
        max_pause_s: float = 60.0,
    ) -> None:
        self._light = threading.BoundedSemaphore(light_slots)
        self._heavy = threading.BoundedSemaphore(heavy_slots)
        self._admit = threading.Lock()
        self.heavy_capacity = heavy_slots + heavy_queue
        self.heavy_admitted = 0  # running or waiting
        self.heavy_running = 0
        self.light_running = 0
        self._pause = pause
        self._max_pause_s = max_pause_s
        self._watchdog: threading.Timer | None = None  # set while heavy work is paused

    def _count_light(self, delta: int) -> None:
        """Count a light request in (+1) or out (-1); pause or resume heavy work at 0."""
        with self._admit:
            self.light_running += delta
            if self._pause is None:
                return
            if delta > 0 and self.light_running == 1:
                self._pause(True)
                self._watchdog = threading.Timer(self._max_pause_s, self._resume_if_paused)
                self._watchdog.daemon = True
                self._watchdog.start()
            elif delta < 0 and self.light_running == 0:
                self._resume_locked()

    def _resume_if_paused(self) -> None:
        with self._admit:
            self._resume_locked()

    def _resume_locked(self) -> None:
        if self._watchdog is not None:  # only ever set when there is a ``pause``
            self._watchdog.cancel()
            self._watchdog = None
            self._pause(False)

    def iterate(self, heavy: bool, make: Callable[[], Iterator[T]]) -> Iterator[T]:
        """The items of ``make()``, produced in the light or heavy lane; ``make`` is called
        once the lane is free, so a request's time budget starts there."""
        if not heavy:
            with self._light:
                self._count_light(+1)
                try:
                    yield from make()
                finally:
                    self._count_light(-1)
            return
        with self._admit:
            if self.heavy_admitted >= self.heavy_capacity:
                raise MusegenError(
                    f"the server is busy with {self.heavy_admitted} large pieces: try again in a "
                    "minute, or choose fewer bars or tracks of the piece as the prompt"
                )
            self.heavy_admitted += 1
        try:
            with self._heavy:
                self.heavy_running += 1
                try:
                    yield from _in_low_priority_thread(make)
                finally:
                    self.heavy_running -= 1
        finally:
            with self._admit:
                self.heavy_admitted -= 1


_DONE = object()


def _in_low_priority_thread(make: Callable[[], Iterator[T]]) -> Iterator[T]:
    """Run the generator ``make()`` in a fresh thread at :func:`to_background` priority (a thread's
    niceness cannot be lowered again, so the thread is never reused), passing items back."""
    items: queue.Queue[Any] = queue.Queue()
    cancel = threading.Event()

    def work() -> None:
        to_background(threading.get_native_id())
        try:
            for item in make():
                if cancel.is_set():  # the caller went away
                    return
                items.put((item, None))
        except BaseException as exc:  # handed to the caller's thread
            items.put((_DONE, exc))
            return
        items.put((_DONE, None))

    thread = threading.Thread(target=work, name="musegen-heavy", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        cancel.set()
        thread.join(timeout=1.0)


__all__ = [
    "Deadline",
    "Lanes",
    "RequestLimits",
    "add_arguments",
    "from_args",
    "queue_slots",
    "to_background",
    "torch_threads",
]
