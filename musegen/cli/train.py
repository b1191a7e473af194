"""``musegen train --data PREPARED_DIR --out RUN_DIR``: train or resume a model.

Settings are layered, later wins: the preset, a ``--config`` file, the explicit flags, then
``--set key=value``. Every :class:`~musegen.config.ModelConfig` and
:class:`~musegen.training.config.TrainConfig` field can be set; ``--resume`` starts from the
settings saved in ``RUN_DIR/run.json`` and applies only what is given again on the command line.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from musegen.errors import MusegenError

EPILOG = """\
examples:
  musegen train --data data/prepared --out runs/small --preset small
  musegen train --data data/prepared --out runs/tiny --preset tiny --max-steps 300 --device cpu
  musegen train --data data/prepared --out runs/local --set attention=local --set window=128
  musegen train --data data/prepared --out runs/cfg --config train.yaml --lr 3e-4
  musegen train --out runs/small --resume                  # continue a stopped or killed run
  musegen train --out runs/small --resume --max-steps 20000  # ... and train it for longer

RUN_DIR receives run.json (the settings), metrics.jsonl (one JSON line per log or evaluation),
loss.png (train and validation curves, redrawn at each evaluation), best/ (lowest validation
loss) and latest/ (newest, with the optimiser, data position and RNG state in
latest/train_state) — both are normal checkpoints for `musegen generate --checkpoint` — and
samples/step_N.mid, a short sample at each evaluation. A run killed at any moment resumes from
its last save with --resume; a run directory is never reused by a fresh run unless --overwrite.

config file (--config): JSON or YAML, flat ({"lr": 3e-4, "d_model": 384}) or in sections
({"model": {...}, "train": {...}}). --set takes JSON values: --set betas=[0.9,0.99].

several GPUs on one machine (DistributedDataParallel, one process per GPU; --batch-size is per
process, so the effective batch is batch-size x grad-accum x processes):
  torchrun --standalone --nproc_per_node=4 -m musegen train --data data/prepared \\
      --out runs/base --preset base
several machines: run the same command on every node, pointing at one rendezvous host
(torchrun's c10d rendezvous assigns the ranks; --data and --out must be on storage every node
can read, only global rank 0 writes):
  torchrun --nnodes=2 --nproc_per_node=8 --rdzv_id=musegen-base --rdzv_backend=c10d \\
      --rdzv_endpoint=node0.example.org:29500 -m musegen train --data /shared/prepared \\
      --out /shared/runs/base --preset base
