"""Damaged MIDI files read as far as they go (musegen.midi_repair), and the user told so."""

from __future__ import annotations

import io

import mido
import pytest
import symusic

from musegen import midi_repair
from musegen.errors import MidiError
from musegen.pipeline import Pipeline
from musegen.tokenizer import load_score

PITCHES = [60, 62, 64, 65, 67, 69, 71, 72] * 8


def _midi_bytes() -> bytes:
    """A one-track melody of 64 quarter notes, velocity 100 (no running status)."""
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000, time=0)])
    for pitch in PITCHES:
        track.append(mido.Message("note_on", note=pitch, velocity=100, time=0))
        track.append(mido.Message("note_off", note=pitch, velocity=0, time=480))
    track.append(mido.MetaMessage("end_of_track", time=0))
    out = io.BytesIO()
    mido.MidiFile(tracks=[track], ticks_per_beat=480).save(file=out)
    return out.getvalue()


def _damaged_velocity(data: bytes, pitch: int = 64, value: int = 0x98) -> bytes:
    at = data.index(bytes([0x90, pitch, 100]))
    return data[: at + 2] + bytes([value]) + data[at + 3 :]


def _notes(score: symusic.Score) -> list[tuple[int, int, int]]:
    return [(n.time, n.pitch, n.velocity) for t in score.tracks for n in t.notes]


def test_a_clean_file_is_left_as_it_is():
    data = _midi_bytes()
    assert midi_repair.repair(data) == (data, {})
    notes: list[str] = []
    load_score(data, notes)
    assert notes == []


def test_a_value_above_127_is_read_as_127_and_everything_after_it_kept():
    data = _damaged_velocity(_midi_bytes())
    with pytest.raises(Exception):  # noqa: B017 - what the strict parser raises is its own
        symusic.Score.from_midi(data)
    notes: list[str] = []
    score = load_score(data, notes)
    clean = _notes(load_score(_midi_bytes()))
    got = _notes(score)
    assert len(got) == len(clean) == len(PITCHES)
    assert [x for x in got if x[2] != 100] == [(2 * 480, 64, 127)]
    assert notes == [
        "the file is damaged and was read as far as possible: velocity above 127 read as 127 (1×)"
    ]


def test_a_file_cut_short_keeps_what_came_before_the_cut():
    data = _midi_bytes()[:-40]  # a download that stopped early: the track's length lies
    notes: list[str] = []
    score = load_score(data, notes)
    got = _notes(score)
    assert 0 < len(got) < len(PITCHES)
    assert got == _notes(load_score(_midi_bytes()))[: len(got)]
    assert "shorter than its header says" in notes[0]


def test_a_file_beyond_repair_is_still_refused_in_one_line():
    data = _midi_bytes()
    garbage = data[:22] + bytes(range(128, 256)) * 4
    with pytest.raises(MidiError, match="corrupt MIDI"):
        load_score(garbage)


def test_the_pipeline_says_the_prompt_was_repaired(tiny_checkpoint):
    pipe = Pipeline.from_pretrained(tiny_checkpoint)
    result = pipe.continue_midi(
        _damaged_velocity(_midi_bytes()), 1, bars=1, seed=0, max_new_tokens=40
    )[0]
    assert any("damaged" in w and "velocity" in w for w in result.warnings)
    assert sum(1 for n in result.score.tracks[0].notes if n.velocity == 127) == 1


def test_the_page_says_what_was_repaired_as_soon_as_the_file_is_uploaded():
    from musegen.app.session import check_prompt

    notes: list[str] = []
    check_prompt(_damaged_velocity(_midi_bytes()), "damaged.mid", notes=notes)
    assert len(notes) == 1 and "velocity above 127" in notes[0]
