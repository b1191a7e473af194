"""One settings model: the CLI, the app's form and the ``/continue`` API all derive from it.

Every test walks :data:`musegen.generation.settings.SETTINGS`, so a setting added to the model
is checked everywhere without touching this file, and a front end that drops one (as ``/continue``
once dropped the instruments and drums) fails here.
"""

from __future__ import annotations

import argparse
import socket
from dataclasses import fields
from pathlib import Path

import pytest
import symusic

from musegen.errors import MusegenError
from musegen.generation.settings import (
    BY_NAME,
    NAMES,
    SETTINGS,
    GenerationSettings,
    Setting,
    controls_for,
    from_args,
)
from musegen.pipeline import DEFAULT_CONTINUATION_CANDIDATES

# gradio's queue calls a pandas option pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")

# The instruments/drums case that drifted: a piano + drums prompt continued on violin alone.
DRIFTED = dict(bars=1, seed=5, instruments=[40], drums=False, max_new_tokens=48)


def other_value(s: Setting):
    """A valid value for ``s`` that is not its default (all of them are valid together)."""
    if s.kind == "bool":
        return not s.default
    if s.kind == "programs":
        return [40, 41]
    if s.kind == "text":  # the prompt choice: bars and tracks
        return {"prompt_bars": "2-3", "prompt_tracks": "0,drums"}[s.name]
    if s.kind == "int":
        return s.default + 1
    high = s.spec.high
    return s.default - 0.05 if high is not None and s.default + 0.5 > high else s.default + 0.5


OTHER = {s.name: other_value(s) for s in SETTINGS}


def cli_words(s: Setting, value) -> list[str]:
    """How a user types ``value`` for ``s`` on the command line."""
    if s.kind == "bool":
        return [s.flag if value else f"--no-{s.flag[2:]}"]
    if s.kind == "programs":
        return [s.flag, ",".join(map(str, value))]
    return [s.flag, str(value)]


def generate_args(*words: str) -> argparse.Namespace:
    from musegen.cli import build_parser

    return build_parser().parse_args(["generate", "--out", "unused", *words])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----- the model ------------------------------------------------------------------------------
def test_every_setting_has_a_valid_default_help_and_label():
    assert [f.name for f in fields(GenerationSettings)] == list(NAMES)
    defaults = GenerationSettings()
    for s in SETTINGS:
        assert s.kind in ("int", "float", "bool", "programs", "text"), s.name
        assert s.spec.help and s.spec.label, s.name
        assert getattr(defaults, s.name) == s.default
    assert GenerationSettings(**OTHER).to_dict() == OTHER


def test_bad_values_give_one_line_naming_field_value_and_range():
    for s in SETTINGS:
        if s.kind == "bool":
            bad = "yes"
        elif s.kind == "programs":
            bad = [200]
        elif s.kind == "text":
            bad = "7-2"
        elif s.spec.low is not None:
            bad = s.spec.low if s.spec.low_open else s.spec.low - 1
        else:
            bad = s.spec.high + 1
        with pytest.raises(MusegenError) as caught:
            GenerationSettings(**{s.name: bad})
        message = str(caught.value)
        assert len(message.splitlines()) == 1 and message.startswith(s.name), message
        assert str(bad)[:12] in message, message
        if s.kind in ("int", "float"):
            assert s.spec.allowed() in message, message
    with pytest.raises(MusegenError, match=r"top_k must be an integer \(≥ 0\), got 1\.5"):
        GenerationSettings(top_k=1.5)
    with pytest.raises(MusegenError, match="bars=0 and max_new_tokens=0"):
        GenerationSettings(bars=0)
    with pytest.raises(MusegenError, match="unknown generation setting"):
        GenerationSettings.from_values({"variations": 2})


def test_front_end_spellings_normalise():
    """Gradio sends floats, an empty multiselect and a negative seed; the API of old sent None."""
    got = GenerationSettings.from_values({"bars": 2.0, "top_k": 3.0, "seed": -1, "instruments": []})
    assert (got.bars, got.top_k, got.seed, got.instruments) == (2, 3, None, None)
    assert isinstance(got.bars, int) and got.with_seed().seed is not None
    assert GenerationSettings(bars=None, max_new_tokens=40).bars == 0


def test_grammar_controls_come_from_the_settings():
    controls = controls_for(GenerationSettings(**DRIFTED))
    assert controls.programs == frozenset({40}) and controls.drums is False
    assert controls.bars == 1 and controls.keep_tempo and controls.keep_time_signature
    assert controls_for(GenerationSettings(bars=0, max_new_tokens=9)).bars is None
    assert controls_for(GenerationSettings()).programs is None


# ----- the CLI --------------------------------------------------------------------------------
def test_cli_has_a_flag_per_setting_with_the_same_default_and_help(capsys):
    args = generate_args()
    for s in SETTINGS:
        assert getattr(args, s.name) == s.default, s.name
    assert from_args(args) == GenerationSettings()
    from musegen.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for s in SETTINGS:
        assert s.flag in text and " ".join(s.spec.help.split())[:30] in text, s.name


