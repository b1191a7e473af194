"""Honest limits: rare instruments and empty continuations are said, never passed off."""

from __future__ import annotations

import json

import numpy as np

from musegen.data.dataset import TokenSplit
from musegen.data.stats import family_shares, program_counts
from musegen.generation.coverage import coverage_warning, rare_programs
from musegen.pipeline import Pipeline
from musegen.tokenizer import build_tokenizer, encode
from tests.conftest import make_score

COUNTS = {0: 5000, 1: 3000, 33: 1500, -1: 4000, 40: 2}  # piano, bass, drums; a violin or two


def test_rare_programs_by_family():
    meta = {"training_programs": {str(k): v for k, v in COUNTS.items()}}
    # Piano family and drums are common; program 7 shares piano's family; violin (40) and
    # tuba (58) are rare; bass 38 shares the bass family.
    assert rare_programs({0, 7, 38, -1, 40, 58}, meta) == [40, 58]
    line = coverage_warning({0, 40, 58}, meta)
    assert "Violin" in line and "Tuba" in line and "\n" not in line
    assert coverage_warning({0, -1}, meta) is None
    assert coverage_warning({58}, {}) is None  # no counts: no claim


def test_program_counts_from_tokens():
    tokenizer = build_tokenizer()
    ids = encode(tokenizer, make_score(bars=2, tracks=((0, False), (33, False), (0, True))))
    split = TokenSplit("train", np.asarray(ids, np.uint16), np.asarray([0, len(ids)], np.int64))
    counts = program_counts(split, tokenizer)
    assert counts == {-1: 16, 0: 16, 33: 16}
    shares = family_shares(counts)
    assert set(shares) == {"Drums", "Piano", "Bass"}
    assert abs(sum(shares.values()) - 1) < 1e-9


def test_pipeline_warns_about_rare_instruments(tiny_checkpoint, tmp_path):
    pipe = Pipeline.from_pretrained(tiny_checkpoint)
    pipe.meta = {**pipe.meta, "training_programs": {"0": 1000, "-1": 1000}}
    prompt = make_score(bars=2, tracks=((0, False), (58, False)))
    (result,) = pipe.continue_midi(prompt, bars=1, seed=3, max_new_tokens=64)
    assert any("Tuba" in w for w in result.warnings)
    assert all("Piano" not in w for w in result.warnings)
    json.dumps(result.warnings)  # manifest-ready


def test_empty_continuation_is_flagged(tiny_checkpoint):
    pipe = Pipeline.from_pretrained(tiny_checkpoint)
    # One token cannot complete a note (Program, Pitch, Velocity, Duration): surely empty.
    (result,) = pipe.continue_midi(make_score(bars=2), max_new_tokens=1, seed=0)
    assert result.empty and result.continuation.note_num() == 0
    assert any("no notes" in w for w in result.warnings)
    (full,) = pipe.continue_midi(make_score(bars=2), max_new_tokens=64, bars=1, seed=0)
    assert full.empty == (full.continuation.note_num() == 0)
