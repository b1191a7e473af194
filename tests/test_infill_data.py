"""Training-side infilling and program augmentation on real token streams of tiny scores."""

from __future__ import annotations

import numpy as np
import pytest
import symusic

from musegen.data.dataset import Augmentation, TokenSplit, WindowSampler
from musegen.data.infill import (
    PREFIX_KEPT,
    InfillRearranger,
    InfillVocab,
    split_span,
    suffix_budget,
)
from musegen.errors import MusegenError
from musegen.tokenizer import TokenizerSettings, build_tokenizer, decode, encode


def band_score(bars: int = 12) -> symusic.Score:
    """Piano chords, a bass line and drums: three programs, 4/4, one note per beat each."""
    score = symusic.Score(480)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    score.tempos.append(symusic.Tempo(0, 120))
    for program, is_drum, base in ((0, False, 60), (33, False, 36), (0, True, 36)):
        track = symusic.Track(program=program, is_drum=is_drum)
        for beat in range(bars * 4):
            track.notes.append(symusic.Note(beat * 480, 400, base + beat % 5, 90))
        score.tracks.append(track)
    return score


def note_tokens(tokenizer, ids: np.ndarray) -> list[int]:
    kinds = {"Pitch", "PitchDrum", "Duration", "Velocity"}
    return [t for t in ids.tolist() if tokenizer[t].split("_")[0] in kinds]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def ids(tokenizer):
    return np.asarray(encode(tokenizer, band_score()), np.int64)


def test_split_span_keeps_every_note_once(tokenizer, ids):
    vocab = InfillVocab.from_tokenizer(tokenizer)
    bars = np.flatnonzero(ids == vocab.bar)
    span = ids[bars[2] : bars[5]]
    given, target = split_span(span, vocab, frozenset({33}))
    programs = vocab.programs
    assert {int(p) for p in programs[target] if p != -2} == {33}
    assert {int(p) for p in programs[given] if p != -2} == {0, -1}
    # Both parts keep the three bar lines; every note token lands in exactly one part.
    assert (given == vocab.bar).sum() == (target == vocab.bar).sum() == 3
    both = note_tokens(tokenizer, given) + note_tokens(tokenizer, target)
    assert sorted(both) == sorted(note_tokens(tokenizer, span))
    # The target alone decodes to the bass notes of those 3 bars.
    score = decode(tokenizer, target.tolist())
    assert sum(len(t.notes) for t in score.tracks) == 12
    assert {t.program for t in score.tracks} == {33}


def test_full_span_given_part_has_no_notes(tokenizer, ids):
    vocab = InfillVocab.from_tokenizer(tokenizer)
    bars = np.flatnonzero(ids == vocab.bar)
    given, target = split_span(ids[bars[1] : bars[3]], vocab, None)
    assert (vocab.programs[given] == -2).all()
    assert sum(len(t.notes) for t in decode(tokenizer, target.tolist()).tracks) == 24


def test_rearranged_window_layout(tokenizer, ids):
    rearranger = InfillRearranger(tokenizer, rate=1.0)
    vocab = rearranger.vocab
    window = ids[:400]
    for seed in range(20):
        out = rearranger.apply(window, np.random.default_rng(seed))
        assert len(out) == len(window)
        marks = [int(np.flatnonzero(out == m)[0]) for m in (vocab.span, vocab.suffix, vocab.fill)]
        assert marks == sorted(marks)
        if out[-1] == vocab.end:  # the target was not cut: it has whole bars
            target = out[marks[2] + 1 : -1]
            given = out[marks[0] + 1 : marks[1]]
            assert (target == vocab.bar).sum() == (given == vocab.bar).sum() >= 1
            assert target[0] == vocab.bar


def test_suffix_budget_keeps_the_right_side_within_reach(tokenizer, ids):
    """A bounded suffix: the span sits near the window's end, so both sides stay in view."""
    rearranger = InfillRearranger(tokenizer, rate=1.0, suffix_tokens=40)
    vocab = rearranger.vocab
    window = ids[:400]
    lengths = []
    for seed in range(20):
        out = rearranger.apply(window, np.random.default_rng(seed))
        assert len(out) <= len(window)
        suffix_at = int(np.flatnonzero(out == vocab.suffix)[0])
        fill_at = int(np.flatnonzero(out == vocab.fill)[0])
        assert fill_at - suffix_at - 1 <= 40
        # The right side is the window's real continuation after the span.
        suffix = out[suffix_at + 1 : fill_at]
        lengths.append(len(suffix))
        assert any(np.array_equal(window[i : i + len(suffix)], suffix) for i in range(len(window)))
    assert max(lengths) > 0  # a right side is kept, not dropped
    with pytest.raises(MusegenError, match="suffix_tokens"):
        InfillRearranger(tokenizer, rate=1.0, suffix_tokens=0)
    assert suffix_budget(512) == 256 and suffix_budget(None) is None