def test_cli_accepts_every_setting():
    words = [w for s in SETTINGS for w in cli_words(s, OTHER[s.name])]
    assert from_args(generate_args(*words)) == GenerationSettings(**OTHER)
    for s in SETTINGS:  # one at a time too: each flag sets its own field only
        got = from_args(generate_args(*cli_words(s, OTHER[s.name])))
        assert got == GenerationSettings(**{s.name: OTHER[s.name]}), s.name
    old = ["--unconstrained", "--free-tempo", "--free-time-signature", "--any-instrument"]
    switched = from_args(generate_args(*old, "--no-drums", "--no-find-bar-lines"))
    assert switched == GenerationSettings(**{s.name: False for s in SETTINGS if s.kind == "bool"})


# ----- the app: form and API ------------------------------------------------------------------
def test_app_form_has_a_control_per_setting_with_the_same_default():
    import gradio as gr

    from musegen.app import blocks as ui
    from musegen.app.composer import form_settings
    from musegen.app.events import CONTROL_NAMES

    with gr.Blocks():
        controls = ui._controls_column()
    assert set(NAMES) <= set(CONTROL_NAMES) <= set(controls)
    form = {name: controls[name].value for name in CONTROL_NAMES}
    assert form_settings({**form, "random_seed": False}) == GenerationSettings()
    assert form_settings(form).seed is None, "the page's Random-seed box draws a seed"
    for s in SETTINGS:
        component = controls[s.name]
        assert component.label == s.spec.label and component.info == s.spec.help, s.name
        value = OTHER[s.name]
        sent = float(value) if s.kind == "int" else value  # sliders send floats
        got = form_settings({**form, "random_seed": False, s.name: sent})
        assert got == GenerationSettings(**{s.name: value}), s.name


@pytest.fixture(scope="module")
def served(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app on a free port with no server token cap: (url, demo)."""
    from musegen.app import blocks as ui
    from musegen.app.session import Workspace
    from musegen.pipeline import Pipeline

    workspace = Workspace(tmp_path_factory.mktemp("settings-ws"))
    demo = ui.build_app(Pipeline.from_pretrained(tiny_checkpoint), workspace=workspace)
    url = ui.launch(demo, port=free_port(), block=False, quiet=True)
    yield url, demo
    demo.close()
    demo.musegen_composer.close()
    workspace.close()


@pytest.fixture
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


def test_api_has_a_parameter_per_setting_with_the_same_default(client):
    info = client.view_api(print_info=False, return_format="dict")
    params = info["named_endpoints"]["/continue"]["parameters"]
    assert [p["parameter_name"] for p in params[1:]] == [*NAMES, "candidates"]
    assert params[-1]["parameter_default"] == DEFAULT_CONTINUATION_CANDIDATES
    for s, p in zip(SETTINGS, params[1:-1], strict=True):
        assert p["parameter_has_default"], s.name
        default = p["parameter_default"]
        assert GenerationSettings.from_values({s.name: default}) == GenerationSettings(), s.name


def test_api_accepts_every_setting(served, client, midi_file, monkeypatch):
    """Each setting sent by name reaches the composer as sent, instruments and drums included."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    seen: list[GenerationSettings] = []

    def capture(prompt, settings, key, name="musegen", candidates=1):
        seen.append(settings)
        raise MusegenError("captured")

    monkeypatch.setattr(served[1].musegen_composer, "continue_once", capture)
    with pytest.raises(AppError, match="captured"):
        client.predict(handle_file(str(midi_file)), **OTHER, api_name="/continue")
    assert seen == [GenerationSettings(**OTHER)]
    with pytest.raises(AppError, match="instruments must be GM programs 0-127, got \\[200\\]"):
        client.predict(handle_file(str(midi_file)), instruments=[200], api_name="/continue")


# ----- one seed, one result -------------------------------------------------------------------
def _notes(data: bytes) -> list[tuple]:
    score = symusic.Score.from_midi(data)
    return sorted(
        (t.program, t.is_drum, n.time, n.duration, n.pitch, n.velocity)
        for t in score.tracks
        for n in t.notes
    )


def test_same_seed_same_music_through_cli_pipeline_and_api(
    tiny_checkpoint, midi_file, tmp_path, client
):
    from gradio_client import handle_file

    from musegen.cli import main
    from musegen.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(tiny_checkpoint)
    [result] = pipe.continue_midi(midi_file, settings=GenerationSettings(**DRIFTED))
    continuation = {(t.program, t.is_drum) for t in result.continuation.tracks if t.notes}
    assert continuation <= {(40, False)}, "only the chosen instrument, no drums"
    [free] = pipe.continue_midi(midi_file, settings=GenerationSettings(bars=1, seed=5))
    assert free.tokens != result.tokens, "the instrument choice changes the music"

    out = tmp_path / "cli"
    words = [w for name, v in DRIFTED.items() for w in cli_words(BY_NAME[name], v)]
    argv = ["generate", "--checkpoint", str(tiny_checkpoint), "--prompt", str(midi_file)]
    assert main([*argv, "--out", str(out), *words]) == 0
    cli_midi = (out / f"{midi_file.stem}_s5_0.mid").read_bytes()

    midi_path, _, _, status = client.predict(
        handle_file(str(midi_file)), **DRIFTED, api_name="/continue"
    )
    assert "seed 5" in status
    api_midi = Path(midi_path).read_bytes()
    assert _notes(cli_midi) == _notes(result.midi_bytes()) == _notes(api_midi)
    assert cli_midi == result.midi_bytes() == api_midi
