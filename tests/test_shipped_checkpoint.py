"""The model in checkpoints/ is what a fresh clone runs: it must load, agree with itself and play."""

from pathlib import Path

import pretty_midi

from musegen.checkpoint import load_pretrained
from musegen.pipeline import DEFAULT_CHECKPOINT, Pipeline
from musegen.tokenizer import load_score

EXAMPLES = Path(__file__).resolve().parents[1] / "musegen" / "examples"


def test_shipped_checkpoint_is_complete_and_light() -> None:
    names = {p.name for p in DEFAULT_CHECKPOINT.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md"} <= names
    size = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.iterdir())
    assert size <= 60 * 2**20


def test_config_and_tokenizer_agree() -> None:
    loaded = load_pretrained(DEFAULT_CHECKPOINT)
    assert len(loaded.tokenizer) == loaded.config.vocab_size
    assert loaded.model.num_parameters() == 3_812_352  # the README's "3.8 M parameters"


def test_continues_a_bundled_example_by_two_bars(tmp_path: Path) -> None:
    pipe = Pipeline.from_pretrained()  # the default: no path, no download
    prompt = EXAMPLES / "bach_chorale.mid"
    [result] = pipe.continue_midi(prompt, num_samples=1, bars=2, seed=0)
    assert result.bars == 2 and result.finished
    assert result.continuation.note_num() > 0
    out = tmp_path / "continued.mid"
    out.write_bytes(result.midi_bytes())
    midi = pretty_midi.PrettyMIDI(str(out))
    prompt_end = load_score(prompt).to("second").end()
    assert any(n.start >= prompt_end - 0.05 for inst in midi.instruments for n in inst.notes)
