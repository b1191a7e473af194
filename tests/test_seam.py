"""Best of K: an infilled span is the candidate closest in key and note density to the bars
around it, a continuation the one closest in key and in each track's density and groove to the
prompt's last bars (musegen.generation.seam)."""

from __future__ import annotations

import numpy as np
import pytest
import symusic
from conftest import make_score
from test_infill import BAND, check_result, pipe  # noqa: F401 - the tiny pipeline fixture

from musegen.errors import MusegenError
from musegen.generation.seam import (
    CONTINUATION_WEIGHTS,
    SeamJudge,
    best_of,
    continuation_distance,
    continuation_terms,
)
from musegen.pipeline import DEFAULT_CANDIDATES, DEFAULT_CONTINUATION_CANDIDATES

TPQ, BAR = 480, 1920
C_MAJOR = (60, 62, 64, 65, 67, 69, 71, 72)  # eight notes: a bar of eighths holds each once
F_SHARP_MAJOR = (66, 68, 70, 71, 73, 75, 77, 78)


def bars_of(pitches, per_bar: int, bars: int, program: int = 0, drum: bool = False):
    """A track of ``bars`` bars with ``per_bar`` even notes each, cycling through ``pitches``."""
    track = symusic.Track(program=program, is_drum=drum)
    step = BAR // per_bar
    for i in range(bars * per_bar):
        track.notes.append(symusic.Note(i * step, step, pitches[i % len(pitches)], 80))
    return track


def piece(*tracks: symusic.Track) -> symusic.Score:
    score = symusic.Score(TPQ)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    for t in tracks:
        score.tracks.append(t)
    return score


def test_best_of_keeps_the_smallest_distance_of_each_group():
    assert best_of([3.0, 1.0, 2.0, 5.0, 4.0, 4.0], 3) == [1, 4]  # a tie: the first
    assert best_of([1.0, 2.0], 1) == [0, 1]


def test_the_key_and_the_density_of_the_bars_around_decide():
    around = piece(bars_of(C_MAJOR, 8, 12))  # bars 5-8 get replaced
    judge = SeamJudge(around, (5, 8), None)
    same = piece(bars_of(C_MAJOR, 8, 4))
    assert judge.distance(same) == pytest.approx(0.0)
    other_key = judge.distance(piece(bars_of(F_SHARP_MAJOR, 8, 4)))
    busier = judge.distance(piece(bars_of(C_MAJOR, 32, 4)))
    silent = judge.distance(piece(symusic.Track(program=0)))
    assert 0.5 < other_key < 1 and busier == pytest.approx(np.log(32.5 / 8.5))
    assert silent > max(other_key, busier)  # an empty span is never preferred
    assert best_of([judge.distance(piece(t)) for t in (
        bars_of(F_SHARP_MAJOR, 8, 4), bars_of(C_MAJOR, 32, 4), bars_of(C_MAJOR, 7, 4)
    )], 3) == [2]  # fmt: skip


def test_only_the_target_tracks_are_judged_and_a_new_track_takes_the_key_only():
    around = piece(bars_of(C_MAJOR, 8, 12, program=0), bars_of((36, 42), 16, 12, drum=True))
    piano_span = piece(bars_of(C_MAJOR, 8, 4, program=0), bars_of((36,), 1, 4, drum=True))
    # Regenerating the piano: the (kept) drums inside the span do not count.
    assert SeamJudge(around, (5, 8), frozenset({0})).distance(piano_span) == pytest.approx(0.0)
    # Drums have no key: judged by density alone.
    drums = SeamJudge(around, (5, 8), frozenset({-1}))
    assert drums.pitch_classes is None and drums.notes_per_bar == 16
    assert drums.distance(piece(bars_of((36,), 16, 4, drum=True))) == pytest.approx(0.0)
    # An added bass has nothing around it: any density, the piece's key.
    bass = SeamJudge(around, (5, 8), frozenset({33}))
    assert bass.notes_per_bar is None
    sparse = piece(bars_of((36, 43), 1, 4, program=33))  # C and G: in key
    assert bass.distance(sparse) < bass.distance(piece(bars_of((37, 42), 8, 4, program=33)))


