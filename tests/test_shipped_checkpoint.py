"""The model in checkpoints/ is what a fresh clone runs: it must load, continue a band and infill."""

from pathlib import Path

import pretty_midi
import symusic

from musegen.checkpoint import load_pretrained
from musegen.pipeline import DEFAULT_CHECKPOINT, Pipeline
from musegen.tokenizer import load_score, supports_infill

EXAMPLES = Path(__file__).resolve().parents[1] / "musegen" / "examples"
BAR = 4 * 480


def band_prompt(bars: int = 8) -> symusic.Score:
    """A pop-rock groove made here: drums (kick/snare/hats), a root-fifth bass, piano chords
    and a guitar riff, in C–G–Am–F, 4/4 at 110 bpm."""
    score = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, 110))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    roots = [48, 43, 45, 41]  # C G A F
    thirds = [4, 4, 3, 4]
    drums = symusic.Track(name="Drums", program=0, is_drum=True)
    bass = symusic.Track(name="Bass", program=33)
    piano = symusic.Track(name="Piano", program=0)
    guitar = symusic.Track(name="Guitar", program=29)
    for bar in range(bars):
        t0, root, third = bar * BAR, roots[bar % 4], thirds[bar % 4]
        for step in range(8):  # eighth-note hats, kick on 1 and 3, snare on 2 and 4
            t = t0 + step * 240
            drums.notes.append(symusic.Note(t, 120, 42, 70))
            if step in (0, 4):
                drums.notes.append(symusic.Note(t, 120, 36, 100))
            if step in (2, 6):
                drums.notes.append(symusic.Note(t, 120, 38, 95))
        for beat, interval in enumerate((0, 7, 0, 7)):
            bass.notes.append(symusic.Note(t0 + beat * 480, 450, root - 12 + interval, 90))
        for beat in (0, 2):
            for interval in (0, third, 7):
                piano.notes.append(symusic.Note(t0 + beat * 960, 900, root + 12 + interval, 70))
        for step, interval in enumerate((12, 7, 12, 14, 12, 7, 3 + third, 7)):
            guitar.notes.append(symusic.Note(t0 + step * 240, 220, root + 12 + interval, 80))
    score.tracks.extend([drums, bass, piano, guitar])
    return score


def test_shipped_checkpoint_is_complete_and_light() -> None:
    names = {p.name for p in DEFAULT_CHECKPOINT.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md"} <= names
    size = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.iterdir())
    assert size <= 60 * 2**20


def test_config_tokenizer_and_training_facts_agree() -> None:
    loaded = load_pretrained(DEFAULT_CHECKPOINT)
    assert len(loaded.tokenizer) == loaded.config.vocab_size
    assert supports_infill(loaded.tokenizer)
    assert loaded.config.max_seq_len >= 2048
    programs = loaded.meta["training_programs"]
    assert int(programs["-1"]) > 0 and int(programs["33"]) > 0  # it has heard drums and bass


BAND_TRACKS = {(0, True): "drums", (33, False): "bass", (0, False): "piano", (29, False): "guitar"}


def track_notes(result) -> dict[tuple[int, bool], int]:
    """Notes per (program, is_drum) track of a continuation."""
    return {(t.program, t.is_drum): len(t.notes) for t in result.continuation.tracks}


def every_track_plays(notes: dict[tuple[int, bool], int]) -> bool:
    """Every band track is there and still playing (2+ notes, not one stray note)."""
    return notes.keys() >= BAND_TRACKS.keys() and min(notes.values()) >= 2


def test_continues_a_full_band_with_every_track() -> None:
    pipe = Pipeline.from_pretrained()  # the default: no path, no download
    prompt = band_prompt()
    # Variation i of seed s draws with seed s + i: these are 16 distinct draws.
    results = [r for seed in (0, 8) for r in pipe.continue_midi(prompt, 8, bars=4, seed=seed)]
    for result in results:  # every variation: the whole band keeps playing
        assert result.bars == 4 and result.finished and not result.empty
        notes = track_notes(result)
        assert every_track_plays(notes), notes
        assert notes[(0, True)] >= 16, notes  # the drums keep a beat: 4+ hits a bar
        assert notes[(33, False)] >= 4, notes  # the bass keeps playing
        assert not result.warnings
    # Without track guidance (the default since 2026-12-05) piano or guitar rested for the 4
    # bars in about half the variations: MODEL_CARD.md gives the rates over two seed sets. At
    # strength 1 (the default until 2026-12-06) the guitar fell silent in one of these draws.


def test_continues_a_bundled_example(tmp_path: Path) -> None:
    pipe = Pipeline.from_pretrained()
    prompt = EXAMPLES / "bach_chorale.mid"
    [result] = pipe.continue_midi(prompt, num_samples=1, bars=2, seed=0)
    assert result.bars == 2 and result.finished and not result.empty
    out = tmp_path / "continued.mid"
    out.write_bytes(result.midi_bytes())
    midi = pretty_midi.PrettyMIDI(str(out))
    prompt_end = load_score(prompt).to("second").end()
    assert any(n.start >= prompt_end - 0.05 for inst in midi.instruments for n in inst.notes)


def test_infills_bars_in_the_middle_of_a_band() -> None:
    pipe = Pipeline.from_pretrained()
    prompt = band_prompt()
    [result] = pipe.infill(prompt, bars=(3, 4), seed=1)
    start, end = 2 * BAR, 4 * BAR
    for before, after in zip(prompt.tracks, result.score.tracks, strict=False):
        outside = [n for n in before.notes if not start <= n.time < end]
        kept = [n for n in after.notes if not start <= n.time < end]
        assert [(n.time, n.pitch, n.duration) for n in kept] == [
            (n.time, n.pitch, n.duration) for n in outside
        ]
    inside = sum(1 for t in result.score.tracks for n in t.notes if start <= n.time < end)
    assert inside > 0
