"""``musegen generate``: continue MIDI prompts (a file or a folder) or compose from nothing.

Each output is written atomically and recorded as one line of ``manifest.jsonl``; re-running
the same command skips outputs already recorded there, so an interrupted folder run resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import symusic
from tqdm import tqdm

from musegen.errors import MusegenError
from musegen.files import append_jsonl, atomic_path, read_jsonl, write_atomic
from musegen.generation.settings import add_arguments, from_args
from musegen.pipeline import (
    CONTINUATION_FIT,
    DEFAULT_CONTINUATION_CANDIDATES,
    GenerationResult,
    GenerationSettings,
    Pipeline,
    check_candidates,
)
from musegen.tokenizer import score_to_midi_bytes

MANIFEST = "manifest.jsonl"
MIDI_SUFFIXES = (".mid", ".midi")

EPILOG = """\
examples:
  musegen generate --prompt song.mid --out out/ --bars 8 --num-samples 3
  musegen generate --prompt midi_folder/ --out out/ --batch-size 16 --instruments 0,33
  musegen generate --out out/ --num-samples 4 --max-new-tokens 512   # from nothing

Outputs are named <prompt>_s<seed>_<k>.mid; manifest.jsonl holds one line per output (prompt,
seed, settings, candidates, checkpoint, token counts, seconds) and one per prompt that could
not be read. With --candidates K, sample k draws seeds seed+k*K … seed+k*K+K-1 and the
manifest's seed is the one kept.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from musegen.cli import (
        HelpFormatter,
        add_candidates_argument,
        add_deploy_arguments,
        add_model_arguments,
    )

    p = subparsers.add_parser(
        "generate",
        help="continue MIDI prompts or generate new pieces",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    add_model_arguments(p)
    add_deploy_arguments(p)
    p.add_argument("--prompt", type=Path, help="a MIDI file, or a folder searched recursively")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_arguments(p)  # one flag per generation setting, from the settings table
    add_candidates_argument(p, DEFAULT_CONTINUATION_CANDIDATES, CONTINUATION_FIT)
    p.add_argument("--batch-size", type=int, default=8, help="sequences sampled at once")
    p.add_argument("--continuation-only", action="store_true", help="write only the new part")
    p.add_argument("--audio", action="store_true", help="also write a .wav of each output")
    p.add_argument("--pianoroll", action="store_true", help="also write a .png piano roll")
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> GenerationSettings:
    """The validated settings the flags describe, with a seed drawn when ``--seed`` < 0."""
    if args.batch_size < 1:
        raise MusegenError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_candidates(args.candidates)
    return from_args(args).with_seed()


def find_prompts(prompt: Path | None) -> tuple[list[Path | None], Path | None]:
    """The prompt files, and the folder names are made relative to (None for one file)."""
    if prompt is None:
        return [None], None
    if prompt.is_dir():
        files = sorted(p for p in prompt.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES)
        if not files:
            raise MusegenError(f"{prompt}: no .mid/.midi files in this folder")
        return list(files), prompt
    if not prompt.exists():
        raise MusegenError(f"{prompt}: file not found")
    return [prompt], None


def stem_of(prompt: Path | None, root: Path | None) -> str:
    if prompt is None:
        return "sample"
    rel = prompt.relative_to(root) if root else Path(prompt.name)
    return "__".join(rel.with_suffix("").parts)


def _extras(
    result: GenerationResult, score: symusic.Score, midi_path: Path, args: argparse.Namespace
) -> None:
    """The .wav and .png of ``score`` (what the .mid holds) beside the .mid, when asked for.

    Each is written to a temp name, then renamed.
    """
    split = None if args.continuation_only else result.prompt_end_tick
    if args.pianoroll:
        from musegen.render.pianoroll import render_pianoroll

        write_atomic(midi_path.with_suffix(".png"), render_pianoroll(score, split_tick=split))
    if args.audio:
        from musegen.render.audio import render_audio, write_audio

        with atomic_path(midi_path.with_suffix(".wav")) as tmp:
            write_audio(render_audio(score), tmp)


class _Run:
    """One invocation: what is done already, what to write, what failed."""

    def __init__(
        self,
        args: argparse.Namespace,
        pipeline: Pipeline,
        settings: GenerationSettings,
        request: dict | None = None,
    ):
        self.args, self.pipeline, self.settings = args, pipeline, settings
        # What else the outputs depend on (``musegen infill``: bars, tracks): recorded in each
        # row and matched on resume, like the settings and the checkpoint.
        self.request = request or {}
        self.out: Path = args.out
        self.manifest = self.out / MANIFEST
        self.checkpoint = str(pipeline.checkpoint_dir or args.checkpoint or "")
        self.done = {
            row["output"]
            # a line cut by a crash is skipped: its output is redone
            for row in read_jsonl(self.manifest)
            if row.get("output")
            and row.get("settings") == settings.to_dict()
            and row.get("checkpoint") == self.checkpoint
            and all(row.get(k) == v for k, v in self.request.items())
            and (self.out / row["output"]).is_file()
        }
        self.failed = 0
        self.written = 0
        self.warned: set[str] = set()

    def names(self, stem: str) -> list[str]:
        seed = int(self.settings.seed or 0)
        return [f"{stem}_s{seed + k}_{k}.mid" for k in range(self.args.num_samples)]

    def write(self, prompt: Path | None, stem: str, results: list[GenerationResult]) -> None:
        for k, (name, result) in enumerate(zip(self.names(stem), results, strict=True)):
            if name in self.done:
                continue
            score = result.continuation if self.args.continuation_only else result.score
            path = self.out / name
            write_atomic(path, score_to_midi_bytes(score))
            _extras(result, score, path, self.args)
            append_jsonl(
                self.manifest,
                {
                    "output": name,
                    "prompt": str(prompt) if prompt else None,
                    "sample": k,
                    "seed": result.seed,
                    "settings": self.settings.to_dict(),
                    "checkpoint": self.checkpoint,
                    "prompt_tokens": result.prompt_tokens,
                    "new_tokens": result.new_tokens,
                    "bars": result.bars,
                    "prompt_end_tick": 0 if self.args.continuation_only else result.prompt_end_tick,
                    "finished": result.finished,
                    "seconds": round(result.seconds, 3),
                    # an empty continuation is written (to look at) but never called a success
                    "status": "empty" if result.empty else "ok",
                    "warnings": result.warnings,
                    **self.request,
                },
            )
            self.written += 1
            self.failed += result.empty
            for warning in dict.fromkeys(result.warnings):
                if warning not in self.warned:
                    self.warned.add(warning)
                    print(f"musegen: warning: {name}: {warning}", file=sys.stderr)

    def fail(self, prompt: Path | None, error: Exception) -> None:
        self.failed += 1
        append_jsonl(
            self.manifest,
            {
                "output": None,
                "prompt": str(prompt),
                "status": "failed",
                "error": str(error),
                # the one-line reason alone, as prepare records it (musegen.score_check)
                "reason": getattr(error, "reason", None) or str(error),
            },
        )


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    prompts, root = find_prompts(args.prompt)
    from musegen.cli import load_pipeline

    pipeline = load_pipeline(args)
    args.out.mkdir(parents=True, exist_ok=True)
    # From nothing there is nothing to judge candidates by: one is drawn (Pipeline.generate).
    job = _Run(args, pipeline, settings, {"candidates": args.candidates if args.prompt else 1})
    todo = [p for p in prompts if not set(job.names(stem_of(p, root))) <= job.done]
    if len(prompts) == 1 and prompts[0] is not None and todo:
        results = pipeline.continue_midi(  # errors: one line
            prompts[0], args.num_samples, settings, args.candidates
        )
        job.write(prompts[0], stem_of(prompts[0], root), results)
    elif prompts == [None] and todo:
        job.write(None, "sample", pipeline.generate(args.num_samples, settings))
    elif todo:
        per_batch = max(1, args.batch_size // (args.num_samples * args.candidates))
        bar = tqdm(total=len(todo), desc="prompts", unit="prompt", disable=not sys.stderr.isatty())
        for chunk in _batches(todo, per_batch):
            for prompt, outcome in zip(
                chunk,
                pipeline.continue_batch(chunk, args.num_samples, settings, args.candidates),
                strict=True,
            ):
                if isinstance(outcome, MusegenError):
                    job.fail(prompt, outcome)
                    continue
                try:  # a result that cannot be written or rendered fails its prompt, not the run
                    job.write(prompt, stem_of(prompt, root), outcome)
                except MusegenError as exc:
                    job.fail(prompt, exc)
            bar.update(len(chunk))
        bar.close()
    skipped = len(prompts) - len(todo)
    print(
        f"wrote {job.written} file(s) to {args.out}"
        + (f", skipped {skipped} prompt(s) already done" if skipped else "")
        + (f", {job.failed} prompt(s) failed (see {job.manifest})" if job.failed else "")
    )
    return 1 if job.failed else 0
