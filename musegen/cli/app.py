"""``musegen app``: the web app, on http://127.0.0.1:7860 by default."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

DESCRIPTION = """\
Start the Gradio web app: upload a MIDI file or pick an example, generate continuations,
listen to them and download MIDI and WAV.

The model is loaded once and shared by every browser tab; each request writes to its own
temporary folder, removed when the tab closes. Analytics are off and the page needs no
internet. Stop with Ctrl-C.
"""

EPILOG = """\
examples:
  musegen app                                   # the shipped checkpoint, on this machine only
  musegen app --checkpoint runs/small/best --port 8080
  musegen app --host 0.0.0.0 --concurrency 4    # reachable from the local network
  musegen app --max-prompt-notes 5000 --max-audio-seconds 60 --request-timeout 30
  musegen app --soundfont ~/sf/GeneralUser.sf2  # audio through your own SoundFont
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from musegen.cli import HelpFormatter, add_deploy_arguments, add_model_arguments

    parser = subparsers.add_parser(
        "app",
        help="start the web app (upload MIDI, generate, listen, download)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    # ``python app.py`` passes its arguments through to this parser.
    add_model_arguments(parser)
    add_deploy_arguments(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 opens it to the network"
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also open a temporary public gradio.live link (needs internet)",
    )
    parser.add_argument(
        "--soundfont",
        type=Path,
        default=None,
        help="SoundFont (.sf2/.sf3) for the audio; without it, the best one installed",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=3,
        help="requests processed at once (at most --heavy-slots of them heavy); the rest wait "
        "in the queue; torch gets cpu_count // concurrency threads per request",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="compute light requests in the server's own threads instead of one worker process "
        "per --concurrency slot: less memory (one model copy), but concurrent requests slow "
        "each other down through Python's interpreter lock",
    )
    from musegen.app.limits import add_arguments as add_limit_arguments

    add_limit_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model once, build the app and serve until interrupted."""
    from musegen.errors import MusegenError

    if not 1 <= args.port <= 65535:
        raise MusegenError(f"--port {args.port} is not a valid port (1–65535)")
    if args.concurrency < 1:
        raise MusegenError("--concurrency must be at least 1")
    from musegen.app.limits import from_args, torch_threads

    limits = from_args(args)
    if args.soundfont is not None and not args.soundfont.is_file():
        raise MusegenError(f"--soundfont {args.soundfont}: file not found")

    import torch

    from musegen.app import blocks as ui
    from musegen.cli import load_pipeline

    torch.set_num_threads(torch_threads(args.concurrency))  # parallel requests share the cores
    pipeline = load_pipeline(args)
    demo = ui.build_app(
        pipeline,
        soundfont=args.soundfont,
        concurrency=args.concurrency,
        limits=limits,
        processes=not args.in_process,
    )
    # A service manager's SIGTERM should clean up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        ui.launch(demo, host=args.host, port=args.port, share=args.share)
    except OSError as exc:
        raise MusegenError(f"cannot listen on {args.host}:{args.port} ({exc})") from None
    finally:
        demo.musegen_composer.close()
        demo.musegen_composer.workspace.close()
    return 0