def test_the_right_side_counts_and_a_span_with_nothing_around_cannot_be_judged():
    turning = piece(bars_of(C_MAJOR, 8, 8))  # bars 1-8 in C, bars 9-12 in F#; span 5-8
    turning.tracks[0].notes.extend(bars_of(F_SHARP_MAJOR, 8, 4).shift_time(8 * BAR).notes)
    fs_span = piece(bars_of(F_SHARP_MAJOR, 8, 4))
    both = SeamJudge(turning, (5, 8), None).distance(fs_span)
    left_only = SeamJudge(turning, (5, 8), None, right=False).distance(fs_span)
    assert both < left_only  # the right side is in F# too
    whole = SeamJudge(piece(bars_of(C_MAJOR, 8, 4)), (1, 4), None)
    assert whole.distance(fs_span) == whole.distance(piece(bars_of(C_MAJOR, 8, 4))) == 0.0


def test_each_sample_is_the_best_of_its_own_draws(pipe):  # noqa: F811
    score = make_score(bars=8, tracks=BAND, seed=3)
    drawn = pipe.infill(score, bars=(3, 5), num_samples=6, seed=20, candidates=1)
    judge = SeamJudge(score, (3, 5), None)
    want = [drawn[i] for i in best_of([judge.distance(r.continuation) for r in drawn], 3)]
    got = pipe.infill(score, bars=(3, 5), num_samples=2, candidates=3, seed=20)
    assert [r.tokens for r in got] == [r.tokens for r in want]
    assert [r.seed for r in got] == [r.seed for r in want]
    assert 20 <= got[0].seed < 23 <= got[1].seed < 26  # sample k draws seeds 20+3k … 22+3k
    for r in got:
        check_result(pipe, score, r, 3, 5, targets={0, 1, 2})
    default = pipe.infill(score, bars=(3, 5), seed=20)[0]  # DEFAULT_CANDIDATES draws
    assert 20 <= default.seed < 20 + DEFAULT_CANDIDATES


def test_partial_results_show_one_candidate_per_sample(pipe):  # noqa: F811
    score = make_score(bars=8, tracks=BAND)
    steps = list(pipe.stream_infill(score, (3, 4), num_samples=2, every=8, candidates=3))
    assert len(steps) > 1 and all(len(step) == 2 for step in steps)


@pytest.mark.parametrize("candidates", [0, 17, 2.5, True, "3"])
def test_a_bad_candidate_count_is_a_one_line_error(pipe, candidates):  # noqa: F811
    with pytest.raises(MusegenError, match="candidates"):
        pipe.infill(make_score(bars=6), bars=(2, 3), candidates=candidates)


def test_cli_candidates_are_recorded_and_checked(pipe, tmp_path, capsys):  # noqa: F811
    from conftest import write_midi
    from test_infill import infill_cli, manifest

    midi = write_midi(tmp_path / "a.mid", bars=6, tracks=BAND, seed=1)
    out = tmp_path / "out"
    args = ["--bars", "2-3", "--seed", "4", "--candidates", "3"]
    assert infill_cli(pipe.checkpoint_dir, midi, out, *args) == 0
    row = manifest(out)[-1]
    assert row["candidates"] == 3 and 4 <= row["seed"] < 7
    best = pipe.infill(midi, bars=(2, 3), candidates=3, seed=4)[0]
    assert row["seed"] == best.seed and row["new_tokens"] == best.new_tokens
    # Another candidate count is another request: redone, not skipped.
    assert infill_cli(pipe.checkpoint_dir, midi, out, *args[:-1], "1") == 0
    assert manifest(out)[-1]["candidates"] == 1
    assert infill_cli(pipe.checkpoint_dir, midi, out, *args[:-1], "0") == 2
    assert "candidates=0" in capsys.readouterr().err


