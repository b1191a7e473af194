"""What `musegen corpus groove` does to Groove's drum kit, counted over every performance.

Groove was recorded on a Roland TD-11, whose edge and rim hits use pitches that General MIDI
lacks or gives to another instrument; the builder writes each as the drum it is played on
(``GM_DRUMS`` in ``musegen/data/groove.py``). This prints the drum notes per pitch as
recorded and as written, and the share the default tokenizer drops because it lies outside its
drum range. The figures quoted in the model card and ``benchmarks/results/gm_drums/README.md``
come from it:

    python datasets/groove_kit.py ../shared/corpora/groove
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from musegen.data.groove import general_midi_drums, read_info
from musegen.data.sources import load_midi
from musegen.tokenizer import build_tokenizer


def count(src: Path) -> tuple[Counter, Counter]:
    """Drum notes per pitch over every performance ``info.csv`` lists: as recorded, and as the
    builder writes them (:func:`general_midi_drums`)."""
    recorded: Counter = Counter()
    written: Counter = Counter()
    for row in read_info(src):
        score = load_midi(src / row["midi_filename"])
        recorded.update(n.pitch for t in score.tracks for n in t.notes)
        written.update(n.pitch for n in general_midi_drums(score).tracks[0].notes)
    return recorded, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groove_dir", type=Path, help="Groove MIDI Dataset (holds info.csv)")
    args = parser.parse_args()
    recorded, written = count(args.groove_dir)
    low, high = build_tokenizer().config.drums_pitch_range
    total = sum(recorded.values())
    dropped = sum(n for p, n in recorded.items() if not low <= p <= high)
    print(
        json.dumps(
            {
                "notes": total,
                "tokenizer_drum_range": [low, high],
                "dropped_as_recorded": dropped,
                "dropped_share": round(dropped / total, 4),
                "open_hi_hat_as_recorded": {"46": recorded[46], "26": recorded[26]},
                "crash_as_recorded": {"49": recorded[49], "55": recorded[55]},
                "recorded": dict(recorded.most_common()),
                "written": dict(written.most_common()),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
