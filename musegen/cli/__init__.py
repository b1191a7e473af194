"""The ``musegen`` console script: one entry point, one module per subcommand.

Each ``musegen/cli/<name>.py`` exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a handler taking the parsed arguments and returning an exit code. This module only
dispatches and turns :class:`~musegen.errors.MusegenError` into a one-line message.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from musegen import __version__
from musegen.errors import MusegenError

# In the order they appear in ``musegen --help``: the data flow, from corpus to app.
COMMANDS = (
    "corpus",
    "prepare",
    "train",
    "finetune",
    "merge-adapter",
    "export",
    "prune",
    "generate",
    "infill",
    "render",
    "evaluate",
    "evaluate-groups",
    "app",
)

DESCRIPTION = """\
musegen: symbolic music generation with a relative-attention transformer.

Typical flow:
  musegen corpus music21 data/midi        # write an offline corpus of real MIDI files
  musegen prepare data/midi data/prepared # tokenize it into training-ready arrays
  musegen train --data data/prepared --out runs/small --preset small
  musegen generate --checkpoint runs/small/best --prompt song.mid --out out/
  musegen infill song.mid --bars 5-8 --out out/   # regenerate bars 5-8 from both sides
  musegen render out/song_sample0.mid --out song.wav
  musegen app                             # the web app on http://127.0.0.1:7860

Run 'musegen COMMAND --help' for the options of each command.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps hand-wrapped descriptions and shows an option's default when it says something.

    A default of None/False/[] is left out, and so is one the help text already mentions.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, [], argparse.SUPPRESS)
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` and ``--device``, the same for every command that loads a model."""
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint directory (default: $MUSEGEN_CHECKPOINT, else the shipped model)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for the model, e.g. cuda")


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    """``--adapter`` and ``--precision``, for the commands that generate (see
    :meth:`musegen.pipeline.Pipeline.from_pretrained`)."""
    parser.add_argument(
        "--adapter",
        type=Path,
        default=None,
        metavar="DIR",
        help="LoRA adapter (from `musegen finetune --lora-rank`) merged into the checkpoint",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "int8"),
        default=None,
        help="run the model in this precision; int8 is CPU only (default: as stored)",
    )


def add_candidates_argument(parser: argparse.ArgumentParser, default: int, judged: str) -> None:
    """``--candidates K``: draw K per sample and keep the one fitting the music around best
    (``judged``: by what, in words)."""
    parser.add_argument(
        "--candidates",
        type=int,
        default=default,
        metavar="K",
        help=f"draw K per sample and keep the one closest to {judged}; K rows sampled at once",
    )


def load_pipeline(args: argparse.Namespace):
    """The :class:`~musegen.pipeline.Pipeline` that the model and deploy arguments ask for."""
    from musegen.pipeline import Pipeline

    return Pipeline.from_pretrained(
        args.checkpoint,
        device=args.device,
        adapter=getattr(args, "adapter", None),
        precision=getattr(args, "precision", None),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="musegen", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"musegen {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"musegen.cli.{name.replace('-', '_')}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MusegenError as exc:
        print(f"musegen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"musegen {args.command}: interrupted", file=sys.stderr)
        return 130
