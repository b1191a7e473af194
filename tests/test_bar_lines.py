"""Bar lines found from the notes when a file's own do not follow them (musegen.bar_lines)."""

from __future__ import annotations

import numpy as np
import pytest
import symusic

from musegen import bar_lines
from musegen.pipeline import Pipeline

TPQ = 480
CHORDS = ([48, 64, 67], [53, 65, 69], [55, 62, 71], [45, 60, 64])  # C F G Am, root in the bass


def _song(bars: int, beats: int = 4, late: int = 0, meter: tuple[int, int] = (4, 4)):
    """A piano part whose bars start with a long bass note and a new chord, then 8th-note
    chord tones: every note ``late`` ticks after the file's own grid, under ``meter``."""
    score = symusic.Score(TPQ)
    score.tempos.append(symusic.Tempo(0, 100.0))
    score.time_signatures.append(symusic.TimeSignature(0, *meter))
    track = symusic.Track(name="Piano", program=0)
    for bar in range(bars):
        chord = CHORDS[bar % len(CHORDS)]
        start = bar * beats * TPQ + late
        track.notes.append(symusic.Note(start, beats * TPQ - 10, chord[0] - 12, 90))
        for eighth in range(2 * beats):
            pitch = chord[1 + eighth % 2] + (12 if eighth % 4 == 3 else 0)
            track.notes.append(symusic.Note(start + eighth * TPQ // 2, TPQ // 2 - 10, pitch, 70))
    score.tracks.append(track)
    return score


def _downbeat_ticks(score: symusic.Score, beats: int) -> list[int]:
    """Where the bass notes (one per bar, the lowest notes) start."""
    low = min(n.pitch for n in score.tracks[0].notes)
    return [n.time for n in score.tracks[0].notes if n.pitch < low + 12 and n.duration > TPQ]


@pytest.mark.parametrize("meter", [(4, 4), (2, 4), (3, 4), (6, 8)])
def test_a_file_whose_bars_follow_its_notes_is_left_alone(meter):
    beats = 3 if meter == (3, 4) else 4
    assert bar_lines.find(_song(16, beats, meter=meter)) is None
    assert bar_lines.find(_song(16, beats, late=7, meter=meter)) is None  # a little late: fine


def test_too_few_notes_say_nothing():
    assert bar_lines.find(_song(1, late=200, meter=(1, 4))) is None


@pytest.mark.parametrize("late", [40, 200, 480 + 300])
def test_notes_off_the_grid_are_re_barred_on_their_own_beats_and_downbeats(late):
    song = _song(16, late=late, meter=(2, 4))
    found = bar_lines.find(song)
    assert found is not None and found.beats_per_bar == 4
    assert found.beat_offset == late % TPQ
    assert "ticks after" in found.reason and found.declared == "2/4"
    rebarred = bar_lines.rebar(song, found)
    assert [(s.numerator, s.denominator) for s in rebarred.time_signatures] == [(4, 4)]
    bar = 4 * TPQ
    assert all(t % bar == 0 for t in _downbeat_ticks(rebarred, 4))
    assert rebarred.tempos[0].time == 0 and round(rebarred.tempos[0].qpm) == 100


def test_one_beat_bars_are_re_barred_in_the_music_s_meter():
    for beats in (4, 3):
        song = _song(16, beats, late=TPQ, meter=(1, 4))  # a pickup beat, then the music
        found = bar_lines.find(song)
        assert found is not None and found.beats_per_bar == beats
        assert found.beat_offset == 0 and "one beat a bar" in found.reason
        rebarred = bar_lines.rebar(song, found)
        assert all(t % (beats * TPQ) == 0 for t in _downbeat_ticks(rebarred, beats))


def test_a_first_one_beat_bar_alone_is_a_pickup_not_a_fault():
    song = _song(16)
    song.time_signatures = [symusic.TimeSignature(0, 1, 8), symusic.TimeSignature(240, 4, 4)]
    assert bar_lines.find(song) is None


def test_to_file_puts_every_note_back_on_the_file_s_ticks():
    song = _song(8, late=130, meter=(1, 4))
    found = bar_lines.find(song)
    assert found is not None and found.shift > 0
    back = bar_lines.to_file(bar_lines.rebar(song, found), found)
    assert [(n.time, n.duration, n.pitch) for n in back.tracks[0].notes] == [
        (n.time, n.duration, n.pitch) for n in song.tracks[0].notes
    ]


def test_the_pipeline_continues_on_the_bars_found_and_gives_the_prompt_back(tiny_checkpoint):
    pipe = Pipeline.from_pretrained(tiny_checkpoint)
    late = 40
    prompt = _song(8, late=late, meter=(1, 4))
    found = bar_lines.find(prompt)
    assert found is not None
    results = pipe.continue_midi(prompt, 2, bars=2, seed=0, max_new_tokens=200)
    for result in results:
        end = result.prompt_end_tick
        assert (end - late) % (4 * TPQ) == 0  # the new bars start on a found bar line
        old = [(n.time, n.pitch) for n in result.score.tracks[0].notes if n.time < end]
        assert old == [(n.time, n.pitch) for n in prompt.tracks[0].notes]
        assert [(s.numerator, s.denominator) for s in result.score.time_signatures] == [(1, 4)]
        assert found.describe() in result.warnings
        new = [n.time for t in result.score.tracks for n in t.notes if n.time >= end]
        assert all((t - late) % (TPQ // 8) == 0 for t in new)  # on the found beats' grid
    assert any(not r.empty for r in results)
    plain = pipe.continue_midi(prompt, 1, bars=1, seed=0, max_new_tokens=80, find_bar_lines=False)
    assert found.describe() not in plain[0].warnings


def test_the_page_says_so_as_soon_as_such_a_file_is_uploaded(tmp_path):
    from musegen.app.session import check_prompt

    path = tmp_path / "late.mid"
    _song(8, late=40, meter=(1, 4)).dump_midi(str(path))
    notes: list[str] = []
    check_prompt(path.read_bytes(), "late.mid", notes=notes)
    assert len(notes) == 1 and "bar lines do not follow its notes" in notes[0]
    notes = []
    _song(8).dump_midi(str(path))
    check_prompt(path.read_bytes(), "clean.mid", notes=notes)
    assert notes == []


def _played(song: symusic.Score, seed: int = 0) -> symusic.Score:
    """``song`` as a keyboard recording without a click would hold it: a tempo of its own
    that drifts, every onset a little early or late, saved at 120 bpm."""
    rng = np.random.default_rng(seed)
    beats = int(song.end() / TPQ) + 2
    seconds = np.cumsum(np.r_[0, 0.57 * (1 + 0.06 * np.sin(np.arange(beats) / 5))])
    out = symusic.Score(TPQ)
    out.tempos.append(symusic.Tempo(0, 120.0))
    out.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    for track in song.tracks:
        played = symusic.Track(name=track.name, program=track.program, is_drum=track.is_drum)
        for n in track.notes:
            start = np.interp(n.time / TPQ, np.arange(len(seconds)), seconds)
            start += rng.normal(0, 0.012)
            end = np.interp((n.time + n.duration) / TPQ, np.arange(len(seconds)), seconds)
            ticks = round(max(0.0, start) * 2 * TPQ)
            length = max(10, round((end - start) * 2 * TPQ))
            played.notes.append(symusic.Note(ticks, length, n.pitch, n.velocity))
        out.tracks.append(played)
    return out


def test_a_file_played_without_a_click_is_re_timed_on_its_own_beats(tiny_checkpoint):
    song = _song(12)
    assert not bar_lines.played_without_click(song)
    played = _played(song)
    assert bar_lines.played_without_click(played)
    found = bar_lines.find(played)
    assert found is not None and found.beats and found.beats_per_bar == 4
    assert "played without a click" in found.reason
    # Each beat found is one of the song's quarter notes, as played (within 70 ms).
    seconds = np.asarray(found.beats) / (2 * TPQ)
    true = np.cumsum(np.r_[0, 0.57 * (1 + 0.06 * np.sin(np.arange(60) / 5))])
    inside = seconds[(seconds > 0.3) & (seconds < true[47])]
    assert len(inside) > 30 and all(np.abs(true - t).min() < 0.07 for t in inside)
    result = Pipeline.from_pretrained(tiny_checkpoint).continue_midi(
        played, 1, bars=1, seed=0, max_new_tokens=60
    )[0]
    assert found.describe() in result.warnings and bar_lines.PLAYED not in result.warnings
    end = result.prompt_end_tick
    kept = [(n.time, n.pitch) for n in result.score.tracks[0].notes if n.time < end]
    assert kept == [(n.time, n.pitch) for n in played.tracks[0].notes]


def test_a_file_whose_notes_follow_no_beat_at_all_is_left_alone_and_the_user_told(
    tiny_checkpoint,
):
    rng = np.random.default_rng(3)
    noise = symusic.Score(TPQ)
    track = symusic.Track(name="Piano", program=0)
    for t in np.sort(rng.uniform(0, 40 * TPQ, 160)):
        track.notes.append(symusic.Note(int(t), TPQ // 2, int(rng.integers(48, 84)), 80))
    noise.tracks.append(track)
    assert bar_lines.played_without_click(noise) and bar_lines.find(noise) is None
    drums = _played(_song(12))
    for track in drums.tracks:
        track.is_drum = True
    assert not bar_lines.played_without_click(drums)  # drummers record to a click
    result = Pipeline.from_pretrained(tiny_checkpoint).continue_midi(
        noise, 1, bars=1, seed=0, max_new_tokens=40
    )[0]
    assert bar_lines.PLAYED in result.warnings


def _jig(bars: int) -> symusic.Score:
    """A 6/8 tune: six 8ths a bar over a bass note on each dotted beat."""
    score = symusic.Score(TPQ)
    score.tempos.append(symusic.Tempo(0, 100.0))
    score.time_signatures.append(symusic.TimeSignature(0, 6, 8))
    track = symusic.Track(name="Fiddle", program=40)
    for bar in range(bars):
        chord, start = CHORDS[bar % len(CHORDS)], bar * 3 * TPQ
        for eighth in range(6):
            pitch = chord[1 + eighth % 2] + (12 if eighth % 3 == 0 else 0)
            velocity = 90 if eighth % 3 == 0 else 65
            track.notes.append(
                symusic.Note(start + eighth * TPQ // 2, TPQ // 2 - 10, pitch, velocity)
            )
        track.notes.append(symusic.Note(start, 3 * TPQ // 2 - 10, chord[0] - 12, 90))
        track.notes.append(symusic.Note(start + 3 * TPQ // 2, 3 * TPQ // 2 - 10, chord[0] - 5, 80))
    score.tracks.append(track)
    return score


def test_a_beat_found_in_dotted_quarters_is_not_used(monkeypatch):
    played = _played(_jig(16))
    assert bar_lines.played_without_click(played)
    assert bar_lines.find(played) is None  # its 8ths would become triplets: left alone, told
    monkeypatch.setattr(bar_lines, "DOTTED", 9.0)  # without the guard it would be re-timed
    found = bar_lines.find(played)
    assert found is not None and found.beats


def test_drums_steadily_behind_the_click_keep_their_bars():
    drums = _song(16, late=40)
    for track in drums.tracks:
        track.is_drum = True
    assert bar_lines.find(drums) is None
    assert bar_lines.find(_song(16, late=40)) is not None  # the same notes, pitched: re-barred
