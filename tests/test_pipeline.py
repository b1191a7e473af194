"""The Pipeline front door on a random tiny checkpoint."""

from __future__ import annotations

import io
import threading
from dataclasses import replace

import mido
import pretty_midi
import pytest
from conftest import make_score

from musegen.errors import CheckpointError, MidiError, MusegenError
from musegen.pipeline import GenerationSettings, Pipeline, default_checkpoint

# One instrument, no drums: a random model then reaches bar lines quickly.
FAST = dict(instruments=[0], drums=False, seed=3)


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Pipeline.from_pretrained(tiny_checkpoint)


def test_continue_midi_from_path_bytes_and_score(pipe, midi_file):
    for prompt in (midi_file, midi_file.read_bytes(), make_score(tracks=((0, False), (0, True)))):
        [result] = pipe.continue_midi(prompt, bars=1, **FAST)
        assert result.finished and result.bars == 1 and result.seed == 3
        assert result.new_tokens == len(result.tokens) > 0
        assert result.prompt_end_tick == 4 * 4 * result.score.tpq  # after the 4-bar prompt
        late = [
            n for t in result.score.tracks for n in t.notes if n.start >= result.prompt_end_tick
        ]
        assert late and result.continuation.note_num() == len(late)
        data = result.midi_bytes()
        assert pretty_midi.PrettyMIDI(io.BytesIO(data)).instruments
        assert mido.MidiFile(file=io.BytesIO(data)).length > 0
        assert pipe.tokenizer.tokens_errors(result.prompt_ids + result.tokens) == 0


def test_seeds_give_reproducible_and_distinct_samples(pipe, midi_file):
    a = pipe.continue_midi(midi_file, num_samples=2, bars=1, **FAST)
    b = pipe.continue_midi(midi_file, num_samples=2, bars=1, **FAST)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert a[0].tokens != a[1].tokens and [r.seed for r in a] == [3, 4]


def test_generate_from_nothing_and_token_budget(pipe):
    results = pipe.generate(num_samples=2, bars=None, max_new_tokens=40, seed=1)
    assert all(0 < r.new_tokens <= 40 and r.score.note_num() > 0 for r in results)


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=0),
        dict(top_p=1.5),
        dict(top_p=0),
        dict(bars=0),
        dict(top_k=-1),
        dict(bars=None, max_new_tokens=None),
        dict(instruments=[200]),
        dict(nonsense=1),
    ],
)
def test_absurd_settings_fail_before_work(pipe, midi_file, bad):
    with pytest.raises(MusegenError):
        pipe.continue_midi(midi_file, **bad)


def test_bad_prompts_give_one_line_errors(pipe, tmp_path):
    (tmp_path / "text.mid").write_text("hello")
    (tmp_path / "empty.mid").write_bytes(b"")
    silent = make_score()
    silent.tracks[0].notes.clear()
    for prompt, words in (
        (tmp_path / "text.mid", "not a MIDI"),
        (tmp_path / "empty.mid", "empty"),
        (silent, "no notes"),
        (tmp_path / "missing.mid", "not found"),
    ):
        with pytest.raises(MidiError, match=words) as info:
            pipe.continue_midi(prompt)
        assert "\n" not in str(info.value)


def test_size_limits_hold_the_chosen_bars_not_the_whole_file(tiny_checkpoint):
    pipe = Pipeline.from_pretrained(tiny_checkpoint)
    pipe.score_limits = replace(pipe.score_limits, max_notes=100)
    long_piece = make_score(bars=40)  # 320 notes
    with pytest.raises(MidiError, match="too many notes: 320 > 100"):
        pipe.continue_midi(long_piece, **FAST)
    result = pipe.continue_midi(long_piece, prompt_bars="1-8", max_new_tokens=8, **FAST)[0]
    assert result.prompt_end_tick == 8 * 4 * 480  # bars 1-8 (64 notes) were the prompt
    with pytest.raises(MidiError, match="too many notes: 160 > 100"):
        pipe.continue_midi(long_piece, prompt_bars="1-20", **FAST)


def test_checkpoint_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError):
        Pipeline.from_pretrained(tmp_path / "nope")
    loaded = Pipeline.from_pretrained(tiny_checkpoint)
    from musegen.tokenizer import TokenizerSettings, build_tokenizer

    other = build_tokenizer(TokenizerSettings(kind="TSD"))
    with pytest.raises(CheckpointError, match="does not belong"):
        Pipeline(loaded.model, other, loaded.config)


def test_default_checkpoint_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MUSEGEN_CHECKPOINT", str(tmp_path))
    assert default_checkpoint() == tmp_path


