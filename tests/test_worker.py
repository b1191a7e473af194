"""The app's lanes and heavy-request workers: light requests keep their own slots, heavy ones
run in a worker process (same results as in the server), stop reaches the worker, a dead worker
costs one request a one-line error and is replaced, too many waiting heavy requests are refused."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import symusic
from conftest import make_score

from musegen.app.limits import Lanes, RequestLimits, queue_slots
from musegen.app.runner import Job
from musegen.errors import MusegenError
from musegen.generation.settings import GenerationSettings

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
HEAVY_NOTES = 40  # prompts over this many notes are heavy here


@pytest.fixture(scope="module")
def composer(tiny_checkpoint: Path, tmp_path_factory):
    from musegen.app.composer import Composer
    from musegen.app.session import Workspace
    from musegen.pipeline import Pipeline

    limits = RequestLimits(heavy_notes=HEAVY_NOTES, request_timeout=60.0)
    workspace = Workspace(tmp_path_factory.mktemp("ws"))
    composer = Composer(
        Pipeline.from_pretrained(tiny_checkpoint), workspace=workspace, limits=limits
    )
    yield composer
    composer.close()
    workspace.close()


def _prompt(notes: int) -> bytes:
    return make_score(bars=max(1, notes // 8)).dumps_midi()


def _not_here(*_args):
    raise AssertionError("computed in the server process, not in a worker")


def test_lanes_keep_light_slots_and_refuse_a_full_heavy_queue() -> None:
    lanes = Lanes(heavy_slots=1, light_slots=2, heavy_queue=1)
    running, peak, lock = [0], [0], threading.Lock()
    release = threading.Event()

    def light():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(5)
        with lock:
            running[0] -= 1
        yield 1

    threads = [threading.Thread(target=lambda: list(lanes.iterate(False, light))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert peak[0] == 2, "light requests compute two at a time"
    release.set()
    for t in threads:
        t.join(5)
    assert peak[0] == 2 and running[0] == 0

    hold = threading.Event()
    heavy = [
        threading.Thread(target=lambda: list(lanes.iterate(True, lambda: iter([hold.wait(5)]))))
        for _ in range(2)
    ]
    for t in heavy:  # one runs, one waits: the lane's capacity
        t.start()
    time.sleep(0.3)
    assert lanes.heavy_admitted == 2 and lanes.heavy_running == 1
    with pytest.raises(MusegenError, match="busy with 2 large pieces"):
        list(lanes.iterate(True, lambda: iter([0])))
    assert list(lanes.iterate(False, lambda: iter(["light"]))) == ["light"], (
        "light requests do not wait for them"
    )
    hold.set()
    for t in heavy:
        t.join(5)
    assert lanes.heavy_admitted == 0
    assert queue_slots(3, RequestLimits(heavy_slots=1, heavy_queue=4)) == 8


def test_light_requests_pause_heavy_work_for_a_bounded_time() -> None:
    calls: list[bool] = []
    lanes = Lanes(light_slots=2, pause=calls.append, max_pause_s=0.5)
    both_in, release = threading.Barrier(3), threading.Event()

    def light():
        both_in.wait(5)
        release.wait(5)
        yield 1

    threads = [threading.Thread(target=lambda: list(lanes.iterate(False, light))) for _ in range(2)]
    for t in threads:
        t.start()
    both_in.wait(5)
    assert calls == [True], "paused once, when the first light request started"
    release.set()
    for t in threads:
        t.join(5)
    assert calls == [True, False] and lanes.light_running == 0
    list(lanes.iterate(True, lambda: iter([0])))  # heavy requests do not pause anything
    assert calls == [True, False]

    def long_light():
        time.sleep(1.0)
        yield 1

    list(lanes.iterate(False, long_light))
    assert calls == [True, False, True, False], "resumed after max_pause_s, not twice"


def _state(pid: int, wanted: str) -> str:
    """The process state letter, once it is ``wanted`` or after 5 s (signals land soon after
    they are sent, not at once)."""
    for _ in range(100):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == wanted:
            break
        time.sleep(0.05)
    return state


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_paused_worker_stops_and_finishes_its_request_after_resuming(composer) -> None:
    composer.workers.warm()
    pid = composer.workers._workers[0]._process.pid
    composer.workers.pause(True)
    try:
        assert _state(pid, "T") == "T", "stopped while light requests compute"
        settings = GenerationSettings(bars=1, seed=6, max_new_tokens=8)
        result: list = []
        thread = threading.Thread(
            target=lambda: result.extend(
                composer.continue_once(_prompt(HEAVY_NOTES * 2), settings, "paused", "big")
            )
        )
        thread.start()
        thread.join(1.0)
        assert thread.is_alive() and not result, "nothing computes while paused"
    finally:
        composer.workers.pause(False)
    thread.join(60)
    assert result and result[0].midi_path.is_file(), "finished after resuming"


def test_heavy_request_runs_in_a_worker_with_the_servers_results(composer) -> None:
    import torch

    settings = GenerationSettings(bars=1, seed=5, max_new_tokens=16)
    prompt = _prompt(HEAVY_NOTES * 2)
    assert composer.is_heavy(prompt) and composer.workers is not None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker runs, so both sample the same tokens
    try:
        with pytest.MonkeyPatch.context() as patch:  # nothing of it may run in this process
            patch.setattr(composer.runner, "run", _not_here)
            (in_worker,) = composer.continue_once(prompt, settings, "w1", "big")
        process = composer.workers._workers[0]._process
        assert process is not None and process.is_alive()
        with composer.workspace.request("w2") as directory:  # the same job in this process
            job = Job(prompt, composer.checked(settings), directory, "big", streaming=False)
            *_, last = composer.runner.run(job, threading.Event())
        (here,) = last.variations
    finally:
        torch.set_num_threads(threads)
    assert in_worker.midi_path.is_file() and in_worker.wav_path.is_file()
    assert in_worker.midi_bytes == here.midi_bytes


def test_stop_reaches_the_worker_and_a_dead_worker_is_replaced(composer) -> None:
    score = symusic.Score.from_midi(_prompt(HEAVY_NOTES * 2))
    steps = composer.stream(score, GenerationSettings(bars=0, max_new_tokens=4000, seed=1), "s")
    first = next(steps)
    assert first.status.startswith("Generating")
    assert composer.stop("s")
    last = list(steps)[-1]
    assert last.status.startswith("Stopped early") and last.variations

    worker = composer.workers._workers[0]
    steps = composer.stream(score, GenerationSettings(bars=0, max_new_tokens=4000, seed=2), "d")
    next(steps)
    worker._process.kill()
    with pytest.raises(MusegenError, match="worker process stopped"):
        list(steps)
    settings = GenerationSettings(bars=1, seed=3, max_new_tokens=8)
    (again,) = composer.continue_once(_prompt(HEAVY_NOTES * 2), settings, "d", "again")
    assert again.midi_path.is_file(), "the next heavy request gets a fresh worker"


def test_light_requests_in_worker_processes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from musegen.app.composer import Composer
    from musegen.app.session import Workspace
    from musegen.pipeline import Pipeline

    limits = RequestLimits(heavy_notes=HEAVY_NOTES)
    composer = Composer(
        Pipeline.from_pretrained(tiny_checkpoint),
        workspace=Workspace(tmp_path / "ws"),
        limits=limits,
        concurrency=2,
        processes=True,
    )
    composer.runner.run = _not_here  # nothing of it may run in this process
    try:
        assert len(composer.light_workers._workers) == 2
        score = symusic.Score.from_midi(_prompt(16))  # light, given as a Score like the page
        assert not composer.is_heavy(score)
        steps = list(composer.stream(score, GenerationSettings(bars=1, seed=4), "p", "light"))
        assert steps[-1].status.startswith(("Done", "No new notes")) and steps[-1].variations
        assert steps[-1].variations[0].wav_path.is_file()
        alive = [w._process.is_alive() for w in composer.light_workers._workers]
        assert all(alive), "both warmed at start, one of them served the request"
    finally:
        composer.close()
    assert all(w._process is None for w in composer.light_workers._workers)
