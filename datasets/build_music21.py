"""Build the offline music21 MIDI corpus; the same as ``musegen corpus music21 OUT_DIR``.

Usage: python datasets/build_music21.py [OUT_DIR] [--collections bach,palestrina] [--limit N]
OUT_DIR defaults to data/music21_midi (git-ignored).
"""

from __future__ import annotations

import sys

from musegen.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        args = ["data/music21_midi", *args]
    sys.exit(main(["corpus", "music21", *args]))