def _parts(example: np.ndarray, vocab: InfillVocab) -> list[np.ndarray]:
    """given, suffix and target of a rearranged example."""
    marks = [int(np.flatnonzero(example == m)[0]) for m in (vocab.span, vocab.suffix, vocab.fill)]
    return [
        example[marks[0] + 1 : marks[1]],
        example[marks[1] + 1 : marks[2]],
        example[marks[2] + 1 :],
    ]


def test_prefix_drop_cuts_the_left_side_only(tokenizer, ids):
    """With prefix_drop=1 every example keeps at most PREFIX_KEPT tokens before Infill_Span,
    and the same span and target as without it (same seed); the suffix, no longer shortened to
    fit the window, starts the same."""
    plain = InfillRearranger(tokenizer, rate=1.0, suffix_tokens=40)
    dropped = InfillRearranger(tokenizer, rate=1.0, suffix_tokens=40, prefix_drop=1.0)
    vocab = plain.vocab
    window = ids[:400]
    for seed in range(10):
        a = plain.apply(window, np.random.default_rng(seed))
        b = dropped.apply(window, np.random.default_rng(seed))
        at_a, at_b = (int(np.flatnonzero(x == vocab.span)[0]) for x in (a, b))
        assert at_b <= PREFIX_KEPT < at_a
        assert np.array_equal(b[:at_b], a[at_a - at_b : at_a])  # the newest tokens of the left
        parts_a, parts_b = (_parts(x, vocab) for x in (a, b))
        assert np.array_equal(parts_a[0], parts_b[0])  # given
        assert np.array_equal(parts_a[1], parts_b[1][: len(parts_a[1])])  # suffix
        assert np.array_equal(parts_a[2], parts_b[2][: len(parts_a[2])])  # target
    with pytest.raises(MusegenError, match="prefix drop"):
        InfillRearranger(tokenizer, rate=1.0, prefix_drop=-0.1)


def test_sampler_pads_shortened_infilling_examples(tokenizer, ids):
    pad = tokenizer.vocab["PAD_None"]
    split = TokenSplit("train", ids.astype(np.uint32), np.array([0, len(ids)], np.int64))
    rearranger = InfillRearranger(tokenizer, rate=1.0, suffix_tokens=20)
    sampler = WindowSampler(split, seq_len=300, seed=0, pad_id=pad, infill=rearranger)
    batch = sampler.next_batch(8)
    assert batch.shape == (8, 301)
    for row in batch:
        assert (row == rearranger.vocab.fill).sum() == 1
        real = int(np.flatnonzero(row != pad)[-1]) + 1
        assert np.all(row[real:] == pad)  # padding only at the end, ignored by the loss


def test_rate_zero_leaves_windows_alone(tokenizer, ids):
    rearranger = InfillRearranger(tokenizer, rate=0.0)
    window = ids[:300]
    assert rearranger.maybe_apply(window, np.random.default_rng(0)) is window
    with pytest.raises(MusegenError, match="infill rate"):
        InfillRearranger(tokenizer, rate=1.5)


def test_old_tokenizer_without_sentinels_is_refused():
    old = build_tokenizer(TokenizerSettings(infill=False))
    with pytest.raises(MusegenError, match="no infilling tokens"):
        InfillVocab.from_tokenizer(old)


def test_program_remap_is_consistent_and_keeps_drums(tokenizer, ids):
    aug = Augmentation(tokenizer, transpose=(0, 1), program_within=1.0)
    out = aug.apply(ids[:400], np.random.default_rng(3))
    before, after = decode(tokenizer, ids[:400].tolist()), decode(tokenizer, out.tolist())
    drums = [t for t in after.tracks if t.is_drum]
    assert len(drums) == 1 and len(drums[0].notes) == len(
        next(t for t in before.tracks if t.is_drum).notes
    )
    pitched = sorted(t.program for t in after.tracks if not t.is_drum)
    assert len(pitched) == 2  # no two tracks merged
    assert {p // 8 for p in pitched} == {0, 4}  # piano and bass families kept
    assert pitched != [0, 33]  # and moved (rate 1.0; a collision could keep one)
    assert sorted(len(t.notes) for t in after.tracks) == sorted(len(t.notes) for t in before.tracks)


def test_program_remap_across_families_and_off(tokenizer, ids):
    across = Augmentation(tokenizer, transpose=(0, 1), program_across=1.0)
    moved = decode(tokenizer, across.apply(ids[:400], np.random.default_rng(5)).tolist())
    families = {t.program // 8 for t in moved.tracks if not t.is_drum}
    assert 0 not in families or 4 not in families
    off = Augmentation(tokenizer, transpose=(0, 1), velocity_shift=0, tempo_shift=0)
    assert np.array_equal(off.apply(ids[:400], np.random.default_rng(5)), ids[:400])
