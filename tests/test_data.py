"""The training-time reader: opening datasets, windows, eval windows, augmentation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_score, write_midi

from musegen.data.dataset import (
    Augmentation,
    PreparedDataset,
    TokenSplit,
    WindowSampler,
    iter_eval_windows,
)
from musegen.data.prepare import PrepareOptions, prepare
from musegen.errors import MusegenError
from musegen.tokenizer import (
    TokenizerSettings,
    build_tokenizer,
    decode,
    encode,
    train_bpe,
)

PAD = 0


def toy_split(lengths: list[int]) -> TokenSplit:
    """Document i holds 1000*(i+1), 1000*(i+1)+1, ...: every token names its document."""
    docs = [np.arange(n) + 1000 * (i + 1) for i, n in enumerate(lengths)]
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    return TokenSplit("train", np.concatenate([np.zeros(0), *docs]).astype(np.uint32), offsets)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for i in range(6):
        write_midi(
            root / "src" / f"{i}.mid",
            bars=4 + 2 * i,
            tracks=((0, False), (33, False), (0, True)),
            seed=i,
        )
    prepare(root / "src", root / "out", PrepareOptions(workers=2), progress=False)
    return root / "out"


def test_open_gives_memmapped_splits(prepared: Path) -> None:
    dataset = PreparedDataset.open(prepared)
    assert dataset.directory == prepared and dataset.tokenizer_path == prepared / "tokenizer.json"
    assert dataset.vocab_size == dataset.manifest["vocab_size"]
    train = dataset.split("train")
    assert isinstance(train.tokens, np.memmap) and train.offsets.dtype == np.int64
    assert train.num_tokens == len(train.tokens) == dataset.manifest["splits"]["train"]["tokens"]
    assert train.document(0)[0] == dataset.manifest["special_ids"]["BOS"]
    with pytest.raises(IndexError):
        train.document(train.num_docs)
    with pytest.raises(MusegenError, match="no split 'dev'"):
        dataset.split("dev")


def test_open_rejects_missing_incomplete_or_foreign(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(MusegenError, match="does not exist"):
        PreparedDataset.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MusegenError, match="no readable manifest"):
        PreparedDataset.open(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(MusegenError, match="not a musegen-prepared dataset"):
        PreparedDataset.open(tmp_path / "other")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in prepared.iterdir():
        if f.name != "val.bin":
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(MusegenError, match=r"incomplete \(missing val.bin\)"):
        PreparedDataset.open(broken)
    (broken / "val.bin").write_bytes(b"\x00\x00")
    with pytest.raises(MusegenError, match="does not match its index"):
        PreparedDataset.open(broken).split("val")


def test_windows_stay_inside_one_document_and_pad_short_ones() -> None:
    split = toy_split([50, 7, 300, 12])
    sampler = WindowSampler(split, seq_len=16, seed=1, pad_id=PAD)
    batch = sampler.next_batch(64)
    assert batch.shape == (64, 17) and batch.dtype == np.int64
    for row in batch:
        real = row[row != PAD]
        assert len(set(real // 1000)) == 1  # one document
        assert np.all(np.diff(real) == 1)  # a contiguous slice of it
        if len(real) < 17:
            assert real[-1] % 1000 + 1 in (7, 12)  # only short documents are padded, at the end
            assert np.all(row[len(real) :] == PAD)


def test_documents_are_drawn_in_proportion_to_their_windows() -> None:
    split = toy_split([20, 1020, 5])  # 4, 1004 and 1 possible windows of 17 tokens
    sampler = WindowSampler(split, seq_len=16, seed=0, pad_id=PAD)
    docs = Counter(int(row[0] // 1000) for _ in range(20) for row in sampler.next_batch(100))
    assert docs[2] > 1900 and docs[1] + docs[3] < 100


def test_sampler_is_deterministic_rank_aware_and_resumable() -> None:
    split = toy_split([400, 300, 500])
    a = WindowSampler(split, 32, seed=7, pad_id=PAD)
    b = WindowSampler(split, 32, seed=7, pad_id=PAD)
    assert np.array_equal(a.next_batch(8), b.next_batch(8))
    other_rank = WindowSampler(split, 32, seed=7, pad_id=PAD, rank=1, world_size=2)
    assert not np.array_equal(a.next_batch(8), other_rank.next_batch(8))
    state = a.state_dict()
    expected = [a.next_batch(4) for _ in range(3)]
    resumed = WindowSampler(split, 32, seed=7, pad_id=PAD)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert all(np.array_equal(x, resumed.next_batch(4)) for x in expected)
    with pytest.raises(MusegenError, match="seed"):
        WindowSampler(split, 32, seed=8, pad_id=PAD).load_state_dict(state)


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(MusegenError, match="empty"):
        WindowSampler(toy_split([]), 8, 0, PAD)
    with pytest.raises(MusegenError, match="rank"):
        WindowSampler(toy_split([10]), 8, 0, PAD, rank=2, world_size=2)


def test_eval_windows_score_every_target_once() -> None:
    split = toy_split([50, 7, 33])
    windows = list(iter_eval_windows(split, seq_len=16, pad_id=PAD))
    assert len(windows) == 4 + 1 + 2
    targets = Counter()
    for w in windows:
        assert w.shape == (17,) and w.dtype == np.int64
        real = w[w != PAD]
        assert len(set(real // 1000)) == 1 and np.all(np.diff(real) == 1)
        targets.update(real[1:].tolist())
    every = [
        t for i, n in enumerate([50, 7, 33]) for t in range(1000 * (i + 1) + 1, 1000 * (i + 1) + n)
    ]
    assert targets == Counter(every)
    again = [w.tolist() for w in iter_eval_windows(split, 16, PAD, max_windows=3)]
    assert len(again) == 3 and again == [
        w.tolist() for w in iter_eval_windows(split, 16, PAD, max_windows=3)
    ]
    assert again[0] == windows[0].tolist() and again[-1] == windows[-1].tolist()


# ------------------------------------------------------------------ augmentation


def pitched_notes(score) -> list[tuple[int, int, int, bool]]:
    return sorted((n.time, n.pitch, t.program, t.is_drum) for t in score.tracks for n in t.notes)


@pytest.mark.parametrize("kind", ["REMI", "TSD", "MIDILike"])
def test_augmented_window_decodes_to_the_same_notes_transposed(kind: str) -> None:
    tokenizer = build_tokenizer(TokenizerSettings(kind=kind))
    score = make_score(bars=4, tracks=((0, False), (40, False), (0, True)), tpq=8)
    ids = np.asarray(encode(tokenizer, score))
    original = decode(tokenizer, ids.tolist())
    aug = Augmentation(tokenizer, transpose=(-5, 6), velocity_shift=0, tempo_shift=0)
    shifts = set()
    for seed in range(12):
        out = aug.apply(ids, np.random.default_rng(seed))
        back = decode(tokenizer, out.tolist())
        drums = [n for n in pitched_notes(back) if n[3]]
        assert drums == [n for n in pitched_notes(original) if n[3]]  # drums never move
        pitched_before = [n for n in pitched_notes(original) if not n[3]]
        pitched_after = [n for n in pitched_notes(back) if not n[3]]
        shift = pitched_after[0][1] - pitched_before[0][1]
        assert pitched_after == sorted((t, p + shift, prog, d) for t, p, prog, d in pitched_before)
        assert -5 <= shift <= 5
        shifts.add(shift)
    assert len(shifts) > 3


def test_transposition_never_leaves_the_pitch_range() -> None:
    tokenizer = build_tokenizer()
    pitches = [int(t[6:]) for t in tokenizer.vocab if t.startswith("Pitch_")]
    low, high = min(pitches), max(pitches)
    ids = np.asarray([tokenizer.vocab[f"Pitch_{p}"] for p in (low + 2, high - 1)])
    aug = Augmentation(tokenizer, transpose=(-5, 6))
    seen = {int(aug.apply(ids, np.random.default_rng(s))[0]) - ids[0] for s in range(40)}
    assert seen == {-2, -1, 0, 1}


def test_velocity_and_tempo_shift_by_bins() -> None:
    tokenizer = build_tokenizer()
    vel = [t for t in tokenizer.vocab if t.startswith("Velocity_")]
    tempo = [t for t in tokenizer.vocab if t.startswith("Tempo_")]
    ids = np.asarray(
        [tokenizer.vocab[vel[5]], tokenizer.vocab[tempo[0]], tokenizer.vocab["Bar_None"]]
    )
    aug = Augmentation(tokenizer, transpose=(0, 1), velocity_shift=1, tempo_shift=1)
    outs = {tuple(aug.apply(ids, np.random.default_rng(s)).tolist()) for s in range(40)}
    inverse = {i: t for t, i in tokenizer.vocab.items()}
    assert {inverse[o[0]] for o in outs} == set(vel[4:7])
    assert {inverse[o[1]] for o in outs} == set(tempo[0:2])  # clamped at the lowest bin
    assert {o[2] for o in outs} == {tokenizer.vocab["Bar_None"]}


def test_sampler_applies_augmentation_deterministically(prepared: Path) -> None:
    from musegen.tokenizer import load_tokenizer

    dataset = PreparedDataset.open(prepared)
    aug = Augmentation(load_tokenizer(dataset.tokenizer_path))
    train = dataset.split("train")
    plain = WindowSampler(train, 64, seed=3, pad_id=PAD).next_batch(8)
    a = WindowSampler(train, 64, seed=3, pad_id=PAD, augmentation=aug).next_batch(8)
    b = WindowSampler(train, 64, seed=3, pad_id=PAD, augmentation=aug).next_batch(8)
    assert np.array_equal(a, b) and not np.array_equal(a, plain)
    assert a.shape == plain.shape and a.max() < dataset.vocab_size


def test_bpe_tokenizer_cannot_be_augmented(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    files = [write_midi(tmp_path / f"{i}.mid", seed=i) for i in range(4)]
    train_bpe(tokenizer, files, len(tokenizer) + 40)
    with pytest.raises(MusegenError, match="BPE"):
        Augmentation(tokenizer)


def test_drums_after_program_minus_one_are_not_transposed() -> None:
    """Without PitchDrum tokens, drums are Pitch tokens that follow Program_-1."""
    import miditok

    config = miditok.TokenizerConfig(
        use_programs=True,
        one_token_stream_for_programs=True,
        use_pitchdrum_tokens=False,
        special_tokens=["PAD", "BOS", "EOS"],
    )
    tokenizer = miditok.REMI(config)
    score = make_score(bars=2, tracks=((0, False), (0, True)), tpq=8)
    ids = np.asarray(encode(tokenizer, score))
    assert not any(t.startswith("PitchDrum") for t in tokenizer.vocab)
    aug = Augmentation(tokenizer, transpose=(3, 4), velocity_shift=0, tempo_shift=0)
    back = decode(tokenizer, aug.apply(ids, np.random.default_rng(0)).tolist())
    before, after = pitched_notes(decode(tokenizer, ids.tolist())), pitched_notes(back)
    assert [n for n in after if n[3]] == [n for n in before if n[3]]
    assert [n[1] for n in after if not n[3]] == [n[1] + 3 for n in before if not n[3]]
