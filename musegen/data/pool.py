"""The process pool behind ``prepare``: tokenizes files in parallel, survives bad files.

Each worker parses and encodes with the dataset's saved tokenizer under a per-file time limit;
a file that crashes or hangs a worker is found by retrying the suspects alone and is reported
as skipped instead of stopping the run.
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musegen.data.dataset import token_dtype
from musegen.errors import MusegenError, first_line
from musegen.score_check import ScoreError, ScoreLimits, load_checked, reason_for
from musegen.tokenizer import count_notes, encode, load_tokenizer

# A pool that answers nothing for 2 × timeout + this long has a worker stuck in native code.
HANG_GRACE_S = 30.0
PREPARE_FLAGS = (("min_notes", "--min-notes"),)


@dataclass
class FileResult:
    """What a worker learned about one file: its note count and ids, or why it was skipped."""

    notes: int = 0
    ids: np.ndarray | None = None
    reason: str | None = None


_WORKER: dict = {}  # per worker process: the tokenizer and the limits, set by _init_worker


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout


def _init_worker(tokenizer_path: str, limits: tuple[int, int, float]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    signal.signal(signal.SIGALRM, _on_alarm)
    tokenizer = load_tokenizer(tokenizer_path)
    note_prefixes = ("Pitch_", "PitchDrum_", "NoteOn_", "DrumOn_")
    note_ids = [i for t, i in tokenizer.vocab.items() if t.startswith(note_prefixes)]
    _WORKER.update(tokenizer=tokenizer, limits=limits, note_ids=np.asarray(note_ids))


def _tokenize_chunk(chunk: tuple[tuple[str, str], ...]) -> list[tuple[str, FileResult]]:
    """Tokenize a few files per task: tiny files cost less than the round trip to a worker."""
    return [_tokenize_one(key, path) for key, path in chunk]


def _tokenize_one(key: str, path: str) -> tuple[str, FileResult]:
    """Parse and encode one file in a worker, with a time limit; never raises."""
    min_notes, max_beats, timeout_s = _WORKER["limits"]
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return key, _encode_checked(path, min_notes, max_beats)
    except _Timeout:
        return key, FileResult(reason=f"timed out: took longer than {timeout_s:g} s")
    except ScoreError as exc:
        return key, FileResult(reason=exc.reason)
    except MusegenError as exc:
        return key, FileResult(reason=_midi_reason(str(exc)))
    except Exception as exc:  # miditok/symusic failure on odd content
        reason = f"tokenizer error: {type(exc).__name__} {first_line(exc)}".strip()
        return key, FileResult(reason=reason)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _encode_checked(path: str, min_notes: int, max_beats: int) -> FileResult:
    """Load and check one file as every front end does (:mod:`musegen.score_check`), encode."""
    limits = ScoreLimits(min_notes=min_notes, max_beats=max_beats, flags=PREPARE_FLAGS)
    try:
        score = load_checked(path, limits)
    except ScoreError as exc:
        return FileResult(_notes_of(exc), reason=exc.reason)
    notes = count_notes(score)
    tokenizer = _WORKER["tokenizer"]
    # the dataset's own dtype: half the memory and pickling while results are gathered
    ids = np.asarray(encode(tokenizer, score), dtype=token_dtype(len(tokenizer)))
    if not tokenizer.is_trained and not np.isin(ids, _WORKER["note_ids"]).any():
        return FileResult(notes, reason="no notes: none in the tokenizer's pitch range")
    return FileResult(notes, ids)


def _notes_of(exc: ScoreError) -> int:
    """The note count a refusal names (too few/many notes), else 0."""
    head = exc.reason.split(": ", 1)
    if head[0] in ("too few notes", "too many notes"):
        return int(head[1].split(" ", 1)[0])
    return 0


def _midi_reason(message: str) -> str:
    """load_score's message as a reason whose first word group names the kind of problem."""
    return reason_for(message)


def _executor(workers: int, initargs: tuple) -> ProcessPoolExecutor:
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return ProcessPoolExecutor(workers, context, initializer=_init_worker, initargs=initargs)


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool whose worker hangs inside native code (no public API for this in 3.10)."""
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _run_pool(jobs, initargs, workers: int, hard_timeout: float, on_done):
    """Run ``jobs`` with at most 2×workers in flight. If the pool breaks (a worker died) or hangs
    (stuck in native code past the alarm), stop and return ``(suspects, unstarted, why)``: any
    in-flight job may be the culprit, so the caller retries those one by one."""
    queue, running, why = list(reversed(jobs)), {}, None
    pool = _executor(workers, initargs)
    try:
        while (queue or running) and why is None:
            while queue and len(running) < 2 * workers:
                job = queue.pop()
                try:
                    running[pool.submit(_tokenize_chunk, job)] = job
                except BrokenProcessPool:
                    queue.append(job)
                    break
            done, _ = wait(running, timeout=hard_timeout, return_when=FIRST_COMPLETED)
            why = None if done else f"timed out: no answer within {hard_timeout:g} s"
            for future in done:
                try:
                    result = future.result()
                except BrokenProcessPool:
                    why = "crashed: the MIDI parser or tokenizer died on this file"
                    continue
                del running[future]
                for key, file_result in result:
                    on_done(key, file_result)
    finally:
        if queue or running:
            _kill(pool)
        else:
            pool.shutdown()
    return list(running.values()), list(reversed(queue)), why


def _drain(jobs, initargs, workers: int, hard_timeout: float, on_done) -> list:
    """Run all ``jobs``, restarting the pool after each break; returns every suspect job."""
    suspects: list = []
    while jobs:
        broken, jobs, _ = _run_pool(jobs, initargs, workers, hard_timeout, on_done)
        suspects += broken
    return suspects


def tokenize_files(
    jobs: list[tuple[str, str]],
    tokenizer_path: str | Path,
    *,
    min_notes: int,
    max_beats: int,
    timeout_s: float,
    workers: int,
    progress: bool = True,
    desc: str = "tokenizing",
) -> dict[str, FileResult]:
    """Tokenize ``(key, path)`` jobs in a process pool; a file that crashes or hangs a worker is
    found by retrying the suspects alone and is reported as skipped, not fatal."""
    from tqdm import tqdm

    results: dict[str, FileResult] = {}
    bar = tqdm(total=len(jobs), desc=desc, unit="file", disable=not progress)

    def on_done(key: str, result: FileResult) -> None:
        results[key] = result
        bar.update(1)

    initargs = (str(tokenizer_path), (min_notes, max_beats, timeout_s))
    size = max(1, min(32, len(jobs) // (8 * workers)))
    chunks = [tuple(jobs[i : i + size]) for i in range(0, len(jobs), size)]
    broken = _drain(chunks, initargs, workers, (size + 1) * timeout_s + HANG_GRACE_S, on_done)
    suspects = [(pair,) for chunk in broken for pair in chunk]
    single_timeout = 2 * timeout_s + HANG_GRACE_S
    if size > 1:  # the files of broken chunks, one per task, in fresh pools
        suspects = _drain(suspects, initargs, workers, single_timeout, on_done)
    for job in suspects:  # a file that broke a pool: run it alone to be sure
        left, _, why = _run_pool([job], initargs, 1, single_timeout, on_done)
        if left:
            on_done(job[0][0], FileResult(reason=why))
    bar.close()
    return results
