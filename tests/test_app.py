"""The Gradio app: session plumbing, streaming/stop, and the served app driven by gradio_client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile
from conftest import make_score, write_midi
from PIL import Image

from musegen.app.session import (
    GM_INSTRUMENTS,
    SessionState,
    Workspace,
    check_prompt,
    list_examples,
    programs_for,
    read_upload,
    safe_stem,
)
from musegen.errors import MidiError, MusegenError
from musegen.tokenizer import load_score, score_to_midi_bytes

# gradio's queue calls a pandas option pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")

UPLOAD_LIMIT = 64 * 1024
TOKEN_CAP = 48  # keeps every request on the random tiny model to a fraction of a second


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint: Path):
    from musegen.pipeline import Pipeline

    return Pipeline.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def served(pipeline, tmp_path_factory: pytest.TempPathFactory):
    """The app on a free local port: (url, workspace)."""
    from musegen.app import blocks as ui

    workspace = Workspace(tmp_path_factory.mktemp("workspace"))
    demo = ui.build_app(
        pipeline,
        concurrency=4,
        max_upload_bytes=UPLOAD_LIMIT,
        workspace=workspace,
        max_new_tokens=TOKEN_CAP,
    )
    url = ui.launch(demo, port=free_port(), block=False, quiet=True, max_upload_bytes=UPLOAD_LIMIT)
    yield url, workspace
    demo.close()
    demo.musegen_composer.close()
    workspace.close()


@pytest.fixture
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


def call(client, midi: Path, seed: int = 7, bars: int = 1, variations: int = 1):
    from gradio_client import handle_file

    return client.predict(
        handle_file(str(midi)), bars, 1.0, 0.95, 0, seed, variations, api_name="/continue"
    )


def check_outputs(prompt: Path, outputs, seed: int) -> None:
    """MIDI that opens in pretty_midi with notes after the prompt, a non-silent WAV, a PNG,
    and a status naming ``seed`` as the returned variation's."""
    midi_path, wav_path, png_path, status = outputs
    prompt_end = pretty_midi.PrettyMIDI(str(prompt)).get_end_time()
    midi = pretty_midi.PrettyMIDI(midi_path)
    starts = [n.start for inst in midi.instruments for n in inst.notes]
    assert any(start >= prompt_end - 1e-3 for start in starts), "no notes after the prompt"
    audio, rate = soundfile.read(wav_path)
    assert rate > 0 and len(audio) > rate // 2
    assert float(np.sqrt(np.mean(np.square(audio)))) > 1e-3
    with Image.open(png_path) as image:
        assert image.format == "PNG" and image.width > 100
    assert f"returned variation 1: seed {seed} · " in status and Path(midi_path).suffix == ".mid"


# ----- session plumbing ---------------------------------------------------------------------
def test_examples_are_small_valid_prompts():
    examples = list_examples()
    assert len(examples) >= 3
    for path in examples.values():
        assert path.stat().st_size < 8 * 1024
        score = check_prompt(path.read_bytes(), path.name)
        assert sum(len(t.notes) for t in score.tracks) >= 16


