"""The new bars go after the prompt as the user gave it (musegen.generation.splice)."""

from __future__ import annotations

import symusic

from musegen.generation.splice import splice
from musegen.pipeline import UNSPLICED, Pipeline

TPQ = 480
BAR = 4 * TPQ


def _notes(track: symusic.Track) -> list[tuple[int, int, int, int]]:
    return [(n.time, n.duration, n.pitch, n.velocity) for n in track.notes]


def _tempos(score: symusic.Score) -> list[tuple[int, float]]:
    return [(t.time, round(t.qpm, 3)) for t in score.tempos]  # stored as µs per beat


def _piano_prompt(bars: int = 4) -> symusic.Score:
    """Two hands on program 0, off the grid (7 ticks late), at 97 bpm, with names, a volume
    control and the pedal pressed at the start of every bar (released before the next)."""
    score = symusic.Score(TPQ)
    score.tempos.append(symusic.Tempo(0, 97.0))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    right = symusic.Track(name="Right hand", program=0)
    left = symusic.Track(name="Left hand", program=0)
    for bar in range(bars):
        for beat in range(4):
            at = bar * BAR + beat * TPQ + 7
            right.notes.append(symusic.Note(at, TPQ // 2, 72 + (beat * 2) % 7, 70 + beat))
            right.notes.append(symusic.Note(at + TPQ // 2, TPQ // 3, 76, 60))
        left.notes.append(symusic.Note(bar * BAR + 7, BAR - 20, 48 - bar % 2 * 5, 80))
        right.controls.append(symusic.ControlChange(bar * BAR, 64, 127))
        right.controls.append(symusic.ControlChange(bar * BAR + BAR - 30, 64, 0))
    right.controls.append(symusic.ControlChange(0, 7, 100))
    score.tracks.extend([right, left])
    return score


def _decoded(prompt: symusic.Score, new: list[tuple[int, symusic.Note]], tpq: int = 8):
    """What decoding the prompt's tokens and new ones gives: the prompt on a coarse grid, one
    merged track per program, and ``new`` notes (program, note in ``tpq`` ticks)."""
    decoded = prompt.resample(tpq, min_dur=1)
    merged: dict[int, symusic.Track] = {}
    for track in decoded.tracks:
        program = -1 if track.is_drum else track.program
        if program not in merged:
            merged[program] = symusic.Track(
                name="decoded", program=track.program, is_drum=track.is_drum
            )
        merged[program].notes.extend(list(track.notes))
    for program, note in new:
        if program not in merged:
            merged[program] = symusic.Track(program=max(0, program), is_drum=program == -1)
        merged[program].notes.append(note)
    decoded.tracks = list(merged.values())
    for track in decoded.tracks:
        track.controls = []
    return decoded


def test_new_notes_go_to_the_prompts_own_tracks_on_its_own_grid():
    prompt = _piano_prompt()
    split = 4 * 32  # bar 5 in 8 ticks per beat
    new = [
        (0, symusic.Note(split, 4, 79, 90)),  # high: the right hand
        (0, symusic.Note(split + 8, 16, 45, 70)),  # low: the left hand
        (33, symusic.Note(split, 8, 36, 100)),  # an instrument the prompt lacks
    ]
    out = splice(prompt, _decoded(prompt, new), split)
    assert out is not None
    assert out.split == 4 * BAR and out.score.tpq == TPQ
    assert _tempos(out.score) == [(0, 97.0)]  # not binned
    right, left, bass = out.score.tracks
    assert (right.name, left.name) == ("Right hand", "Left hand")
    assert _notes(right)[:-1] == _notes(prompt.tracks[0])  # the prompt, note for note
    assert _notes(left)[:-1] == _notes(prompt.tracks[1])
    assert _notes(right)[-1] == (4 * BAR, 4 * TPQ // 8, 79, 90)
    assert _notes(left)[-1] == (4 * BAR + TPQ, 2 * TPQ, 45, 70)
    assert bass.program == 33 and bass.name == "Electric Bass (finger)"
    assert [(c.time, c.number, c.value) for c in right.controls] == [
        (c.time, c.number, c.value) for c in prompt.tracks[0].controls
    ]  # the pedal was up at the split: nothing added
    assert out.continuation.note_num() == 3
    assert min(n.time for t in out.continuation.tracks for n in t.notes) == 0
    # the new bars alone keep the track's controllers as they stood: volume 100, pedal up
    alone = out.continuation.tracks[0].controls
    assert sorted((c.time, c.number, c.value) for c in alone) == [(0, 7, 100), (0, 64, 0)]


def test_a_held_note_a_pressed_pedal_and_a_bend_are_let_go_at_the_split():
    prompt = _piano_prompt(bars=2)
    right = prompt.tracks[0]
    right.notes.append(symusic.Note(BAR + 100, 3 * BAR, 67, 50))  # rings into the new bars
    right.controls.append(symusic.ControlChange(2 * BAR - 10, 64, 127))
    right.pitch_bends.append(symusic.PitchBend(BAR, 2000))
    split = 2 * 32
    out = splice(prompt, _decoded(prompt, [(0, symusic.Note(split + 16, 8, 67, 90))]), split)
    assert out is not None
    held = next(n for n in out.score.tracks[0].notes if n.time == BAR + 100)
    assert held.time + held.duration == 2 * BAR + 2 * TPQ  # cut where the new 67 starts
    controls = [(c.time, c.number, c.value) for c in out.score.tracks[0].controls]
    assert controls[-1] == (2 * BAR, 64, 0)
    assert [(b.time, b.value) for b in out.score.tracks[0].pitch_bends][-1] == (2 * BAR, 0)


def test_drums_go_to_the_kit_track_that_played_that_drum():
    prompt = symusic.Score(TPQ)
    kick = symusic.Track(name="Kick", program=0, is_drum=True)
    hats = symusic.Track(name="Hats", program=0, is_drum=True)
    for beat in range(8):
        kick.notes.append(symusic.Note(beat * TPQ, 60, 36, 100))
        hats.notes.append(symusic.Note(beat * TPQ + TPQ // 2, 60, 42, 80))
    prompt.tracks.extend([kick, hats])
    new = [(-1, symusic.Note(64, 1, 42, 80)), (-1, symusic.Note(68, 1, 36, 80))]
    out = splice(prompt, _decoded(prompt, new), 64)
    assert out is not None
    assert [n.pitch for n in out.score.tracks[0].notes[8:]] == [36]
    assert [n.pitch for n in out.score.tracks[1].notes[8:]] == [42]


def test_a_tempo_or_meter_the_model_changed_is_kept():
    prompt = _piano_prompt(bars=2)
    decoded = _decoded(prompt, [(0, symusic.Note(64, 8, 72, 90))])
    decoded.tempos = [symusic.Tempo(0, 96.0), symusic.Tempo(64, 96.0), symusic.Tempo(96, 132.0)]
    decoded.time_signatures = [symusic.TimeSignature(0, 4, 4), symusic.TimeSignature(64, 3, 4)]
    out = splice(prompt, decoded, 64)
    assert out is not None
    assert _tempos(out.score) == [(0, 97.0), (96 * 60, 132.0)]
    assert [(t.time, t.numerator) for t in out.score.time_signatures] == [(0, 4), (2 * BAR, 3)]


def test_a_decoded_prompt_that_does_not_line_up_is_not_spliced():
    prompt = _piano_prompt(bars=2)
    shifted = _decoded(prompt, []).shift_time(8)  # a beat late
    assert splice(prompt, shifted, 72) is None
    assert splice(prompt, _decoded(prompt, []), 32) is None  # notes after the split


def test_the_pipeline_returns_the_prompt_untouched(tiny_checkpoint):
    pipe = Pipeline.from_pretrained(tiny_checkpoint)
    prompt = _piano_prompt()
    results = pipe.continue_midi(prompt, 3, bars=2, seed=0, max_new_tokens=200)
    for result in results:
        score, end = result.score, result.prompt_end_tick
        assert score.tpq == TPQ and end == 4 * BAR
        assert _tempos(score) == [(0, 97.0)]
        assert [t.name for t in score.tracks[:2]] == ["Right hand", "Left hand"]
        for ours, theirs in zip(score.tracks, prompt.tracks, strict=False):
            assert [x for x in _notes(ours) if x[0] < end] == _notes(theirs)
        new = sum(1 for t in score.tracks for n in t.notes if n.time >= end)
        assert new == result.continuation.note_num()
        assert UNSPLICED not in result.warnings
    assert any(not r.empty for r in results)


def test_a_prompt_that_cannot_be_lined_up_comes_back_as_read_and_says_so(
    tiny_checkpoint, monkeypatch
):
    import musegen.pipeline as pipeline

    monkeypatch.setattr(pipeline, "splice", lambda *args: None)
    pipe = Pipeline.from_pretrained(tiny_checkpoint)
    result = pipe.continue_midi(_piano_prompt(), 1, bars=1, seed=0, max_new_tokens=40)[0]
    assert result.score.tpq != TPQ  # the decoded piece
    assert pipeline.UNSPLICED in result.warnings