# --- continuations ---------------------------------------------------------------------------
def test_a_continuation_is_judged_by_key_each_tracks_density_and_groove():
    prompt = piece(bars_of(C_MAJOR, 8, 8), bars_of((36, 42), 16, 8, drum=True))
    split = 8 * BAR

    def terms(*tracks):
        return continuation_terms(prompt, split, piece(*tracks), 4)

    assert terms(bars_of(C_MAJOR, 8, 4), bars_of((36, 42), 16, 4, drum=True)) == (0, 0, 0)
    key, density, groove = terms(bars_of(F_SHARP_MAJOR, 8, 4), bars_of((36,), 16, 4, drum=True))
    assert 0.5 < key < 1 and density == groove == pytest.approx(0.0)  # drums have no key
    # The drums fall silent: the piano's density is right, the mean over tracks is not.
    _, density, groove = terms(bars_of(C_MAJOR, 8, 4))
    assert density == pytest.approx(np.log(16.5 / 0.5) / 2) and groove == pytest.approx(0.5)
    # Same notes per bar, another rhythm: only the groove differs.
    offbeat = bars_of(C_MAJOR, 8, 4).shift_time(BAR // 16)
    _, density, groove = terms(offbeat, bars_of((36, 42), 16, 4, drum=True))
    assert density == pytest.approx(0.0) and groove > 0.4
    # The judge weighs the three; nothing before the split: nothing to judge by.
    same_key = continuation_distance(prompt, split, piece(bars_of(C_MAJOR, 8, 4)), 4)
    silent_drums = (0, np.log(16.5 / 0.5) / 2, 0.5)
    assert same_key == pytest.approx(np.dot(CONTINUATION_WEIGHTS, silent_drums))
    assert continuation_terms(piece(), 0, piece(bars_of(C_MAJOR, 8, 4)), 4) == (0, 0, 0)


def test_only_the_last_bars_of_the_prompt_judge_a_continuation():
    turning = piece(bars_of(F_SHARP_MAJOR, 8, 8))  # bars 1-8 in F#, bars 9-12 in C
    turning.tracks[0].notes.extend(bars_of(C_MAJOR, 8, 4).shift_time(8 * BAR).notes)
    in_c = piece(bars_of(C_MAJOR, 8, 4))
    assert continuation_terms(turning, 12 * BAR, in_c, 4) == (0, 0, 0)
    assert continuation_terms(turning, 12 * BAR, in_c, 4, neighbours=12)[0] > 0.3


def test_each_continuation_is_the_best_of_its_own_draws(pipe):  # noqa: F811
    score = make_score(bars=6, tracks=BAND, seed=5)
    drawn = pipe.continue_midi(score, num_samples=6, bars=2, seed=30, candidates=1)
    assert [r.seed for r in drawn] == list(range(30, 36))
    default = pipe.continue_midi(score, bars=2, seed=30)[0]  # DEFAULT_CONTINUATION_CANDIDATES
    assert 30 <= default.seed < 30 + DEFAULT_CONTINUATION_CANDIDATES
    judged = [continuation_distance(r.score, r.prompt_end_tick, r.continuation, r.bars)
              for r in drawn]  # fmt: skip
    want = [drawn[i] for i in best_of(judged, 3)]
    got = pipe.continue_midi(score, num_samples=2, bars=2, seed=30, candidates=3)
    assert [(r.seed, r.tokens) for r in got] == [(r.seed, r.tokens) for r in want]
    assert 30 <= got[0].seed < 33 <= got[1].seed < 36
    batch = pipe.continue_batch([score, score], 2, bars=2, seed=30, candidates=3)
    assert [[r.tokens for r in rs] for rs in batch] == [[r.tokens for r in got]] * 2
    steps = list(pipe.stream(score, num_samples=2, bars=2, seed=30, every=4, candidates=3))
    assert len(steps) > 1 and all(len(step) == 2 for step in steps)
    # From nothing there is nothing to judge by: one draw per sample.
    fresh = pipe.generate(num_samples=2, bars=1, seed=7)
    assert [r.seed for r in fresh] == [7, 8]
    with pytest.raises(MusegenError, match="candidates=0"):
        pipe.continue_midi(score, bars=1, candidates=0)


def test_generate_cli_records_and_checks_candidates(pipe, tmp_path, capsys):  # noqa: F811
    import json

    from conftest import write_midi

    from musegen.cli import main

    midi = write_midi(tmp_path / "a.mid", bars=4, tracks=BAND, seed=2)
    out = tmp_path / "out"
    args = ["generate", "--checkpoint", str(pipe.checkpoint_dir), "--prompt", str(midi)]
    args += ["--out", str(out), "--bars", "1", "--seed", "6"]
    assert main([*args, "--candidates", "2"]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    best = pipe.continue_midi(midi, bars=1, seed=6, candidates=2)[0]
    assert rows[-1]["candidates"] == 2 and rows[-1]["seed"] == best.seed
    assert main([*args, "--candidates", "1"]) == 0  # another request: redone, not skipped
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert rows[-1]["candidates"] == 1 and rows[-1]["seed"] == 6
    assert main([*args, "--candidates", "17"]) == 2
    assert "candidates=17" in capsys.readouterr().err