On CPU, processes talk over gloo (e.g. --nproc_per_node=2 --device cpu --threads 1).
"""

# Explicit flags: (flag, TrainConfig/ModelConfig field, type, help).
TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--max-steps", "max_steps", int, "optimizer steps to train for (the cosine decays over them)"),
    ("--max-minutes", "max_minutes", float, "stop after this many minutes of this invocation"),
    ("--batch-size", "batch_size", int, "windows per optimizer micro-step and process"),
    ("--seq-len", "seq_len", int, "tokens per training window (default: the model's max_seq_len)"),
    ("--lr", "lr", float, "peak learning rate (after warm-up)"),
    ("--grad-accum", "grad_accum", int, "micro-batches accumulated per optimizer step"),
    ("--seed", "seed", int, "seed for initialisation, windows and augmentation"),
    ("--eval-every", "eval_every", int, "evaluate on the val split every N steps"),
    ("--save-every", "save_every", int, "write RUN_DIR/latest every N steps"),
    ("--log-every", "log_every", int, "write a metrics.jsonl line every N steps"),
    ("--eval-windows", "eval_windows", int, "validation windows per evaluation"),
    ("--threads", "threads", int, "torch CPU threads (default: torch's choice)"),
    ("--sample-tokens", "sample_tokens", int, "tokens of the sample at each eval (0: none)"),
    (
        "--infill-rate",
        "infill_rate",
        float,
        "fraction of windows rearranged as fill-in-the-middle examples, so the model can infill",
    ),
    (
        "--infill-prefix-drop",
        "infill_prefix_drop",
        float,
        "fraction of those examples whose left side is cut to a few tokens, so the model learns "
        "to read the right side",
    ),
    (
        "--init-from",
        "init_from",
        str,
        "start from this checkpoint's weights (same shape; added tokens get fresh rows)",
    ),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    from musegen.cli import HelpFormatter
    from musegen.config import PRESETS

    parser = subparsers.add_parser(
        "train",
        help="train a model on a prepared corpus (or resume a run)",
        description=(
            "Train a music transformer on the token arrays written by `musegen prepare`:\n"
            "AdamW with warm-up and cosine decay, gradient clipping and accumulation, bf16 on\n"
            "CUDA, evaluation on the val split, best/latest checkpoints and exact resume."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--data", metavar="PREPARED_DIR", help="output of `musegen prepare`")
    parser.add_argument("--out", metavar="RUN_DIR", required=True, help="run directory")
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="model size (default: small; ignored with --resume)",
    )
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML file of settings")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any model or training field (repeatable)",
    )
    for flag, field, kind, text in TRAIN_FLAGS:
        parser.add_argument(flag, dest=field, type=kind, default=None, help=text)
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help="where to train (default: auto, CUDA when available)",
    )
    parser.add_argument(
        "--attention",
        default=None,
        help=(
            "attention kind of a new model, e.g. relative, local or sparse (default: the "
            "preset's); an unknown one is refused with the kinds this version knows"
        ),
    )
    parser.add_argument(
        "--compile",
        action="store_const",
        const=True,
        default=None,
        help="torch.compile the model (faster steps after a slow first one)",
    )
    parser.add_argument(
        "--no-augment",
        dest="augment",
        action="store_const",
        const=False,
        default=None,
        help="turn off transposition and velocity/tempo shifts",
    )
    add_infill_memory_flag(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in RUN_DIR instead of refusing",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def add_infill_memory_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--infill-memory",
        dest="infill_memory",
        action="store_const",
        const=True,
        default=None,
        help=(
            "with --infill-rate and local or sparse attention: lay infilling examples out so the "
            "right side and the kept tracks stay visible beyond the window (pinned keys)"
        ),
    )


def run(args: argparse.Namespace) -> int:
    from musegen.training.loop import train

    train_config, model_config = build_configs(args)
    result = train(train_config, model_config)
    if os.environ.get("RANK", "0") == "0":
        print(f"musegen train: {result.summary()}")
    return 0


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true/false, null, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MusegenError(f"--config {path} does not exist")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text())
        else:
            data = json.loads(path.read_text())
    except Exception as exc:  # yaml and json raise different types for a malformed file
        raise MusegenError(f"--config {path} cannot be parsed ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MusegenError(f"--config {path} must hold a mapping of settings")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("model", "train") and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def split_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sort ``key: value`` pairs into (training fields, model fields); unknown keys are errors."""
    from musegen.config import ModelConfig
    from musegen.training.config import TrainConfig

    model_fields = set(ModelConfig.__dataclass_fields__)
    train_fields = TrainConfig.field_names()
    train, model = {}, {}
    for key, value in settings.items():
        section, _, name = key.rpartition(".")
        name = name.replace("-", "_")
        if section not in ("", "model", "train"):
            raise MusegenError(f"unknown setting {key!r}: use model.FIELD or train.FIELD")
        if name in model_fields and section != "train":
            model[name] = value
        elif name in train_fields and section != "model":
            train[name] = value
        else:
            raise MusegenError(
                f"unknown setting {key!r}: not a training or model field "
                "(see `musegen train --help` and musegen.config.ModelConfig)"
            )
    return train, model


def gather_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Config file, then explicit flags, then ``--set`` (later wins)."""
    settings = read_config_file(args.config) if args.config else {}
    for _, field, _, _ in TRAIN_FLAGS:
        if getattr(args, field) is not None:
            settings[field] = getattr(args, field)
    for field in ("device", "attention", "compile", "augment", "preset", "infill_memory"):
        if getattr(args, field) is not None:
            settings[field] = getattr(args, field)
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MusegenError(f"--set {item!r} must look like KEY=VALUE, e.g. --set lr=3e-4")
        settings[key.strip()] = parse_value(value.strip())
    return settings


def build_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """(TrainConfig, ModelConfig or None) from the parsed command line."""
    from musegen.config import ModelConfig, preset
    from musegen.training.config import TrainConfig
    from musegen.training.state import read_run

    train_over, model_over = split_settings(gather_settings(args))
    train_over.update(out=args.out, resume=args.resume, overwrite=args.overwrite)
    if args.quiet:
        train_over["progress"] = False
    if args.resume:
        saved = read_run(Path(args.out))
        base = dict(saved.get("train_config", {}))
        train_over.setdefault("data", args.data or saved.get("data") or base.get("data"))
        model = None
        if model_over:
            model = ModelConfig.from_dict({**saved["model_config"], **model_over})
        return TrainConfig.from_dict({**base, **train_over}), model
    if not args.data:
        raise MusegenError("--data PREPARED_DIR is required (the output of `musegen prepare`)")
    train_over["data"] = args.data
    name = train_over.get("preset") or "small"
    train_over["preset"] = name
    try:
        model = preset(name, **model_over)
    except (TypeError, ValueError) as exc:
        raise MusegenError(f"invalid model setting: {exc}") from None
    return TrainConfig.from_dict(train_over), model