def test_long_prompt_is_cut_at_a_bar(pipe):
    long = make_score(bars=24)  # piano only: a bar fits the tiny model's context
    [result] = pipe.continue_midi(long, bars=1, **FAST)
    limit = pipe.config.max_seq_len
    assert result.prompt_tokens < limit < len(result.prompt_ids)
    bar = pipe.tokenizer.vocab["Bar_None"]
    window = result.prompt_ids[len(result.prompt_ids) - result.prompt_tokens :]
    assert window[0] == bar
    assert result.prompt_end_tick == 24 * 4 * result.score.tpq
    dense = make_score(bars=24, tracks=((0, False), (0, True), (33, False)))  # bars too long
    [result] = pipe.continue_midi(dense, bars=1, **FAST)
    window = result.prompt_ids[len(result.prompt_ids) - result.prompt_tokens :]
    assert pipe.tokenizer[window[0]].startswith("Position_")


def test_stream_partial_then_complete_and_stop(pipe, midi_file):
    items = list(pipe.stream(midi_file, settings=GenerationSettings(bars=1, **FAST), every=8))
    assert len(items) >= 2 and items[-1][0].finished
    assert items[0][0].new_tokens < items[-1][0].new_tokens and not items[0][0].finished
    stop = threading.Event()
    for n, results in enumerate(  # noqa: B007
        pipe.stream(midi_file, stop_event=stop, every=4, bars=None, max_new_tokens=500, seed=1)
    ):
        if n == 1:
            stop.set()
    assert not results[0].finished and results[0].new_tokens < 500


def test_threads_share_one_pipeline(pipe, midi_file):
    out: dict[int, list[int]] = {}

    def work(i: int) -> None:
        out[i] = pipe.continue_midi(midi_file, bars=1, **FAST)[0].tokens

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[0] == out[1]


def _programs(score) -> set[tuple[int, bool]]:
    return {(t.program, t.is_drum) for t in score.tracks if t.notes}


def test_continuation_keeps_the_prompts_instruments_unless_told(pipe):
    """A random model would scatter notes over all 128 programs; the prompt's are kept."""
    strings = make_score(bars=2, tracks=((40, False), (42, False)))
    for seed in range(3):
        [result] = pipe.continue_midi(strings, bars=1, seed=seed, max_new_tokens=48)
        assert _programs(result.continuation) <= {(40, False), (42, False)}
    chosen = pipe.continue_midi(strings, bars=1, seed=0, max_new_tokens=48, instruments=[0])[0]
    assert _programs(chosen.continuation) <= {(0, False), (0, True)}  # drums=True by default
    free = [
        pipe.continue_midi(strings, bars=1, seed=s, max_new_tokens=48, keep_instruments=False)[0]
        for s in range(3)
    ]
    assert set().union(*(_programs(r.continuation) for r in free)) - {(40, False), (42, False)}
    mixed = pipe.continue_batch(
        [strings, make_score(bars=2, tracks=((0, False),))], bars=1, seed=0, max_new_tokens=48
    )
    assert _programs(mixed[0][0].continuation) <= {(40, False), (42, False)}
    assert _programs(mixed[1][0].continuation) <= {(0, False)}


def test_a_drum_loop_is_continued_by_drums_alone(pipe):
    """Keeping the prompt's instruments keeps a drum loop drums (it used to leave every
    instrument open: a loop under groove guidance could gain a pitched note)."""
    loop = make_score(bars=2, tracks=((0, True),))
    for seed in range(3):
        [result] = pipe.continue_midi(loop, bars=1, seed=seed, max_new_tokens=48)
        assert _programs(result.continuation) <= {(0, True)}
    free = [
        pipe.continue_midi(loop, bars=1, seed=s, max_new_tokens=48, keep_instruments=False)[0]
        for s in range(3)
    ]
    assert set().union(*(_programs(r.continuation) for r in free)) - {(0, True)}


def test_continue_batch_reports_bad_prompts(pipe, midi_file, tmp_path):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd garbage")
    outcome = pipe.continue_batch([midi_file, bad], num_samples=2, bars=1, **FAST)
    assert len(outcome[0]) == 2 and isinstance(outcome[1], MidiError)


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_pipeline_on_cuda(tiny_checkpoint, midi_file):
    pipe = Pipeline.from_pretrained(tiny_checkpoint, device="cuda")
    results = pipe.continue_midi(midi_file, num_samples=4, bars=1, **FAST)
    for r in results:
        assert r.bars == 1 and pipe.tokenizer.tokens_errors(r.prompt_ids + r.tokens) == 0
