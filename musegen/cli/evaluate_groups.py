"""``musegen evaluate-groups``: continue held-out pieces of each kind of music, group by group.

For every group (e.g. classical_folk, pop_piano, full_band, drums, folk) up to --pieces
held-out pieces are continued: the first --prompt-bars bars (leading empty bars skipped) for
--new-bars new bars, at batch 1, with seed --seed + i for the i-th piece of a group. The new
bars are compared with the real next bars and with the baseline of copying the prompt's last 4
bars: tracks that keep playing, note density, pitch-class distance, in-key rate and register,
groove (16th-note onset patterns), speed; optionally long pieces (--long-pieces). Every group
gets the pass/fail of the default model's targets. With --compare, a second checkpoint is
measured on the same pieces and the tables put the two side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from musegen.cli import HelpFormatter, add_model_arguments
from musegen.generation.settings import (
    DEFAULT_TOP_P,
    add_guidance_overrides,
    guidance_overrides,
)

EPILOG = """\
where the pieces come from (give --data, --group, or both):
  --data PREPARED      a prepared dataset: every file of --split with a "group" in its
                       manifest, read from the source folder the manifest records
  --group NAME=FOLDER  one group from a folder, reduced to the held-out split its own builder
                       uses: a builder's OUT_DIR (corpus.json), Groove (info.csv), POP909
                       (POP909/NNN/, song-id hash), Nottingham (MIDI/, file-name hash), a
                       'musegen corpus music21' folder (prepare's content hash); any other folder
                       is used whole (an evaluation-only set). Versions of one song (name_v0,
                       name_v1 …) count once.

examples:
  musegen evaluate-groups --data data/prepared --json eval.json --markdown eval.md
  musegen evaluate-groups --checkpoint checkpoints/musegen-music21 \\
      --group pop_piano=~/datasets/pop909 --group drums=~/datasets/groove \\
      --group band=~/midi/my_band_songs --pieces 12
  musegen evaluate-groups --checkpoint runs/new/best --compare checkpoints/musegen-music21 \\
      --data data/prepared --long-pieces 4 --markdown card_table.md

The JSON holds every piece's figures, each group's summary and targets, per checkpoint; the
markdown is the per-group table for a model card. Timings depend on the machine's load (the
report records the load average).
"""


def _group(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, got {text!r}")
    return name, Path(folder)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate-groups",
        help="per-group continuation quality (band, piano, drums, folk …) vs real and copy",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="a second checkpoint measured on the same pieces, shown side by side",
    )
    p.add_argument("--data", type=Path, default=None, help="prepared dataset with groups")
    p.add_argument(
        "--group",
        type=_group,
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="a group of pieces from a folder (repeatable; see below)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="held-out split to take (all: every file, whatever the corpus)",
    )
    p.add_argument("--pieces", type=int, default=24, help="pieces per group")
    p.add_argument("--prompt-bars", type=int, default=8, help="bars of each prompt")
    p.add_argument("--new-bars", type=int, default=4, help="bars generated")
    p.add_argument(
        "--long-pieces",
        type=int,
        default=0,
        help="pieces per group for the long-piece test (0: skip it; slow on a CPU)",
    )
    p.add_argument("--long-bars", type=int, default=32, help="bars generated in the long test")
    p.add_argument(
        "--long-prompt-bars", type=int, default=4, help="prompt bars in the long-piece test"
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--top-p", type=float, default=DEFAULT_TOP_P, help="(default: the app's, %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="piece i of a group uses seed + i")
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        metavar="K",
        help="continuations drawn per piece, the one fitting the prompt's last bars kept "
        "(default: the pipeline's, as the app and the CLI use it)",
    )
    add_guidance_overrides(p)
    p.add_argument(
        "--speed-group",
        action="append",
        default=[],
        metavar="NAME",
        help="groups held to the 5 s speed target (default: names containing band/beatles)",
    )
    p.add_argument(
        "--find-bar-lines",
        action="store_true",
        help="cut each piece on bar lines found from its notes where its own do not follow "
        "them (as the app and generate continue such an upload); default: the file's own",
    )
    p.add_argument("--json", type=Path, default=None, help="write the full report here")
    p.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from musegen.errors import MusegenError
    from musegen.eval_pieces import from_folder, from_prepared
    from musegen.eval_report import to_markdown
    from musegen.evaluate_groups import GroupEvalSettings
    from musegen.evaluate_groups import run as evaluate
    from musegen.files import write_atomic

    for flag in ("pieces", "prompt_bars", "new_bars", "long_bars", "long_prompt_bars"):
        if getattr(args, flag) <= 0:
            raise MusegenError(f"--{flag.replace('_', '-')} must be positive")
    if args.candidates is not None:
        from musegen.pipeline import check_candidates

        check_candidates(args.candidates)
    if args.long_pieces < 0:
        raise MusegenError("--long-pieces must be ≥ 0")
    if args.data is None and not args.group:
        raise MusegenError("give --data PREPARED and/or --group NAME=FOLDER")
    if args.data is not None and args.split == "all":
        raise MusegenError("--split all applies to --group folders, not to --data")
    sources = from_prepared(args.data, args.split) if args.data is not None else []
    sources += [from_folder(name, folder, args.split) for name, folder in args.group]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise MusegenError(f"a group is given twice: {', '.join(names)}")
    settings = GroupEvalSettings(
        pieces=args.pieces,
        prompt_bars=args.prompt_bars,
        new_bars=args.new_bars,
        long_pieces=args.long_pieces,
        long_prompt_bars=args.long_prompt_bars,
        long_bars=args.long_bars,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        candidates=args.candidates,
        guidance=guidance_overrides(args),
        device=args.device,
        progress=not args.quiet,
        speed_groups=args.speed_group,
        find_bar_lines=args.find_bar_lines,
    )
    checkpoints = [args.checkpoint] + ([args.compare] if args.compare else [])
    report = evaluate(checkpoints, sources, settings)
    markdown = to_markdown(report)
    print(markdown)
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        write_atomic(args.markdown, markdown)
        print(f"wrote {args.markdown}")
    return 0
