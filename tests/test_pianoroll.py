"""Piano-roll PNGs: size, content, prompt split, drums lane, bar grid and bad input."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import symusic
from conftest import make_score, write_midi
from matplotlib.colors import to_rgb

from musegen.errors import MidiError, MusegenError
from musegen.render import pianoroll
from musegen.render.pianoroll import render_pianoroll


def _decode(png: bytes) -> np.ndarray:
    return mpimg.imread(io.BytesIO(png), format="png")[..., :3]


def _pixels_near(image: np.ndarray, hex_colour: str, tol: float = 0.12) -> int:
    target = np.array(to_rgb(hex_colour))
    return int((np.abs(image - target).max(axis=-1) < tol).sum())


def test_png_has_requested_size_and_shows_notes(tmp_path: Path) -> None:
    score = make_score(bars=4, tracks=((0, False), (33, False)))
    png = render_pianoroll(score, tmp_path / "roll.png", width_px=900, height_px=360)
    assert (tmp_path / "roll.png").read_bytes() == png
    image = _decode(png)
    assert image.shape[:2] == (360, 900)
    # Both instruments' colours are on the picture (full-velocity notes are drawn near opaque).
    assert _pixels_near(image, pianoroll.PALETTE[0]) > 500
    assert _pixels_near(image, pianoroll.PALETTE[1]) > 500


def test_default_size_from_file_and_bytes(midi_file: Path) -> None:
    for source in (midi_file, midi_file.read_bytes(), str(midi_file)):
        assert _decode(render_pianoroll(source)).shape[:2] == (480, 1200)


def test_empty_score_gives_blank_roll() -> None:
    empty = symusic.Score(480)
    image = _decode(render_pianoroll(empty, width_px=600, height_px=300))
    assert image.shape[:2] == (300, 600)
    assert _pixels_near(image, pianoroll.PALETTE[0]) == 0


def test_split_marks_prompt_and_fades_it() -> None:
    score = make_score(bars=8, tracks=((0, False),))
    plain = _decode(render_pianoroll(score))
    split = _decode(render_pianoroll(score, split_tick=4 * 4 * 480))
    assert _pixels_near(split, "#e0443e", tol=0.08) > 200  # the red marker line
    assert _pixels_near(plain, "#e0443e", tol=0.08) == 0
    # Left half (the prompt) loses most of its strong note colour; the right half keeps it.
    half = plain.shape[1] // 2
    assert _pixels_near(split[:, :half], pianoroll.PALETTE[0]) < 0.3 * _pixels_near(
        plain[:, :half], pianoroll.PALETTE[0]
    )
    assert _pixels_near(split[:, half + 20 :], pianoroll.PALETTE[0]) > 0.7 * _pixels_near(
        plain[:, half + 20 :], pianoroll.PALETTE[0]
    )


def test_drums_get_their_own_lane_and_legend_uses_gm_names() -> None:
    score = make_score(bars=4, tracks=((0, False), (40, False), (0, True)))
    image, layout = pianoroll.draw_roll(score, None, "demo", 1200, 480)
    assert layout.legend == ["Acoustic Grand Piano", "Violin", "Drums"]
    assert layout.drum_lanes == ["Kick", "Snare", "Hi-hat"]
    assert all(label.startswith("C") for label in layout.pitch_labels)
    assert len(layout.pitch_labels) >= 2
    # The drum lane sits under the pitched roll: drum green only in the bottom fifth.
    pixels = np.asarray(image)[..., :3] / 255
    rows = np.nonzero((np.abs(pixels - to_rgb(pianoroll.PALETTE[2])).max(-1) < 0.1).any(1))[0]
    assert rows[rows > 40].min() > 0.7 * 480  # below the legend, whose swatch is green too


def test_repeated_instruments_are_numbered() -> None:
    score = make_score(bars=2, tracks=((0, False), (0, False)))
    _, layout = pianoroll.draw_roll(score, None, None, 1200, 480)
    assert layout.legend == ["Acoustic Grand Piano 1", "Acoustic Grand Piano 2"]


def test_bar_grid_follows_time_signature_changes() -> None:
    score = symusic.Score(480)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    score.time_signatures.append(symusic.TimeSignature(2 * 1920, 3, 4))
    grid = pianoroll.bar_grid(score, end_tick=2 * 1920 + 3 * 1440)
    assert list(grid.bar_starts) == [0, 1920, 3840, 5280, 6720, 8160]
    assert grid.to_bars(3840 + 720) == pytest.approx(2.5)
    six_eight = symusic.Score(480)
    six_eight.time_signatures.append(symusic.TimeSignature(0, 6, 8))
    assert list(pianoroll.bar_grid(six_eight, 1440).bar_starts) == [0, 1440]


def test_long_piece_stays_readable() -> None:
    score = make_score(bars=200, tracks=((0, False), (0, True)))
    labels = pianoroll.draw_roll(score, 100 * 1920, None, 1200, 480)[1].bar_labels
    assert 8 <= len(labels) <= 40  # thinned bar numbers, not 200 overlapping ones
    assert labels[0] == "1"
    image = _decode(render_pianoroll(score, split_tick=100 * 1920))
    assert image.shape[:2] == (480, 1200)


def test_bad_inputs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"RIFF not midi")
    with pytest.raises(MidiError, match="not a MIDI"):
        render_pianoroll(bad)
    midi = write_midi(tmp_path / "ok.mid", bars=2)
    with pytest.raises(MusegenError, match=r"\.png"):
        render_pianoroll(midi, tmp_path / "roll.jpg")
    with pytest.raises(MusegenError, match="out of range"):
        render_pianoroll(midi, width_px=10)
    with pytest.raises(MusegenError, match="negative"):
        render_pianoroll(midi, split_tick=-5)


def test_split_at_zero_means_no_prompt() -> None:
    score = make_score(bars=2)
    assert pianoroll.draw_roll(score, 0, None, 1200, 480)[1].marks == []
    marks = pianoroll.draw_roll(score, 1920, None, 1200, 480)[1].marks
    assert marks == ["prompt", "continuation"]
