"""Composing in the app: choosing the prompt, hearing the new part at once, infilling from the
page and through ``/infill``, and requests that never share files.

Everything runs on the tiny preset (random weights) with a 512-token context, enough room for
infilling a few bars; a token cap keeps each request to a fraction of a second.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import soundfile
import symusic
import torch
from conftest import make_score, write_midi

from musegen.app.session import SessionState, Workspace
from musegen.errors import MusegenError
from musegen.generation.prompt import (
    bar_starts,
    overview,
    parse_bar_range,
    parse_track_list,
    select_prompt,
)
from musegen.generation.settings import GenerationSettings
from musegen.pipeline import DEFAULT_CANDIDATES

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")

TOKEN_CAP = 48
BAND = ((0, False), (33, False), (0, True))  # piano, bass, drums


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _checkpoint(path: Path, infill: bool = True) -> Path:
    from musegen.checkpoint import save_pretrained
    from musegen.config import preset
    from musegen.model.transformer import MusicTransformer
    from musegen.tokenizer import TokenizerSettings, build_tokenizer

    tokenizer = build_tokenizer(TokenizerSettings(infill=infill))
    config = preset("tiny", vocab_size=len(tokenizer), max_seq_len=512)
    torch.manual_seed(0)
    return save_pretrained(MusicTransformer(config), tokenizer, path)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from musegen.pipeline import Pipeline

    return Pipeline.from_pretrained(_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny512"))


@pytest.fixture(scope="module")
def served(pipeline, tmp_path_factory):
    """The app on a free port: (url, workspace)."""
    from musegen.app import blocks as ui

    workspace = Workspace(tmp_path_factory.mktemp("compose-ws"))
    demo = ui.build_app(pipeline, concurrency=4, workspace=workspace, max_new_tokens=TOKEN_CAP)
    url = ui.launch(demo, port=free_port(), block=False, quiet=True)
    yield url, workspace
    demo.close()
    demo.musegen_composer.close()
    workspace.close()


@pytest.fixture
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


@pytest.fixture
def band(tmp_path: Path) -> Path:
    """Eight bars of piano, bass and drums."""
    return write_midi(tmp_path / "band.mid", bars=8, tracks=BAND, seed=3)


def notes_before(score: symusic.Score, tick: int) -> list[tuple]:
    return sorted(
        (t.program, t.is_drum, n.time, n.duration, n.pitch)
        for t in score.tracks
        for n in t.notes
        if n.time < tick
    )


# ----- choosing the prompt ------------------------------------------------------------------
def test_prompt_choices_parse_and_cut_the_score():
    assert [parse_bar_range(x) for x in ("", " 3 - 5", "4-", "-2", "7", 6)] == [
        "",
        "3-5",
        "4-",
        "1-2",
        "7-7",
        "6-6",
    ]
    assert parse_track_list("1, drums,1") == "1,drums" and parse_track_list([0, 2]) == "0,2"
    for bad in ("5-3", "x", "0-2", "-", "1-2-3"):
        with pytest.raises(MusegenError) as caught:
            GenerationSettings(prompt_bars=bad)
        assert len(str(caught.value).splitlines()) == 1
        assert str(caught.value).startswith("prompt_bars")
    with pytest.raises(MusegenError, match="prompt_tracks"):
        GenerationSettings(prompt_tracks="bass")

    score = make_score(bars=8, tracks=BAND)
    starts = bar_starts(score)
    assert len(starts) == 9 and starts[1] == 4 * score.tpq
    bars, rows = overview(score)
    assert bars == 8 and [r.instrument for r in rows][1].startswith("Electric Bass")
    assert (rows[2].instrument, rows[0].first_bar, rows[0].last_bar) == ("Drums", 1, 8)

    cut = select_prompt(score, "3-4", "1,drums")
    assert len(cut.tracks) == 2 and not cut.tracks[0].is_drum and cut.tracks[1].is_drum
    assert min(n.time for t in cut.tracks for n in t.notes) == 0
    assert cut.end() <= 2 * 4 * score.tpq
    assert select_prompt(score, "7-").end() <= 2 * 4 * score.tpq
    with pytest.raises(MusegenError, match=r"has 8 bar\(s\)"):
        select_prompt(score, "6-12")
    with pytest.raises(MusegenError, match="track 5 does not exist"):
        select_prompt(score, "", "5")


def test_prompt_range_changes_what_is_continued(pipeline, band: Path):
    settings = GenerationSettings(bars=1, seed=4, max_new_tokens=TOKEN_CAP)
    [whole] = pipeline.continue_midi(band, settings=settings)
    [part] = pipeline.continue_midi(
        band, settings=settings.with_overrides(prompt_bars="2-3", prompt_tracks="0")
    )
    tpq = whole.score.tpq  # the tokenizer's resolution
    assert whole.prompt_end_tick >= 8 * 4 * tpq and part.prompt_end_tick == 2 * 4 * tpq
    prompt_part = [
        t for t in part.score.tracks if any(n.time < part.prompt_end_tick for n in t.notes)
    ]
    assert [(t.program, t.is_drum) for t in prompt_part] == [(0, False)]
    assert part.prompt_ids != whole.prompt_ids
    with pytest.raises(MusegenError, match="choose from a prompt"):
        pipeline.continue_midi(None, settings=settings.with_overrides(prompt_bars="1-2"))


def test_generate_cli_takes_prompt_bars_and_tracks(pipeline, band: Path, tmp_path: Path):
    from musegen.cli import main

    out = tmp_path / "out"
    argv = ["generate", "--checkpoint", str(pipeline.checkpoint_dir), "--prompt", str(band)]
    argv += ["--out", str(out), "--bars", "1", "--max-new-tokens", str(TOKEN_CAP), "--seed", "2"]
    assert main([*argv, "--prompt-bars", "5-6", "--prompt-tracks", "drums"]) == 0
    [midi] = out.glob("*.mid")
    score = symusic.Score.from_file(str(midi))
    assert {t.is_drum for t in score.tracks if t.notes and t.notes[0].time == 0} == {True}
    assert main([*argv, "--prompt-bars", "9-10"]) != 0


# ----- hearing the new part at once ---------------------------------------------------------
def test_preview_is_shorter_than_the_full_render_and_starts_at_the_lead_in(pipeline, tmp_path):
    from musegen.app.composer import Composer

    composer = Composer(pipeline, workspace=Workspace(tmp_path / "ws"), stream_every=16)
    prompt = make_score(bars=8, tracks=BAND)
    settings = GenerationSettings(bars=2, seed=1, max_new_tokens=TOKEN_CAP)
    ready, wav_at_preview = [], []
    for step in composer.stream(prompt, settings, "tab", "song"):
        if step.variations is not None:
            ready.append(step)
            wav_at_preview.append(step.variations[0].wav_path)
            assert step.variations[0].preview_path.is_file(), "the preview is there at once"
    assert [s.complete for s in ready] == [False, True], "preview first, then the full files"
    assert wav_at_preview[0] is None, "the full WAV comes after the preview"
    [v] = ready[-1].variations
    assert v.preview_path.suffix in (".ogg", ".flac") and v.wav_path.suffix == ".wav"
    assert v.full_png_path.is_file() and v.png_path.is_file()
    preview, full = soundfile.info(str(v.preview_path)), soundfile.info(str(v.wav_path))
    assert preview.format in ("OGG", "FLAC") and preview.duration < full.duration / 2
    starts = bar_starts(symusic.Score.from_midi(v.midi_bytes))
    assert v.window.start == starts[6] and v.window.first_bar == 7, "2 bars of lead-in"
    assert v.window.new_at == starts[8]
    assert preview.duration >= 2 * 2.0 - 0.1, "the lead-in is heard (2 bars at 120 bpm)"


# ----- infilling ----------------------------------------------------------------------------
def test_infill_request_fields_give_one_line_reasons():
    from musegen.app.composer import infill_request

    assert infill_request("5-8", "", "").bars == (5, 8)
    assert infill_request("2-3", ["1"], "33").tracks == (1, "program:33")
    assert infill_request("2", None, "drums").tracks == ("drums",)
    assert infill_request("2", None, None).candidates == DEFAULT_CANDIDATES
    assert infill_request("2", None, None, 4.0).candidates == 4  # a slider's value
    for bars, tracks, program, candidates, message in [
        ("", "", "", None, "choose the bars"),
        ("4-", "", "", None, "give the last bar"),
        ("8-5", "", "", None, "empty range"),
        ("2-3", "bass", "", None, "tracks must be"),
        ("2-3", "", "200", None, "add_program must be"),
        ("2-3", "", "", 0, "candidates=0"),
        ("2-3", "", "", 2.5, "whole number"),
    ]:
        with pytest.raises(MusegenError, match=message) as caught:
            infill_request(bars, tracks, program, candidates)
        assert len(str(caught.value).splitlines()) == 1


def test_infill_endpoint_end_to_end(client, band: Path):
    from gradio_client import handle_file

    midi, wav, png, status = client.predict(
        handle_file(str(band)), "3-4", "", "", seed=9, api_name="/infill"
    )
    assert "bars 3-4" in status and "seed 9" in status
    original = symusic.Score.from_file(str(band))
    result = symusic.Score.from_file(midi)
    span_start = bar_starts(original)[2]
    assert notes_before(result, span_start) == notes_before(original, span_start)
    assert soundfile.info(wav).duration > 1.0 and Path(png).read_bytes()[:4] == b"\x89PNG"

    midi, _, _, status = client.predict(
        handle_file(str(band)), "2-3", "1", "", 1, seed=3, num_samples=2, api_name="/infill"
    )
    assert "2 version(s)" in status and "seeds 3, 4" in status  # one candidate each
    added = client.predict(handle_file(str(band)), "2-3", "", "40", seed=1, api_name="/infill")
    assert added[0].endswith(".mid")
    # Best of 3 draws (seeds 5-7): the status names the one kept.
    *_, status = client.predict(
        handle_file(str(band)), "3-4", "", "", candidates=3, seed=5, api_name="/infill"
    )
    assert any(f"seed {s}" in status for s in (5, 6, 7)), status


def test_bad_ranges_give_one_line_errors_and_the_app_keeps_serving(client, band: Path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    cases = [
        ("/continue", {"prompt_bars": "20-30"}, "has 8 bar"),
        ("/continue", {"prompt_tracks": "7"}, "track 7 does not exist"),
        ("/continue", {"prompt_bars": "3-1"}, "empty range"),
        ("/infill", {"bars": "9-12"}, "outside the piece"),
        ("/infill", {"bars": "4-2"}, "empty range"),
        ("/infill", {"bars": "2-3", "tracks": "6"}, "track 6 does not exist"),
        ("/infill", {"bars": ""}, "choose the bars"),
        ("/infill", {"bars": "2-3", "candidates": 40}, "candidates=40"),
        ("/continue", {"candidates": 0}, "candidates=0"),
    ]
    for api, kwargs, message in cases:
        with pytest.raises(AppError) as caught:
            client.predict(handle_file(str(band)), **kwargs, api_name=api)
        text = str(caught.value)
        assert message in text and len(text.strip().splitlines()) == 1, text
    out = client.predict(handle_file(str(band)), bars=1, seed=2, api_name="/continue")
    assert Path(out[0]).is_file() and "seed 2" in out[3]
    # Best of 3 continuations (seeds 4-6): the status names the one kept.
    out = client.predict(handle_file(str(band)), bars=1, seed=4, candidates=3, api_name="/continue")
    assert any(f"seeds {s})" in out[3] for s in (4, 5, 6)), out[3]


def test_old_checkpoint_regenerate_gives_the_reason(tmp_path: Path):
    """The Regenerate button on a model trained without infilling: the pipeline's reason in the
    status, the slots cleared, Generate usable again."""
    import gradio as gr

    from musegen.app import blocks as ui
    from musegen.app.composer import Composer
    from musegen.app.events import CONTROL_NAMES, Handlers
    from musegen.pipeline import Pipeline

    old = Pipeline.from_pretrained(_checkpoint(tmp_path / "old", infill=False))
    composer = Composer(old, workspace=Workspace(tmp_path / "ws"))
    with gr.Blocks():
        state = gr.State(SessionState())
        prompt = ui._prompt_column({})
        controls = ui._controls_column()
        slots = ui._result_slots()
        status = gr.Markdown("")
        handlers = Handlers(composer, {}, state, prompt, controls, slots, status, 1 << 20)
    form = {name: controls[name].value for name in CONTROL_NAMES}
    session = SessionState()
    session.set_prompt(write_midi(tmp_path / "p.mid", bars=4).read_bytes(), "p.mid")
    with pytest.warns(UserWarning):
        regenerate = handlers.on_regenerate(session, "2-3", [], 1, None, lambda *a, **k: 0, **form)
        outputs = list(regenerate)
    last = outputs[-1]
    assert "infill" in last[status].lower() and last[status].startswith("⚠️")
    assert len(last[status].splitlines()) == 1
    assert last[controls["generate"]]["interactive"] is True


# ----- requests never share files -----------------------------------------------------------
def _continue(client, midi: Path, seed: int):
    from gradio_client import handle_file

    return client.predict(handle_file(str(midi)), bars=1, seed=seed, api_name="/continue")


@pytest.mark.slow
def test_concurrent_calls_from_one_client_and_from_many_all_succeed(served, band: Path):
    from gradio_client import Client

    one = Client(served[0], verbose=False)
    with ThreadPoolExecutor(4) as pool:
        same = list(pool.map(lambda i: _continue(one, band, 200 + i), range(4)))
    many = [Client(served[0], verbose=False) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        separate = list(pool.map(lambda i: _continue(many[i], band, 300 + i), range(4)))
    for batch, base in ((same, 200), (separate, 300)):
        for i, (midi, wav, png, status) in enumerate(batch):
            assert f"seed {base + i} · " in status
            assert all(Path(p).is_file() for p in (midi, wav, png))
        assert len({out[0] for out in batch}) == 4 and len({out[1] for out in batch}) == 4


def test_workspace_never_removes_a_request_in_flight(tmp_path: Path):
    ws = Workspace(tmp_path / "ws", keep_finished_s=0.0)
    with ws.request("tab") as first, ws.request("tab") as second:
        assert first != second and first.parent == second.parent
        (first / "a.mid").write_bytes(b"x")
        with ws.request("tab") as third:
            assert (first / "a.mid").is_file() and second.is_dir() and third.is_dir()
        ws.drop_session("tab")
        assert first.is_dir() and second.is_dir() and not third.exists()
    with ws.request("tab"):
        assert not first.exists() and not second.exists(), "finished folders go later"
    ws.close()
