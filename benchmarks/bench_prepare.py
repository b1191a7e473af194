"""Throughput of ``musegen prepare`` (process pool) against plain single-process miditok.

Both sides tokenize the same files in the same run: the baseline parses and encodes each file
in a loop in this process; ``prepare`` does that with --workers processes, plus hashing,
splitting and writing the memory-mapped arrays. Target: ≥ 1.6× with 2 workers.

    python benchmarks/bench_prepare.py                      # data/music21_midi if present
    python benchmarks/bench_prepare.py --src ~/midi --files 500 --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from musegen.data.prepare import PrepareOptions, prepare, scan
from musegen.tokenizer import build_tokenizer, encode, load_score


def synthetic_folder(root: Path, count: int) -> Path:
    """Fallback corpus when no MIDI folder is given: multitrack pieces made in code."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_score, write_midi

    for i in range(count):
        tracks = ((0, False), (33, False), (0, True))
        write_midi(root / f"{i:04d}.mid", make_score(bars=32, tracks=tracks, seed=i))
    return root


def pick_files(src: Path, count: int, into: Path) -> Path:
    """Copy ``count`` files spread evenly over ``src`` (all collections, not just the first)."""
    paths, _ = scan(src)
    step = max(1, len(paths) // count)
    for rel in paths[::step][:count]:
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, target)
    return into


def baseline(src: Path) -> tuple[float, int, int]:
    """Plain miditok, one process: (seconds, files, tokens)."""
    tokenizer = build_tokenizer()
    paths, _ = scan(src)
    start, tokens = time.perf_counter(), 0
    for rel in paths:
        try:
            tokens += len(encode(tokenizer, load_score(src / rel)))
        except Exception:  # a bad file costs the baseline its parse time, as in prepare
            continue
    return time.perf_counter() - start, len(paths), tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", type=Path, default=Path("data/music21_midi"))
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.src.is_dir():
            src = pick_files(args.src, args.files, tmp / "src")
        else:
            print(f"{args.src} not found: using {args.files} synthetic files")
            src = synthetic_folder(tmp / "src", args.files)
        base_s, n_files, base_tokens = baseline(src)
        start = time.perf_counter()
        options = PrepareOptions(workers=args.workers, min_notes=1)
        manifest = prepare(src, tmp / "out", options, progress=False)
        prep_s = time.perf_counter() - start
    tokens = sum(f["tokens"] - 2 for f in manifest["files"] if f["split"])
    print(f"files: {n_files} ({manifest['totals']['ok']} tokenized)")
    print(
        f"baseline (1 process, miditok): {n_files / base_s:8.1f} files/s {base_tokens / base_s:10.0f} tokens/s ({base_s:.2f} s)"
    )
    print(
        f"prepare  ({args.workers} workers):          {n_files / prep_s:8.1f} files/s {tokens / prep_s:10.0f} tokens/s ({prep_s:.2f} s)"
    )
    print(f"speed-up: {base_s / prep_s:.2f}x (target ≥ 1.6x with 2 workers)")


if __name__ == "__main__":
    main()