def test_read_upload_rejects_bad_files(tmp_path: Path):
    cases = {
        "text.mid": (b"hello, not music", "not a MIDI file"),
        "empty.mid": (b"", "empty file"),
        "cut.mid": (b"MThd\x00\x00\x00\x06\x00\x01\x00\x02", "corrupt"),
        "big.mid": (b"MThd" + bytes(UPLOAD_LIMIT), "limit"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MidiError, match=message):
            read_upload(tmp_path / name, UPLOAD_LIMIT)
    silent = make_score(bars=1)
    silent.tracks[0].notes.clear()
    write_midi(tmp_path / "silent.mid", silent)
    with pytest.raises(MidiError, match="no notes"):
        read_upload(tmp_path / "silent.mid")
    with pytest.raises(MidiError, match="no file"):
        read_upload(None)
    assert load_score(read_upload(write_midi(tmp_path / "ok.mid"))).tracks


def test_session_state_undo_and_names():
    state = SessionState()
    assert not state.undo()
    state.set_prompt(b"first", "a.mid")
    state.set_prompt(b"second", "variation 1")
    state.set_prompt(None, "")
    assert state.undo() and state.prompt == b"second"
    assert state.undo() and state.prompt_name == "a.mid"
    assert state.undo() and state.prompt is None and not state.undo()
    assert safe_stem("../../etc/pass wd.mid") == "pass_wd" and safe_stem("???") == "musegen"
    assert programs_for([GM_INSTRUMENTS[40], "no such thing"]) == [40]
    assert programs_for([]) is None


def test_workspace_gives_unique_dirs_and_cleans_up(tmp_path: Path):
    ws = Workspace(tmp_path / "ws", max_age_s=3600, keep_finished_s=0.0)
    first = ws.new_request_dir("session-a")
    other = ws.new_request_dir("session-b")
    ws.finish(first)
    ws.finish(other)
    second = ws.new_request_dir("session-a")
    assert first != second and second.is_dir() and other.is_dir()
    assert not first.exists(), "a session's finished request folders are removed"
    old = time.time() - 7200
    os.utime(other, (old, old))
    assert ws.sweep() == 1 and not other.exists()
    ws.finish(second)
    ws.drop_session("session-a")
    assert not second.exists()
    ws.close()
    assert not (tmp_path / "ws").exists()


def test_janitor_removes_what_api_clients_leave_without_a_new_request(tmp_path: Path):
    ws = Workspace(tmp_path / "ws", keep_finished_s=0.0, idle_finished_s=0.0)

    def janitors() -> int:
        return sum(t.name == "musegen-workspace-janitor" for t in threading.enumerate())

    before = janitors()
    ws.start_janitor(every_s=0.02)
    ws.start_janitor(every_s=0.02)
    assert janitors() == before + 1, "one janitor per workspace"
    with ws.request("api-client") as folder:
        (folder / "out.mid").write_bytes(b"MThd")
        time.sleep(0.2)
        assert (folder / "out.mid").exists(), "a request in flight keeps its folder"
    deadline = time.monotonic() + 10  # the folder, then its session's, each in a sweep
    while any((tmp_path / "ws").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not folder.exists() and not any((tmp_path / "ws").iterdir())
    ws.close()


# ----- generation without a server ----------------------------------------------------------
def test_stream_previews_then_files_and_stop_keeps_results(pipeline, tmp_path: Path):
    from musegen.app.composer import Composer
    from musegen.generation.settings import GenerationSettings

    composer = Composer(pipeline, workspace=Workspace(tmp_path / "ws"), stream_every=8)
    prompt = make_score(bars=1, tracks=((0, False), (0, True)))
    settings = GenerationSettings(bars=8, seed=3, num_samples=2)
    steps = composer.stream(prompt, settings, "tab1", "my song")
    first = next(steps)
    assert first.variations is None and len(first.previews) == 2
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in first.previews)
    assert composer.stop("tab1") and not composer.stop("someone-else")
    *_, last = steps
    assert last.status.startswith("Stopped early") and len(last.variations) == 2
    for v in last.variations:
        assert v.midi_path.name.startswith("my_song_v") and v.wav_path.stat().st_size > 1000
        assert v.summary.startswith(f"seed {v.seed} · ") and "stopped early" in v.summary
        score = load_score(v.midi_bytes)
        assert score.end() / score.tpq >= prompt.end() / prompt.tpq
    assert {v.seed for v in last.variations} == {3, 4}
    assert not composer.stop("tab1"), "the stop flag is dropped once the request ends"


def test_bad_settings_are_user_errors(pipeline, tmp_path: Path):
    from musegen.app.composer import Composer
    from musegen.generation.settings import GenerationSettings

    composer = Composer(pipeline, workspace=Workspace(tmp_path / "ws"))
    with pytest.raises(MusegenError, match="temperature"):
        next(composer.stream(None, GenerationSettings(temperature=0), "k"))
    with pytest.raises(MusegenError, match="variations"):
        composer.continue_once(None, GenerationSettings(num_samples=9), "k")


class FailingPipeline:
    """Stands in for the model: every generation fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def stream(self, *args, **kwargs):
        raise self.error


@pytest.mark.filterwarnings("ignore:(no luck|generation failed):UserWarning")
@pytest.mark.parametrize("error", [MusegenError("no luck"), RuntimeError("crashed")])
def test_failed_generation_clears_the_result_slots(error: Exception, tmp_path: Path):
    """After a failure no slot is left saying "generating…" and Generate works again."""
    import gradio as gr

    from musegen.app import blocks as ui
    from musegen.app.composer import Composer
    from musegen.app.events import CONTROL_NAMES, Handlers

    composer = Composer(FailingPipeline(error), workspace=Workspace(tmp_path / "ws"))
    with gr.Blocks():
        state = gr.State(SessionState())
        prompt = ui._prompt_column({})
        controls = ui._controls_column()
        slots = ui._result_slots()
        status = gr.Markdown("")
        handlers = Handlers(composer, {}, state, prompt, controls, slots, status, UPLOAD_LIMIT)
    form = {name: controls[name].value for name in CONTROL_NAMES}
    outputs = list(handlers.on_generate(SessionState(), None, lambda *a, **k: None, **form))
    assert any("generating…" in str(v) for v in outputs[0].values()), "the slots were reset"
    last = outputs[-1]
    assert str(error) in last[status]
    assert last[controls["generate"]]["interactive"] is True
    for i, slot in enumerate(slots):
        assert last[slot["summary"]] == f"**Variation {i + 1}**"
        assert last[slot["group"]]["visible"] == (i == 0)
        assert last[slot["roll"]] is None and last[slot["files"]] is None


# ----- the served app -----------------------------------------------------------------------
def test_continue_endpoint_returns_midi_wav_png(client, midi_file: Path):
    outputs = call(client, midi_file, seed=11)
    check_outputs(midi_file, outputs, 11)
    assert "seed 11" in outputs[3]


def test_bad_uploads_return_errors_and_app_keeps_serving(client, midi_file: Path, tmp_path: Path):
    from gradio_client.exceptions import AppError

    corrupt = tmp_path / "corrupt.mid"
    corrupt.write_bytes(b"MThd" + b"\x00garbage" * 8)
    with pytest.raises(AppError, match="corrupt"):
        call(client, corrupt)
    silent = make_score(bars=1)
    silent.tracks[0].notes.clear()
    with pytest.raises(AppError, match="no notes"):
        call(client, write_midi(tmp_path / "silent.mid", silent))
    big = tmp_path / "big.mid"
    big.write_bytes(score_to_midi_bytes(make_score()) + bytes(UPLOAD_LIMIT))
    with pytest.raises(Exception, match=r"(?i)size|large|limit"):
        call(client, big)
    check_outputs(midi_file, call(client, midi_file, seed=5), 5)


def test_server_paths_are_refused_as_uploads(served):
    """A file path the caller names (not one it uploaded) never reaches the model."""
    import json
    import urllib.request

    url = served[0].rstrip("/") + "/gradio_api/call/continue"
    secret = Path(__file__).resolve().parents[1] / "musegen" / "examples" / "bach_chorale.mid"
    from musegen.generation.settings import SETTINGS

    # Raw HTTP sends every parameter: the MIDI, each setting in the table's order, candidates.
    settings = [1, 1, 1, 0, 1, 1] + [[] if s.default is None else s.default for s in SETTINGS[6:]]
    body = {"data": [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}, *settings, 1]}
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        event = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{url}/{event}", timeout=60) as response:
        stream = response.read().decode()
    assert "event: error" in stream and "not uploaded" in stream
    assert "event: complete" not in stream


@pytest.mark.slow
def test_four_concurrent_sessions_all_succeed(served, tmp_path: Path):
    from gradio_client import Client

    prompts = [write_midi(tmp_path / f"p{i}.mid", bars=2, seed=i) for i in range(4)]
    clients = [Client(served[0], verbose=False) for _ in prompts]
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda i: call(clients[i], prompts[i], seed=100 + i), range(4)))
    for i, (prompt, out) in enumerate(zip(prompts, outputs, strict=True)):
        check_outputs(prompt, out, 100 + i)
    assert len({out[0] for out in outputs}) == 4, "each session gets its own files"
    assert [f"seed {100 + i}" in out[3] for i, out in enumerate(outputs)] == [True] * 4


# ----- the command line ---------------------------------------------------------------------
def test_cli_app_rejects_bad_options_before_loading(capsys):
    from musegen.cli import main

    assert main(["app", "--port", "70000"]) == 2
    assert "not a valid port" in capsys.readouterr().err
    assert main(["app", "--checkpoint", "/nonexistent/ckpt", "--port", "7999"]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_python_app_py_starts_and_prints_url(tiny_checkpoint: Path):
    """``python app.py`` serves the page and prints the URL (stopped once it answers)."""
    import urllib.request

    port = free_port()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--checkpoint", str(tiny_checkpoint), "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(240):
            if any(url in line for line in lines) or proc.poll() is not None:
                break
            time.sleep(0.5)
        assert any(url in line for line in lines), "".join(lines)
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and b"musegen" in response.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_api_statuses_carry_the_results_warnings(client, midi_file: Path):
    """The ``/continue`` status line says what the page says: the variations' warnings (here:
    two tokens leave no room for a note, so the new bars are empty)."""
    from gradio_client import handle_file

    *_, status = client.predict(
        handle_file(str(midi_file)), bars=1, seed=3, max_new_tokens=2, api_name="/continue"
    )
    assert "Warning: the model wrote no notes in the new bars" in status
