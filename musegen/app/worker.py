"""Worker processes: requests are generated away from the server's interpreter lock.

Python threads share one interpreter lock, and every torch op gives it up and takes it back.
While one thread runs Python (tokenizing a 20,000-note prompt, a sampling loop, drawing a roll),
each op of every other thread can wait a whole switch interval to get the lock back: beside a
busy Python thread, one heavy request took 73.7 s instead of 1.7 in a thread, 1.7 s instead of
1.5 in a worker process (``benchmarks/bench_app_load.py --contention``).
Lowering a thread's CPU priority does nothing against that. So requests run in worker
processes, heavy ones at the lowest CPU priority (``nice`` 19, the idle class on Linux), each
with its own copy of the model, loaded the way the server loaded it (:attr:`Pipeline.source`).
A job is plain data (:class:`~musegen.app.runner.Job`); its progress comes back through a
queue. The request's stop flag (Stop, the time budget, a client that went away) reaches the
worker through a shared value, so a cancelled job ends soon and its leftovers are dropped by
job id.

While light requests compute, the heavy workers are paused (:meth:`WorkerPool.pause`, called by
:class:`~musegen.app.limits.Lanes`). A worker starts with its first request or
:meth:`WorkerPool.warm` (its model loads then) and is replaced if it dies; the request that was
running gets a one-line error, the server stays up.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from musegen.app.limits import RequestLimits, to_background
from musegen.app.runner import Job, Progress
from musegen.errors import MusegenError

POLL_S = 0.2  # how often a waiting request looks at its stop flag and the worker's health
# Workers are paused only where a paused worker still dies with the server (_die_with_parent).
PAUSABLE = sys.platform == "linux"
_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="musegen-spawner")  # lives as long as we do


@dataclass(frozen=True)
class WorkerSpec:
    """How a worker builds its :class:`~musegen.app.runner.Runner`: the pipeline's
    ``from_pretrained`` arguments and the server's settings."""

    load: dict[str, Any]
    soundfont: str | None
    limits: RequestLimits
    stream_every: int
    background: bool = True  # lowest CPU priority (heavy requests)


class Worker:
    """One process running one job at a time."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self._ids = itertools.count(1)
        self._process: Any = None

    def _start(self) -> None:
        context = mp.get_context("spawn")  # a fresh interpreter: no copied locks or threads
        self._inbox, self._outbox = context.Queue(), context.Queue()
        self._stop = context.Value("q", 0, lock=False)
        self._process = context.Process(
            target=_serve,
            args=(self.spec, self._inbox, self._outbox, self._stop, os.getpid()),
            name="musegen-worker",
            daemon=True,
        )
        self._process.start()

    def warm(self) -> None:
        """Start the process now (its model loads in the background)."""
        if self._process is None or not self._process.is_alive():
            # Started from one long-lived thread: a Linux child's parent-death signal
            # (_die_with_parent) fires when the *thread* that started it ends, and request
            # threads come and go.
            _SPAWNER.submit(self._start).result()

    def run(self, job: Job, stop: threading.Event) -> Iterator[Progress]:
        """The job's progress, computed in the worker process."""
        self.warm()
        job_id = next(self._ids)
        self._inbox.put((job_id, job))
        try:
            while True:
                if stop.is_set():
                    self._stop.value = job_id
                try:
                    kind, owner, payload = self._outbox.get(timeout=POLL_S)
                except queue.Empty:
                    if not self._process.is_alive():
                        code = self._process.exitcode
                        self._process = None
                        raise MusegenError(
                            f"the worker process stopped (exit code {code}) while generating: "
                            "try again, or with a shorter prompt"
                        ) from None
                    continue
                if owner != job_id:  # what a cancelled job sent after its caller left
                    continue
                if kind == "done":
                    return
                if kind == "error":
                    raise payload
                yield payload
        finally:
            self._stop.value = job_id  # the caller left early: the worker ends this job soon

    def signal(self, number: int) -> None:
        """Send signal ``number`` to the process, if it is running (a process already reaped
        may have handed its pid to another)."""
        if self._process is not None and self._process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, number)

    def close(self) -> None:
        if PAUSABLE:
            self.signal(signal.SIGCONT)  # a paused process cannot end
        if self._process is not None and self._process.is_alive():
            self._inbox.put((0, None))
            self._process.join(5)
            if self._process.is_alive():
                self._process.terminate()
        self._process = None


class WorkerPool:
    """``size`` workers; :meth:`run` takes a free one (the lane bounds how many run)."""

    def __init__(self, spec: WorkerSpec, size: int) -> None:
        self._workers = [Worker(spec) for _ in range(size)]
        self._idle: queue.Queue[Worker] = queue.Queue()
        for worker in self._workers:
            self._idle.put(worker)

    def run(self, job: Job, stop: threading.Event) -> Iterator[Progress]:
        worker = self._idle.get()
        try:
            yield from worker.run(job, stop)
        finally:
            self._idle.put(worker)

    def warm(self) -> None:
        for worker in self._workers:
            worker.warm()

    def pause(self, paused: bool) -> None:
        """Stop (SIGSTOP) or continue (SIGCONT) every started worker (:class:`~musegen.app.
        limits.Lanes` pauses heavy work for light); where not :data:`PAUSABLE`, nothing."""
        if PAUSABLE:
            for worker in self._workers:
                worker.signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def close(self) -> None:
        for worker in self._workers:
            worker.close()


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this process when the server dies (precisely: when the
    server thread that started it ends, hence :data:`_SPAWNER`). A paused worker could not
    notice by itself; the loop's parent check in :func:`_serve` covers the rest."""
    if not PAUSABLE:
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError with its one line."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _serve(spec: WorkerSpec, inbox, outbox, stop_value, parent: int) -> None:
    """The worker's loop: load the model once, then run jobs until told to stop or orphaned."""
    if spec.background:
        to_background()
    _die_with_parent()
    import torch

    from musegen.app.runner import Runner
    from musegen.pipeline import Pipeline

    torch.set_num_threads(1)
    runner: Runner | None = None
    failure: BaseException | None = None
    try:
        runner = Runner(
            Pipeline.from_pretrained(**spec.load), spec.soundfont, spec.limits, spec.stream_every
        )
    except Exception as exc:  # every job gets the reason
        failure = _portable(exc)
    while True:
        try:
            job_id, job = inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the server is gone
                return
            continue
        if job is None:
            return
        if runner is None:
            outbox.put(("error", job_id, failure))
            continue
        stop = threading.Event()
        done = threading.Event()

        def watch(job_id: int = job_id, stop: threading.Event = stop, done=done) -> None:
            while not done.wait(0.05):
                if stop_value.value == job_id:
                    stop.set()
                    return

        threading.Thread(target=watch, daemon=True).start()
        try:
            for step in runner.run(job, stop):
                outbox.put(("progress", job_id, step))
            outbox.put(("done", job_id, None))
        except Exception as exc:  # reported to the request, the worker goes on
            outbox.put(("error", job_id, _portable(exc)))
        finally:
            done.set()


__all__ = ["Worker", "WorkerPool", "WorkerSpec"]
