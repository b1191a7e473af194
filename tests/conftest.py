"""Shared fixtures: tiny MIDI files made in code, so no test needs the network or big data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import symusic
import torch

# Tests use tiny tensors; two threads keep them fast without fighting other processes.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def make_score(
    bars: int = 4,
    tracks: tuple[tuple[int, bool], ...] = ((0, False),),
    tpq: int = 480,
    seed: int = 0,
    tempo: float = 120.0,
) -> symusic.Score:
    """A small multitrack score in 4/4: a walking melody per pitched track, a beat on drums."""
    import random

    rng = random.Random(seed)
    score = symusic.Score(tpq)
    score.tempos.append(symusic.Tempo(0, tempo))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    scale = [0, 2, 4, 5, 7, 9, 11]
    for t_index, (program, is_drum) in enumerate(tracks):
        track = symusic.Track(program=program, is_drum=is_drum)
        step = tpq // 2
        for i in range(bars * 8):
            if is_drum:
                pitch = (36, 42, 38, 42)[i % 4]
            else:
                octave = 48 + 12 * (t_index % 3)
                pitch = octave + scale[rng.randrange(7)]
            track.notes.append(symusic.Note(i * step, step, pitch, 64 + rng.randrange(40)))
        score.tracks.append(track)
    return score


def write_midi(path: Path, score: symusic.Score | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (score or make_score(**kwargs)).dump_midi(str(path))
    return path


@pytest.fixture
def midi_file(tmp_path: Path) -> Path:
    """A 4-bar piano + drums MIDI file."""
    return write_midi(tmp_path / "prompt.mid", tracks=((0, False), (0, True)))


@pytest.fixture
def midi_folder(tmp_path: Path) -> Path:
    """Eight distinct small MIDI files in nested folders (piano, strings, drums)."""
    root = tmp_path / "midi"
    for i in range(8):
        tracks = ((0, False), (40 + i % 3, False), (0, True)) if i % 2 else ((0, False),)
        write_midi(root / f"set{i % 2}" / f"piece{i}.mid", bars=4 + i, tracks=tracks, seed=i)
    return root


def train_args(data: Path, out: Path, **flags) -> list[str]:
    """``musegen train`` arguments: ``seq_len=32`` → ``--seq-len 32``, ``quiet=True`` → ``--quiet``."""
    args = ["train", "--data", str(data), "--out", str(out)]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


# --- model checkpoint (musegen.checkpoint) -------------------------------------------------
@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved, randomly initialised ``tiny`` model with the default REMI tokenizer."""
    from musegen.checkpoint import save_pretrained
    from musegen.config import preset
    from musegen.model.transformer import MusicTransformer
    from musegen.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    config = preset("tiny", vocab_size=len(tokenizer))
    torch.manual_seed(0)
    model = MusicTransformer(config)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny")
