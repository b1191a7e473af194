"""How many MIDI files of a folder a strict parser refuses, and how many of those
``musegen.midi_repair`` reads (and what it changed), per folder.

    python benchmarks/bench_repair.py ../shared/corpora/eval-only/beatles
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import symusic

from musegen import midi_repair


def count(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    refused, read, changes = 0, 0, Counter()
    for path in files:
        data = path.read_bytes()
        try:
            symusic.Score.from_midi(data)
            continue
        except Exception:
            refused += 1
        fixed, changed = midi_repair.repair(data)
        try:
            if changed and symusic.Score.from_midi(fixed).note_num():
                read += 1
                changes.update(changed)
        except Exception:
            continue
    return {"files": len(files), "refused": refused, "read_after_repair": read, **changes}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+")
    for folder in parser.parse_args(argv).folders:
        print(f"{folder}: {count(folder)}")


if __name__ == "__main__":
    main()
